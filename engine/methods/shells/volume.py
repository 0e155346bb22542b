"""Full volumetric rendering of the shells field with empty-space skipping (an occupancy grid).

Samples are placed uniformly (spacing ``step``, optionally jittered) along each ray inside the
cubic scene box; those in unoccupied cells of the :class:`OccupancyGrid` are dropped and at most
``max_samples`` of the rest are kept per ray (front first). Each kept sample stands for an
interval of length ``step`` in the NeuS opacity (:func:`~.field.neus_alpha`).
"""
from __future__ import annotations

import math

import torch

from ...render.volume import OccupancyGrid, march, ray_box, render_samples  # noqa: F401 (re-exported)
from .field import ShellField, neus_alpha_ends


def shade_and_composite(field: ShellField, o, d, view_enc, t, delta, valid, group, background=None,
                        anneal: float = 1.0, t_stop: float = 1e-3, ends=None, fixed_alpha=None,
                        descent=None) -> dict:
    """Evaluate the NeuS field on padded samples and composite them with the shared volume renderer
    (:func:`engine.render.volume.render_samples`: group by group, front to back, early termination).

    t, delta (R, S) sample depths and interval lengths, valid (R, S) bool, group (R, S) int: the
    samples of group ``g`` lie before those of ``g + 1`` on every ray. ``ends = (z_a, z_b, e)``
    (R, S) optional: where ``e`` is 1 the sample's
    opacity is that of its whole interval from the NeuS logits ``z = s(x) f(x)`` at the
    interval's ends, ``1 - Phi(z_b) / Phi(z_a)`` clamped to [0, 1]; where ``e`` is 2 or 3 the
    sample sits where the ray enters a thin part (see :func:`shaders.band_sampler.band_samples`) and
    ``z_b = -s |d . grad f| h`` with ``h`` the half-thickness passed in the second slot, ``z_a`` the
    logit at the interval's start (2) or ``s |d . grad f| g`` with ``g`` the half-gap since the
    previous part (3). ``fixed_alpha (R, S)`` optional: where it is >= 0 it replaces the sample's
    opacity (the probe sampler's crossing samples; :mod:`shaders.band_probe`).
    ``descent = (t_start, n_seg)`` (R, S) optional, with ``fixed_alpha``: the opacity of those
    samples is instead recomputed from the field at their descent's probe points ``t_start + i
    delta``, ``i = 0..n_seg`` (:meth:`~.field.ShellField.descent_opacity`), so that it is
    differentiable w.r.t. the SDF network, the hash grid and the kernel size (whole-field
    fine-tuning in the band); only for samples that are evaluated (early termination applies).

    Returns the renderer's rgb (R, 3) (with background), alpha, depth (normalised), depth_sum, cost
    (samples evaluated: each runs the SDF network -- at the 4 finite-difference points, or once with
    ``normals = analytic`` -- and the colour network once), geo_evals (R,) (further points where only the SDF network ran: the descents'
    probe points), normal (R, 3) (weighted), and grad (M, 3) / log_s at the M evaluated samples
    (for losses; log_s without those whose opacity ``fixed_alpha`` gives without ``descent``);
    ``opacity`` and ``samples`` name alpha and cost.
    """

    def fn(x, dirs, dl, ri, ci):
        sh = field.shade_samples(x, dirs, dl, view_enc[ri], anneal)
        al = sh["alpha"]
        if ends is not None:
            e = ends[2][ri, ci]
            if bool((e != 0).any()):
                fa, fb = ends[0][ri, ci].to(al), ends[1][ri, ci].to(al)
                # thin parts (e = 2, 3): fb is half the thickness between the entering and the leaving
                # crossing, so the SDF reaches about -|cos| fb; e = 3 takes fa as half the gap since
                # the previous part, the SDF there about +|cos| fa
                sc = sh["s"] * (dirs * sh["grad"]).sum(-1).abs()
                za = torch.where(e == 3, sc * fa, fa)
                zb = torch.where(e >= 2, -sc * fb, fb)
                al = torch.where(e != 0, neus_alpha_ends(za, zb, torch.ones_like(al)), al)
        log_s = sh["log_s"]
        n_geo = torch.zeros_like(al)
        if fixed_alpha is not None:
            fa_ = fixed_alpha[ri, ci].to(al)
            cross = fa_ >= 0
            if descent is not None and bool(cross.any()):
                ci_, ri_ = ci[cross], ri[cross]
                x0 = x[cross] + (descent[0][ri_, ci_].to(x) - t[ri_, ci_].to(x))[:, None] * dirs[cross]
                n_seg = descent[1][ri_, ci_]
                da, _ = field.descent_opacity(x0, dirs[cross], dl[cross], n_seg)
                fa_ = fa_.masked_scatter(cross, da.to(al))
                n_geo = n_geo.masked_scatter(cross, (n_seg.clamp_min(1) + 1).to(al))
            al = torch.where(cross, fa_, al)
            if descent is None:
                # the kernel-size regulariser needs the image loss as its counterweight: samples whose
                # opacity is given do not pass that gradient to s, so they are left out
                log_s = log_s[~cross]
        return {"alpha": al, "rgb": sh["rgb"], "normal": sh["grad"], "grad": sh["grad"], "log_s": log_s,
                "n_geo": n_geo.detach(), "ray": ri}

    out = render_samples(fn, o, d, t, delta, valid, group, background, t_stop, weighted=("normal",))
    ex = out.pop("extras")
    out["grad"] = ex.get("grad", torch.zeros(0, 3, device=o.device))
    out["log_s"] = ex.get("log_s", torch.zeros(0, device=o.device))
    geo = torch.zeros_like(out["cost"])
    if "n_geo" in ex:
        geo = geo.index_add(0, ex["ray"], ex["n_geo"].to(geo))
    out["geo_evals"] = geo
    out["opacity"], out["samples"] = out["alpha"], out["cost"]
    return out


def render_rays_volume(field: ShellField, occ: OccupancyGrid, o, d, view_enc, cfg, background=None,
                       anneal: float = 1.0, generator=None, t_stop: float = 1e-3, offsets=None) -> dict:
    """Volumetric rendering of rays (R, 3) (unit ``d``): see the module docstring.

    Samples are evaluated in groups of ``cfg.march_group`` along the ray with early termination
    (:func:`shade_and_composite`). Returns rgb, opacity, depth, normal, samples (R,) (samples
    evaluated per ray), ``probes (R,)`` (occupancy-grid lookups: the candidate positions inside the
    box, one lookup each) and, for losses, ``grad (M, 3)`` and ``log_s (M,)`` at the M evaluated samples.
    """
    step = 2 * math.sqrt(3) * float(field.half_size) / cfg.march_steps
    t, valid = march(o, d, occ, step, cfg.max_samples, generator, offsets=offsets)
    group = torch.arange(t.shape[1], device=o.device)[None].expand_as(t) // max(int(cfg.march_group), 1)
    out = shade_and_composite(field, o, d, view_enc, t, torch.full_like(t, step), valid, group,
                              background, anneal, t_stop)
    out["probes"] = occupancy_lookups(o, d, occ, step, offsets).to(out["cost"])
    return out


def occupancy_lookups(o, d, occ: OccupancyGrid, step: float, offsets=None) -> torch.Tensor:
    """(R,) the occupancy-grid lookups :func:`engine.render.volume.march` makes that count: one per
    candidate position inside the box (``t_near + (k + offset) step < t_far``). Jittered offsets are
    uniform in [0, 1): counted with ``offsets`` when given, else with their mean 0.5."""
    lo = (occ.center - occ.half_size).to(o)
    hi = (occ.center + occ.half_size).to(o)
    tn, tf = ray_box(o, d, lo, hi)
    off = offsets.to(o).reshape(-1) if offsets is not None else torch.full_like(tn, 0.5)
    return torch.ceil((tf - tn) / step - off).clamp_min(0.0)
