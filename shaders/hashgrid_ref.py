"""Pure-torch reference of the multiresolution hash encoding in :mod:`shaders.hashgrid`.

Same math, written with plain tensor ops so that torch autograd gives the gradients w.r.t. ``x``
and ``table``. Brute force and memory hungry (8 gathers per level): for tests and small inputs.
"""
from __future__ import annotations

import torch

from .hashgrid import PRIMES

_MASK32 = 0xFFFFFFFF


def corner_indices(v: torch.Tensor, res: int, T: int) -> torch.Tensor:
    """Table rows of integer grid vertices ``v (..., 3)`` (int64) at one level."""
    r1 = res + 1
    if r1 ** 3 <= T:
        return v[..., 0] + v[..., 1] * r1 + v[..., 2] * r1 * r1
    h = (v[..., 0] * PRIMES[0]) & _MASK32
    h = h ^ ((v[..., 1] * PRIMES[1]) & _MASK32)
    h = h ^ ((v[..., 2] * PRIMES[2]) & _MASK32)
    return h % T


def hash_encode_reference(x: torch.Tensor, table: torch.Tensor, resolutions) -> torch.Tensor:
    """``x (N, 3)``, ``table (L, T, F)``, ``resolutions`` (L,) -> ``(N, L F)`` (differentiable)."""
    L, T, F = table.shape
    res = [int(r) for r in torch.as_tensor(resolutions).tolist()]
    xc = x.clamp(0.0, 1.0)
    outs = []
    for l in range(L):
        r = res[l]
        p = xc * r
        c = torch.floor(p.detach()).long().clamp(max=r - 1)
        w = p - c.to(p.dtype)
        acc = torch.zeros(x.shape[0], F, dtype=table.dtype, device=table.device)
        for b in range(8):
            bits = torch.tensor([b & 1, (b >> 1) & 1, (b >> 2) & 1], device=x.device)
            wt = torch.where(bits.bool(), w, 1 - w).prod(-1)
            idx = corner_indices(c + bits, r, T)
            acc = acc + wt[:, None] * table[l][idx]
        outs.append(acc)
    return torch.cat(outs, -1)


def hash_encode_jacobian_reference(x: torch.Tensor, table: torch.Tensor, resolutions):
    """The encoding and its Jacobian w.r.t. ``x``: ``(N, L F)`` and ``(N, L F, 3)``, from the
    derivative of the trilinear weights written out (differentiable w.r.t. ``table``; ``x`` is
    taken as a constant, as in :func:`shaders.hashgrid.hash_encode_jacobian`)."""
    L, T, F = table.shape
    res = [int(r) for r in torch.as_tensor(resolutions).tolist()]
    x = x.detach()
    inside = ((x >= 0) & (x <= 1)).to(table.dtype)
    xc = x.clamp(0.0, 1.0)
    outs, jacs = [], []
    for l in range(L):
        r = res[l]
        p = xc * r
        c = torch.floor(p).long().clamp(max=r - 1)
        w = (p - c.to(p.dtype)).to(table.dtype)
        acc = torch.zeros(x.shape[0], F, dtype=table.dtype, device=table.device)
        jac = torch.zeros(x.shape[0], F, 3, dtype=table.dtype, device=table.device)
        for b in range(8):
            bits = torch.tensor([b & 1, (b >> 1) & 1, (b >> 2) & 1], device=x.device).bool()
            f = torch.where(bits, w, 1 - w)                         # (N, 3) per-axis factors
            sign = torch.where(bits, 1.0, -1.0).to(table.dtype)
            dw = torch.stack([sign[0] * f[:, 1] * f[:, 2], f[:, 0] * sign[1] * f[:, 2],
                              f[:, 0] * f[:, 1] * sign[2]], -1) * r * inside
            rows = table[l][corner_indices(c + bits.long(), r, T)]     # (N, F)
            acc = acc + f.prod(-1)[:, None] * rows
            jac = jac + rows[:, :, None] * dw[:, None, :]
        outs.append(acc)
        jacs.append(jac)
    return torch.cat(outs, -1), torch.cat(jacs, 1)
