"""Checkpoints: atomic ``torch.save``, safe ``torch.load(weights_only=True)``, method/version checks.

A checkpoint is a dict of tensors and plain Python values::

    {"format": "kernelight-checkpoint", "format_version": 1, "method": "raygauss",
     "kernelight_version": "0.1.0", "step": 1200, "model": {...}, "optimizer": {...}, ...}

Files from elsewhere never run code: loading uses ``weights_only=True``, and only after the file
was seen to be a complete PyTorch zip archive (a kernelight checkpoint is always one). Every load
failure becomes one :class:`~engine.errors.CheckpointError` line naming the file and what is
wrong (empty, truncated, not a PyTorch zip archive, corrupt, holds Python objects). torch's own
text is never passed on: it suggests ``weights_only=False``, which must never be done for a file
of unknown origin.

:func:`load_latest_valid` is what ``--resume`` uses: it tries the checkpoints newest first and
falls back past truncated or corrupt ones (a logged warning names each skipped file).
"""
from __future__ import annotations

import pickle
import re
import logging
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError
from .atomic import atomic_path

FORMAT = "kernelight-checkpoint"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"step-(\d+)\.pt$")
_log = logging.getLogger("kernelight.checkpoint")


def save_checkpoint(path, payload: dict, *, method: str, step: int) -> Path:
    from .. import __version__

    data = dict(payload)
    data.update(format=FORMAT, format_version=FORMAT_VERSION, method=method,
                kernelight_version=__version__, step=int(step))
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def _open_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a complete PyTorch zip checkpoint (None if it looks complete)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if size == 0:
        return "empty file (0 bytes): the checkpoint is truncated or was never written"
    if magic != b"PK\x03\x04":
        return "not a kernelight checkpoint (not a PyTorch zip archive)"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return f"truncated or corrupt checkpoint: the zip archive is incomplete ({size} bytes)"
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "not a kernelight checkpoint (a zip archive without PyTorch data)"
    return None


def load_checkpoint(path, *, method: str | None = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint; errors name the file and what is wrong (one line)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    problem = _open_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not loaded: it holds Python objects other than tensors and plain values "
                              "(kernelight checkpoints never do; loading such a file could run code)") from None
    except Exception as exc:  # CRC errors, damaged records, bad storages: torch's text is not passed on
        raise CheckpointError(f"{path}: corrupt checkpoint (damaged PyTorch archive, {type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kernelight checkpoint (a PyTorch file without the "
                              f"'format': '{FORMAT}' entry)")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {data.get('format_version')!r} is not "
                              f"supported by this kernelight (expects {FORMAT_VERSION})")
    if method is not None and data.get("method") != method:
        raise CheckpointError(f"{path}: checkpoint is from method {data.get('method')!r}, not {method!r}")
    return data


def load_latest_valid(folder, *, method: str | None = None, map_location="cpu") -> tuple[Path, dict]:
    """The newest ``step-NNNNNN.pt`` in ``folder`` that loads: ``(path, data)``.

    Checkpoints are tried newest first; one that fails (truncated by a crash, corrupt, not a
    checkpoint) is skipped with a warning on the ``kernelight.checkpoint`` logger naming it and why
    (printed as a plain line on stderr when nothing configured logging). A checkpoint of another
    method is not skipped: that is a wrong run folder, not damage, and raises at once. Raises
    :class:`CheckpointError` when the folder has none or none loads.
    """
    folder = Path(folder)
    cks = list_checkpoints(folder)
    if not cks:
        raise CheckpointError(f"{folder}: no checkpoint (step-NNNNNN.pt) to resume from")
    skipped = []
    for p in reversed(cks):
        try:
            data = load_checkpoint(p, map_location=map_location)
        except CheckpointError as exc:
            skipped.append(p.name)
            _log.warning("skipping unusable checkpoint %s", exc)
            continue
        if method is not None and data.get("method") != method:
            raise CheckpointError(f"{p}: checkpoint is from method {data.get('method')!r}, not {method!r}")
        if skipped:
            _log.warning("%s: resuming from %s, the newest checkpoint that loads (skipped %s)", folder, p.name,
                         ", ".join(skipped))
        return p, data
    raise CheckpointError(f"{folder}: none of the {len(cks)} checkpoints loads (newest: {cks[-1].name}); "
                          "see the warnings above (logger kernelight.checkpoint)")


def latest_valid_checkpoint(folder, *, method: str | None = None) -> Path | None:
    """Like :func:`latest_checkpoint`, but the newest checkpoint that *loads* (see
    :func:`load_latest_valid`: damaged newer ones are skipped with a logged warning); None when
    the folder has no checkpoint; CheckpointError when none loads. (The chosen file is loaded
    once here to check it; callers load it again.)"""
    if not list_checkpoints(folder):
        return None
    return load_latest_valid(folder, method=method)[0]


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
