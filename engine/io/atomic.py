"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

Readers never see a half-written file and an interrupted write leaves the old file intact.
The file gets the permissions a plain ``open(path, "w")`` would give it: ``0o666 & ~umask``
(``mkstemp`` alone creates 0600 files, which made every export, eval.json, config.toml,
checkpoint and video private to its owner whatever the umask).

>>> from engine.io.atomic import atomic_write
>>> with atomic_write("out.json", "w") as f:   # doctest: +SKIP
...     f.write("{}")
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``);
    elsewhere by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
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
