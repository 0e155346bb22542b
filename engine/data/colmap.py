"""COLMAP reader: a sparse model (``sparse/0``, ``sparse`` or the folder itself) plus an image folder.

* Camera models SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV map onto
  :class:`~engine.cameras.Cameras` (radial terms go to k1/k2 of the OpenCV model). Any other
  model raises a DataError naming it and listing the supported ones. COLMAP, like us, puts pixel
  centres at +0.5, so intrinsics are used as stored.
* Poses: COLMAP world-to-camera ``qvec``/``tvec`` (OpenCV axes), converted to camera-to-world;
  world coordinates are kept as COLMAP has them.
* Images are sorted by name; every ``holdout``-th (0, 8, 16, ...) goes to ``test``.
* ``downscale=n``: when ``images_n/`` exists its images are used (the cameras are rescaled to
  their actual size, which must be the full size divided by n, rounded); otherwise ``images/``
  is box-filtered by n. ``images_dir`` forces a folder.
* Points: points3D with their colours. Scene box: per-axis 0.5%-99.5% quantiles of the points,
  padded by 5% (camera-centre box when there are fewer than 10 points). near/far: the 1st and
  99th percentiles of the depths of points that project inside the images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, downscaled_size
from ..errors import DataError
from .colmap_io import ColmapCamera, find_model_folder, read_model
from .dataset import Dataset, box_from_centers, box_from_points, holdout_indices, load_split, parse_background
from .images import image_size, pick_image_dir

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def camera_intrinsics(cam: ColmapCamera, source: Path):
    """``(fx, fy, cx, cy, dist (5,))`` for a supported COLMAP camera; DataError otherwise."""
    p = cam.params
    d = np.zeros(5)
    if cam.model == "SIMPLE_PINHOLE":
        fx = fy = p[0]; cx, cy = p[1], p[2]  # noqa: E702
    elif cam.model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif cam.model == "SIMPLE_RADIAL":
        fx = fy = p[0]; cx, cy = p[1], p[2]; d[0] = p[3]  # noqa: E702
    elif cam.model == "RADIAL":
        fx = fy = p[0]; cx, cy = p[1], p[2]; d[0], d[1] = p[3], p[4]  # noqa: E702
    elif cam.model == "OPENCV":
        fx, fy, cx, cy = p[:4]
        d[:4] = p[4:8]
    else:
        raise DataError(source, f"camera {cam.id} uses camera model {cam.model}, which is not supported "
                        f"(supported: {', '.join(SUPPORTED_MODELS)})")
    return float(fx), float(fy), float(cx), float(cy), d


def load(root, downscale: int = 1, background=None, holdout: int = 8, images_dir: str | None = None, **_) -> Dataset:
    root = Path(root)
    folder = find_model_folder(root)
    if folder is None:
        raise DataError(root, "no COLMAP model found (looked for sparse/0, sparse, colmap/sparse/0 and the folder "
                        "itself for cameras.bin or cameras.txt)")
    model = read_model(folder)
    cam_file = folder / ("cameras.bin" if (folder / "cameras.bin").is_file() else "cameras.txt")
    img_file = cam_file.with_name("images" + cam_file.suffix)
    if not model.images:
        raise DataError(img_file, "the model has no images")
    bg = parse_background(background, default=(0.0, 0.0, 0.0))

    img_dir, extra = pick_image_dir(root, images_dir, downscale)

    ims = sorted(model.images.values(), key=lambda im: im.name)
    intr = [camera_intrinsics(model.cameras[im.camera_id], cam_file) for im in ims]
    models = sorted({model.cameras[im.camera_id].model for im in ims})
    cams = Cameras.from_colmap(
        torch.tensor(np.stack([im.qvec for im in ims])), torch.tensor(np.stack([im.tvec for im in ims])),
        torch.tensor([k[0] for k in intr]), torch.tensor([k[1] for k in intr]),
        torch.tensor([k[2] for k in intr]), torch.tensor([k[3] for k in intr]),
        torch.tensor([model.cameras[im.camera_id].width for im in ims]),
        torch.tensor([model.cameras[im.camera_id].height for im in ims]),
        dist=torch.tensor(np.stack([k[4] for k in intr])))
    paths = [img_dir / im.name for im in ims]
    if extra == 1 and downscale > 1:
        # Pre-downscaled folder: rescale the cameras to the actual image sizes.
        sizes = [image_size(p) for p in paths]
        for p, (w, h), W, H in zip(paths, sizes, cams.width.tolist(), cams.height.tolist()):
            ew, eh = downscaled_size(W, 1 / downscale), downscaled_size(H, 1 / downscale)
            if abs(w - ew) > 1 or abs(h - eh) > 1:
                raise DataError(p, f"image is {w}x{h} pixels but its camera ({W}x{H}) downscaled by {downscale} "
                                f"gives {ew}x{eh}")
        cams = cams.resized(torch.tensor([s[0] for s in sizes]), torch.tensor([s[1] for s in sizes]))

    train, test = holdout_indices(len(ims), holdout)
    splits = {}
    for name, idx in (("train", train), ("test", test)):
        if idx:
            splits[name] = load_split(name, cams[torch.tensor(idx)], [paths[i] for i in idx], downscale=extra,
                                      background=bg, source=img_file)

    points = torch.from_numpy(model.points.astype(np.float32))
    colors = torch.from_numpy(model.colors.astype(np.float32) / 255.0)
    near = far = None
    if points.shape[0] >= 10:
        box = box_from_points(points)
        uv, z = cams.project(points.double())
        inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 1] >= 0) & \
                 (uv[..., 0] < cams.width[:, None]) & (uv[..., 1] < cams.height[:, None])
        if bool(inside.any()):
            depths = z[inside].double()
            near, far = float(torch.quantile(depths, 0.01)), float(torch.quantile(depths, 0.99))
    else:
        box = box_from_centers(cams)
    if points.shape[0] == 0:
        points = colors = None
    return Dataset(format="colmap", root=root, splits=splits, scene_box=box, background=bg, points=points,
                   point_colors=colors, near=near, far=far, downscale=downscale, camera_model="/".join(models),
                   metadata={"model_folder": str(folder), "image_folder": str(img_dir)})
