"""Checkpoints: atomic ``torch.save``, safe ``torch.load(weights_only=True)``, method/version checks.

A checkpoint is a dict of tensors and plain Python values::

    {"format": "kernelight-checkpoint", "format_version": 1, "method": "raygauss",
     "kernelight_version": "0.1.0", "step": 1200, "model": {...}, "optimizer": {...}, ...}

Files from elsewhere never run code: loading uses ``weights_only=True``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .atomic import atomic_path

FORMAT = "kernelight-checkpoint"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"step-(\d+)\.pt$")


def save_checkpoint(path, payload: dict, *, method: str, step: int) -> Path:
    from .. import __version__

    data = dict(payload)
    data.update(format=FORMAT, format_version=FORMAT_VERSION, method=method,
                kernelight_version=__version__, step=int(step))
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load_checkpoint(path, *, method: str | None = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kernelight checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('format_version')} is not "
                              f"supported by this kernelight (expects {FORMAT_VERSION})")
    if method is not None and data.get("method") != method:
        raise CheckpointError(f"{path}: checkpoint is from method {data.get('method')!r}, not {method!r}")
    return data


def list_checkpoints(folder) -> list[Path]:
    """``step-NNNNNN.pt`` files in ``folder`` sorted by step (oldest first)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder) -> Path | None:
    cks = list_checkpoints(folder)
    return cks[-1] if cks else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.pt"
