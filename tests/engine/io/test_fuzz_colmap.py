"""Fuzzed COLMAP parsers (binary and text): mutated files derived from the real "beer" model give a
DataError, never another exception, and never allocate from an absurd count."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given

from engine.data.colmap_io import (CAMERA_MODELS, ColmapModel, read_cameras_binary, read_cameras_text,
                                   read_images_binary, read_images_text, read_model, read_points_binary,
                                   read_points_text, write_model_text)
from tests.conftest import require
from tests.engine.io.fuzz_util import expect_contract, fuzz_settings, mutated_bytes

LIMIT = 64 << 20
_IDS = {name: i for i, (name, _) in CAMERA_MODELS.items()}


def _encode_binary(model: ColmapModel, n_images=4, n_points=40):
    cams = b"".join(struct.pack("<iiQQ", c.id, _IDS[c.model], c.width, c.height)
                    + struct.pack(f"<{len(c.params)}d", *c.params) for c in model.cameras.values())
    cams = struct.pack("<Q", len(model.cameras)) + cams
    ims = list(model.images.values())[:n_images]
    imgs = struct.pack("<Q", len(ims)) + b"".join(
        struct.pack("<i4d3di", im.id, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\x00"
        + struct.pack("<Q", 2) + struct.pack("<ddqddq", 1.5, 2.5, 1, 3.0, 4.0, -1) for im in ims)
    pts = struct.pack("<Q", n_points) + b"".join(
        struct.pack("<Q3d3Bd", k + 1, *model.points[k], *model.colors[k], model.errors[k])
        + struct.pack("<Q", 1) + struct.pack("<ii", ims[0].id, 0) for k in range(n_points))
    return cams, imgs, pts


@pytest.fixture(scope="module")
def seeds(shared_data, tmp_path_factory):
    model = read_model(require(shared_data / "real" / "beer" / "sparse" / "0"))
    cams, imgs, pts = _encode_binary(model)
    small = ColmapModel({k: model.cameras[k] for k in list(model.cameras)[:4]},
                        {k: model.images[k] for k in list(model.images)[:4]},
                        model.points[:40], model.colors[:40], model.errors[:40], model.folder)
    d = tmp_path_factory.mktemp("colmap_txt")
    write_model_text(small, d)
    # the encoded binary seeds parse back to the real values
    b = tmp_path_factory.mktemp("colmap_bin")
    for name, data in (("cameras.bin", cams), ("images.bin", imgs), ("points3D.bin", pts)):
        (b / name).write_bytes(data)
    m2 = read_model(b)
    assert m2.cameras.keys() == model.cameras.keys() and len(m2.images) == 4 and len(m2.points) == 40
    texts = {n: (d / n).read_bytes() for n in ("cameras.txt", "images.txt", "points3D.txt")}
    return {"cameras.bin": cams, "images.bin": imgs, "points3D.bin": pts, **texts}


READERS = {"cameras.bin": read_cameras_binary, "images.bin": read_images_binary, "points3D.bin": read_points_binary,
           "cameras.txt": read_cameras_text, "images.txt": read_images_text, "points3D.txt": read_points_text}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(READERS))
def test_fuzz_colmap_file(seeds, tmp_path, name):
    p = tmp_path / name
    reader = READERS[name]

    @fuzz_settings(80)
    @given(mutated_bytes(seeds[name], hot=64 if name.endswith(".bin") else None))
    def run(data):
        p.write_bytes(data)
        out = expect_contract(lambda: reader(p), max_bytes=LIMIT)
        if isinstance(out, tuple):
            xyz, rgb, err = out
            assert xyz.shape[1] == 3 and rgb.shape == xyz.shape and err.shape == (len(xyz),)

    run()


@pytest.mark.timeout(120)
def test_fuzz_colmap_model_folder(seeds, tmp_path):
    """A whole model folder with one mutated file (image/camera cross-references checked)."""
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (tmp_path / name).write_bytes(seeds[name])

    @fuzz_settings(60)
    @given(mutated_bytes(seeds["images.bin"], hot=64), mutated_bytes(seeds["cameras.bin"], hot=64))
    def run(images, cameras):
        (tmp_path / "images.bin").write_bytes(images)
        (tmp_path / "cameras.bin").write_bytes(cameras)
        expect_contract(lambda: read_model(tmp_path), max_bytes=LIMIT)

    run()
