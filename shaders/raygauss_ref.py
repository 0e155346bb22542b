"""Pure-torch brute-force reference of RayGauss ray casting (:mod:`shaders.raygauss`).

Same math as the Taichi kernels (see the :mod:`shaders.raygauss` docstring), but every sample
is evaluated against every Gaussian (no BVH, no cap) and gradients come from torch autograd.
It is meant for small inputs: tests compare the kernels' values and gradients to it.

``n_evals`` and ``n_capped`` are bookkeeping of the kernels' collect step; the reference
reproduces them with the brute-force collect's float32 segment/box test on
:func:`shaders.raygauss.gaussian_aabbs`, the ellipsoid clip and the group-overflow fallback
(see "Grouped collect" and "Ellipsoid clip" in :mod:`shaders.raygauss_fwd`), so they match
``render_rays(..., use_bvh=False)`` (possibly up to a rare float tie on an interval end). The
colour, alpha and depth themselves never depend on the boxes or the clip (truncation rule), only
on the cap when slabs overflow it.
"""
from __future__ import annotations

import torch

from shaders import raygauss_fwd as _fwd
from shaders.raygauss import RayGaussConfig, _check_inputs, build_M, gaussian_aabbs

__all__ = ["render_rays_reference"]

# Elements (rays x samples x Gaussians) per block of the dense evaluation.
_BLOCK = 1 << 21


def _ellipsoid_interval(o, d, means, M, s, thr):
    """Twin of ``raygauss_fwd``'s ``ellipsoid_interval``: o, d (r,3) -> float32 te, tx (r,N),
    te > tx where the ray misses the padded truncation ellipsoid."""
    a = torch.einsum("nab,rb->rna", M, d)
    b = torch.einsum("nab,rnb->rna", M, o[:, None, :] - means[None])
    aa = (a * a).sum(-1)
    ok = (s >= thr) & (s > 0)
    s_safe = torch.where(ok, s, torch.full_like(s, 2.0 * thr))
    lim = 2.0 * torch.log(s_safe / thr) * (1.0 + _fwd._PREFILTER_REL) + _fwd._PREFILTER_ABS
    lim = (lim * (1.0 + _fwd._ELLIPSOID_REL) + _fwd._ELLIPSOID_ABS)[None]
    tc = -(a * b).sum(-1) / aa
    e = b + tc[..., None] * a
    qmin = (e * e).sum(-1)
    hit = ok[None] & (qmin <= lim)
    h = torch.sqrt(torch.clamp((lim - qmin) / aa, min=0.0))
    pad = _fwd._ELLIPSOID_PAD * (1.0 + tc.abs() + h)
    te = torch.where(hit, (tc - h - pad).float(), torch.ones_like(tc, dtype=torch.float32))
    tx = torch.where(hit, (tc + h + pad).float(), -torch.ones_like(tc, dtype=torch.float32))
    return te, tx


def _slab_counts(o, d, t0, t1, g0, g1, G, lo, hi, ell, cap):
    """Per-slab collected counts (r,J) as the kernels count them: the group [g0, g1] (r,Jg) of
    slab j is j // G; a group whose box hits fit in ``cap`` gives each slab its ellipsoid-clipped
    hits, an overflowing one its slab's box hits."""
    J = t0.shape[1]
    grp = _seg_box_hits(o, d, g0, g1, lo, hi).sum(-1)                    # (r,Jg)
    overflow = (grp > cap).repeat_interleave(G, dim=1)[:, :J]
    box = _seg_box_hits(o, d, t0, t1, lo, hi).sum(-1)
    clipped = _seg_box_hits(o, d, t0, t1, lo, hi, ell).sum(-1)
    return torch.where(overflow, box, clipped)


def _seg_box_hits(o, d, t0, t1, lo, hi, ell=None):
    """float32 twin of ``raygauss_fwd.box_interval``'s test: o, d (r,3); t0, t1 (r,J); lo, hi
    (N,3) -> bool (r,J,N); with ``ell = (te, tx)`` (r,N) the box interval is clipped to it."""
    o, d = o.float(), d.float()
    t0, t1 = t0.float(), t1.float()
    lo, hi = lo.float().to(o.device), hi.float().to(o.device)
    nz = d != 0                                               # (r,3)
    inv = 1.0 / torch.where(nz, d, torch.ones_like(d))
    ta = (lo[None] - o[:, None]) * inv[:, None]               # (r,N,3)
    tb = (hi[None] - o[:, None]) * inv[:, None]
    big = torch.tensor(float("inf"))
    tmin_ax = torch.where(nz[:, None], torch.minimum(ta, tb), -big)
    tmax_ax = torch.where(nz[:, None], torch.maximum(ta, tb), big)
    inside = (o[:, None] >= lo[None]) & (o[:, None] <= hi[None])
    ok = ((~nz[:, None]) & ~inside).any(-1) == 0              # zero-direction axes contain o
    ok = ok & (lo <= hi).all(-1)[None]
    near, far = tmin_ax.amax(-1), tmax_ax.amin(-1)                    # (r,N)
    if ell is not None:
        near, far = torch.maximum(near, ell[0]), torch.minimum(far, ell[1])
    tmin = torch.maximum(t0[:, :, None], near[:, None, :])                # (r,J,N)
    tmax = torch.minimum(t1[:, :, None], far[:, None, :])
    return (tmin <= tmax) & ok[:, None, :]


def _density_fields(x, means, M, s, rgb, thr):
    """sigma (r,K) and c (r,K,3) at points x (r,K,3), truncated at s phi >= thr."""
    r, K = x.shape[:2]
    N = means.shape[0]
    step = max(1, _BLOCK // max(1, r * N))
    sig_parts, c_parts = [], []
    for k0 in range(0, K, step):
        xc = x[:, k0:k0 + step]                                        # (r,k,3)
        diff = xc[:, :, None, :] - means[None, None]                  # (r,k,N,3)
        y = torch.einsum("nab,rknb->rkna", M, diff)
        g = s * torch.exp(-0.5 * (y * y).sum(-1))                      # (r,k,N)
        g = torch.where(g >= thr, g, torch.zeros_like(g))
        sig = g.sum(-1)
        csum = torch.einsum("rkn,nc->rkc", g, rgb)
        safe = torch.where(sig > 0, sig, torch.ones_like(sig))
        sig_parts.append(sig)
        c_parts.append(csum / safe[..., None])
    return torch.cat(sig_parts, 1), torch.cat(c_parts, 1)


def _composite(alpha, valid, t_stop):
    """Front-to-back weights with early stop: alpha, valid (r,K) -> (w, processed, T_final)."""
    one_m = 1.0 - alpha
    T_incl = torch.cumprod(one_m, dim=1)
    T_before = torch.cat([torch.ones_like(T_incl[:, :1]), T_incl[:, :-1]], dim=1)
    processed = valid & (T_before.detach() >= t_stop)
    w = T_before * alpha * processed
    T_final = torch.where(processed, one_m, torch.ones_like(one_m)).prod(dim=1)
    return w, processed, T_final


def _density_chunk(means, M, s, rgb, o, d, tn, tf, cfg, lo, hi):
    dt, S = cfg.dt, cfg.samples_per_slab
    n_max = int(torch.ceil(((tf - tn).max().clamp(min=0)) / dt).item()) + 1
    K = ((n_max + S - 1) // S) * S
    idx = torch.arange(K, dtype=o.dtype, device=o.device)
    t = tn[:, None] + (idx[None] + 0.5) * dt                          # (r,K)
    valid = t < tf[:, None]
    x = o[:, None, :] + t[..., None] * d[:, None, :]
    sig, c = _density_fields(x, means, M, s, rgb, cfg.sigma_thr)
    alpha = (1.0 - torch.exp(-sig * dt)) * valid
    w, processed, T_final = _composite(alpha, valid, cfg.t_stop)
    C = (w[..., None] * c).sum(1)
    D = (w * t).sum(1)
    with torch.no_grad():
        J = K // S
        j = torch.arange(J, dtype=o.dtype, device=o.device)
        t0 = tn[:, None] + (j[None] * S) * dt
        t1 = torch.minimum(tn[:, None] + ((j[None] + 1) * S) * dt, tf[:, None])
        G = _fwd.group_slabs(S)
        jg = j[::G]
        g0 = tn[:, None] + (jg[None] * S) * dt
        g1 = torch.minimum(tn[:, None] + ((jg[None] + G) * S) * dt, tf[:, None])
        ell = _ellipsoid_interval(o, d, means, M, s, cfg.sigma_thr)
        counts = _slab_counts(o, d, t0, t1, g0, g1, G, lo, hi, ell, cfg.cap)   # (r,J)
        used = counts.clamp(max=cfg.cap)
        per_sample = used.repeat_interleave(S, dim=1)
        n_evals = (per_sample * processed).sum(1).to(torch.int32)
        first = processed[:, ::S]                                           # slab visited
        n_capped = int(((counts > cfg.cap) & first).sum())
    return C, T_final, D, n_evals, n_capped


def _opacity_chunk(means, M, op, rgb, o, d, tn, tf, cfg, lo, hi):
    dt, S = cfg.dt, cfg.samples_per_slab
    tlen = tf - tn
    xo = o + tn[:, None] * d
    a = torch.einsum("nab,rb->rna", M, d)                               # (r,N,3)
    b = torch.einsum("nab,rnb->rna", M, xo[:, None, :] - means[None])
    aa = (a * a).sum(-1)
    u = -(a * b).sum(-1) / aa                                           # (r,N)
    e = b + u[..., None] * a
    ar = op[None] * torch.exp(-0.5 * (e * e).sum(-1))
    valid = (ar >= cfg.alpha_min) & (u >= 0) & (u < tlen[:, None])
    alpha = torch.clamp(ar, max=0.99) * valid
    key = torch.where(valid, u.detach(), torch.full_like(u, float("inf")))
    order = torch.sort(key, dim=1, stable=True).indices
    alpha_s = torch.gather(alpha, 1, order)
    valid_s = torch.gather(valid, 1, order)
    u_s = torch.gather(u, 1, order)
    c_s = rgb[order]                                                    # (r,N,3)
    w, processed, T_final = _composite(alpha_s, valid_s, cfg.t_stop)
    C = (w[..., None] * c_s).sum(1)
    D = (w * (tn[:, None] + u_s)).sum(1)
    with torch.no_grad():
        n_max = int(torch.ceil(tlen.max().clamp(min=0) / (S * dt)).item()) + 1
        j = torch.arange(n_max, dtype=o.dtype, device=o.device)
        u0 = (j[None] * S) * dt                                          # (1,J)
        u1 = ((j[None] + 1) * S) * dt
        t0 = tn[:, None] + u0
        t1 = tn[:, None] + torch.minimum(u1, tlen[:, None])
        G = _fwd.group_slabs(S)
        jg = j[::G]
        g0 = tn[:, None] + (jg[None] * S) * dt
        g1 = tn[:, None] + torch.minimum(((jg[None] + G) * S) * dt, tlen[:, None])
        ell = _ellipsoid_interval(o, d, means, M, op, cfg.alpha_min)
        counts = _slab_counts(o, d, t0, t1, g0, g1, G, lo, hi, ell, cfg.cap)   # (r,J)
        T_after = torch.cumprod(1.0 - alpha_s.detach(), 1)
        dies = processed & (T_after < cfg.t_stop)
        has_death = dies.any(1)
        first_death = dies.float().argmax(1)        # 0 where no death (masked by has_death)
        u_death = torch.gather(u_s.detach(), 1, first_death[:, None])[:, 0]
        visited = (u0 < tlen[:, None]) & (~has_death[:, None] | (u0 <= u_death[:, None]))
        n_evals = (counts.clamp(max=cfg.cap) * visited).sum(1).to(torch.int32)
        n_capped = int(((counts > cfg.cap) & visited).sum())
    return C, T_final, D, n_evals, n_capped


def render_rays_reference(means, log_scale, quat, response, rgb, rays_o, rays_d, t_near, t_far,
                          cfg: RayGaussConfig | None = None, background=None):
    """Brute-force torch twin of :func:`shaders.raygauss.render_rays` (same arguments minus
    ``bvh``; same outputs). Differentiable by autograd w.r.t. every floating input."""
    cfg = (cfg or RayGaussConfig()).validate()
    _check_inputs(means, log_scale, quat, response, rgb, rays_o, rays_d, t_near, t_far,
                  background, "render_rays_reference")
    dtype, dev = means.dtype, means.device
    rays_o, rays_d, t_near, t_far = (t.to(device=dev, dtype=dtype)
                                     for t in (rays_o, rays_d, t_near, t_far))
    R, N = rays_o.shape[0], means.shape[0]
    response = response.reshape(-1)
    M = build_M(log_scale, quat)
    lo, hi = gaussian_aabbs(means, log_scale, quat, response, cfg.mode, cfg)
    chunk_fn = _density_chunk if cfg.mode == "density" else _opacity_chunk
    if cfg.mode == "density":
        per_ray = max(1, N) * 64
    else:
        per_ray = max(1, N) * 8
    chunk = max(1, _BLOCK // per_ray)
    Cs, Ts, Ds, NEs, n_capped = [], [], [], [], 0
    for r0 in range(0, R, chunk):
        sl = slice(r0, r0 + chunk)
        tn, tf = t_near[sl], t_far[sl]
        if N == 0:
            r = tn.shape[0]
            zero = means.sum() * 0
            Cs.append(zero + torch.zeros(r, 3, dtype=dtype, device=dev))
            Ts.append(zero + torch.ones(r, dtype=dtype, device=dev))
            Ds.append(zero + torch.zeros(r, dtype=dtype, device=dev))
            NEs.append(torch.zeros(r, dtype=torch.int32, device=dev))
            continue
        C, T, D, ne, nc = chunk_fn(means, M, response, rgb, rays_o[sl], rays_d[sl],
                                   tn, tf, cfg, lo, hi)
        Cs.append(C)
        Ts.append(T)
        Ds.append(D)
        NEs.append(ne)
        n_capped += nc
    if R == 0:
        C = torch.zeros(0, 3, dtype=dtype, device=dev)
        T = torch.ones(0, dtype=dtype, device=dev)
        D = torch.zeros(0, dtype=dtype, device=dev)
        ne = torch.zeros(0, dtype=torch.int32, device=dev)
    else:
        C, T, D, ne = torch.cat(Cs), torch.cat(Ts), torch.cat(Ds), torch.cat(NEs)
    alpha = 1.0 - T
    out_rgb = C
    if background is not None:
        out_rgb = C + T.unsqueeze(-1) * background.to(device=dev, dtype=dtype)
    return dict(rgb=out_rgb, alpha=alpha, depth=D, n_evals=ne, n_capped=n_capped)
