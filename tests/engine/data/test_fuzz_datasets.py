"""Fuzzed dataset readers: transforms.json (blender and nerfstudio/instant-ngp), NeuS
cameras_sphere.npz and LLFF poses_bounds.npy, seeded from the real files of the shared data and
mutated at the byte level and structurally (values replaced by random JSON / arrays, keys deleted,
NaN, zeros, huge numbers). Every load returns a dataset or raises a KernelightError."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.data import load_dataset
from tests.conftest import require
from tests.engine.io.fuzz_util import dumps_any, expect_contract, fuzz_settings, mutated_bytes, mutated_doc

S = 8   # tiny images: the readers' parsing is fuzzed, not the image decoding


def _check(ds):
    if ds is None:
        return
    for split in ds.splits.values():
        c = split.cameras
        assert torch.isfinite(c.c2w).all() and torch.isfinite(c.fx).all() and (c.width > 0).all()


@pytest.fixture(scope="module")
def blender_seed(shared_data, tmp_path_factory):
    src = json.loads(require(shared_data / "nerf_synthetic" / "lego_100" / "transforms_train.json").read_text())
    src["frames"] = src["frames"][:3]
    root = tmp_path_factory.mktemp("blender")
    (root / "train").mkdir()
    for i in range(3):
        Image.new("RGBA", (S, S), (i * 40, 0, 0, 255)).save(root / "train" / f"r_{i}.png")
    return root, src


@pytest.fixture(scope="module")
def ngp_seed(shared_data, tmp_path_factory):
    src = json.loads(require(shared_data / "real" / "fox_quarter" / "transforms.json").read_text())
    src["frames"] = src["frames"][:3]
    k = S / src["w"]
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        src[key] = src[key] * k if key not in ("w", "h") else S
    root = tmp_path_factory.mktemp("ngp")
    (root / "images").mkdir()
    for fr in src["frames"]:
        Image.new("RGB", (S, S)).save(root / fr["file_path"])
    return root, src


@pytest.mark.timeout(180)
def test_fuzz_blender_transforms(blender_seed):
    root, src = blender_seed
    path = root / "transforms_train.json"
    text = json.dumps(src, indent=1).encode()

    @fuzz_settings(100)
    @given(st.one_of(mutated_doc(src).map(lambda d: dumps_any(d).encode()), mutated_bytes(text)))
    def run(data):
        path.write_bytes(data)
        _check(expect_contract(lambda: load_dataset(root, format="blender")))

    run()


@pytest.mark.timeout(180)
def test_fuzz_nerfstudio_transforms(ngp_seed):
    root, src = ngp_seed
    path = root / "transforms.json"
    text = json.dumps(src, indent=1).encode()

    @fuzz_settings(100)
    @given(st.one_of(mutated_doc(src).map(lambda d: dumps_any(d).encode()), mutated_bytes(text)))
    def run(data):
        path.write_bytes(data)
        _check(expect_contract(lambda: load_dataset(root, format="nerfstudio", holdout=0)))

    run()


arrays = st.one_of(
    st.sampled_from(["nan", "inf", "zeros", "huge", "shape", "drop", "neg", "int", "scalar", "str"]),
)


def _mutate_array(kind, a, rng):
    if kind == "nan":
        a = a.astype(np.float64).copy()
        a.flat[rng.integers(a.size)] = np.nan
    elif kind == "inf":
        a = a.astype(np.float64).copy()
        a.flat[rng.integers(a.size)] = np.inf
    elif kind == "zeros":
        a = np.zeros_like(a)
    elif kind == "huge":
        a = a * 1e300
    elif kind == "shape":
        a = a.reshape(-1)[: rng.integers(0, a.size + 1)]
    elif kind == "neg":
        a = -a
    elif kind == "int":
        a = a.astype(np.int64)
    elif kind == "scalar":
        a = np.float64(3.0)
    elif kind == "str":
        a = np.array(["x"] * 3)
    return a


@pytest.fixture(scope="module")
def dtu_seed(shared_data, tmp_path_factory):
    npz = dict(np.load(require(shared_data / "dtu" / "scan24_400" / "cameras_sphere.npz")))
    keep = {k: v for k, v in npz.items() if k.rsplit("_", 1)[-1] in ("0", "1")}
    root = tmp_path_factory.mktemp("dtu")
    (root / "image").mkdir()
    for i in range(2):
        Image.new("RGB", (S, S)).save(root / "image" / f"{i:06d}.png")
    # scale the cameras to the tiny images (pixel = 400 -> 8): K' = diag(S/400, S/300) K
    for k in list(keep):
        if k.startswith("world_mat_") and not k.startswith("world_mat_inv"):
            keep[k] = np.diag([S / 400, S / 300, 1, 1]) @ keep[k]
    buf = io.BytesIO()
    np.savez(buf, **keep)
    return root, keep, buf.getvalue()


@pytest.mark.timeout(180)
def test_fuzz_neus_cameras_sphere(dtu_seed):
    root, arrs, raw = dtu_seed
    path = root / "cameras_sphere.npz"
    path.write_bytes(raw)
    assert len(load_dataset(root, holdout=0).splits["train"].cameras) == 2   # the seed itself loads

    @fuzz_settings(100)
    @given(st.booleans(), mutated_bytes(raw, hot=200), st.sampled_from(sorted(arrs)), arrays, st.integers(0, 2**32))
    def run(structural, data, key, kind, seed):
        if structural:
            a = dict(arrs)
            if kind == "drop":
                del a[key]
            else:
                a[key] = _mutate_array(kind, a[key], np.random.default_rng(seed))
            buf = io.BytesIO()
            np.savez(buf, **a)
            data = buf.getvalue()
        path.write_bytes(data)
        _check(expect_contract(lambda: load_dataset(root, format="dtu", holdout=0), max_bytes=64 << 20))

    run()


@pytest.fixture(scope="module")
def llff_seed(shared_data, tmp_path_factory):
    pb = np.load(require(shared_data / "real" / "beer" / "poses_bounds.npy"))[:3].copy()
    pb[:, 4], pb[:, 9], pb[:, 14] = S, S, pb[:, 14] * S / 1280   # h, w, f for 8x8 images
    root = tmp_path_factory.mktemp("llff")
    (root / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (S, S)).save(root / "images" / f"{i:03d}.png")
    buf = io.BytesIO()
    np.save(buf, pb)
    return root, pb, buf.getvalue()


@pytest.mark.timeout(180)
def test_fuzz_llff_poses_bounds(llff_seed):
    root, pb, raw = llff_seed
    path = root / "poses_bounds.npy"
    path.write_bytes(raw)
    assert len(load_dataset(root, holdout=0).splits["train"].cameras) == 3

    @fuzz_settings(100)
    @given(st.booleans(), mutated_bytes(raw, hot=128), arrays, st.integers(0, 2**32))
    def run(structural, data, kind, seed):
        if structural:
            buf = io.BytesIO()
            np.save(buf, _mutate_array(kind, pb, np.random.default_rng(seed)) if kind != "drop" else pb[:0])
            data = buf.getvalue()
        path.write_bytes(data)
        _check(expect_contract(lambda: load_dataset(root, format="llff", holdout=0), max_bytes=64 << 20))

    run()
