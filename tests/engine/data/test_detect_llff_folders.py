"""Issue 18: a folder with a complete LLFF poses_bounds.npy, only images_N/ and an incomplete COLMAP
model loads as LLFF (with a warning saying why), from the images_N/ matching the pose count, with
intrinsics scaled by N."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.data import load_dataset
from engine.data.detect import detect_format, detect_format_reason
from engine.errors import DataError
from tests.conftest import require

H, W, F = 48, 64, 50.0


def _llff(root, n=3, folders=(("images_4", 3),), colmap_cameras_only=True):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pose = np.zeros((3, 5))
        pose[:, 0], pose[:, 1], pose[:, 2] = [0, 1, 0], [1, 0, 0], [0, 0, -1]   # down, right, backward
        pose[:, 3] = [0.1 * i, 0, 0]
        pose[:, 4] = [H, W, F]
        rows.append(np.concatenate([pose.ravel(), [1.0, 10.0]]))
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for name, count in folders:
        f = int(name.split("_")[1]) if "_" in name else 1
        (root / name).mkdir()
        for i in range(count):
            Image.new("RGB", (W // f, H // f), (10 * i, 0, 0)).save(root / name / f"{i:03d}.png")
    if colmap_cameras_only:
        (root / "sparse" / "0").mkdir(parents=True)
        (root / "sparse" / "0" / "cameras.txt").write_text(f"1 PINHOLE {W} {H} {F} {F} {W / 2} {H / 2}\n")
    return root


def test_incomplete_colmap_falls_back_to_llff(tmp_path, caplog):
    root = _llff(tmp_path / "scene")
    fmt, why = detect_format_reason(root)
    assert fmt == "llff" and "COLMAP model is incomplete (no sparse/0/images.txt)" in why
    with caplog.at_level("WARNING", logger="kernelight.data"):
        ds = load_dataset(root, holdout=0)
    assert re.search(r"loading as llff from poses_bounds.npy, because the COLMAP model is incomplete "
                     r"\(no sparse/0/images.txt\)", caplog.text)
    assert ds.format == "llff" and ds.metadata["image_folder"].endswith("images_4")
    cams = ds.splits["train"].cameras
    assert int(cams.width[0]) == W // 4 and int(cams.height[0]) == H // 4
    np.testing.assert_allclose(cams.fx.double().numpy(), F / 4)
    np.testing.assert_allclose(cams.cx.double().numpy(), W / 8)


def test_images_n_chosen_by_pose_count(tmp_path, caplog):
    root = _llff(tmp_path / "s", folders=(("images_2", 2), ("images_8", 3)), colmap_cameras_only=False)
    assert detect_format(root) == "llff"
    with caplog.at_level("WARNING", logger="kernelight.data"):
        ds = load_dataset(root, holdout=0)
    assert "images_8/: the folder with 3 images, the poses_bounds.npy pose count; there is no images/ folder" \
        in caplog.text
    assert ds.metadata["image_folder"].endswith("images_8")
    np.testing.assert_allclose(ds.splits["train"].cameras.fx.double().numpy(), F / 8)
    # downscale=2 asks for images_2, which has the wrong count: a clear error listing the folders
    root2 = _llff(tmp_path / "s2", folders=(("images_2", 2),), colmap_cameras_only=False)
    with pytest.raises(DataError, match=r"no image folder holds 3 images \(the poses_bounds.npy pose count\): "
                                        r"images_2/ has 2"):
        load_dataset(root2, downscale=2)


def test_images_and_downscale_still_work(tmp_path):
    root = _llff(tmp_path / "s", folders=(("images", 3), ("images_2", 3)), colmap_cameras_only=False)
    ds = load_dataset(root, holdout=0)
    assert ds.metadata["image_folder"].endswith("images") and int(ds.splits["train"].cameras.width[0]) == W
    ds2 = load_dataset(root, holdout=0, downscale=2)
    assert ds2.metadata["image_folder"].endswith("images_2") and int(ds2.splits["train"].cameras.width[0]) == W // 2
    ds4 = load_dataset(root, holdout=0, downscale=4)   # images_2 is not images_4: images/ box-filtered by 4
    assert int(ds4.splits["train"].cameras.width[0]) == W // 4


def test_complete_colmap_still_wins(tmp_path):
    root = _llff(tmp_path / "s", folders=(("images", 3),))
    (root / "sparse" / "0" / "images.txt").write_text("")
    assert detect_format_reason(root)[0] == "colmap"


def test_incomplete_colmap_alone_names_the_missing_file(tmp_path):
    root = _llff(tmp_path / "s", folders=(("images", 3),))
    (root / "poses_bounds.npy").unlink()
    with pytest.raises(DataError, match=r"sparse/0/images.txt: file is missing from the COLMAP model"):
        load_dataset(root)


def test_real_beer_only_images_2(tmp_path, shared_data, caplog):
    beer = require(shared_data / "real" / "beer")
    root = tmp_path / "beer"
    root.mkdir()
    shutil.copy(beer / "poses_bounds.npy", root / "poses_bounds.npy")
    (root / "images_2").symlink_to(beer / "images_2")
    (root / "sparse" / "0").mkdir(parents=True)
    shutil.copy(beer / "sparse" / "0" / "cameras.bin", root / "sparse" / "0" / "cameras.bin")
    with caplog.at_level("WARNING", logger="kernelight.data"):
        fmt = detect_format(root)
        assert fmt == "llff" and "COLMAP model is incomplete" in caplog.text
        full = np.load(beer / "poses_bounds.npy")
        ds = load_dataset(root, holdout=0)
    assert "images_2/: the folder with 71 images" in caplog.text
    cams = ds.splits["train"].cameras
    assert (int(cams.width[0]), int(cams.height[0])) == (360, 640)
    np.testing.assert_allclose(float(cams.fx[0]), full[0, 14] / 2, rtol=1e-5)
