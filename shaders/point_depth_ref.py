"""Pure-torch twin of :mod:`shaders.point_depth`: the same coverage rule, written with
``scatter_reduce(amin)`` over a window of pixel offsets around each point (O(V N R^2) memory: for
tests and small inputs)."""
from __future__ import annotations

import math

import torch


def splat_depth_reference(uv: torch.Tensor, z: torch.Tensor, rad, height: int, width: int,
                          max_radius: float = 16.0) -> torch.Tensor:
    """``(V, height, width)`` float32 z-buffers, ``+inf`` where no point covers a pixel."""
    uv = uv.to(torch.float32)
    z = z.to(torch.float32)
    rad = torch.as_tensor(rad, dtype=torch.float32)
    if rad.ndim == 0:
        rad = rad.expand(z.shape)
    V, N = z.shape
    H, W = int(height), int(width)
    out = torch.full((V, H * W), float("inf"), dtype=torch.float32)
    if V == 0 or N == 0:
        return out.reshape(V, H, W)
    big = 1e30
    u, w = uv[..., 0], uv[..., 1]
    ok = (z > 0) & (z < big) & (u.abs() < big) & (w.abs() < big) & (rad >= 0) & (rad < big)
    r = torch.minimum(torch.where(ok, rad, torch.zeros_like(rad)), torch.tensor(float(max_radius)))
    u = torch.where(ok, u, torch.zeros_like(u))
    w = torch.where(ok, w, torch.zeros_like(w))
    fu, fw = torch.floor(u), torch.floor(w)
    vid = torch.arange(V)[:, None].expand(V, N)

    def put(mask, x, y):
        m = mask & ok & (x >= 0) & (x < W) & (y >= 0) & (y < H)
        flat = (y[m].long() * W + x[m].long())
        out.view(-1).scatter_reduce_(0, vid[m] * (H * W) + flat, z[m], reduce="amin")

    put(torch.ones_like(ok), fu, fw)          # own pixel
    R = int(math.ceil(float(r.max()))) + 1 if ok.any() else 0
    r2 = r * r
    for oy in range(-R, R + 1):
        y = fw + oy
        dy = y + 0.5 - w
        for ox in range(-R, R + 1):
            x = fu + ox
            dx = x + 0.5 - u
            put(dx * dx + dy * dy <= r2, x, y)
    return out.reshape(V, H, W)
