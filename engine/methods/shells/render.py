"""Shell rendering: rays are cast against the shell meshes and the field is sampled only in the band.

1. One triangle BVH (:func:`shaders.bvh.build_triangle_bvh`) over the outer and inner shells.
2. :func:`band_intervals`: the first ``max_hits`` crossings of each ray, found by repeated
   closest-hit queries from just past the previous hit. Crossing parity gives the state after
   each crossing (inside the outer shell xor-toggled by outer hits, likewise for the inner shell;
   a ray starts inside a closed shell iff it crosses it an odd number of times -- assumed outside
   when its hit list was cut at ``max_hits``); the band is inside the outer and outside the inner
   shell, so the intervals are the ``[t_j, t_{j+1}]`` whose state after ``t_j`` is "band".
3. :func:`place_samples`: interval of length ``len`` gets ``n = clamp(ceil(len / step), 1,
   max)`` samples at the centres of ``n`` equal sub-intervals (so a thin band on a solid surface
   gets exactly one sample, whose NeuS interval spans the whole band and gives opacity ~1), at
   most ``max_samples`` per ray, front first.
4. The field's NeuS opacity and colour at those samples (interval lengths ``len / n``),
   composited front to back (:func:`~.field.composite`). Gradients flow into the field, so the
   same path fine-tunes it inside the band.
"""
from __future__ import annotations

import math

import torch

from shaders.volume import band_intervals_from_hits, band_samples, place_samples_reference

from .field import ShellField, composite


class ShellMeshes:
    """The outer + inner shells in one triangle BVH; faces ``< n_outer`` belong to the outer shell."""

    def __init__(self, outer, inner):
        from shaders.bvh import build_triangle_bvh

        vo, fo = (torch.as_tensor(t) for t in outer)
        vi, fi = (torch.as_tensor(t) for t in inner)
        if fo.shape[0] == 0:
            raise ValueError("the outer shell is empty: nothing to render (is the field trained?)")
        V = torch.cat([vo.float(), vi.float()], 0)
        F = torch.cat([fo.long(), fi.long() + vo.shape[0]], 0)
        self.n_outer = int(fo.shape[0])
        self.bvh = build_triangle_bvh(V, F)
        self.lo = V.min(0).values
        self.hi = V.max(0).values


def shell_hits(meshes: ShellMeshes, o: torch.Tensor, d: torch.Tensor, max_hits: int = 8,
               eps: float = 1e-5):
    """First ``max_hits`` crossings of rays (R, 3) with the shells: ``ts (R, K)`` (inf when none) and
    ``kind (R, K)`` int32 (1 outer, 2 inner, 0 none), by repeated closest-hit queries."""
    from shaders.bvh import closest_hit

    R = o.shape[0]
    K = int(max_hits)
    ts = torch.full((R, K), math.inf)
    kind = torch.zeros(R, K, dtype=torch.int32)
    active = torch.arange(R)
    t_prev = torch.zeros(R)
    for k in range(K):
        if active.numel() == 0:
            break
        start = t_prev[active] + (eps if k > 0 else 0.0)
        t, face, _ = closest_hit(meshes.bvh, o[active] + start[:, None] * d[active], d[active])
        h = face >= 0
        idx = active[h]
        th = start[h] + t[h]
        ts[idx, k] = th
        kind[idx, k] = torch.where(face[h] < meshes.n_outer, 1, 2).to(torch.int32)
        t_prev[idx] = th
        active = idx
    return ts, kind


def band_intervals(meshes: ShellMeshes, o: torch.Tensor, d: torch.Tensor, max_hits: int = 8):
    """Band intervals of rays (R, 3): ``t0, t1, ok`` (R, K) (see :func:`shaders.volume.band_intervals_from_hits`)."""
    return band_intervals_from_hits(*shell_hits(meshes, o, d, max_hits))


#: Samples in intervals, pure torch (the reference of the Taichi :func:`shaders.volume.band_samples`).
place_samples = place_samples_reference


class ShellRenderer:
    """Renders a :class:`~.field.ShellField` inside its shells (see the module docstring)."""

    def __init__(self, field: ShellField, shells, cfg):
        self.field = field
        self.cfg = cfg
        self.meshes = ShellMeshes(shells.outer, shells.inner)

    def render_rays(self, o, d, view_enc, background=None, anneal: float = 1.0) -> dict:
        c = self.cfg
        a = float(self.field.half_size)
        ts, kind = shell_hits(self.meshes, o, d, c.shell_max_hits)
        t, delta, count = band_samples(ts, kind, c.shell_step * a, c.shell_max_samples, c.shell_max_samples)
        S = int(count.max()) if count.numel() else 0
        t, delta = t[:, :S], delta[:, :S]
        R = t.shape[0]
        valid = torch.arange(S)[None] < count[:, None]
        ridx, sidx = valid.nonzero(as_tuple=True)
        if ridx.numel() == 0:
            rgb = torch.zeros(R, 3) + (0 if background is None else background)
            return {"rgb": rgb, "opacity": torch.zeros(R), "depth": torch.zeros(R), "normal": torch.zeros(R, 3),
                    "samples": torch.zeros(R), "grad": torch.zeros(0, 3), "log_s": torch.zeros(0)}
        x = o[ridx] + t[ridx, sidx, None] * d[ridx]
        sh = self.field.shade_samples(x, d[ridx], delta[ridx, sidx], view_enc[ridx], anneal)
        alpha = torch.zeros(R, S).index_put((ridx, sidx), sh["alpha"])
        rgb = torch.zeros(R, S, 3).index_put((ridx, sidx), sh["rgb"])
        nrm = torch.zeros(R, S, 3).index_put((ridx, sidx), sh["grad"])
        out = composite(alpha, rgb, t, valid, background, nrm)
        out["samples"] = valid.sum(1).float()
        out["grad"] = sh["grad"]
        out["log_s"] = sh["log_s"]
        return out
