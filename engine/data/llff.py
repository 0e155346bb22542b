"""LLFF reader: ``poses_bounds.npy`` (N x 17) + ``images/`` (sorted by name).

* Each row is a 3x5 pose (rotation columns down, right, backward; centre; ``(h, w, f)``) and two
  depth bounds. Poses are converted to OpenCV camera-to-world with
  :func:`engine.cameras.llff_to_c2w`; unlike LLFF's own loader we do **not** recentre or rescale
  the poses, so they stay in the (COLMAP) world frame they came from.
* Intrinsics: ``fx = fy = f``, principal point at the image centre, at the ``h x w`` of the file.
  The images in ``images/`` must have that size (or the same size scaled by one factor, as when
  ``images/`` was already downscaled; the focal is then scaled likewise).
* Image folder (:func:`~engine.data.images.pick_image_dir_by_count`): ``images_dir`` if given, else
  the first of ``images_<downscale>/``, ``images/``, ``images_N/`` (smallest N first) that holds
  one image per pose, so a capture with only ``images_8/`` loads; the intrinsics are scaled by
  the folder's downsampling factor (checked against the image size), and any remaining
  ``downscale`` box-filters the images. A folder other than the plain choice is reported with a
  warning on the ``kernelight.data`` logger that names it and why.
* near/far: min and max of the bounds. Scene box: the box enclosing every camera frustum between
  the 5th-percentile near bound and the median far bound (forward-facing scenes reach to
  infinity, so the box of the whole far range would be mostly empty).
* Splits: every ``holdout``-th image (0, 8, ...) is ``test`` (the LLFF convention).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import DataError
from ..io.npy import load_npy
from .dataset import Dataset, box_from_frusta, holdout_indices, load_split, parse_background
from .images import image_size, list_images, pick_image_dir_by_count


def load(root, downscale: int = 1, background=None, holdout: int = 8, images_dir: str | None = None, **_) -> Dataset:
    root = Path(root)
    f = root / "poses_bounds.npy"
    if not f.is_file():
        raise DataError(f, "file is missing")
    arr = load_npy(f)   # numeric arrays only, header checked against the file size
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f, f"expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise DataError(f, f"expected an (N, 17) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f, "has no cameras")
    if not np.isfinite(arr).all():
        raise DataError(f, "contains non-finite values")
    poses = arr[:, :15].reshape(-1, 3, 5).astype(np.float64)
    bounds = arr[:, 15:].astype(np.float64)
    hwf = poses[:, :, 4]
    bad = np.flatnonzero(~((hwf > 0).all(1) & (hwf[:, :2] <= 1 << 20).all(1)))
    if len(bad):
        raise DataError(f, f"pose {int(bad[0])}: (height, width, focal) = {hwf[bad[0]].tolist()} must be positive "
                        "(sizes at most 2^20 pixels)")
    R = poses[:, :, :3]
    with np.errstate(all="ignore"):
        err = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max((1, 2))
    bad = np.flatnonzero(~(err < 1e-2) | ~(np.abs(poses[:, :, 3]) < 1e15).all(1))
    if len(bad):
        raise DataError(f, f"pose {int(bad[0])} is not a rotation and a position (R^T R deviates from I by "
                        f"{err[bad[0]]:.3g}, or the centre is absurd)")
    ok = (bounds[:, 0] >= 0) & (bounds[:, 0] < bounds[:, 1])
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(f, f"pose {i}: depth bounds {bounds[i].tolist()} must satisfy 0 <= near < far")
    img_dir, factor, extra, why = pick_image_dir_by_count(root, images_dir, downscale, poses.shape[0],
                                                          f"{f.name} pose")
    paths = list_images(img_dir)
    if len(paths) != poses.shape[0]:
        raise DataError(img_dir, f"has {len(paths)} images but {f.name} has {poses.shape[0]} poses")
    if factor not in (1, downscale):
        logging.getLogger("kernelight.data").warning("%s: LLFF images from %s; intrinsics scaled to their size",
                                                     root, why)
    cams = Cameras.from_llff(torch.from_numpy(poses))
    # Images may be stored at a reduced size (e.g. images_8/): rescale the cameras to them, i.e.
    # scale fx, fy, cx, cy by the downsampling factor (measured from the first image's size).
    W0, H0 = int(cams.width[0]), int(cams.height[0])
    w, h = image_size(paths[0])
    if (w, h) != (W0, H0):
        s = w / W0
        if abs(h - H0 * s) > 1.0:
            raise DataError(paths[0], f"image is {w}x{h} pixels, which is not a scaled copy of the "
                            f"{W0}x{H0} in {f.name}")
        if factor != 1 and abs(W0 / factor - w) > 1.0:
            raise DataError(paths[0], f"image is {w}x{h} pixels, but {img_dir.name}/ should hold the {W0}x{H0} "
                            f"of {f.name} downscaled by {factor}")
        cams = cams.resized(w, h)
    train, test = holdout_indices(len(paths), holdout)
    bg = parse_background(background, default=(0.0, 0.0, 0.0))
    splits = {}
    for name, idx in (("train", train), ("test", test)):
        if idx:
            splits[name] = load_split(name, cams[torch.tensor(idx)], [paths[i] for i in idx], downscale=extra,
                                      background=bg, source=img_dir)
    near, far = float(bounds[:, 0].min()), float(bounds[:, 1].max())
    box = box_from_frusta(cams, float(np.percentile(bounds[:, 0], 5)), float(np.median(bounds[:, 1])))
    return Dataset(format="llff", root=root, splits=splits, scene_box=box, background=bg, near=near, far=far,
                   downscale=downscale, camera_model="PINHOLE", metadata={"image_folder": str(img_dir),
                                                                           "image_folder_reason": why})
