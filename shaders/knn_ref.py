"""Brute-force pure-torch twin of :mod:`shaders.knn`: every query against every point, in chunks.

Same definition: ``d2 = dx*dx + dy*dy + dz*dz`` (``d = p - q``, the same formula as the kernel,
not the ``|p|^2 - 2 p.q + |q|^2`` expansion ``torch.cdist`` uses, whose rounding would differ),
points with ``d2 <= radius^2``, the ``k`` smallest in ascending ``(d2, index)`` order (stable
sort over point indices), ``-1`` / ``+inf`` where fewer than ``k``. O(Q N) time: for tests and
small inputs.
"""
from __future__ import annotations

import torch


def knn_reference(points: torch.Tensor, queries: torch.Tensor, k: int, radius: float,
                  chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``points (N, 3)``, ``queries (Q, 3)`` -> ``(idx (Q, k) int32, dist2 (Q, k))``."""
    dtype = points.dtype if points.dtype in (torch.float32, torch.float64) else torch.float32
    p = points.to(dtype)
    q = queries.to(dtype)
    nq, n = q.shape[0], p.shape[0]
    idx = torch.full((nq, k), -1, dtype=torch.int32)
    d2o = torch.full((nq, k), float("inf"), dtype=dtype)
    r2 = torch.tensor(float(radius) ** 2, dtype=dtype)
    if n == 0:
        return idx, d2o
    for a in range(0, nq, chunk):
        qc = q[a:a + chunk]
        d = p[None, :, :] - qc[:, None, :]
        d2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
        d2 = torch.where(d2 <= r2, d2, torch.full_like(d2, float("inf")))   # NaN queries -> inf
        s, order = torch.sort(d2, dim=1, stable=True)
        m = min(k, n)
        s, order = s[:, :m], order[:, :m]
        found = torch.isfinite(s)
        idx[a:a + chunk, :m] = torch.where(found, order, torch.full_like(order, -1)).to(torch.int32)
        d2o[a:a + chunk, :m] = s
    return idx, d2o
