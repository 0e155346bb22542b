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
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ConfigError, DataError
from .colmap_io import find_model_folder

FORMATS = ("blender", "nerfstudio", "dtu", "colmap", "llff")
_MODULES = {"blender": "blender", "nerfstudio": "nerfstudio", "instant-ngp": "nerfstudio", "ngp": "nerfstudio",
            "dtu": "dtu", "neus": "dtu", "colmap": "colmap", "llff": "llff"}
LOOKED_FOR = ("transforms_train.json (blender), transforms.json (nerfstudio/instant-ngp), "
              "cameras_sphere.npz (dtu/neus), sparse/0/cameras.bin|txt or cameras.bin|txt (colmap), "
              "poses_bounds.npy (llff)")


def detect_format(root) -> str:
    """Name of the dataset format in folder ``root`` (see the module table); DataError if none."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder (expected a dataset folder)")
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if (root / "cameras_sphere.npz").is_file():
        return "dtu"
    if find_model_folder(root) is not None:
        return "colmap"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    raise DataError(root, f"cannot detect the dataset format: looked for {LOOKED_FOR}")


def resolve_data_path(path) -> Path:
    """A dataset folder, or a scene ``.toml`` whose ``data`` key names one (relative to the toml)."""
    path = Path(path)
    if path.suffix.lower() != ".toml":
        return path
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise DataError(path, "scene file does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(path, f"cannot read scene file ({exc})") from None
    data = cfg.get("data")
    if isinstance(data, dict):  # [data] table with a path key
        data = data.get("path") or data.get("dir")
    if not isinstance(data, str) or not data:
        raise DataError(path, "scene file has no 'data' key naming the dataset folder")
    p = Path(data).expanduser()
    return p if p.is_absolute() else (path.parent / p)


def load_dataset(path, downscale: int = 1, background=None, format: str | None = None, holdout: int = 8,
                 **options):
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
        options: reader-specific (``images_dir`` for colmap/llff, ``cameras_file`` and
            ``principal_offset`` for dtu).
    """
    try:
        downscale_i = int(downscale)
    except (TypeError, ValueError):
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}") from None
    if downscale_i != downscale or downscale_i < 1:
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}")
    root = resolve_data_path(path)
    if format is None:
        fmt = detect_format(root)
    else:
        fmt = format.lower()
        if fmt not in _MODULES:
            raise ConfigError(f"unknown dataset format {format!r} (known: {', '.join(FORMATS)})")
        if not Path(root).is_dir():
            raise DataError(root, "dataset folder does not exist")
    module = importlib.import_module(f"{__package__}.{_MODULES[fmt]}")
    return module.load(Path(root), downscale=downscale_i, background=background, holdout=holdout, **options)
