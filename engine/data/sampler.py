"""Ray batches for training and whole-image iteration for evaluation.

:class:`RaySampler` draws pixels uniformly over all images of a split (all images of a split have
one size, so this is uniform image index x uniform pixel), with a seeded ``torch.Generator`` so
runs are reproducible and can resume (``state_dict``/``load_state_dict``). For several ranks, give
each the same ``seed`` and its ``shard=(rank, world)``: every rank draws the whole batch and keeps
its part (so the result does not depend on the number of ranks).

Working sets (images that stream from disk, :mod:`engine.data.stream`): when a split's images do
not all fit the image cache, drawing every batch across all N images would decode up to a batch's
worth of images per step. The sampler then draws from a *working set* of ``K`` images (``K`` = half
of what the cache holds) for ``refresh_every`` steps (default: enough steps to draw 1/16 of the
set's pixels, at least 25), pixels uniform within the set; sets are
consecutive slices of a seeded permutation of the split (every image is used once per pass), and
the next set is prefetched in the background while the current one trains. A streamed split's
current set is gathered into one tensor when it starts (and dropped from the cache, so the set and
the prefetched next set together fill the budget): batches then cost what in-memory batches cost. The sets come from the
seed alone, so an in-memory split sampled with the same ``working_set`` draws the same batches bit
for bit. ``working_set=None`` (or ``K >= N``) is plain uniform sampling over all images.
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
                 shard: tuple[int, int] = (0, 1), working_set="auto", refresh_every="auto"):
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
        N = int(split.images.shape[0])
        if working_set == "auto":
            working_set = max(1, split.images.capacity() // 2) if getattr(split, "streaming", False) else None
        self.working_set = None if working_set is None or int(working_set) >= N else max(1, int(working_set))
        if refresh_every == "auto":   # a set serves ~1/16 of its pixels (at least 25 steps): decoding it is amortised
            K, (H, W) = self.working_set or N, tuple(split.images.shape[1:3])
            refresh_every = max(25, -(-K * H * W // (16 * self.batch_size)))
        if int(refresh_every) < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = int(refresh_every)
        # working-set state: a separate generator (seed + 1) orders the images; sets are its slices
        self._set_gen = torch.Generator(device="cpu")
        self._set_gen.manual_seed(int(seed) + 1)
        self._perm: list[int] = []
        self._current: torch.Tensor | None = None
        self._next: torch.Tensor | None = None
        self._uses = 0
        self._set_data: dict | None = None      # a streamed split's current set, gathered

    def _draw_set(self) -> torch.Tensor:
        N, K = int(self.split.images.shape[0]), self.working_set
        out = []
        while len(out) < K:
            if not self._perm:
                self._perm = torch.randperm(N, generator=self._set_gen, device="cpu").tolist()
            take = min(K - len(out), len(self._perm))
            out += self._perm[:take]
            del self._perm[:take]
        return torch.tensor(out, dtype=torch.long, device="cpu")

    def _image_set(self) -> torch.Tensor:
        """This step's working set (advancing every ``refresh_every`` steps; the next one prefetched)."""
        if self._current is None or self._uses >= self.refresh_every:
            self._current = self._next if self._next is not None else self._draw_set()
            self._next = self._draw_set()
            self._uses = 0
            if getattr(self.split, "streaming", False):
                self._gather_set()
        self._uses += 1
        return self._current

    def _gather_set(self) -> None:
        """Stack the current set's images (rgb, alpha, masks) into tensors, release them from the
        cache and start decoding the next set."""
        sp, idx = self.split, self._current.tolist()
        self._set_data = None
        sp.prefetch(idx)
        stores = {k: getattr(sp, k) for k in ("images", "alpha", "masks") if getattr(sp, k) is not None}
        data = {k: torch.empty((len(idx),) + tuple(st.shape[1:]), dtype=st.dtype, device=st.device)
                for k, st in stores.items()}
        for j, i in enumerate(idx):      # copy image by image, releasing each: memory stays within the budget
            for k, st in stores.items():
                data[k][j] = st[i]
            sp.images.release([i])
        self._set_data = data
        sp.prefetch(self._next.tolist())

    def sample(self, batch_size: int | None = None) -> RayBatch:
        n = batch_size or self.batch_size
        N, H, W = self.split.images.shape[:3]
        g = self.generator
        local = None
        if self.working_set is None:
            img = torch.randint(0, N, (n,), generator=g, device="cpu")
        else:
            ws = self._image_set()
            local = torch.randint(0, len(ws), (n,), generator=g, device="cpu")
            img = ws[local]
        flat = torch.randint(0, H * W, (n,), generator=g, device="cpu")   # drawn on the CPU, then moved
        pixel = torch.stack([flat % W, flat // W], -1)
        jit = torch.rand(n, 2, generator=g, device="cpu") if self.jitter else None
        r, w = self.shard
        if w > 1:
            sl = slice(r * n // w, (r + 1) * n // w)
            img, pixel, jit = img[sl], pixel[sl], None if jit is None else jit[sl]
            local = None if local is None else local[sl]
        dev = self.split.images.device
        jit = None if jit is None else jit.to(dev)
        if self._set_data is None or local is None:
            return gather_rays(self.split, img.to(dev), pixel.to(dev), jit)
        # a streamed split: the pixels come from the gathered working set (same values)
        img, pixel, local = img.to(dev), pixel.to(dev), local.to(dev)
        u, v = pixel[:, 0], pixel[:, 1]
        offs = torch.full_like(pixel, 0.5, dtype=torch.float32) if jit is None else jit.float()
        o, d = self.split.cameras.pixel_rays(img, pixel.float() + offs)
        at = lambda k: None if k not in self._set_data else self._set_data[k][local, v, u]  # noqa: E731
        return RayBatch(o, d, at("images"), img, pixel, at("masks"), at("alpha"))

    def __iter__(self):
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        st = {"generator": self.generator.get_state(), "batch_size": self.batch_size}
        if self.working_set is not None:
            st["working_set"] = {"size": self.working_set, "refresh_every": self.refresh_every,
                                 "generator": self._set_gen.get_state(), "perm": list(self._perm),
                                 "current": None if self._current is None else self._current.tolist(),
                                 "next": None if self._next is None else self._next.tolist(), "uses": self._uses}
        return st

    def load_state_dict(self, state: dict) -> None:
        """Restore the random stream. The batch size stays the one this sampler was made with: on
        ``--resume`` that is the run's configuration, flags included (``--rays-per-batch``). Working
        sets continue where they were when the size and refresh period are unchanged (a different
        image-cache budget starts new sets)."""
        self.generator.set_state(state["generator"])
        ws = state.get("working_set")
        if ws and self.working_set == ws.get("size") and self.refresh_every == ws.get("refresh_every"):
            self._set_gen.set_state(ws["generator"])
            self._perm = list(ws["perm"])
            self._current = None if ws["current"] is None else torch.tensor(ws["current"], dtype=torch.long, device="cpu")
            self._next = None if ws["next"] is None else torch.tensor(ws["next"], dtype=torch.long, device="cpu")
            self._uses = int(ws["uses"])
            if getattr(self.split, "streaming", False) and self._current is not None:
                self._gather_set()


def iter_images(split: Split):
    """Yield ``(index, origins (H,W,3), directions (H,W,3), rgb (H,W,3), mask (H,W) or None)`` per image
    (a streamed split decodes the next images in the background meanwhile)."""
    for i in range(len(split)):
        split.prefetch(range(i + 1, min(len(split), i + 3)))
        o, d = split.cameras.generate_rays(i)
        yield i, o, d, split.images[i], None if split.masks is None else split.masks[i]
