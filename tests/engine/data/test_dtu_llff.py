"""NeuS/DTU (cameras_sphere.npz + masks) and LLFF (poses_bounds.npy) readers, and their errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cameras import qvec_to_rotmat
from engine.data.detect import load_dataset
from engine.data.dtu import decompose_projection
from engine.errors import DataError

from .conftest import link_tree, replace_with_copy


@pytest.fixture(scope="module")
def dtu_ds(dtu):
    return load_dataset(dtu)


def test_decompose_projection_recovers_k_r_t():
    g = torch.Generator().manual_seed(0)
    R = qvec_to_rotmat(torch.randn(4, generator=g, dtype=torch.float64)).numpy()
    K = np.array([[700.0, 0.5, 200.0], [0, 710.0, 150.0], [0, 0, 1]])
    t = np.array([0.1, -0.3, 2.5])
    for scale in (3.0, -0.02):  # projection matrices are defined up to scale, sign included
        P = scale * K @ np.hstack([R, t[:, None]])
        K2, R2, t2 = decompose_projection(P)
        assert np.allclose(K2, K, atol=1e-9) and np.allclose(R2, R, atol=1e-12) and np.allclose(t2, t, atol=1e-12)


def test_dtu_cameras_masks_and_sphere(dtu_ds, dtu):
    assert dtu_ds.format == "dtu"
    assert {k: len(v) for k, v in dtu_ds.splits.items()} == {"train": 42, "test": 7}
    tr = dtu_ds.train
    assert tr.images.shape == (42, 300, 400, 3) and tr.masks.shape == (42, 300, 400) and tr.masks.dtype == torch.bool
    cams = dtu_ds.all_cameras()
    assert 720 < float(cams.fx.min()) and float(cams.fx.max()) < 725  # 2892.3 / 4 in view 48
    assert torch.allclose(dtu_ds.scene_box, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert (cams.centers().norm(dim=-1) > 1.5).all()  # the cameras are outside the unit sphere
    # The normalised object centre (origin) projects inside the mask in every view, and the
    # projected unit sphere covers the mask.
    for s in dtu_ds.splits.values():
        uv, z = s.cameras.project(torch.zeros(1, 3))
        px = uv[:, 0].floor().long()
        assert (z > 0).all() and bool(s.masks[torch.arange(len(s)), px[:, 1], px[:, 0]].all())
        o, d = s.cameras.generate_rays(0)
        tca = -(o * d).sum(-1)
        hits_sphere = (o.norm(dim=-1) ** 2 - tca ** 2) < 1.0
        assert float((s.masks[0] & ~hits_sphere).float().sum()) == 0
    raw = np.asarray(Image.open(dtu / "mask" / "000.png")).astype(np.float32).mean(-1) > 127
    test = dtu_ds.split("test")
    assert test.image_paths[0].name == "000000.png" and torch.equal(test.masks[0], torch.from_numpy(raw))
    assert 0 < dtu_ds.near < dtu_ds.far


def test_dtu_downscale_and_principal_offset(dtu):
    ds = load_dataset(dtu, downscale=2, principal_offset=0.125, holdout=0)
    base = load_dataset(dtu, holdout=0)
    assert ds.train.images.shape == (49, 150, 200, 3) and ds.train.masks.shape == (49, 150, 200)
    assert torch.allclose(ds.train.cameras.cx, (base.train.cameras.cx + 0.125) / 2, atol=1e-5)


def test_dtu_errors(dtu, tmp_path):
    root = link_tree(dtu, tmp_path / "dtu")
    (root / "mask" / "007.png").unlink()
    with pytest.raises(DataError, match=r"mask/007\.png: mask file is missing"):
        load_dataset(root)
    (root / "mask" / "007.png").symlink_to(dtu / "mask" / "007.png")
    p = root / "images" / "000003.png"
    p.unlink()
    Image.open(dtu / "images" / "000003.png").resize((200, 150)).save(p)
    with pytest.raises(DataError, match=r"000003\.png: image is 200x150 pixels but its camera says 400x300"):
        load_dataset(root)
    p.unlink()
    p.symlink_to(dtu / "images" / "000003.png")
    npz = replace_with_copy(root / "cameras_sphere.npz")
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cameras_sphere\.npz: not a readable \.npz archive"):
        load_dataset(root)
    d = dict(np.load(dtu / "cameras_sphere.npz"))
    del d["world_mat_48"]
    np.savez(npz, **d)
    with pytest.raises(DataError, match=r"cameras_sphere\.npz: has no world_mat_48: 49 images in images/ but 48 cameras"):
        load_dataset(root)


def test_llff_matches_colmap_on_beer(beer):
    llff = load_dataset(beer, format="llff", downscale=2)
    colmap = load_dataset(beer, downscale=2)
    assert llff.format == "llff" and llff.train.images.shape == (62, 640, 360, 3)
    for name in ("train", "test"):
        a, b = llff.split(name).cameras, colmap.split(name).cameras
        assert torch.allclose(a.c2w, b.c2w, atol=1e-5)  # same poses, LLFF column order undone
        assert torch.allclose(a.cx, b.cx) and torch.allclose(a.cy, b.cy)
        assert a.dist is None
    hwf = np.load(beer / "poses_bounds.npy")[0, :15].reshape(3, 5)[:, 4]
    assert float(llff.train.cameras.fx[0]) == pytest.approx(hwf[2] / 2, rel=1e-6)
    bounds = np.load(beer / "poses_bounds.npy")[:, 15:]
    assert llff.near == pytest.approx(bounds[:, 0].min()) and llff.far == pytest.approx(bounds[:, 1].max())
    c = llff.all_cameras().centers()
    assert bool(((c >= llff.scene_box[0]) & (c <= llff.scene_box[1])).all())


def test_llff_on_dtu(dtu):
    ds = load_dataset(dtu, format="llff")
    pb = np.load(dtu / "poses_bounds.npy")
    assert len(ds.all_cameras()) == 49 and ds.train.images.shape[1:] == (300, 400, 3)
    assert float(ds.train.cameras.fx[0]) == pytest.approx(pb[0, 14], rel=1e-6)
    assert float(ds.train.cameras.cx[0]) == 200.0 and float(ds.train.cameras.cy[0]) == 150.0


def test_llff_errors(dtu, tmp_path):
    root = link_tree(dtu, tmp_path / "dtu", skip={"cameras_sphere.npz", "cameras_large.npz", "mask"})
    (root / "images" / "000012.png").unlink()
    with pytest.raises(DataError, match=r"no image folder holds 49 images \(the poses_bounds\.npy pose count\): images/ has 48"):
        load_dataset(root)
    (root / "images" / "000012.png").symlink_to(dtu / "images" / "000012.png")
    p = replace_with_copy(root / "poses_bounds.npy")
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match=r"poses_bounds\.npy: truncated \.npy or corrupt header"):
        load_dataset(root)
    np.save(p, np.zeros((49, 12)))
    with pytest.raises(DataError, match=r"poses_bounds\.npy: expected an \(N, 17\) array, got shape \(49, 12\)"):
        load_dataset(root)
