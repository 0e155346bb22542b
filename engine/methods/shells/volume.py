"""Full volumetric rendering of the shells field with empty-space skipping (an occupancy grid).

Samples are placed uniformly (spacing ``step``, optionally jittered) along each ray inside the
cubic scene box; those in unoccupied cells of the :class:`OccupancyGrid` are dropped and at most
``max_samples`` of the rest are kept per ray (front first). Each kept sample stands for an
interval of length ``step`` in the NeuS opacity (:func:`~.field.neus_alpha`).
"""
from __future__ import annotations

import math

import torch

from .field import ShellField, composite, neus_alpha_ends


def ray_box(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Entry/exit ``t`` of rays (R, 3) with the box [lo, hi] (t_near >= 0; a miss has t_far <= t_near)."""
    dd = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    ta, tb = (lo - o) / dd, (hi - o) / dd
    tn = torch.minimum(ta, tb).amax(-1).clamp_min(0.0)
    tf = torch.maximum(ta, tb).amin(-1)
    return tn, tf


class OccupancyGrid:
    """A ``res^3`` boolean grid over the cubic box ``center +- half``: where the surface may be.

    A cell is occupied when ``|f(p)| < 2 r_cell + ln(4/eps) / s(p)`` at a (jittered) point ``p`` of
    the cell, ``r_cell`` the cell's half-diagonal: the logistic density of NeuS is below ``eps`` of
    its peak elsewhere. Every cell is occupied until the first :meth:`update`.
    """

    def __init__(self, center: torch.Tensor, half: float, res: int):
        self.center = torch.as_tensor(center, dtype=torch.float32)
        self.half_size = float(half)
        self.res = int(res)
        self.occ = torch.ones(self.res, self.res, self.res, dtype=torch.bool)

    @property
    def cell(self) -> float:
        return 2.0 * self.half_size / self.res

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Occupancy (bool) of world points ``x (..., 3)``; points outside the box are empty."""
        u = (x - self.center) / (2 * self.half_size) + 0.5
        inside = ((u >= 0) & (u < 1)).all(-1)
        idx = (u * self.res).long().clamp(0, self.res - 1)
        return self.occ[idx[..., 0], idx[..., 1], idx[..., 2]] & inside

    @torch.no_grad()
    def update(self, field: ShellField, eps: float, generator: torch.Generator | None = None,
               chunk: int = 65536) -> float:
        """Re-evaluate every cell (one jittered point each); returns the occupied fraction."""
        r = self.res
        ii = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3)
        jit = torch.rand(ii.shape, generator=generator)
        p = self.center - self.half_size + (ii + jit) * self.cell
        occ = torch.empty(p.shape[0], dtype=torch.bool)
        margin = 2.0 * self.cell * math.sqrt(3) / 2
        for i in range(0, p.shape[0], chunk):
            f, log_s, _ = field.geometry(p[i:i + chunk])
            occ[i:i + chunk] = f.abs() < margin + math.log(4.0 / eps) * torch.exp(-log_s)
        self.occ = occ.reshape(r, r, r)
        return float(self.occ.float().mean())

    def state_dict(self) -> dict:
        return {"occ": self.occ.clone(), "center": self.center.clone(), "half_size": self.half_size}

    @classmethod
    def from_state_dict(cls, st: dict) -> "OccupancyGrid":
        g = cls(st["center"], st["half_size"], st["occ"].shape[0])
        g.occ = st["occ"].clone().bool()
        return g


def march(o, d, occ: OccupancyGrid, step: float, max_samples: int, generator=None):
    """Occupied samples along rays: ``t (R, S)``, ``valid (R, S)`` bool and ``n_candidates (R,)``."""
    lo = occ.center - occ.half_size
    hi = occ.center + occ.half_size
    tn, tf = ray_box(o, d, lo, hi)
    K = int(math.ceil(2 * math.sqrt(3) * occ.half_size / step)) + 1
    off = 0.5 if generator is None else torch.rand(o.shape[0], 1, generator=generator)
    t = tn[:, None] + (torch.arange(K, dtype=o.dtype)[None] + off) * step
    keep = t < tf[:, None]
    pts = o[:, None] + t[..., None] * d[:, None]
    keep &= occ.lookup(pts)
    counts = keep.sum(1)
    S = int(min(int(counts.max()) if counts.numel() else 0, max_samples))
    if S == 0:
        return t[:, :0], keep[:, :0]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :S]
    return torch.gather(t, 1, order), torch.gather(keep, 1, order)


def shade_and_composite(field: ShellField, o, d, view_enc, t, delta, valid, group, background=None,
                        anneal: float = 1.0, t_stop: float = 1e-3, ends=None, fixed_alpha=None) -> dict:
    """Evaluate and composite padded samples group by group, front to back, with early termination.

    t, delta (R, S) sample depths and interval lengths, valid (R, S) bool, group (R, S) int: the
    samples of group ``g`` lie before those of ``g + 1`` on every ray. Group ``g`` is evaluated only
    for rays whose transmittance is still above ``t_stop`` (the rest cannot change the pixel by more
    than ``t_stop``). ``ends = (z_a, z_b, e)`` (R, S) optional: where ``e`` is 1 the sample's
    opacity is that of its whole interval from the NeuS logits ``z = s(x) f(x)`` at the
    interval's ends, ``1 - Phi(z_b) / Phi(z_a)`` clamped to [0, 1]; where ``e`` is 2 or 3 the
    sample sits where the ray enters a thin part (see :func:`shaders.volume.band_samples`) and
    ``z_b = -s |d . grad f| h`` with ``h`` the half-thickness passed in the second slot, ``z_a`` the
    logit at the interval's start (2) or ``s |d . grad f| g`` with ``g`` the half-gap since the
    previous part (3). ``fixed_alpha (R, S)`` optional: where it is >= 0 it replaces the sample's
    opacity (the probe sampler's crossing samples; :mod:`shaders.band_probe`). Returns rgb (R, 3)
    (with background), opacity, depth (expected, normalised), normal (R, 3) (weighted), samples
    (R,) (evaluated), and grad (M, 3) / log_s at the M evaluated samples (for losses; log_s
    without those whose opacity ``fixed_alpha`` gives).
    """
    R = o.shape[0]
    T = torch.ones(R)
    rgb, nrm = torch.zeros(R, 3), torch.zeros(R, 3)
    depth, samples = torch.zeros(R), torch.zeros(R)
    grads, logs = [], []
    n_groups = int(group[valid].max()) + 1 if valid.any() else 0
    for g in range(n_groups):
        sel = valid & (group == g) & (T.detach() > t_stop)[:, None]
        rows = sel.any(1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        sub = sel[rows]
        cols = sub.any(0).nonzero(as_tuple=True)[0]
        sub = sub[:, cols]
        tt, dd = t[rows][:, cols], delta[rows][:, cols]
        li, si = sub.nonzero(as_tuple=True)
        ri = rows[li]
        x = o[ri] + tt[li, si, None] * d[ri]
        sh = field.shade_samples(x, d[ri], dd[li, si], view_enc[ri], anneal)
        al = sh["alpha"]
        if ends is not None:
            ci = cols[si]
            e = ends[2][ri, ci]
            if bool((e != 0).any()):
                fa, fb = ends[0][ri, ci].to(al), ends[1][ri, ci].to(al)
                # thin parts (e = 2, 3): fb is half the thickness between the entering and the leaving
                # crossing, so the SDF reaches about -|cos| fb; e = 3 takes fa as half the gap since
                # the previous part, the SDF there about +|cos| fa
                sc = sh["s"] * (d[ri] * sh["grad"]).sum(-1).abs()
                za = torch.where(e == 3, sc * fa, fa)
                zb = torch.where(e >= 2, -sc * fb, fb)
                al = torch.where(e != 0, neus_alpha_ends(za, zb, torch.ones_like(al)), al)
        free = None
        if fixed_alpha is not None:
            fa_ = fixed_alpha[ri, cols[si]].to(al)
            al = torch.where(fa_ >= 0, fa_, al)
            free = fa_ < 0
        shape = sub.shape
        alpha = torch.zeros(shape).index_put((li, si), al)
        col = torch.zeros(*shape, 3).index_put((li, si), sh["rgb"])
        nn_ = torch.zeros(*shape, 3).index_put((li, si), sh["grad"])
        out = composite(alpha, col, tt, sub, None, nn_)
        Tr = T[rows]
        rgb = rgb.index_put((rows,), rgb[rows] + Tr[:, None] * out["rgb"])
        nrm = nrm.index_put((rows,), nrm[rows] + Tr[:, None] * out["normal"])
        depth = depth.index_put((rows,), depth[rows] + Tr * (out["weights"] * tt).sum(1))
        T = T.index_put((rows,), Tr * (1.0 - out["opacity"]))
        samples = samples.index_put((rows,), samples[rows] + sub.sum(1).float())
        grads.append(sh["grad"])
        # the kernel-size regulariser needs the image loss as its counterweight: samples whose
        # opacity is given (fixed_alpha) do not pass that gradient to s, so they are left out
        logs.append(sh["log_s"] if free is None else sh["log_s"][free])
    opacity = 1.0 - T
    if background is not None:
        rgb = rgb + T[:, None] * background
    return {"rgb": rgb, "opacity": opacity, "depth": depth / opacity.clamp_min(1e-6), "normal": nrm,
            "samples": samples, "grad": torch.cat(grads, 0) if grads else torch.zeros(0, 3),
            "log_s": torch.cat(logs, 0) if logs else torch.zeros(0)}


def render_rays_volume(field: ShellField, occ: OccupancyGrid, o, d, view_enc, cfg, background=None,
                       anneal: float = 1.0, generator=None, t_stop: float = 1e-3) -> dict:
    """Volumetric rendering of rays (R, 3) (unit ``d``): see the module docstring.

    Samples are evaluated in groups of ``cfg.march_group`` along the ray with early termination
    (:func:`shade_and_composite`). Returns rgb, opacity, depth, normal, samples (R,) (samples
    evaluated per ray) and, for losses, ``grad (M, 3)`` and ``log_s (M,)`` at the M evaluated samples.
    """
    step = 2 * math.sqrt(3) * float(field.half_size) / cfg.march_steps
    t, valid = march(o, d, occ, step, cfg.max_samples, generator)
    group = torch.arange(t.shape[1])[None].expand_as(t) // max(int(cfg.march_group), 1)
    return shade_and_composite(field, o, d, view_enc, t, torch.full_like(t, step), valid, group,
                               background, anneal, t_stop)
