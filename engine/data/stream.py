"""Images that stream from disk: a bounded cache of decoded images with background prefetch.

A dataset whose decoded images fit the image-cache budget is loaded eagerly, as (N, H, W, 3)
tensors (the common case: nothing changes). One that does not fit keeps, per split, an
:class:`ImageStore` in place of each of ``images`` / ``alpha`` / ``masks``: an object that looks
like the tensor to the code that reads it (``store[i]`` is image ``i``, ``store[idx, v, u]``
gathers pixels, ``.shape``, ``.dtype``, ``.device``, ``.to()``, ``.float()``) and decodes images on
first use with exactly the eager path's code (:func:`engine.data.images.read_image`, same
downscale and background compositing), so every value is bit-identical to eager loading.

Decoded images live in one :class:`ImageCache` per dataset: least-recently-used entries go once
the budget is exceeded; ``prefetch(indices)`` decodes ahead in a small thread pool (PIL releases
the GIL while decoding), and a store read sequentially (evaluation, the visual hull) reads ahead
by itself. The trainer's ray sampler draws rays from working sets of images that fit the cache
(:class:`engine.data.sampler.RaySampler`), prefetching the next set while the current one trains.

Budget (``image_cache``, CLI ``--image-cache``): ``auto`` (default) = half the memory available
when the dataset loads (``/proc/meminfo`` MemAvailable) divided by the local data-parallel ranks;
a number of MB (``2048``, ``2048MB``, ``2GB``); a number of images (``300img``); ``all`` (always
load everything, never stream).
"""
from __future__ import annotations

import os
import re
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["CachePlan", "ImageCache", "ImageSource", "ImageStore", "parse_image_cache", "auto_budget_bytes",
           "is_store"]

MB = 1 << 20


@dataclass(frozen=True)
class CachePlan:
    """A parsed ``image_cache`` value: ``kind`` is ``auto`` | ``bytes`` | ``images`` | ``all``."""

    kind: str
    value: float = 0.0

    def describe(self) -> str:
        if self.kind == "bytes":
            return f"{self.value / MB:.0f} MB"
        if self.kind == "images":
            return f"{int(self.value)} images"
        return self.kind


def parse_image_cache(value) -> CachePlan:
    """``auto`` | ``all`` | MB as a number | ``<n>MB`` / ``<n>GB`` | ``<n>img`` -> :class:`CachePlan`.

    >>> parse_image_cache("2GB").value / MB, parse_image_cache("300img").kind, parse_image_cache(64).describe()
    (2048.0, 'images', '64 MB')
    """
    if isinstance(value, CachePlan):
        return value
    if value is None:
        return CachePlan("auto")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (value > 0 and np.isfinite(value)):
            raise ConfigError(f"--image-cache must be > 0 MB, got {value!r}")
        return CachePlan("bytes", float(value) * MB)
    s = str(value).strip().lower().replace(" ", "")
    if s in ("auto", "all"):
        return CachePlan(s)
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(mb|m|gb|g|kb|k|img|imgs|image|images)?", s)
    if not m:
        raise ConfigError(f"--image-cache {value!r}: expected auto, all, a size in MB (e.g. 2048, 512MB, 2GB) "
                          f"or a number of images (e.g. 300img)")
    x, unit = float(m.group(1)), m.group(2) or "mb"
    if not x > 0:
        raise ConfigError(f"--image-cache {value!r} must be > 0")
    if unit.startswith("i"):
        if x != int(x):
            raise ConfigError(f"--image-cache {value!r}: a number of images must be whole")
        return CachePlan("images", float(int(x)))
    scale = {"k": 1 / 1024, "m": 1, "g": 1024}[unit[0]]
    return CachePlan("bytes", x * scale * MB)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a quarter of physical memory, else 4 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_budget_bytes() -> int:
    """The ``auto`` budget: half the available memory, shared by the local data-parallel ranks."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return int(available_memory_bytes() * 0.5 / local)


# ------------------------------------------------------------------------------------------ decode
@dataclass
class Decoded:
    """One decoded image: rgb (H, W, 3) float32, alpha (H, W) float32 or None, mask (H, W) bool or None."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rgb, self.alpha, self.mask) if t is not None)


class ImageSource:
    """How to decode image ``i`` of one split, exactly as the eager loader does.

    Args:
        paths, sizes_in, size_out: the files, the full-resolution size each camera expects, and the
            split's one output size ``(width, height)``.
        background: RGB list used to composite RGBA images.
        has_alpha: whether the split keeps an alpha channel (some image has one: the others get 1).
        mask_paths: optional mask file per image.
    """

    def __init__(self, name: str, paths: list[Path], sizes_in, size_out, background, has_alpha: bool,
                 mask_paths: list[Path] | None = None):
        self.name = name
        self.paths = [Path(p) for p in paths]
        self.sizes_in = list(sizes_in)
        self.size_out = (int(size_out[0]), int(size_out[1]))
        self.background = list(background)
        self.has_alpha = bool(has_alpha)
        self.mask_paths = None if mask_paths is None else [Path(p) for p in mask_paths]

    def __len__(self) -> int:
        return len(self.paths)

    def image_bytes(self) -> int:
        w, h = self.size_out
        return w * h * (12 + (4 if self.has_alpha else 0) + (1 if self.mask_paths is not None else 0))

    def decode(self, i: int) -> Decoded:
        from .images import read_image, read_mask

        im = read_image(self.paths[i], expected_size=self.sizes_in[i], background=self.background,
                        out_size=self.size_out)
        alpha = None
        if self.has_alpha:
            a = im.alpha if im.alpha is not None else np.ones(im.rgb.shape[:2], np.float32)
            alpha = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        mask = None
        if self.mask_paths is not None:
            mask = torch.from_numpy(read_mask(self.mask_paths[i], expected_size=self.sizes_in[i],
                                              out_size=self.size_out))
        return Decoded(torch.from_numpy(im.rgb), alpha, mask)


# ------------------------------------------------------------------------------------------- cache
_LIVE: "weakref.WeakSet[ImageCache]" = weakref.WeakSet()


def _cancel_prefetches() -> None:
    """At interpreter exit, before worker threads are joined: drop queued decodes (the process
    would otherwise decode every image still queued before it can exit)."""
    for cache in list(_LIVE):
        cache.close(wait=False)


try:   # threading's exit hooks run before concurrent.futures joins its workers (atexit is too late)
    threading._register_atexit(_cancel_prefetches)   # noqa: SLF001
except (AttributeError, RuntimeError):   # pragma: no cover - other Pythons: exits after the queue drains
    pass


class ImageCache:
    """Least-recently-used decoded images of a dataset's splits, at most ``budget_bytes`` (the image
    in use is never evicted, so one image more than the budget can be resident), with ``workers``
    background decoding threads for :meth:`prefetch`.

    Counters ``hits``, ``misses`` (decoded on demand, the caller waited), ``prefetched``
    (decoded in the background) and ``waits`` (a read that waited for a prefetch in flight).
    """

    def __init__(self, budget_bytes: int, workers: int = 2):
        self.budget_bytes = int(budget_bytes)
        self.workers = int(workers)
        self._lru: OrderedDict = OrderedDict()
        self._inflight: dict = {}
        self._lock = threading.Lock()
        self._pool = None
        self.bytes = 0
        self.hits = self.misses = self.prefetched = self.waits = 0
        _LIVE.add(self)

    def capacity(self, source: ImageSource) -> int:
        """How many of ``source``'s images fit the budget (at least 1)."""
        return max(1, self.budget_bytes // max(1, source.image_bytes()))

    def stats(self) -> dict:
        return {"budget_mb": round(self.budget_bytes / MB, 1), "resident_mb": round(self.bytes / MB, 1),
                "resident_images": len(self._lru), "hits": self.hits, "misses": self.misses,
                "prefetched": self.prefetched, "waits": self.waits}

    def _insert(self, key, entry: Decoded) -> None:   # lock held
        if key in self._lru:
            return
        self._lru[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.budget_bytes and len(self._lru) > 1:   # the newest entry stays
            _, old = self._lru.popitem(last=False)
            self.bytes -= old.nbytes

    def get(self, source: ImageSource, i: int) -> Decoded:
        key = (id(source), int(i))
        with self._lock:
            entry = self._lru.get(key)
            if entry is not None:
                self._lru.move_to_end(key)
                self.hits += 1
                return entry
            fut = self._inflight.get(key)
            if fut is not None:
                self.waits += 1
            else:
                self.misses += 1
        if fut is not None:
            try:
                return fut.result()      # a DataError raised in the worker reaches the caller unchanged
            except CancelledError:       # close() dropped it: decode here
                pass
        entry = source.decode(int(i))
        with self._lock:
            self._insert(key, entry)
        return entry

    def cached(self, source: ImageSource, i: int) -> bool:
        key = (id(source), int(i))
        return key in self._lru or key in self._inflight

    def prefetch(self, source: ImageSource, indices) -> int:
        """Decode these images in the background (those not resident or in flight, at most as many
        as fit half the budget). Returns how many were queued."""
        room = max(1, self.capacity(source) // 2)
        todo = []
        with self._lock:
            for i in indices:
                key = (id(source), int(i))
                if key in self._lru or key in self._inflight or len(todo) >= room:
                    continue
                todo.append(key)
                self._inflight[key] = None
            if not todo:
                return 0
            try:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kernelight-images")
                for key in todo:
                    self._inflight[key] = self._pool.submit(self._work, source, key)
            except RuntimeError:         # interpreter shutting down: no more background work
                for key in todo:
                    if self._inflight.get(key) is None:
                        self._inflight.pop(key, None)
                return 0
        return len(todo)

    def _work(self, source: ImageSource, key) -> Decoded:
        try:
            entry = source.decode(key[1])
        except BaseException:
            with self._lock:
                self._inflight.pop(key, None)
            raise
        with self._lock:
            self._insert(key, entry)
            self._inflight.pop(key, None)
            self.prefetched += 1
        return entry

    def discard(self, source: ImageSource, indices) -> None:
        """Drop these images from the cache (their holder keeps its own copy, e.g. a working set)."""
        with self._lock:
            for i in indices:
                e = self._lru.pop((id(source), int(i)), None)
                if e is not None:
                    self.bytes -= e.nbytes

    def wait(self) -> None:
        """Block until every prefetch in flight has finished (tests, benchmarks)."""
        while True:
            with self._lock:
                futs = [f for f in self._inflight.values() if f is not None]
            if not futs:
                return
            for f in futs:
                try:
                    f.result()
                except Exception:   # noqa: BLE001 - reported to whoever reads that image
                    pass

    def close(self, wait: bool = True) -> None:
        """Stop the background decoding (queued images are dropped; reads still decode on demand)."""
        with self._lock:
            pool, self._pool = self._pool, None
            for key, fut in list(self._inflight.items()):
                if fut is not None and fut.cancel():
                    del self._inflight[key]
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)


# ------------------------------------------------------------------------------------------- store
_FIELDS = {"rgb": 3, "alpha": 0, "mask": 0}


def is_store(x) -> bool:
    return isinstance(x, ImageStore)


class ImageStore:
    """One field (``rgb`` / ``alpha`` / ``mask``) of a streamed split, read like an (N, H, W[, 3]) tensor.

    ``store[i]`` -> image ``i`` (H, W[, 3]); ``store[idx, v, u]`` with an int or (R,) index and
    (R,) rows ``v`` / columns ``u`` -> (R[, 3]) pixels, in the order given. Results are on
    ``.device`` (decoded images stay in host memory; only what is read is copied).
    """

    def __init__(self, source: ImageSource, cache: ImageCache, field: str = "rgb", device="cpu",
                 dtype: torch.dtype | None = None, readahead: int = 4):
        if field not in _FIELDS:
            raise ValueError(f"field must be one of {sorted(_FIELDS)}, got {field!r}")
        self.source, self.cache, self.field = source, cache, field
        self._device = torch.device(device)
        self._native = torch.bool if field == "mask" else torch.float32
        self._dtype = dtype or self._native
        self.readahead = int(readahead)
        self._last = -2

    # tensor-like description ---------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        w, h = self.source.size_out
        c = _FIELDS[self.field]
        return torch.Size((len(self.source), h, w) + ((c,) if c else ()))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __len__(self) -> int:
        return len(self.source)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return (f"ImageStore({self.source.name}.{self.field}, shape={tuple(self.shape)}, dtype={self.dtype}, "
                f"device={self.device}, streamed; cache {self.cache.budget_bytes / MB:.0f} MB)")

    def _view(self, device=None, dtype=None) -> "ImageStore":
        return ImageStore(self.source, self.cache, self.field, self._device if device is None else device,
                          self._dtype if dtype is None else dtype, self.readahead)

    def to(self, device=None, dtype=None, **_) -> "ImageStore":
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return self._view(device, dtype)

    def cpu(self) -> "ImageStore":
        return self._view("cpu")

    def float(self) -> "ImageStore":
        return self._view(dtype=torch.float32)

    def bool(self) -> "ImageStore":
        return self._view(dtype=torch.bool)

    # reading -------------------------------------------------------------------------------
    def _image(self, i: int) -> torch.Tensor:
        n = len(self.source)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for a split of {n} images")
        i %= n
        if self.readahead and i == self._last + 1:     # sequential reading: decode the next few ahead
            self.cache.prefetch(self.source, range(i + 1, min(n, i + 1 + self.readahead)))
        self._last = i
        return getattr(self.cache.get(self.source, i), self.field)

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype != self._dtype:
            t = t.to(self._dtype)
        return t if t.device == self._device else t.to(self._device)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        idx = key[0]
        if torch.is_tensor(idx) and idx.ndim == 0:
            idx = int(idx)
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
            img = self._image(int(idx))
            rest = tuple(k.cpu() if torch.is_tensor(k) else k for k in key[1:])
            return self._out(img[rest] if rest else img)
        if torch.is_tensor(idx) and idx.ndim == 1 and len(key) == 3:
            return self._gather(idx, key[1], key[2])
        raise TypeError(f"{self!r} supports store[i] and store[index, v, u] with (R,) index tensors, got {key!r}")

    def _gather(self, idx: torch.Tensor, v, u) -> torch.Tensor:
        idx = idx.cpu().long()
        v = torch.as_tensor(v, device="cpu").long().expand_as(idx)
        u = torch.as_tensor(u, device="cpu").long().expand_as(idx)
        w, h = self.source.size_out
        c = _FIELDS[self.field]
        uniq, inverse = torch.unique(idx, return_inverse=True)
        self.cache.prefetch(self.source, [int(i) for i in uniq if not self.cache.cached(self.source, int(i))])
        out = torch.empty((idx.shape[0],) + ((c,) if c else ()), dtype=self._native, device="cpu")
        order = torch.argsort(inverse, stable=True)
        counts = torch.bincount(inverse, minlength=len(uniq)).tolist()
        start = 0
        for k, cnt in enumerate(counts):
            rows = order[start:start + cnt]
            start += cnt
            img = getattr(self.cache.get(self.source, int(uniq[k])), self.field)
            out[rows] = img[v[rows], u[rows]]
        return self._out(out)

    def prefetch(self, indices) -> int:
        """Start decoding these images in the background (see :meth:`ImageCache.prefetch`)."""
        return self.cache.prefetch(self.source, [int(i) for i in indices])

    def release(self, indices) -> None:
        """Drop these images from the cache (see :meth:`ImageCache.discard`)."""
        self.cache.discard(self.source, indices)

    def capacity(self) -> int:
        """How many of this split's images fit the cache budget."""
        return self.cache.capacity(self.source)

    def materialize(self) -> torch.Tensor:
        """Every image as one tensor (what eager loading holds): for small splits and tests only."""
        return torch.stack([self[i] for i in range(len(self))]) if len(self) else torch.empty(self.shape)
