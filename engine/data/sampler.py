"""Ray batches for training and whole-image iteration for evaluation.

:class:`RaySampler` draws pixels uniformly over all images of a split (all images of a split have
one size, so this is uniform image index x uniform pixel), with a seeded ``torch.Generator`` so
runs are reproducible and can resume (``state_dict``/``load_state_dict``). For several ranks, give
each the same ``seed`` and its ``shard=(rank, world)``: every rank draws the whole batch and keeps
its part (so the result does not depend on the number of ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataset import Split


@dataclass
class RayBatch:
    """R rays with their ground truth.

    origins, directions: (R, 3) float32 world coordinates, unit directions.
    rgb: (R, 3) float32 target colours. mask: (R,) bool or None. alpha: (R,) float32 or None.
    image_index: (R,) int64 index into the split. pixel: (R, 2) int64 ``(u, v)`` = (column, row).
    """

    origins: torch.Tensor
    directions: torch.Tensor
    rgb: torch.Tensor
    image_index: torch.Tensor
    pixel: torch.Tensor
    mask: torch.Tensor | None = None
    alpha: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]

    def to(self, device) -> "RayBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return RayBatch(*(mv(getattr(self, k)) for k in ("origins", "directions", "rgb", "image_index", "pixel",
                                                          "mask", "alpha")))


def gather_rays(split: Split, image_index: torch.Tensor, pixel: torch.Tensor, jitter: torch.Tensor | None = None) -> RayBatch:
    """Rays and targets for given image indices (R,) and integer pixels (R, 2) ``(u, v)``.

    Rays go through pixel centres, or through ``pixel + jitter`` when ``jitter`` (R, 2) in [0, 1) is given.
    """
    u, v = pixel[:, 0], pixel[:, 1]
    offs = torch.full_like(pixel, 0.5, dtype=torch.float32) if jitter is None else jitter.float()
    o, d = split.cameras.pixel_rays(image_index, pixel.float() + offs)
    rgb = split.images[image_index, v, u]
    mask = None if split.masks is None else split.masks[image_index, v, u]
    alpha = None if split.alpha is None else split.alpha[image_index, v, u]
    return RayBatch(o, d, rgb, image_index, pixel, mask, alpha)


class RaySampler:
    """Random ray batches across all images of a split.

    Args:
        split: the :class:`~engine.data.dataset.Split` to sample (usually ``dataset.train``).
        batch_size: rays per batch.
        seed: seed of the private ``torch.Generator``.
        jitter: sample a random point inside each pixel instead of its centre.

    >>> sampler = RaySampler(ds.train, 4096, seed=0)     # doctest: +SKIP
    >>> batch = sampler.sample()                         # RayBatch of 4096 rays
    """

    def __init__(self, split: Split, batch_size: int, seed: int = 0, jitter: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.jitter = jitter
        # (rank, world): draw the whole batch, keep rank's contiguous part (data-parallel training:
        # every rank's generator stays in step, and the union of the parts is one process's batch)
        self.shard = (int(shard[0]), int(shard[1]))
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def sample(self, batch_size: int | None = None) -> RayBatch:
        n = batch_size or self.batch_size
        N, H, W = self.split.images.shape[:3]
        g = self.generator
        img = torch.randint(0, N, (n,), generator=g)
        flat = torch.randint(0, H * W, (n,), generator=g)
        pixel = torch.stack([flat % W, flat // W], -1)
        jit = torch.rand(n, 2, generator=g) if self.jitter else None
        r, w = self.shard
        if w > 1:
            sl = slice(r * n // w, (r + 1) * n // w)
            img, pixel, jit = img[sl], pixel[sl], None if jit is None else jit[sl]
        dev = self.split.images.device
        return gather_rays(self.split, img.to(dev), pixel.to(dev), None if jit is None else jit.to(dev))

    def __iter__(self):
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore the random stream. The batch size stays the one this sampler was made with: on
        ``--resume`` that is the run's configuration, flags included (``--rays-per-batch``)."""
        self.generator.set_state(state["generator"])


def iter_images(split: Split):
    """Yield ``(index, origins (H,W,3), directions (H,W,3), rgb (H,W,3), mask (H,W) or None)`` per image."""
    for i in range(len(split)):
        o, d = split.cameras.generate_rays(i)
        yield i, o, d, split.images[i], None if split.masks is None else split.masks[i]
