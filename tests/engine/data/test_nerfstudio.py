"""nerfstudio / instant-ngp reader on the fox, and its errors on broken copies."""
from __future__ import annotations

import json

import pytest
import torch

from engine.cameras import distort, undistort
from engine.data.detect import load_dataset
from engine.errors import DataError

from .conftest import link_tree, replace_with_copy


@pytest.fixture(scope="module")
def fox_ds(fox):
    return load_dataset(fox)


def test_fox_intrinsics_distortion_and_splits(fox_ds, fox):
    meta = json.loads((fox / "transforms.json").read_text())
    assert fox_ds.format == "nerfstudio" and fox_ds.camera_model == "OPENCV"
    assert {k: len(v) for k, v in fox_ds.splits.items()} == {"train": 58, "test": 9}  # every 8th of 67
    assert [p.name for p in fox_ds.split("test").image_paths][:3] == ["0001.jpg", "0009.jpg", "0022.jpg"]  # sorted names
    cams = fox_ds.train.cameras
    assert fox_ds.train.images.shape == (58, 480, 270, 3)
    assert float(cams.fx[0]) == pytest.approx(meta["fl_x"]) and float(cams.fy[0]) == pytest.approx(meta["fl_y"])
    assert float(cams.cx[0]) == pytest.approx(meta["cx"]) and float(cams.cy[0]) == pytest.approx(meta["cy"])
    expect = torch.tensor([meta["k1"], meta["k2"], meta["p1"], meta["p2"], 0.0])
    assert torch.allclose(cams.dist[0], expect)
    # the distortion of the corner pixel is a few pixels, and it is undone exactly
    x = torch.tensor([-meta["cx"] / meta["fl_x"]], dtype=torch.float64)
    y = torch.tensor([-meta["cy"] / meta["fl_y"]], dtype=torch.float64)
    xd, yd = distort(x, y, expect.double())
    assert 1.0 < float((xd - x).abs() * meta["fl_x"] + (yd - y).abs() * meta["fl_y"]) < 40
    xu, yu = undistort(xd, yd, expect.double())
    assert torch.allclose(xu, x, atol=1e-12) and torch.allclose(yu, y, atol=1e-12)


def test_fox_scene_box_matches_aabb_and_cameras(fox_ds):
    half = 4 / (2 * 0.33)
    assert torch.allclose(fox_ds.scene_box, torch.tensor([[-half] * 3, [half] * 3]), atol=1e-5)
    c = fox_ds.all_cameras().centers()
    assert bool(((c > fox_ds.scene_box[0]) & (c < fox_ds.scene_box[1])).all())
    # The cameras look at a common point (least-squares meeting point of the optical axes): it
    # lies in the box and projects into every image with positive depth.
    cams = fox_ds.all_cameras()
    d = cams.c2w[:, :3, 2].double()
    P = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]
    target = torch.linalg.solve(P.sum(0), (P @ c.double()[:, :, None]).sum(0)).squeeze(-1)
    assert bool(((target > fox_ds.scene_box[0]) & (target < fox_ds.scene_box[1])).all())
    uv, z = cams.project(target[None].float())
    assert (z > 0).all()
    assert bool(((uv[..., 0] > 0) & (uv[..., 0] < 270) & (uv[..., 1] > 0) & (uv[..., 1] < 480)).all())


def _copy(fox, tmp_path):
    root = link_tree(fox, tmp_path / "fox")
    replace_with_copy(root / "transforms.json")
    return root, json.loads((root / "transforms.json").read_text())


def test_per_frame_intrinsics_and_sizes_from_images(fox, tmp_path):
    root, meta = _copy(fox, tmp_path)
    meta["frames"][0]["fl_x"] = 200.0
    meta["frames"][0]["k1"] = 0.0
    for k in ("w", "h"):
        del meta[k]
    (root / "transforms.json").write_text(json.dumps(meta))
    ds = load_dataset(root, downscale=2, holdout=0)
    cams = ds.train.cameras
    assert set(ds.splits) == {"train"} and len(cams) == 67
    assert float(cams.fx[0]) == pytest.approx(100.0) and float(cams.fx[1]) == pytest.approx(343.88 / 2)
    assert float(cams.dist[0, 0]) == 0.0 and float(cams.dist[1, 0]) == pytest.approx(0.0578421)
    assert ds.train.images.shape == (67, 240, 135, 3)


def test_errors(fox, tmp_path):
    root, meta = _copy(fox, tmp_path)
    (root / "images" / "0005.jpg").unlink()
    with pytest.raises(DataError, match=r"0005\.jpg: image file is missing"):
        load_dataset(root)
    (root / "images" / "0005.jpg").symlink_to(fox / "images" / "0005.jpg")
    (root / "transforms.json").write_text(json.dumps({**meta, "w": 300}))
    with pytest.raises(DataError, match=r"fox/images/\d{4}\.jpg: image is 270x480 pixels but its camera says 300x480"):
        load_dataset(root)
    (root / "transforms.json").write_text(json.dumps({**meta, "frames": []}))
    with pytest.raises(DataError, match=r"transforms\.json: 'frames' is empty"):
        load_dataset(root)
    (root / "transforms.json").write_text(json.dumps({**meta, "camera_model": "OPENCV_FISHEYE"}))
    with pytest.raises(DataError, match=r"transforms\.json: camera_model 'OPENCV_FISHEYE' is not supported"):
        load_dataset(root)
    (root / "transforms.json").write_text(json.dumps({**meta, "fl_x": "big"}))
    with pytest.raises(DataError, match=r"transforms\.json: 'fl_x' must be a number"):
        load_dataset(root)
    (root / "transforms.json").write_text("{\"frames\": [ ,]}")
    with pytest.raises(DataError, match=r"transforms\.json: malformed JSON"):
        load_dataset(root)
