"""NeuS / IDR (DTU) reader: ``cameras_sphere.npz`` + ``image/`` or ``images/`` + ``mask/``.

* For view i, ``P = world_mat_i @ scale_mat_i`` maps the *normalised* frame (object inside the unit
  sphere) to pixels, as in NeuS. ``P[:3,:3] = K R`` is split by an RQ decomposition
  (``scipy.linalg.rq``) with signs fixed so ``K`` has a positive diagonal, ``K /= K[2,2]``, and
  ``t = K^-1 P[:3,3]``; the camera is ``[R | t]`` (world-to-camera, OpenCV axes).
* Pixel centres: we use the stored ``cx, cy`` as +0.5-centre intrinsics. NeuS itself casts rays
  through integer pixel coordinates, under which the matching +0.5 intrinsics would be
  ``cx + 0.5`` at the calibration's native resolution; for the 4x box-downscaled
  ``scan24_400`` data (see the data README, note 4) the exact value would be ``cx + 0.125``. Pass
  ``principal_offset=0.125`` (or 0.5) to apply such a shift to cx and cy; the default 0 treats
  the file as already in our convention (at most 0.375 px off for that data).
* Masks (``mask/*.png``, same order as the images) are thresholded at > 127.
* Scene box: ``[-1, 1]^3`` (the unit sphere of the normalisation). near/far: the range where
  rays from the camera centres can meet the unit sphere, ``max(0.05, min|c| - 1)`` to
  ``max|c| + 1``.
* Splits: every ``holdout``-th image is ``test``, the rest ``train``.
* Background: black by default (the images have no alpha).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import DataError
from .dataset import Dataset, holdout_indices, load_split, parse_background
from .images import image_size, list_images


def decompose_projection(P: np.ndarray):
    """Split a 3x4 projection ``P ~ K [R | t]`` -> ``(K (3,3) with K[2,2]=1, R (3,3), t (3,))``."""
    from scipy.linalg import rq

    M = P[:3, :3]
    K, R = rq(M)
    S = np.diag(np.sign(np.diag(K)))  # make diag(K) positive; S @ S = I
    K, R = K @ S, S @ R
    if np.linalg.det(R) < 0:  # P was given up to a negative scale
        R, K, P = -R, K, -P
    t = np.linalg.solve(K, P[:3, 3])
    K = K / K[2, 2]
    return K, R, t


def load(root, downscale: int = 1, background=None, holdout: int = 8, cameras_file: str = "cameras_sphere.npz",
         principal_offset: float = 0.0, **_) -> Dataset:
    root = Path(root)
    npz = root / cameras_file
    if not npz.is_file():
        raise DataError(npz, "file is missing")
    img_dir = root / "image" if (root / "image").is_dir() else root / "images"
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder is missing (looked for image/ and images/)")
    paths = list_images(img_dir)
    if not paths:
        raise DataError(img_dir, "no images found")
    from ..io.npy import load_npz   # numeric arrays only, headers checked against the file size

    data = {}
    for k, v in load_npz(npz).items():
        if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise DataError(npz, f"{k} is not a numeric array (dtype {v.dtype})")
        data[k] = v.astype(np.float64)
    c2w, K = [], []
    for i in range(len(paths)):
        key = f"world_mat_{i}"
        if key not in data:
            n_cams = sum(1 for k in data if k.startswith("world_mat_") and not k.startswith("world_mat_inv"))
            raise DataError(npz, f"has no {key}: {len(paths)} images in {img_dir.name}/ but {n_cams} cameras")
        W_ = data[key]
        S_ = data.get(f"scale_mat_{i}", np.eye(4))
        for name, m in ((key, W_), (f"scale_mat_{i}", S_)):
            if m.shape != (4, 4) or not np.isfinite(m).all():
                bad = "has non-finite values" if m.shape == (4, 4) else f"has shape {m.shape}"
                raise DataError(npz, f"{name} must be a finite 4x4 matrix but {bad}")
        with np.errstate(all="ignore"):
            P = W_ @ S_
            try:
                k, R, t = decompose_projection(P[:3, :4])
            except (np.linalg.LinAlgError, ValueError):
                k = R = t = None
        if k is None or not (np.isfinite(k).all() and np.isfinite(R).all() and np.isfinite(t).all()) \
                or abs(np.linalg.det(R) - 1.0) > 1e-3:
            raise DataError(npz, f"{key} @ scale_mat_{i} is not a usable camera projection (singular or degenerate)")
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, t
        c2w.append(np.linalg.inv(w2c))
        K.append(k)
    K = np.stack(K)
    W, H = image_size(paths[0])
    cams = Cameras(K[:, 0, 0], K[:, 1, 1], K[:, 0, 2] + principal_offset, K[:, 1, 2] + principal_offset, W, H,
                   torch.from_numpy(np.stack(c2w)))
    mask_paths = None
    mdir = root / "mask"
    if mdir.is_dir():
        mask_paths = list_images(mdir)
        if len(mask_paths) != len(paths):
            names = {p.stem.lstrip("0") or "0" for p in mask_paths}
            missing = [p for p in paths if (p.stem.lstrip("0") or "0") not in names]
            target = mdir / (missing[0].stem[-3:] + ".png") if missing else mdir
            raise DataError(target, f"mask file is missing: {len(mask_paths)} masks for {len(paths)} images")
    bg = parse_background(background, default=(0.0, 0.0, 0.0))
    train, test = holdout_indices(len(paths), holdout)
    splits = {}
    for name, idx in (("train", train), ("test", test)):
        if idx:
            splits[name] = load_split(name, cams[torch.tensor(idx)], [paths[i] for i in idx], downscale=downscale,
                                      background=bg, mask_paths=None if mask_paths is None else [mask_paths[i] for i in idx],
                                      source=img_dir)
    dist = cams.centers().norm(dim=-1)
    near = max(0.05, float(dist.min()) - 1.0)
    far = float(dist.max()) + 1.0
    return Dataset(format="dtu", root=root, splits=splits, scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]),
                   background=bg, near=near, far=far, downscale=downscale, camera_model="PINHOLE",
                   metadata={"cameras_file": cameras_file})
