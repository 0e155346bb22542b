"""COLMAP reader on real/beer (binary and text, images/ and images_2/), and broken models."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from engine.cameras import colmap_to_c2w
from engine.data.colmap_io import read_model, write_model_text
from engine.data.detect import load_dataset
from engine.errors import DataError

from .conftest import link_tree, replace_with_copy


@pytest.fixture(scope="module")
def beer2(beer):
    return load_dataset(beer, downscale=2)


def test_model_contents(beer):
    m = read_model(beer / "sparse" / "0")
    assert len(m.cameras) == 71 and len(m.images) == 71 and m.points.shape == (4414, 3)
    cams = list(m.cameras.values())
    assert {c.model for c in cams} == {"SIMPLE_RADIAL"} and {(c.width, c.height) for c in cams} == {(720, 1280)}
    f = torch.tensor([c.params[0] for c in cams])
    k = torch.tensor([c.params[3] for c in cams])
    assert 1101.5 < float(f.min()) and float(f.max()) < 1155.4 and -0.02 < float(k.min()) and float(k.max()) < 0.105


def test_images_2_uses_scaled_intrinsics(beer, beer2):
    assert beer2.format == "colmap" and beer2.metadata["image_folder"].endswith("images_2")
    assert {k: len(v) for k, v in beer2.splits.items()} == {"train": 62, "test": 9}
    assert beer2.train.images.shape == (62, 640, 360, 3)
    m = read_model(beer / "sparse" / "0")
    ims = sorted(m.images.values(), key=lambda im: im.name)
    full_f = torch.tensor([m.cameras[im.camera_id].params[0] for im in ims])
    test_idx = list(range(0, 71, 8))
    got = beer2.split("test").cameras
    assert torch.allclose(got.fx.double(), full_f[test_idx] / 2, rtol=1e-6)
    assert torch.allclose(got.cx, torch.full_like(got.cx, 180.0)) and torch.allclose(got.cy, torch.full_like(got.cy, 320.0))
    k = torch.tensor([m.cameras[im.camera_id].params[3] for im in ims])[test_idx]
    assert torch.allclose(got.dist[:, 0].double(), k, rtol=1e-6) and bool((got.dist[:, 1:] == 0).all())
    # Poses are COLMAP's, inverted.
    q = torch.tensor(np.stack([ims[i].qvec for i in test_idx]))
    t = torch.tensor(np.stack([ims[i].tvec for i in test_idx]))
    assert torch.allclose(got.c2w.double(), colmap_to_c2w(q, t), atol=1e-5)


def test_box_filtered_images_match_images_2(beer, beer2):
    ours = load_dataset(beer, downscale=2, images_dir="images", holdout=0)
    assert ours.train.images.shape == (71, 640, 360, 3)
    test_idx = list(range(0, 71, 8))
    diff = (ours.train.images[test_idx] - beer2.split("test").images).abs()
    assert float(diff.mean()) < 0.005 and float(diff.max()) < 0.1  # JPEG re-encoding noise only
    assert torch.allclose(ours.train.cameras.fx[test_idx], beer2.split("test").cameras.fx)


def test_points_bounds_and_projection(beer2):
    assert beer2.points.shape == (4414, 3) and beer2.point_colors.shape == (4414, 3)
    assert 0 <= float(beer2.point_colors.min()) and float(beer2.point_colors.max()) <= 1
    # The sparse points are seen by the cameras: most project inside each image in front.
    cams = beer2.train.cameras
    uv, z = cams.project(beer2.points)
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < 360) & (uv[..., 1] >= 0) & (uv[..., 1] < 640)
    assert float(inside.float().mean(1).min()) > 0.2
    lo, hi = beer2.scene_box
    frac_in = ((beer2.points >= lo) & (beer2.points <= hi)).all(1).float().mean()
    assert float(frac_in) > 0.98
    assert 0 < beer2.near < beer2.far


def test_text_model_matches_binary(beer, tmp_path):
    root = link_tree(beer, tmp_path / "beer", skip={"sparse", "images"})
    write_model_text(read_model(beer / "sparse" / "0"), root / "sparse" / "0")
    assert sorted(p.name for p in (root / "sparse" / "0").iterdir()) == ["cameras.txt", "images.txt", "points3D.txt"]
    a = load_dataset(beer, downscale=2)
    b = load_dataset(root, downscale=2)
    assert b.format == "colmap"
    for name in ("train", "test"):
        ca, cb = a.split(name).cameras, b.split(name).cameras
        for f in ("fx", "fy", "cx", "cy", "c2w", "dist"):
            assert torch.allclose(getattr(ca, f), getattr(cb, f), atol=1e-6), f
        assert torch.equal(a.split(name).images, b.split(name).images)
    assert torch.allclose(a.points, b.points) and torch.allclose(a.point_colors, b.point_colors)


def _broken(beer, tmp_path):
    return link_tree(beer, tmp_path / "beer", skip={"images", "poses_bounds.npy"})


def test_truncated_binary(beer, tmp_path):
    root = _broken(beer, tmp_path)
    p = replace_with_copy(root / "sparse" / "0" / "images.bin")
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"sparse/0/images\.bin: truncated binary file"):
        load_dataset(root, downscale=2)


def test_unknown_and_unsupported_camera_models(beer, tmp_path):
    root = _broken(beer, tmp_path)
    p = replace_with_copy(root / "sparse" / "0" / "cameras.bin")
    data = bytearray(p.read_bytes())
    assert struct.unpack_from("<i", data, 12)[0] == 2  # camera 0 is SIMPLE_RADIAL
    struct.pack_into("<i", data, 12, 5)  # OPENCV_FISHEYE has 8 params: re-size the record
    data[36:36] = b"\x00" * 32
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cameras\.bin: camera 1 uses camera model OPENCV_FISHEYE, which is not "
                       r"supported \(supported: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV\)"):
        load_dataset(root, downscale=2)
    struct.pack_into("<i", data, 12, 99)
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cameras\.bin: camera 1: unknown camera model id 99"):
        load_dataset(root, downscale=2)


def test_text_model_errors(beer, tmp_path):
    root = link_tree(beer, tmp_path / "beer", skip={"sparse", "images", "poses_bounds.npy"})
    write_model_text(read_model(beer / "sparse" / "0"), root / "sparse" / "0")
    cam = root / "sparse" / "0" / "cameras.txt"
    lines = cam.read_text().splitlines()
    lines[1] = lines[1].replace("SIMPLE_RADIAL", "FANCY_LENS")
    cam.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"cameras\.txt: line 2: unknown camera model 'FANCY_LENS'"):
        load_dataset(root, downscale=2)
    lines[1] = "1 PINHOLE 720 1280 1000 1000 360"
    cam.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"cameras\.txt: line 2: camera model PINHOLE needs 4 params, got 3"):
        load_dataset(root, downscale=2)


def test_missing_and_wrong_size_images(beer, tmp_path):
    root = _broken(beer, tmp_path)
    (root / "images_2" / "0010.jpg").unlink()
    with pytest.raises(DataError, match=r"images_2/0010\.jpg: image file is missing"):
        load_dataset(root, downscale=2)
    # images_2 read as if it were full resolution: every image disagrees with its camera
    (root / "images_2" / "0010.jpg").symlink_to(beer / "images_2" / "0010.jpg")
    with pytest.raises(DataError, match=r"images_2/\d{4}\.jpg: image is 360x640 pixels but its camera says 720x1280"):
        load_dataset(root, images_dir="images_2")
    with pytest.raises(DataError, match=r"images: image folder is missing"):
        load_dataset(root)
