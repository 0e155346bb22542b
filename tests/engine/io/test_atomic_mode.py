"""Issue 18: files written atomically get 0666 & ~umask, like a plain open(), not mkstemp's 0600."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from engine.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, current_umask


@pytest.fixture
def umask():
    def set_(mask):
        os.umask(mask)
    old = os.umask(0o022)
    os.umask(old)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o000])
def test_atomic_files_follow_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    want = 0o666 & ~mask
    a = atomic_write_text(tmp_path / "config.toml", "x = 1\n")
    b = atomic_write_bytes(tmp_path / "eval.json", b"{}")
    with atomic_path(tmp_path / "c.npy") as tmp:
        np.save(tmp, np.zeros(3))
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for p in (a, b, tmp_path / "c.npy", plain):
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_writers_of_outputs_follow_umask(tmp_path, umask):
    """Exported PLY, checkpoints and images go through atomic_path too."""
    import torch

    from engine.io.checkpoint import save_checkpoint
    from engine.io.images import write_image
    from engine.io.ply import write_gaussian_ply

    umask(0o027)
    n = 3
    ply = write_gaussian_ply(tmp_path / "point_cloud.ply", np.zeros((n, 3)), np.zeros((n, 3)),
                             np.tile([1.0, 0, 0, 0], (n, 1)), np.zeros(n), np.zeros((n, 1, 3)))
    ck = save_checkpoint(tmp_path / "checkpoints" / "step-000001.pt", {"model": {"w": torch.zeros(2)}},
                         method="raygauss", step=1)
    img = write_image(tmp_path / "r.png", np.zeros((4, 4, 3), np.float32))
    for p in (ply, ck, img):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640, (p, oct(os.stat(p).st_mode))
