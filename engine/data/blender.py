"""NeRF-synthetic / Blender reader: ``transforms_{train,val,test}.json``.

* Splits come from the JSON files present (a missing ``transforms_val.json`` means no val split).
* ``transform_matrix`` is an OpenGL camera-to-world; converted to OpenCV axes.
* Intrinsics: ``fx = fy = 0.5 W / tan(0.5 camera_angle_x)`` (``camera_angle_y`` or ``fl_x``/``fl_y``,
  ``cx``/``cy`` are used when given), principal point at the image centre; W x H from the
  first image of the split (all images must have that size).
* ``file_path`` gets ``.png`` appended when it has no extension.
* RGBA images are composited on the background (white by default); alpha is kept.
* Scene box: ``[-1.5, 1.5]^3`` (the synthetic objects sit inside it); near 2, far 6 (NeRF).
* Points: ``points3d.ply`` in the folder, if present (e.g. mic), read by :mod:`engine.io.ply`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import DataError
from .dataset import Dataset, load_split, parse_background
from .images import image_size

SPLITS = ("train", "val", "test")


def read_json(path: Path) -> dict:
    """Read a JSON object; DataError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file is missing")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data


def frame_matrix(path: Path, frame, i: int) -> np.ndarray:
    """A frame's ``transform_matrix`` as (4, 4) float64, or DataError naming the frame."""
    if not isinstance(frame, dict) or "transform_matrix" not in frame:
        raise DataError(path, f"frame {i} has no 'transform_matrix'")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"frame {i}: 'transform_matrix' is not a numeric matrix") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4):
        raise DataError(path, f"frame {i}: 'transform_matrix' must be a 4x4 (or 3x4) matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        r, c = (int(x) for x in np.argwhere(~np.isfinite(m))[0])
        raise DataError(path, f"frame {i}: 'transform_matrix' has a non-finite value ({m[r, c]} at row {r}, "
                        f"column {c}); it must be a finite 4x4 matrix")
    return m


def frame_file(root: Path, path: Path, frame, i: int, default_ext: str = ".png") -> Path:
    fp = frame.get("file_path") if isinstance(frame, dict) else None
    if not isinstance(fp, str) or not fp:
        raise DataError(path, f"frame {i} has no 'file_path'")
    if "\x00" in fp:
        raise DataError(path, f"frame {i}: 'file_path' contains a NUL character")
    p = Path(os.path.normpath(root / fp))  # no resolve(): keep the user's path (and symlinks)
    if p.suffix == "" or (not p.exists() and p.with_name(p.name + default_ext).exists()):
        p = p.with_name(p.name + default_ext)
    return p


MAX_IMAGE_SIDE = 1 << 20


def check_intrinsics(path: Path, where: str, fx, fy, cx, cy, w, h) -> None:
    """DataError naming ``path`` unless the focal lengths are positive and the size is 1..2^20 px."""
    if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):
        raise DataError(path, f"{where}image size {w}x{h} is invalid ('w'/'h' must be 1..{MAX_IMAGE_SIDE} pixels)")
    for name, v in (("fl_x", fx), ("fl_y", fy)):
        if not (math.isfinite(v) and v > 0):
            raise DataError(path, f"{where}focal length {name} = {v!r} must be a positive number "
                            "(from 'fl_x'/'fl_y' or 'camera_angle_x'/'camera_angle_y')")
    for name, v in (("cx", cx), ("cy", cy)):
        if not math.isfinite(v):
            raise DataError(path, f"{where}{name} = {v!r} must be finite")


def _angle(path: Path, meta: dict, key: str):
    """A field of view in radians, in (0, pi), or None."""
    v = _number(path, meta, key)
    if v is not None and not 0.0 < v < math.pi:
        raise DataError(path, f"'{key}' must be a field of view in radians in (0, pi), got {v!r}")
    return v


def _number(path: Path, meta: dict, key: str):
    v = meta.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise DataError(path, f"'{key}' must be a number, got {v!r}")
    return float(v)


def load(root, downscale: int = 1, background=None, **_) -> Dataset:
    root = Path(root)
    bg = parse_background(background, default=(1.0, 1.0, 1.0))
    splits = {}
    for name in SPLITS:
        jpath = root / f"transforms_{name}.json"
        if not jpath.exists():
            continue
        meta = read_json(jpath)
        frames = meta.get("frames")
        if not isinstance(frames, list):
            raise DataError(jpath, "missing 'frames' list")
        if not frames:
            raise DataError(jpath, f"split {name!r} is empty ('frames' is an empty list)")
        paths = [frame_file(root, jpath, fr, i) for i, fr in enumerate(frames)]
        c2w = np.stack([frame_matrix(jpath, fr, i) for i, fr in enumerate(frames)])
        W, H = image_size(paths[0])
        W = int(min(_number(jpath, meta, "w") or W, 2.0 ** 40))
        H = int(min(_number(jpath, meta, "h") or H, 2.0 ** 40))
        fx = _number(jpath, meta, "fl_x")
        angle_x = _angle(jpath, meta, "camera_angle_x")
        if fx is None:
            if angle_x is None:
                raise DataError(jpath, "needs 'camera_angle_x' (or 'fl_x') for the focal length")
            fx = 0.5 * W / math.tan(0.5 * angle_x)
        fy = _number(jpath, meta, "fl_y")
        if fy is None:
            angle_y = _angle(jpath, meta, "camera_angle_y")
            fy = 0.5 * H / math.tan(0.5 * angle_y) if angle_y is not None else fx
        cx = _number(jpath, meta, "cx")
        cy = _number(jpath, meta, "cy")
        check_intrinsics(jpath, "", fx, fy, W / 2 if cx is None else cx, H / 2 if cy is None else cy, W, H)
        cams = Cameras.from_opengl_c2w(torch.from_numpy(c2w), fx, fy, W / 2 if cx is None else cx,
                                       H / 2 if cy is None else cy, W, H)
        splits[name] = load_split(name, cams, paths, downscale=downscale, background=bg, source=jpath)
    if "train" not in splits:
        raise DataError(root / "transforms_train.json", "file is missing (needed for the train split)")

    points = colors = None
    ply = root / "points3d.ply"
    if ply.exists():
        points, colors = read_ply_points(ply)
    return Dataset(format="blender", root=root, splits=splits,
                   scene_box=torch.tensor([[-1.5] * 3, [1.5] * 3]), background=bg,
                   points=points, point_colors=colors, near=2.0, far=6.0, downscale=downscale,
                   camera_model="PINHOLE")


def read_ply_points(path: Path):
    """(P, 3) float32 points and (P, 3) float32 colours in [0, 1] (or None) from a PLY file, as
    torch tensors (read by :func:`engine.io.ply.read_points_ply`, the engine's one PLY reader)."""
    from ..io.ply import read_points_ply

    pts, cols = read_points_ply(path)
    return torch.from_numpy(pts), (None if cols is None else torch.from_numpy(cols))
