"""Pure-torch brute-force references for :mod:`shaders.bvh` (small inputs: O(R * N) memory).

They implement the same math as the Taichi traversals (see :mod:`shaders.bvh_traverse` for the
slab and watertight triangle conventions) without any hierarchy, so BVH results can be checked
against them: :func:`segment_query_ref` reproduces the segment slab test bit for bit in float32,
:func:`closest_hit_ref` tests every ray against every triangle.
"""
from __future__ import annotations

import math

import torch

_BIG = 1e30
_PARALLEL_EPS = 1e-30


def segment_overlap_ref(lo, hi, origins, dirs, t0, t1) -> torch.Tensor:
    """(R, N) bool: does segment r (``o + t d, t in [t0, t1]``) overlap closed box n?

    lo, hi: (N, 3); origins, dirs: (R, 3); t0, t1: (R,) or scalars. Computed in float32 with the
    exact formula of ``bvh_segment_collect`` (components with ``|d| < 1e-30`` are parallel).
    """
    f = torch.float32
    lo, hi = lo.to(f)[None], hi.to(f)[None]            # (1, N, 3)
    o, d = origins.to(f)[:, None], dirs.to(f)[:, None]  # (R, 1, 3)
    r = origins.shape[0]
    t0 = torch.as_tensor(t0, dtype=f).expand(r)[:, None]
    t1 = torch.as_tensor(t1, dtype=f).expand(r)[:, None]
    zero = d.abs() < _PARALLEL_EPS
    inv = torch.where(zero, torch.zeros_like(d), 1.0 / torch.where(zero, torch.ones_like(d), d))
    a = (lo - o) * inv
    b = (hi - o) * inv
    zf = zero.to(f)
    near = torch.minimum(a, b) - zf * _BIG
    far = torch.maximum(a, b) + zf * _BIG
    tn = torch.maximum(t0, near.amax(-1))
    tf = torch.minimum(t1, far.amin(-1))
    ok = tn <= tf
    outside = zero & ((o < lo) | (o > hi))
    return ok & ~outside.any(-1)


def segment_query_ref(lo, hi, origins, dirs, t0, t1) -> list[set[int]]:
    """For each segment, the set of box indices it overlaps (see :func:`segment_overlap_ref`)."""
    m = segment_overlap_ref(lo, hi, origins, dirs, t0, t1)
    return [set(torch.nonzero(row).flatten().tolist()) for row in m]


def ray_triangle_ref(vertices, faces, origins, dirs, tmin=0.0, tmax=math.inf):
    """All ray/triangle hits by the watertight test of :mod:`shaders.bvh_traverse` (two-sided,
    shear onto the dominant axis, edge functions in float64 from values in the dtype of
    ``vertices``; ``det == 0`` misses).

    Returns ``t`` (R, F) with inf where there is no hit in ``[tmin, tmax)``, and ``u, v`` (R, F)
    (weights of the face's second and third vertex). Use float64 vertices for a high-precision
    reference.
    """
    dt = vertices.dtype
    tri = vertices[faces.long()]                       # (F, 3, 3)
    o = origins.to(dt)
    d = dirs.to(dt)
    R = o.shape[0]
    kz = d.abs().argmax(-1)                            # first of equal maxima, like the kernel
    kx = (kz + 1) % 3
    ky = (kx + 1) % 3
    pick = lambda a, k: torch.take_along_dim(a, k[:, None], -1)[:, 0]      # noqa: E731
    dz = pick(d, kz)
    dz = torch.where(dz == 0, torch.full_like(dz, 1e-30), dz)
    sz = 1.0 / dz
    sx, sy = pick(d, kx) * sz, pick(d, ky) * sz
    p = tri[None] - o[:, None, None, :]                # (R, F, 3 vertices, 3)
    idx = lambda k: k.view(R, 1, 1, 1).expand(R, p.shape[1], 3, 1)        # noqa: E731
    pz = torch.take_along_dim(p, idx(kz), -1)[..., 0]  # (R, F, 3)
    x = torch.take_along_dim(p, idx(kx), -1)[..., 0] - sx[:, None, None] * pz
    y = torch.take_along_dim(p, idx(ky), -1)[..., 0] - sy[:, None, None] * pz
    z = sz[:, None, None] * pz
    x, y, z = (a.to(torch.float64) for a in (x, y, z))
    eu = x[..., 2] * y[..., 1] - y[..., 2] * x[..., 1]
    ev = x[..., 0] * y[..., 2] - y[..., 0] * x[..., 2]
    ew = x[..., 1] * y[..., 0] - y[..., 1] * x[..., 0]
    neg = (eu < 0) | (ev < 0) | (ew < 0)
    pos = (eu > 0) | (ev > 0) | (ew > 0)
    det = eu + ev + ew
    ok = ~(neg & pos) & (det != 0)
    rdet = 1.0 / torch.where(ok, det, torch.ones_like(det))
    t = ((eu * z[..., 0] + ev * z[..., 1] + ew * z[..., 2]) * rdet).to(dt)
    u, v = (ev * rdet).to(dt), (ew * rdet).to(dt)
    hit = ok & (t >= tmin) & (t < tmax)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    return t, u, v


def closest_hit_ref(vertices, faces, origins, dirs, tmin=0.0, tmax=math.inf):
    """Brute-force closest hit: ``t`` (R,) [inf on miss], ``face`` (R,) int32 [-1], ``bary``
    (R, 2) ``(u, v)`` [0 on miss], in the dtype of ``vertices``."""
    t_all, u_all, v_all = ray_triangle_ref(vertices, faces, origins, dirs, tmin, tmax)
    t, face = t_all.min(-1)
    miss = ~torch.isfinite(t)
    rows = torch.arange(t.shape[0])
    bary = torch.stack([u_all[rows, face], v_all[rows, face]], -1)
    bary[miss] = 0
    face = torch.where(miss, torch.full_like(face, -1), face).to(torch.int32)
    return t, face, bary


def closest_hits_ref(vertices, faces, origins, dirs, k: int, tmin=0.0, tmax=math.inf, dedup=0.0):
    """Brute-force k nearest hits (the reference of :func:`shaders.bvh.closest_hits`): every hit,
    sorted by ``t``; a hit within ``dedup`` of the last kept one is dropped; the first ``k`` kept.
    Returns ``t`` (R, k) [inf], ``face`` (R, k) int32 [-1], ``bary`` (R, k, 2) [0]."""
    t_all, u_all, v_all = ray_triangle_ref(vertices, faces, origins, dirs, tmin, tmax)
    R = t_all.shape[0]
    t = torch.full((R, k), math.inf, dtype=t_all.dtype)
    face = torch.full((R, k), -1, dtype=torch.int32)
    bary = torch.zeros((R, k, 2), dtype=t_all.dtype)
    ts, order = t_all.sort(dim=1, stable=True)
    for r in range(R):
        n, last = 0, -math.inf
        for j in range(ts.shape[1]):
            tj = float(ts[r, j])
            if n == k or not math.isfinite(tj):
                break
            if tj - last < dedup:
                continue
            fj = int(order[r, j])
            t[r, n], face[r, n] = ts[r, j], fj
            bary[r, n, 0], bary[r, n, 1] = u_all[r, fj], v_all[r, fj]
            n, last = n + 1, tj
    return t, face, bary


def tree_depth(parent: torch.Tensor) -> int:
    """Maximum number of edges from a node to the root, given the ``parent`` array."""
    p = parent.long()
    depth = torch.zeros_like(p)
    cur = p.clone()
    while bool((cur >= 0).any()):
        alive = cur >= 0
        depth[alive] += 1
        cur[alive] = p[cur[alive]]
    return int(depth.max())


def ray_edge_distance(vertices, edges, origins, dirs) -> torch.Tensor:
    """(R,) distance from each ray's supporting line ``o + s d`` (s any real) to the nearest of
    the segments ``edges`` ((E, 2) vertex indices), in float64. Used to define "grazing" rays:
    those whose hit/miss or face may flip with float rounding because they pass near an edge."""
    if origins.shape[0] > 256:
        return torch.cat([ray_edge_distance(vertices, edges, origins[i:i + 256], dirs[i:i + 256])
                          for i in range(0, origins.shape[0], 256)])
    v = vertices.double()
    a = v[edges[:, 0].long()][None]                   # (1, E, 3)
    e = (v[edges[:, 1].long()] - v[edges[:, 0].long()])[None]
    o = origins.double()[:, None]                     # (R, 1, 3)
    d = dirs.double()[:, None]
    w = o - a
    A = (d * d).sum(-1)
    B = (d * e).sum(-1)
    C = (e * e).sum(-1)
    D = (d * w).sum(-1)
    E = (e * w).sum(-1)
    den = A * C - B * B
    u = torch.where(den > 1e-30 * A * C, (A * E - B * D) / den.clamp_min(1e-300),
                    torch.zeros_like(den)).clamp(0.0, 1.0)
    s = (B * u - D) / A
    diff = o + s[..., None] * d - a - u[..., None] * e
    return diff.norm(dim=-1).amin(-1)
