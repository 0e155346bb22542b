"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

Readers never see a half-written file and an interrupted write leaves the old file intact.

>>> from engine.io.atomic import atomic_write
>>> with atomic_write("out.json", "w") as f:   # doctest: +SKIP
...     f.write("{}")
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use this for writers that want a file name (imageio, torch.save, trimesh.export). The temp
    name keeps the destination's suffix (or ``suffix``) so format detection by extension works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else "".join(path.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """Open a temporary file for writing; on success it atomically replaces ``path``."""
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_write supports write modes only, got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)
