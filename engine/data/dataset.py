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

import contextvars
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import ConfigError, DataError
from .images import parallel_map, read_image, read_mask

__all__ = ["Split", "Dataset", "parse_background", "holdout_indices", "load_split", "finish_loading"]


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

    @property
    def streaming(self) -> bool:
        """True when the images stream from disk (:mod:`engine.data.stream`) instead of sitting in memory."""
        from .stream import is_store

        return is_store(self.images)

    def prefetch(self, indices) -> None:
        """Start decoding these images in the background (streamed splits; a no-op otherwise)."""
        if self.streaming:
            self.images.prefetch(indices)

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
    # the cache of decoded images when the splits stream from disk (engine.data.stream), else None
    image_cache: object = None

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

    if _DEFER.get():   # engine.data.load_dataset decides afterwards: eager, or streamed (finish_loading)
        return Split(name, out_cams, _Pending(name, [Path(p) for p in image_paths], sizes_in, sizes_out[0], bg,
                                              None if mask_paths is None else [Path(p) for p in mask_paths]),
                     [Path(p) for p in image_paths])
    return _decode_split(name, out_cams, image_paths, sizes_in, sizes_out, bg, mask_paths)


def _decode_split(name, out_cams, image_paths, sizes_in, sizes_out, bg, mask_paths) -> Split:
    """Decode every image of a split (thread pool) straight into preallocated (N, H, W, 3) / (N, H, W)
    tensors (eager loading: memory peaks at the decoded size, not twice it)."""
    n = len(image_paths)
    w, h = sizes_out[0]
    images = torch.empty((n, h, w, 3), dtype=torch.float32)
    alpha = torch.empty((n, h, w), dtype=torch.float32)   # dropped below when no image has alpha
    had_alpha = [False] * n

    def one(i):
        im = read_image(image_paths[i], expected_size=sizes_in[i], background=bg, out_size=sizes_out[i])
        images[i] = torch.from_numpy(im.rgb)
        if im.alpha is not None:
            alpha[i] = torch.from_numpy(im.alpha)
            had_alpha[i] = True
        else:
            alpha[i] = 1.0

    parallel_map(one, range(n))
    if not any(had_alpha):
        alpha = None
    masks = None
    if mask_paths is not None:
        masks = torch.empty((n, h, w), dtype=torch.bool)

        def onem(i):
            masks[i] = torch.from_numpy(read_mask(mask_paths[i], expected_size=sizes_in[i], out_size=sizes_out[i]))
        parallel_map(onem, range(len(mask_paths)))
    return Split(name, out_cams, images, [Path(p) for p in image_paths], masks, alpha)


# Set by engine.data.load_dataset while a reader runs: load_split then only records what to decode,
# and finish_loading() decodes everything (it fits the image-cache budget) or streams it.
_DEFER: contextvars.ContextVar = contextvars.ContextVar("kernelight_defer_images", default=False)


@dataclass
class _Pending:
    """A split's images not decoded yet (between a reader's load_split and finish_loading)."""

    name: str
    paths: list
    sizes_in: list
    size_out: tuple
    background: list
    mask_paths: list | None

    def guess_bytes(self) -> int:
        """Decoded size of the split if loaded eagerly; alpha as the first image's header says."""
        from .images import image_header

        try:
            alpha = image_header(self.paths[0])[2]
        except DataError:
            alpha = True
        w, h = self.size_out
        return len(self.paths) * w * h * (12 + 4 * alpha + (self.mask_paths is not None))


def finish_loading(ds: "Dataset", image_cache=None) -> "Dataset":
    """Decode a dataset's pending splits, or make them stream from disk, per the image-cache
    budget ``image_cache`` (:func:`engine.data.stream.parse_image_cache`): everything is decoded
    into memory when all splits fit the budget (or ``all``), else every split streams through one
    :class:`~engine.data.stream.ImageCache` of that budget. ``ds.metadata['image_cache']`` says which."""
    from .images import image_header
    from .stream import MB, ImageCache, ImageSource, ImageStore, auto_budget_bytes, parse_image_cache

    plan = parse_image_cache(image_cache)
    pend = {k: s.images for k, s in ds.splits.items() if isinstance(s.images, _Pending)}
    if not pend:
        return ds
    need = {k: p.guess_bytes() for k, p in pend.items()}
    total, n_images = sum(need.values()), sum(len(p.paths) for p in pend.values())
    per_image = max(need[k] / max(1, len(p.paths)) for k, p in pend.items())
    if plan.kind == "images":
        budget, fits = int(plan.value * per_image), n_images <= plan.value
    else:
        budget = int(plan.value) if plan.kind == "bytes" else auto_budget_bytes()
        fits = plan.kind == "all" or total <= budget
    info = {"setting": plan.describe(), "decoded_mb": round(total / MB, 1), "budget_mb": round(budget / MB, 1)}
    if fits:
        for k, p in pend.items():
            s = ds.splits[k]
            ds.splits[k] = _decode_split(k, s.cameras, p.paths, p.sizes_in, [p.size_out] * len(p.paths),
                                         p.background, p.mask_paths)
        ds.metadata["image_cache"] = {**info, "streaming": False}
        return ds
    cache = ImageCache(budget)
    for k, p in pend.items():
        heads = parallel_map(image_header, p.paths)
        for path, (w, h, _), want in zip(p.paths, heads, p.sizes_in):
            if (w, h) != tuple(want):
                raise DataError(path, f"image is {w}x{h} pixels but its camera says {want[0]}x{want[1]}")
        for mp in p.mask_paths or ():
            if not mp.is_file():
                raise DataError(mp, "mask file is missing")
        src = ImageSource(k, p.paths, p.sizes_in, p.size_out, p.background, any(a for _, _, a in heads),
                          p.mask_paths)
        s = ds.splits[k]
        ds.splits[k] = Split(k, s.cameras, ImageStore(src, cache, "rgb"), s.image_paths,
                             ImageStore(src, cache, "mask") if p.mask_paths is not None else None,
                             ImageStore(src, cache, "alpha") if src.has_alpha else None)
    ds.image_cache = cache
    ds.metadata["image_cache"] = {**info, "streaming": True}
    return ds


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
