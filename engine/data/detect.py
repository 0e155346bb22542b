"""Format auto-detection and the one entry point :func:`load_dataset`.

Detection looks at the folder, in this order (the first match wins, so a COLMAP folder that also
has ``poses_bounds.npy`` loads as COLMAP, and a NeuS folder with one loads as DTU):

==============  ==============================================================
``blender``     ``transforms_train.json``
``nerfstudio``  ``transforms.json`` (nerfstudio and instant-ngp)
``dtu``         ``cameras_sphere.npz``
``colmap``      ``sparse/0/cameras.bin|txt``, ``sparse/cameras.*``, ``colmap/sparse/0/cameras.*``
                or ``cameras.bin|txt`` in the folder
``llff``        ``poses_bounds.npy``
==============  ==============================================================

A COLMAP model counts only when it is complete (``cameras`` and ``images``, both ``.bin`` or both
``.txt``): a folder with a complete ``poses_bounds.npy`` and an incomplete ``sparse/0`` (as LLFF
releases and the DTU data ship) loads as LLFF, with a warning on the ``kernelight.data`` logger
(printed as a plain line when nothing configured logging) saying which format was used and why. An incomplete model with nothing else still reports itself as COLMAP, so its
reader names the missing file. :func:`detect_format_reason` returns the sentence; every choice is
logged at INFO level on the same logger.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from ..errors import ConfigError, DataError
from .colmap_io import find_model_folder

FORMATS = ("blender", "nerfstudio", "dtu", "colmap", "llff", "gvgen")
_MODULES = {"blender": "blender", "nerfstudio": "nerfstudio", "instant-ngp": "nerfstudio", "ngp": "nerfstudio",
            "dtu": "dtu", "neus": "dtu", "colmap": "colmap", "llff": "llff", "gvgen": "gvgen"}
LOOKED_FOR = ("transforms_train.json (blender), transforms.json (nerfstudio/instant-ngp), "
              "cameras_sphere.npz (dtu/neus), sparse/0/cameras.bin|txt or cameras.bin|txt (colmap), "
              "poses_bounds.npy (llff)")


_log = logging.getLogger("kernelight.data")


def _colmap_missing(root: Path, folder: Path) -> list[str]:
    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    rel = folder.relative_to(root).as_posix() if folder != root else "."
    return [f"{rel}/{n}{ext}" for n in ("cameras", "images") if not (folder / f"{n}{ext}").is_file()]


def _llff_problem(root: Path) -> str | None:
    """None when ``poses_bounds.npy`` is a readable (N, 17) array; else what is wrong."""
    from ..io.npy import load_npy

    try:
        arr = load_npy(root / "poses_bounds.npy")
    except DataError as exc:
        return exc.problem
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        return f"poses_bounds.npy is not an (N, 17) array (shape {arr.shape})"
    return None


def detect_format_reason(root) -> tuple[str, str]:
    """``(format, why)`` for folder ``root`` (see the module docstring); DataError if none."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder (expected a dataset folder)")
    if (root / "transforms_train.json").is_file():
        return "blender", "transforms_train.json"
    if (root / "dataset.json").is_file():   # a GVGEN training set (kernelight gvgen dataset): engine/data/gvgen.py
        from .gvgen import is_gvgen_set

        if is_gvgen_set(root):
            return "gvgen", "dataset.json (a kernelight-gvgen training set)"
    if (root / "transforms.json").is_file():
        return "nerfstudio", "transforms.json"
    if (root / "cameras_sphere.npz").is_file():
        return "dtu", "cameras_sphere.npz"
    folder = find_model_folder(root)
    has_llff = (root / "poses_bounds.npy").is_file()
    if folder is not None:
        missing = _colmap_missing(root, folder)
        if not missing:
            return "colmap", f"a complete COLMAP model in {folder.relative_to(root).as_posix() if folder != root else '.'}"
        if has_llff and _llff_problem(root) is None:
            return "llff", (f"poses_bounds.npy, because the COLMAP model is incomplete (no {', '.join(missing)})")
        return "colmap", f"a COLMAP model (incomplete: no {', '.join(missing)})"
    if has_llff:
        return "llff", "poses_bounds.npy"
    raise DataError(root, f"cannot detect the dataset format: looked for {LOOKED_FOR}")


def detect_format(root) -> str:
    """Name of the dataset format in folder ``root`` (see the module table); DataError if none.

    When a format was passed over as incomplete, a warning (``kernelight.data`` logger) says which one
    was used and why.
    """
    fmt, why = detect_format_reason(root)
    _log.info("%s: dataset format %s (%s)", root, fmt, why)
    if "because" in why:
        _log.warning("%s: loading as %s from %s", root, fmt, why)
    return fmt


def resolve_data_path(path) -> Path:
    """A dataset folder, or a scene ``.toml`` (the one schema of :func:`engine.config.load_scene`:
    ``[scene] data = ...``, relative to the toml) -> the dataset folder."""
    path = Path(path)
    if path.suffix.lower() != ".toml":
        return path
    from ..config import load_scene

    return load_scene(path).data


def load_dataset(path, downscale: int = 1, background=None, format: str | None = None, holdout: int = 8,
                 image_cache="auto", **options):
    """Load a dataset folder (or a scene .toml) into an :class:`~engine.data.dataset.Dataset`.

    Args:
        path: dataset folder or scene ``.toml`` with a ``data`` key.
        downscale: integer image downscale (box filter; uses ``images_N/`` when a COLMAP/LLFF
            folder has one).
        background: ``'white' | 'black' | 'R,G,B' | (r,g,b)``; default white for blender data,
            black otherwise.
        format: force a format (``blender``, ``nerfstudio``/``instant-ngp``, ``colmap``,
            ``dtu``/``neus``, ``llff``) instead of detecting it.
        holdout: every ``holdout``-th image is ``test`` for formats without their own splits
            (0: all train).
        image_cache: the memory budget for decoded images (:mod:`engine.data.stream`): ``auto``
            (half the available memory), MB (``2048``, ``"512MB"``, ``"2GB"``), images (``"300img"``)
            or ``all``. A dataset that fits is decoded into memory; a bigger one streams from disk
            through a cache of that size (``ds.splits[...].streaming``).
        options: reader-specific (``images_dir`` for colmap/llff, ``cameras_file`` and
            ``principal_offset`` for dtu).
    """
    try:
        downscale_i = int(downscale)
    except (TypeError, ValueError):
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}") from None
    if downscale_i != downscale or downscale_i < 1:
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}")
    if Path(path).suffix.lower() == ".toml":    # a scene file: its format / background / downscale apply
        from ..config import load_scene

        sc = load_scene(path)
        format = format or sc.format
        background = background if background is not None else sc.background
        if downscale_i == 1:
            downscale_i = sc.downscale
    root = resolve_data_path(path)
    if format is None:
        fmt = detect_format(root)
    else:
        fmt = format.lower()
        if fmt not in _MODULES:
            raise ConfigError(f"unknown dataset format {format!r} (known: {', '.join(FORMATS)})")
        if not Path(root).is_dir():
            raise DataError(root, "dataset folder does not exist")
    from .dataset import _DEFER, finish_loading
    from .stream import parse_image_cache

    plan = parse_image_cache(image_cache)      # a bad value fails before any image is read
    module = importlib.import_module(f"{__package__}.{_MODULES[fmt]}")
    token = _DEFER.set(True)
    try:
        ds = module.load(Path(root), downscale=downscale_i, background=background, holdout=holdout, **options)
    finally:
        _DEFER.reset(token)
    return finish_loading(ds, plan)
