"""NeRF-synthetic / Blender reader on lego and mic, and its errors on broken copies."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.detect import load_dataset
from engine.errors import DataError
from tests.conftest import require

from .conftest import small_blender_copy


@pytest.fixture(scope="module")
def lego(lego_100):
    return load_dataset(lego_100)


def test_lego_splits_images_and_intrinsics(lego, lego_100):
    assert lego.format == "blender"
    assert {k: len(v) for k, v in lego.splits.items()} == {"train": 100, "val": 100, "test": 200}
    tr = lego.train
    assert tr.images.shape == (100, 100, 100, 3) and tr.images.dtype == torch.float32
    assert tr.alpha.shape == (100, 100, 100) and tr.masks is None
    assert float(tr.images.min()) >= 0 and float(tr.images.max()) <= 1
    angle = json.loads((lego_100 / "transforms_train.json").read_text())["camera_angle_x"]
    assert float(tr.cameras.fx[0]) == pytest.approx(50 / math.tan(angle / 2), rel=1e-6)  # 138.89
    assert float(tr.cameras.cx[0]) == 50.0 and tr.cameras.width.tolist() == [100] * 100
    assert tr.image_paths[0].name == "r_0.png"
    assert lego.scene_box.tolist() == [[-1.5] * 3, [1.5] * 3]
    assert torch.equal(lego.background, torch.ones(3))


def test_lego_rgba_composited_on_white(lego, lego_100):
    raw = np.asarray(Image.open(lego_100 / "train" / "r_0.png")).astype(np.float64) / 255
    a = raw[..., 3:]
    expect = raw[..., :3] * a + (1 - a)
    assert np.abs(lego.train.images[0].numpy() - expect).max() < 1e-6
    assert np.abs(lego.train.alpha[0].numpy() - a[..., 0]).max() < 1e-6
    empty = lego.train.alpha[0] == 0
    assert empty.any() and bool((lego.train.images[0][empty] == 1).all())


def test_lego_cameras_look_at_the_object(lego):
    # The Blender cameras all track the origin: it projects onto the image centre, in front.
    cams = lego.all_cameras()
    uv, z = cams.project(torch.zeros(1, 3))
    assert (z > 3.5).all() and (z < 4.5).all()
    assert (uv - 50).abs().max() < 0.01
    # The pixel at the image centre is covered by the model in most views.
    assert float((lego.train.alpha[:, 50, 50] > 0.5).float().mean()) > 0.6


def test_black_background_and_downscale(lego_100, shared_data):
    ds = load_dataset(lego_100, downscale=2, background="black")
    tr = ds.train
    assert tr.images.shape == (100, 50, 50, 3) and float(tr.cameras.fx[0]) == pytest.approx(69.4444, rel=1e-5)
    assert bool((tr.images[tr.alpha == 0] == 0).all())
    # lego_200 downscaled by 4 and lego_100 downscaled by 2 are both 8x box filters of the same
    # 800x800 renders (premultiplied): they agree up to uint8 rounding.
    lego200 = require(shared_data / "nerf_synthetic" / "lego_200" / "transforms_train.json").parent
    other = load_dataset(lego200, downscale=4, background="black")
    diff = (other.train.images - tr.images).abs()
    assert float(diff.mean()) < 2e-3 and float(diff.max()) < 8 / 255
    assert torch.allclose(other.train.cameras.fx, tr.cameras.fx)


def test_lego_400_has_no_val_split(shared_data):
    root = require(shared_data / "nerf_synthetic" / "lego_400" / "transforms_train.json").parent
    ds = load_dataset(root, downscale=8)
    assert set(ds.splits) == {"train", "test"} and ds.train.images.shape == (100, 50, 50, 3)
    with pytest.raises(DataError, match="no split 'val'"):
        ds.split("val")


def test_mic_points(shared_data):
    root = require(shared_data / "nerf_synthetic" / "mic_100" / "points3d.ply").parent
    ds = load_dataset(root)
    assert ds.points.shape == (100_000, 3)
    assert float(ds.points.abs().max()) <= 1.3 + 1e-5 and float(ds.points.abs().max()) > 1.2
    assert ds.summary()["points"] == 100_000


# ---- broken copies -------------------------------------------------------------------------
def test_missing_image(lego_100, tmp_path):
    root = small_blender_copy(lego_100, tmp_path / "d")
    (root / "train" / "r_1.png").unlink()
    with pytest.raises(DataError, match=r"r_1\.png: image file is missing"):
        load_dataset(root)


def test_image_size_disagrees(lego_100, tmp_path):
    root = small_blender_copy(lego_100, tmp_path / "d")
    p = root / "train" / "r_2.png"
    im = Image.open(p.resolve()).resize((80, 100))
    p.unlink()
    im.save(p)
    with pytest.raises(DataError, match=r"r_2\.png: image is 80x100 pixels but its camera says 100x100"):
        load_dataset(root)


def test_malformed_json(lego_100, tmp_path):
    root = small_blender_copy(lego_100, tmp_path / "d")
    text = (root / "transforms_train.json").read_text()
    (root / "transforms_train.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"transforms_train\.json: malformed JSON at line 1"):
        load_dataset(root)


def test_empty_split_and_bad_matrix(lego_100, tmp_path):
    root = small_blender_copy(lego_100, tmp_path / "d")
    meta = json.loads((root / "transforms_train.json").read_text())
    (root / "transforms_val.json").write_text(json.dumps({**meta, "frames": []}))
    with pytest.raises(DataError, match=r"transforms_val\.json: split 'val' is empty"):
        load_dataset(root)
    (root / "transforms_val.json").unlink()
    meta["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 1: 'transform_matrix' must be a 4x4 \(or 3x4\) matrix, got shape"):
        load_dataset(root)


def test_corrupt_image(lego_100, tmp_path):
    root = small_blender_copy(lego_100, tmp_path / "d")
    p = root / "train" / "r_0.png"
    p.unlink()
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"r_0\.png: cannot read image"):
        load_dataset(root)
