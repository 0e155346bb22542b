"""Depth maps of a point cloud: every point splatted as a disk into a z-buffer (Taichi kernel).

What it computes (matched by the torch twin :func:`shaders.point_depth_ref.splat_depth_reference`)
-------------------------------------------------------------------------------------------------
Inputs per view ``v`` and point ``n``: pixel coordinates ``uv[v, n] = (u, w)`` (continuous, pixel
centres at ``+0.5``, as :meth:`engine.cameras.Cameras.project` returns them), camera-space depth
``z[v, n]`` and a disk radius in pixels ``rad[v, n]``. A point with a finite ``z > 0``, finite
``uv`` and finite ``rad >= 0`` covers pixel ``(x, y)`` of an ``H x W`` image when

* ``(x, y) == (floor(u), floor(w))`` (its own pixel, so a point always reaches the map), or
* ``(x + 0.5 - u)^2 + (y + 0.5 - w)^2 <= r^2`` with ``r = min(rad, max_radius)``,

and the depth map holds, per pixel, the smallest ``z`` of the points covering it (``+inf`` where
none does). Points whose own pixel lies outside the image still cover the pixels of their disk that
lie inside. Non-finite or non-positive depths and non-finite coordinates are skipped, so an all-NaN
or out-of-view cloud gives an all-``inf`` map, never an out-of-range write.

Not differentiable: the map places samples and scores visibility (GPF), it carries no gradient.
The kernel runs one thread per (view, point) and writes with ``atomic_min``.
"""

import math

import taichi as ti
import torch

from . import runtime

__all__ = ["splat_depth", "MAX_RADIUS_PX"]

#: Largest disk radius in pixels (a point right in front of a camera must not cover the image).
MAX_RADIUS_PX = 16.0

_CACHE: dict = {}


def _kernel():
    if "splat" in _CACHE:
        return _CACHE["splat"]

    @ti.kernel
    def splat(uv: ti.types.ndarray(), z: ti.types.ndarray(), rad: ti.types.ndarray(), max_r: ti.f32,
              out: ti.types.ndarray()):
        H = out.shape[1]
        W = out.shape[2]
        big = ti.cast(1e30, ti.f32)
        for v, n in ti.ndrange(uv.shape[0], uv.shape[1]):
            u = uv[v, n, 0]
            w = uv[v, n, 1]
            zz = z[v, n]
            r = rad[v, n]
            ok = (zz > 0) and (zz < big) and (ti.abs(u) < big) and (ti.abs(w) < big) and (r >= 0) and (r < big)
            if ok:
                r = ti.min(r, max_r)
                fu = ti.floor(u)
                fw = ti.floor(w)
                # own pixel
                if fu >= 0 and fu < W and fw >= 0 and fw < H:
                    ti.atomic_min(out[v, ti.cast(fw, ti.i32), ti.cast(fu, ti.i32)], zz)
                x0 = ti.max(ti.floor(u - r - 0.5), 0.0)
                x1 = ti.min(ti.floor(u + r - 0.5), ti.cast(W - 1, ti.f32))
                y0 = ti.max(ti.floor(w - r - 0.5), 0.0)
                y1 = ti.min(ti.floor(w + r - 0.5), ti.cast(H - 1, ti.f32))
                if x0 <= x1 and y0 <= y1:
                    r2 = r * r
                    for yy in range(ti.cast(y0, ti.i32), ti.cast(y1, ti.i32) + 1):
                        dy = ti.cast(yy, ti.f32) + 0.5 - w
                        for xx in range(ti.cast(x0, ti.i32), ti.cast(x1, ti.i32) + 1):
                            dx = ti.cast(xx, ti.f32) + 0.5 - u
                            if dx * dx + dy * dy <= r2:
                                ti.atomic_min(out[v, yy, xx], zz)

    _CACHE["splat"] = splat
    return splat


def _check(uv, z, rad):
    if uv.ndim != 3 or uv.shape[-1] != 2:
        raise ValueError(f"splat_depth: uv must be (V, N, 2), got {tuple(uv.shape)}")
    if tuple(z.shape) != tuple(uv.shape[:2]):
        raise ValueError(f"splat_depth: z must be (V, N) = {tuple(uv.shape[:2])}, got {tuple(z.shape)}")
    if tuple(rad.shape) != tuple(uv.shape[:2]):
        raise ValueError(f"splat_depth: rad must be (V, N) = {tuple(uv.shape[:2])}, got {tuple(rad.shape)}")


def splat_depth(uv: torch.Tensor, z: torch.Tensor, rad, height: int, width: int,
                max_radius: float = MAX_RADIUS_PX) -> torch.Tensor:
    """Per-view z-buffers ``(V, height, width)`` float32 of splatted points (module docstring).

    ``uv (V, N, 2)``, ``z (V, N)``, ``rad`` (V, N) or a scalar radius in pixels.
    """
    runtime.init()
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"splat_depth: image size must be >= 1x1, got {width}x{height}")
    if not (isinstance(max_radius, (int, float)) and math.isfinite(max_radius) and max_radius >= 0):
        raise ValueError(f"splat_depth: max_radius must be a finite number >= 0, got {max_radius!r}")
    dev = runtime.torch_device()
    uv = torch.as_tensor(uv)
    out_dev = uv.device
    uv = uv.to(dev, torch.float32).contiguous()
    z = torch.as_tensor(z).to(dev, torch.float32).contiguous()
    rad = torch.as_tensor(rad, dtype=torch.float32).to(dev)
    if rad.ndim == 0:
        rad = rad.expand(uv.shape[:2])
    rad = rad.contiguous()
    _check(uv, z, rad)
    out = torch.full((uv.shape[0], int(height), int(width)), float("inf"), dtype=torch.float32, device=dev)
    if uv.shape[0] and uv.shape[1]:
        with runtime.runtime_lock:
            _kernel()(uv, z, rad, float(max_radius), out)
    return out.to(out_dev)
