"""Pure-torch twin of :mod:`shaders.splat` (same math, brute force, torch autograd).

Every pixel looks at every Gaussian (sorted by depth), keeping those whose tile rectangle covers
the pixel's tile, so it reproduces the kernel's tile-based culling exactly; for small inputs
only (memory ``H * W * N``). Used by the tests to check the kernel's forward values and its
hand-written backward, and by ``torch.autograd.gradcheck`` in float64.
"""
from __future__ import annotations

import torch

from shaders.splat import (ALPHA_MAX, ALPHA_MIN, EPS2D, EXTENT, NEAR_PLANE, T_MIN, TILE, depth_factor,
                           w2c_from_c2w)

__all__ = ["project_reference", "splat_reference", "quat_to_rotmat"]


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(N,4) wxyz (normalised here) -> (N,3,3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                       -1).reshape(q.shape[:-1] + (3, 3))


def project_reference(means, quats, log_scales, opacity_logits, w2c, fx, fy, cx, cy, width,
                      height, tile=TILE, near_plane=NEAR_PLANE, eps2d=EPS2D):
    """Per-Gaussian footprint: dict(uv (N,2), conic (N,3) = Q00, Q01, Q11, opacity (N,),
    z (N,), rect (N,4) int tile range x0, x1, y0, y1 (empty = not drawn), drawn (N,) bool)."""
    W, H = int(width), int(height)
    dt = means.dtype
    w2c = w2c.to(dt)
    Rw, tw = w2c[:3, :3], w2c[:3, 3]
    t = means @ Rw.T + tw
    x, y, z = t.unbind(-1)
    qn = quats.norm(dim=-1)
    R = quat_to_rotmat(quats)
    M = R * torch.exp(log_scales)[:, None, :]
    V = Rw @ (M @ M.transpose(1, 2)) @ Rw.T
    valid = (z > near_plane) & (qn > 0)
    zs = torch.where(valid, z, torch.ones_like(z))            # keeps culled rows finite
    tanx, tany = 0.5 * W / fx, 0.5 * H / fy
    rx = torch.clamp(x / zs, min=-(cx / fx + 0.3 * tanx), max=(W - cx) / fx + 0.3 * tanx)
    ry = torch.clamp(y / zs, min=-(cy / fy + 0.3 * tany), max=(H - cy) / fy + 0.3 * tany)
    O = torch.zeros_like(zs)
    J = torch.stack([fx / zs, O, -fx * rx / zs, O, fy / zs, -fy * ry / zs], -1).reshape(-1, 2, 3)
    cov = J @ V @ J.transpose(1, 2)
    a, b, c = cov[:, 0, 0] + eps2d, cov[:, 0, 1], cov[:, 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    dets = torch.where(valid, det, torch.ones_like(det))
    conic = torch.stack([c / dets, -b / dets, a / dets], -1)
    uv = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        m = 0.5 * (a + c)
        lam = m + torch.sqrt(torch.clamp(m * m - det, min=0.1))
        r = torch.ceil(EXTENT * torch.sqrt(lam.clamp_min(0)))
        u, v = uv[:, 0], uv[:, 1]
        GW, GH = -(-W // tile) * tile, -(-H // tile) * tile        # the tile grid's pixels
        px0 = torch.ceil(torch.clamp(u - r - 0.5, min=-1.0)).clamp_min(0)
        px1 = torch.floor(torch.clamp(u + r - 0.5, max=float(GW))).clamp_max(GW - 1)
        py0 = torch.ceil(torch.clamp(v - r - 0.5, min=-1.0)).clamp_min(0)
        py1 = torch.floor(torch.clamp(v + r - 0.5, max=float(GH))).clamp_max(GH - 1)
        drawn = valid & (px0 <= px1) & (py0 <= py1)
        rect = torch.stack([px0.div(tile, rounding_mode="floor"),
                            px1.div(tile, rounding_mode="floor") + 1,
                            py0.div(tile, rounding_mode="floor"),
                            py1.div(tile, rounding_mode="floor") + 1], -1).long()
        rect[~drawn] = 0
    return dict(uv=uv, conic=conic, opacity=torch.sigmoid(opacity_logits.reshape(-1)), z=z,
                rect=rect, drawn=drawn)


def splat_reference(means, quats, log_scales, opacity_logits, colors, c2w, fx, fy, cx, cy,
                    width, height, background=None, *, tile=TILE, near_plane=NEAR_PLANE,
                    eps2d=EPS2D, depth_mode="ray", block=None) -> dict:
    """Same signature and outputs as :func:`shaders.splat.splat` (same device and dtype as the
    inputs), brute force; ``block`` is accepted and ignored (it changes no value)."""
    W, H = int(width), int(height)
    dt, dev = means.dtype, means.device
    w2c = w2c_from_c2w(c2w).to(dev, dt)
    p = project_reference(means, quats, log_scales, opacity_logits, w2c, fx, fy, cx, cy, W, H,
                          tile, near_plane, eps2d)
    idx = torch.nonzero(p["drawn"]).reshape(-1)
    idx = idx[torch.argsort(p["z"].detach()[idx], stable=True)]
    uv, conic, op, z = p["uv"][idx], p["conic"][idx], p["opacity"][idx], p["z"][idx]
    col, rect = colors.to(dt)[idx], p["rect"][idx]
    py, px = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    py, px = py.reshape(-1), px.reshape(-1)
    tx, ty = (px // tile)[:, None], (py // tile)[:, None]
    inside = (rect[None, :, 0] <= tx) & (tx < rect[None, :, 1]) & \
        (rect[None, :, 2] <= ty) & (ty < rect[None, :, 3])                  # (HW, n)
    dx = uv[None, :, 0] - (px.to(dt) + 0.5)[:, None]
    dy = uv[None, :, 1] - (py.to(dt) + 0.5)[:, None]
    power = -0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) - conic[:, 1] * dx * dy
    alpha = torch.clamp(op * torch.exp(power), max=ALPHA_MAX)
    keep = inside & (power <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    with torch.no_grad():  # the stop rule: T after a blended Gaussian must stay >= T_MIN
        t_after = torch.cumprod(1 - alpha, dim=1)
        keep = keep & (t_after >= T_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    T = torch.cumprod(1 - alpha, dim=1)
    T_before = torch.cat([torch.ones_like(T[:, :1]), T[:, :-1]], 1)
    w = alpha * T_before
    C = (w @ col).reshape(H, W, 3)
    A = (1 - (T[:, -1] if T.shape[1] else torch.ones(H * W, dtype=dt, device=dev))).reshape(H, W)
    D = (w @ z).reshape(H, W) * depth_factor((fx, fy, cx, cy, W, H), depth_mode, dt, dev)
    n = keep.sum(1).to(torch.int32).reshape(H, W)
    rgb = C
    if background is not None:
        rgb = C + (1 - A)[..., None] * torch.as_tensor(background, dtype=dt, device=dev).reshape(3)
    A_safe = torch.where(A > 0, A, torch.ones_like(A))      # no 0/0 in the backward
    depth = torch.where(A > 0, D / A_safe, torch.zeros_like(D))
    return dict(rgb=rgb, alpha=A, depth=depth, depth_sum=D, n_evals=n)

