"""nerfstudio / instant-ngp reader: a single ``transforms.json``.

* Intrinsics ``fl_x fl_y cx cy w h`` (or ``camera_angle_x``/``camera_angle_y``) at the top level
  and/or per frame (a frame's keys override the global ones). Missing ``cx``/``cy`` default to the
  image centre; missing ``w``/``h`` are read from the image.
* Distortion ``k1 k2 p1 p2 k3`` (OpenCV). ``camera_model`` may be ``OPENCV`` or ``PINHOLE`` (or
  absent); fisheye models and non-zero ``k4`` raise a DataError.
* Poses: ``transform_matrix`` is an OpenGL camera-to-world, converted to OpenCV axes. We keep the
  file's world coordinates, as nerfstudio does: instant-ngp's internal mapping
  (``p_ngp = p * scale + offset`` with defaults 0.33 and 0.5, plus an axis cycle) is *not* applied
  to the poses. ``scale``/``offset`` are only used to express instant-ngp's box in file coordinates.
* Scene box: with ``aabb_scale`` (instant-ngp), the box instant-ngp marches in, mapped back to
  file coordinates: centre ``(0.5 - offset) / scale``, half-size ``aabb_scale / (2 scale)``
  (for the fox, ``+-6.06``, which contains every camera). Without it: the camera-centre box padded
  by 10% of its diagonal.
* Optional per-frame ``mask_path`` (foreground masks) and top-level ``ply_file_path`` (points).
* Splits: frames are sorted by ``file_path`` (as nerfstudio does); every 8th (0, 8, ...) is ``test``
  (``holdout``), the rest ``train``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import DataError
from .blender import _angle, _number, check_intrinsics, frame_file, frame_matrix, read_json, read_ply_points
from .dataset import Dataset, box_from_centers, holdout_indices, load_split, parse_background
from .images import image_size

_INTR = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
         "k1", "k2", "k3", "k4", "p1", "p2")


def _frame_intrinsics(root: Path, jpath: Path, meta: dict, frame: dict, i: int, img: Path):
    vals = {}
    for key in _INTR:
        src = frame if key in frame else meta
        vals[key] = (_angle if key.startswith("camera_angle") else _number)(jpath, src, key)
    w, h = vals["w"], vals["h"]
    if w is None or h is None:
        W, H = image_size(img)
        w = W if w is None else w
        h = H if h is None else h
    fx, fy = vals["fl_x"], vals["fl_y"]
    if fx is None and vals["camera_angle_x"] is not None:
        fx = 0.5 * w / math.tan(0.5 * vals["camera_angle_x"])
    if fy is None and vals["camera_angle_y"] is not None:
        fy = 0.5 * h / math.tan(0.5 * vals["camera_angle_y"])
    if fx is None and fy is None:
        raise DataError(jpath, f"frame {i}: no focal length (need 'fl_x' or 'camera_angle_x')")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    cx = w / 2 if vals["cx"] is None else vals["cx"]
    cy = h / 2 if vals["cy"] is None else vals["cy"]
    if vals["k4"]:
        raise DataError(jpath, f"frame {i}: k4={vals['k4']} is set; only OpenCV k1 k2 p1 p2 k3 distortion is supported")
    dist = [vals[k] or 0.0 for k in ("k1", "k2", "p1", "p2", "k3")]
    w, h = int(round(min(w, 2.0 ** 40))), int(round(min(h, 2.0 ** 40)))
    check_intrinsics(jpath, f"frame {i}: ", fx, fy, cx, cy, w, h)
    return [fx, fy, cx, cy, w, h], dist


def load(root, downscale: int = 1, background=None, holdout: int = 8, **_) -> Dataset:
    root = Path(root)
    jpath = root / "transforms.json"
    meta = read_json(jpath)
    bg = parse_background(background, default=(0.0, 0.0, 0.0))
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise DataError(jpath, f"camera_model {model!r} is not supported (supported: OPENCV, PINHOLE)")
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DataError(jpath, "missing 'frames' list")
    if not frames:
        raise DataError(jpath, "'frames' is empty: the dataset has no images")
    # Sort frames by file name (as nerfstudio does) so the held-out split does not depend on the
    # order the frames were written in.
    order = sorted(range(len(frames)), key=lambda i: str(frames[i].get("file_path", "")) if isinstance(frames[i], dict) else "")
    frames = [frames[i] for i in order]
    paths, intr, dists, c2w, masks = [], [], [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DataError(jpath, f"frame {i} is not an object")
        p = frame_file(root, jpath, fr, i, default_ext=".jpg")
        paths.append(p)
        c2w.append(frame_matrix(jpath, fr, i))
        k, d = _frame_intrinsics(root, jpath, meta, fr, i, p)
        intr.append(k)
        dists.append(d)
        if "mask_path" in fr:
            masks.append(frame_file(root, jpath, {"file_path": fr["mask_path"]}, i))
    if masks and len(masks) != len(frames):
        raise DataError(jpath, f"only {len(masks)} of {len(frames)} frames have a 'mask_path'")
    intr = np.asarray(intr, dtype=np.float64)
    dist = np.asarray(dists, dtype=np.float64)
    all_cams = Cameras.from_opengl_c2w(torch.from_numpy(np.stack(c2w)), *[torch.from_numpy(intr[:, j]) for j in range(6)],
                                       dist=torch.from_numpy(dist))
    train, test = holdout_indices(len(frames), holdout)
    splits = {}
    for name, idx in (("train", train), ("test", test)):
        if not idx:
            continue
        splits[name] = load_split(name, all_cams[torch.tensor(idx)], [paths[i] for i in idx], downscale=downscale,
                                  background=bg, mask_paths=[masks[i] for i in idx] if masks else None, source=jpath)

    md = {}
    aabb_scale = _number(jpath, meta, "aabb_scale")
    if aabb_scale is not None:
        scale = _number(jpath, meta, "scale") or 0.33
        off = meta.get("offset", [0.5, 0.5, 0.5])
        try:
            off = np.asarray(off, dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise DataError(jpath, f"'offset' must be 3 numbers, got {off!r}") from None
        # instant-ngp cycles axes file (x, y, z) -> ngp (y, z, x); invert that for the centre.
        centre_ngp = (0.5 - off) / scale
        centre = np.array([centre_ngp[2], centre_ngp[0], centre_ngp[1]])
        half = aabb_scale / (2 * scale)
        box = torch.tensor(np.stack([centre - half, centre + half]), dtype=torch.float32)
        md["aabb_scale"] = aabb_scale
    else:
        box = box_from_centers(all_cams)
    points = colors = None
    if isinstance(meta.get("ply_file_path"), str):
        points, colors = read_ply_points(root / meta["ply_file_path"])
    model_name = "OPENCV" if all_cams.dist is not None else "PINHOLE"
    return Dataset(format="nerfstudio", root=root, splits=splits, scene_box=box, background=bg,
                   points=points, point_colors=colors, downscale=downscale, camera_model=model_name, metadata=md)
