"""Dataset readers (NeRF-synthetic/Blender, nerfstudio/instant-ngp, COLMAP, NeuS/DTU, LLFF).

>>> from engine.data import load_dataset          # doctest: +SKIP
>>> ds = load_dataset("../shared/data/nerf_synthetic/lego_100")
>>> ds.train.images.shape, ds.train.cameras       # (100, 100, 100, 3), Cameras(n=100, ...)

A dataset whose decoded images exceed the image-cache budget (``load_dataset(..., image_cache=)``,
default half the available memory) streams from disk instead: its splits hold
:class:`~engine.data.stream.ImageStore` objects that read like the tensors (:mod:`engine.data.stream`).

Submodules are imported lazily, so ``import engine.data`` is cheap.
"""
from __future__ import annotations

__all__ = ["load_dataset", "detect_format", "Dataset", "Split", "RaySampler", "RayBatch"]


def __getattr__(name):
    if name in ("load_dataset", "detect_format"):
        from . import detect

        return getattr(detect, name)
    if name in ("Dataset", "Split"):
        from . import dataset

        return getattr(dataset, name)
    if name in ("RaySampler", "RayBatch"):
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'engine.data' has no attribute {name!r}")
