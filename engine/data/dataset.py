"""The common ``Dataset`` and ``Split`` produced by every reader.

A :class:`Dataset` holds named splits (``train``, ``val``, ``test``), each with its cameras and
images as tensors, plus scene-level data: a bounding box, optional initial points, the
background colour used to composite RGBA images, and near/far where the format knows them.

Splits: NeRF-synthetic/Blender data has its own train/val/test JSONs. Every other format is split
by the LLFF convention: images are sorted (by file name, or in file order for JSON/npz formats)
and every ``holdout``-th image (index 0, 8, 16, ... for the default 8) goes to ``test``, the rest
to ``train``. ``holdout=0`` puts everything in ``train``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import ConfigError, DataError
from .images import parallel_map, read_image, read_mask

__all__ = ["Split", "Dataset", "parse_background", "holdout_indices", "load_split"]


def parse_background(value, default=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """:func:`engine.config.parse_background` as a (3,) float32 tensor (``default`` for None)."""
    from ..config import parse_background as _parse

    return torch.tensor(_parse(value, default), dtype=torch.float32)


def holdout_indices(n: int, holdout: int = 8) -> tuple[list[int], list[int]]:
    """LLFF-style split of ``n`` ordered images: ``(train, test)`` with test = every ``holdout``-th."""
    if holdout and holdout > 0 and n > 1:
        test = list(range(0, n, holdout))
        train = [i for i in range(n) if i % holdout != 0]
        return train, test
    return list(range(n)), []


@dataclass
class Split:
    """One split of a dataset.

    Fields:
        name: ``train`` / ``val`` / ``test``.
        cameras: N cameras (already matching the loaded, possibly downscaled, images).
        images: (N, H, W, 3) float32 in [0, 1], composited on the dataset background if RGBA.
        image_paths: N source files.
        masks: (N, H, W) bool foreground masks, or None.
        alpha: (N, H, W) float32 alpha of RGBA data, or None.
    """

    name: str
    cameras: Cameras
    images: torch.Tensor
    image_paths: list[Path]
    masks: torch.Tensor | None = None
    alpha: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def to(self, device) -> "Split":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Split(self.name, self.cameras.to(device), self.images.to(device), self.image_paths,
                     mv(self.masks), mv(self.alpha))


@dataclass
class Dataset:
    """A loaded dataset (see the module docstring for splits).

    Fields:
        format: ``blender`` | ``nerfstudio`` | ``colmap`` | ``dtu`` | ``llff``.
        root: dataset folder.
        splits: name -> :class:`Split`.
        scene_box: (2, 3) float32 ``[min, max]`` corners, world units (each reader documents its rule).
        background: (3,) float32 RGB used to composite RGBA images.
        points: (P, 3) float32 initial points or None; point_colors: (P, 3) float32 in [0,1] or None.
        near, far: scene depth range where known, else None.
        downscale: the integer image downscale applied at load time.
        camera_model: a short description (``PINHOLE``, ``OPENCV``, ``SIMPLE_RADIAL`` ...).
        metadata: format-specific extras (e.g. ``aabb_scale``).
    """

    format: str
    root: Path
    splits: dict[str, Split]
    scene_box: torch.Tensor
    background: torch.Tensor
    points: torch.Tensor | None = None
    point_colors: torch.Tensor | None = None
    near: float | None = None
    far: float | None = None
    downscale: int = 1
    camera_model: str = "PINHOLE"
    metadata: dict = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(self.root, f"dataset has no split {name!r} (available: {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def train(self) -> Split:
        return self.split("train")

    def all_cameras(self) -> Cameras:
        return Cameras.cat([s.cameras for s in self.splits.values()])

    def summary(self) -> dict:
        """A JSON-friendly description (used by ``kernelight dataset``)."""
        cams = self.all_cameras()
        res = sorted({(int(w), int(h)) for w, h in zip(cams.width.tolist(), cams.height.tolist())})
        rng = lambda t: [round(float(t.min()), 4), round(float(t.max()), 4)]  # noqa: E731
        out = {
            "format": self.format,
            "root": str(self.root),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "resolutions": [f"{w}x{h}" for w, h in res],
            "downscale": self.downscale,
            "camera_model": self.camera_model,
            "distortion": cams.dist is not None,
            "fx": rng(cams.fx), "fy": rng(cams.fy), "cx": rng(cams.cx), "cy": rng(cams.cy),
            "scene_box": [[round(float(x), 4) for x in row] for row in self.scene_box.tolist()],
            "camera_centers_box": [[round(float(x), 4) for x in cams.centers().min(0).values.tolist()],
                                   [round(float(x), 4) for x in cams.centers().max(0).values.tolist()]],
            "near": None if self.near is None else round(float(self.near), 4),
            "far": None if self.far is None else round(float(self.far), 4),
            "background": [round(float(x), 4) for x in self.background.tolist()],
            "points": 0 if self.points is None else int(self.points.shape[0]),
            "has_masks": any(s.masks is not None for s in self.splits.values()),
            "has_alpha": any(s.alpha is not None for s in self.splits.values()),
        }
        out.update({k: v for k, v in self.metadata.items() if isinstance(v, (int, float, str, bool))})
        return out


def load_split(name: str, cameras: Cameras, image_paths: list[Path], *, downscale: int = 1,
               background: torch.Tensor, mask_paths: list[Path] | None = None,
               source: Path | None = None) -> Split:
    """Decode a split's images (thread pool), checking each against its camera.

    Args:
        cameras: cameras whose width/height match the files on disk.
        image_paths: one file per camera.
        downscale: further integer downscale applied to images and cameras.
        mask_paths: optional mask file per camera.
        source: the file that defined the split (named in the empty-split error).
    """
    if len(image_paths) == 0:
        raise DataError(source or "dataset", f"split {name!r} has no images")
    assert len(image_paths) == len(cameras)
    out_cams = cameras.downscaled(downscale)
    bg = background.tolist()
    sizes_in = list(zip(cameras.width.tolist(), cameras.height.tolist()))
    sizes_out = list(zip(out_cams.width.tolist(), out_cams.height.tolist()))
    if len(set(sizes_out)) > 1:
        raise DataError(source or image_paths[0].parent,
                        f"split {name!r} mixes image sizes {sorted(set(sizes_out))[:4]}; "
                        "a split must have one image size")

    def one(i):
        return read_image(image_paths[i], expected_size=sizes_in[i], background=bg, out_size=sizes_out[i])

    loaded = parallel_map(one, range(len(image_paths)))
    images = torch.from_numpy(np.stack([im.rgb for im in loaded]))
    alpha = None
    if any(im.alpha is not None for im in loaded):
        alpha = torch.from_numpy(np.stack([im.alpha if im.alpha is not None else np.ones(im.rgb.shape[:2], np.float32)
                                           for im in loaded]))
    masks = None
    if mask_paths is not None:
        def onem(i):
            return read_mask(mask_paths[i], expected_size=sizes_in[i], out_size=sizes_out[i])
        masks = torch.from_numpy(np.stack(parallel_map(onem, range(len(mask_paths)))))
    return Split(name, out_cams, images, [Path(p) for p in image_paths], masks, alpha)


def box_from_points(points: torch.Tensor, lo_q: float = 0.005, hi_q: float = 0.995, pad: float = 0.05) -> torch.Tensor:
    """Robust axis-aligned box of a point cloud: per-axis quantiles, padded by ``pad`` of the size."""
    p = points.double()
    lo = torch.quantile(p, lo_q, dim=0) if p.shape[0] < 16_000_000 else p.min(0).values
    hi = torch.quantile(p, hi_q, dim=0) if p.shape[0] < 16_000_000 else p.max(0).values
    ext = (hi - lo) * pad
    return torch.stack([lo - ext, hi + ext]).float()


def box_from_frusta(cameras: Cameras, near: float, far: float) -> torch.Tensor:
    """Axis-aligned box enclosing every camera's view frustum between ``near`` and ``far``."""
    pts = []
    for i in range(len(cameras)):
        W, H = float(cameras.width[i]), float(cameras.height[i])
        uv = torch.tensor([[0, 0], [W, 0], [0, H], [W, H], [W / 2, H / 2]], dtype=torch.float32)
        o, d = cameras.pixel_rays(torch.full((5,), i, dtype=torch.long), uv)
        # depth along the optical axis -> distance along each ray
        fwd = cameras.c2w[i, :3, 2]
        cosang = (d @ fwd).clamp_min(1e-3)
        for depth in (near, far):
            pts.append(o + d * (depth / cosang)[:, None])
    p = torch.cat(pts)
    return torch.stack([p.min(0).values, p.max(0).values]).float()


def box_from_centers(cameras: Cameras, pad: float = 0.1) -> torch.Tensor:
    """Box of the camera centres, padded by ``pad`` of its diagonal on every side."""
    c = cameras.centers().double()
    lo, hi = c.min(0).values, c.max(0).values
    ext = (hi - lo).norm() * pad
    return torch.stack([lo - ext, hi + ext]).float()
