"""Issue 18: no unsafe or useless advice for bad .npy / image / transforms inputs; one line naming the file."""
from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import DataError
from engine.io.images import read_image
from engine.io.npy import load_npy, load_npz
from tests.conftest import REPO

BANNED = ("allow_pickle", "opencv", "pip install", "imageio[", "weights_only", "Traceback")


def _huge_npy(path):
    np.save(path, np.zeros((3, 4)))
    raw = path.read_bytes()
    end = raw.index(b"\n") + 1
    hdr = raw[:end].decode("latin1").replace("(3, 4)", "(1000000000000, 4)")
    hdr = hdr[:-1].rstrip(" ")
    hdr = hdr + " " * (end - 1 - len(hdr)) + "\n" if len(hdr) < end - 1 else hdr + "\n"
    path.write_bytes(hdr.encode("latin1") + raw[end:])
    return path


def _bad_inputs(tmp_path):
    t = tmp_path / "text.npy"
    t.write_text("hello, I am text\n")
    pk = tmp_path / "pickled.npy"
    np.save(pk, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    png = tmp_path / "notimage.png"
    png.write_text("not an image at all\n")
    jpg = tmp_path / "random.jpg"
    jpg.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return [(t, "not a .npy file (no NumPy magic"), (pk, "holds Python objects (pickled data)"),
            (_huge_npy(tmp_path / "huge.npy"), "truncated .npy or corrupt header: shape (1000000000000, 4)"),
            (png, "not a readable image (looks like text"), (jpg, "not a readable image (unknown format or corrupt")]


def test_load_npy_and_read_image_messages(tmp_path):
    for p, msg in _bad_inputs(tmp_path):
        with pytest.raises(DataError, match=re.escape(msg)) as ei:
            read_image(p)
        s = str(ei.value)
        assert s.startswith(str(p)) and "\n" not in s and not any(b in s for b in BANNED), s


def test_load_npy_roundtrip_and_fortran(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy"), a)
    np.testing.assert_array_equal(load_npy(tmp_path / "f.npy"), a)
    np.savez(tmp_path / "z.npz", a=a, b=np.eye(2))
    z = load_npz(tmp_path / "z.npz")
    np.testing.assert_array_equal(z["a"], a)
    with pytest.raises(DataError, match="z_bad.npz: not a readable .npz archive"):
        (tmp_path / "z_bad.npz").write_bytes((tmp_path / "z.npz").read_bytes()[:100])
        load_npz(tmp_path / "z_bad.npz")


def test_cli_sh_project_bad_inputs(tmp_path, capsys):
    from engine.cli import main

    for p, msg in _bad_inputs(tmp_path):
        assert main(["sh", "project", str(p), "--degree", "2", "--out", str(tmp_path / "out")]) == 2, p
        out = capsys.readouterr()
        assert msg in out.err and str(p.name) in out.err, out.err
        assert not any(b in out.err + out.out for b in BANNED), out.err


def test_cli_sh_project_subprocess(tmp_path):
    p = tmp_path / "text.npy"
    p.write_text("hello\n")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "sh", "project", str(p), "--degree", "2",
                        "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "not a .npy file" in r.stderr
    assert not any(b in r.stderr + r.stdout for b in BANNED), r.stderr


def test_nan_transform_matrix_message(tmp_path):
    from engine.data.blender import frame_matrix

    m = np.eye(4).tolist()
    m[1][2] = float("nan")
    with pytest.raises(DataError, match=r"frame 3: 'transform_matrix' has a non-finite value \(nan at row 1, "
                                        r"column 2\)") as ei:
        frame_matrix(tmp_path / "transforms_train.json", {"transform_matrix": m}, 3)
    assert "got shape (4, 4)" not in str(ei.value)
    with pytest.raises(DataError, match=r"must be a 4x4 \(or 3x4\) matrix, got shape \(2, 4\)"):
        frame_matrix(tmp_path / "t.json", {"transform_matrix": m[:2]}, 0)


def test_nan_transform_matrix_dataset(tmp_path):
    """Through the dataset loader too (nerfstudio reader shares frame_matrix)."""
    from PIL import Image

    from engine.data import load_dataset

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    m = np.eye(4).tolist()
    m[0][3] = float("inf")
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"fl_x": 10, "fl_y": 10, "cx": 4, "cy": 3, "w": 8, "h": 6,
         "frames": [{"file_path": "a.png", "transform_matrix": m}]}).replace("Infinity", "1e999"))
    with pytest.raises(DataError, match=r"transforms.json: frame 0: 'transform_matrix' has a non-finite value"):
        load_dataset(tmp_path)
