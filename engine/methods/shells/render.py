"""Shell rendering: rays are cast against the shell meshes and the field is sampled only in the band.

1. One triangle BVH (:func:`shaders.bvh.build_triangle_bvh`) over the outer and inner shells.
2. :func:`band_intervals`: the first ``max_hits`` crossings of each ray, found by repeated
   closest-hit queries from just past the previous hit. Crossing parity gives the state after
   each crossing (inside the outer shell xor-toggled by outer hits, likewise for the inner shell;
   a ray starts inside a closed shell iff it crosses it an odd number of times -- assumed outside
   when its hit list was cut at ``max_hits`` or its origin is outside the outer shell's bounding
   box, so one missed crossing cannot make a camera ray start in the band); the band is inside
   the outer and outside the inner shell, so the intervals are the ``[t_j, t_{j+1}]`` whose state
   after ``t_j`` is "band".
3. Samples in the band intervals. By default (``shell_probe_grid`` > 0) the probe sampler
   :func:`shaders.band_probe.probe_samples`: the SDF and kernel size on a grid
   (:class:`ProbeGrid`, trilinear, no network) are probed every ``shell_probe_step`` along each
   interval; descents of the SDF get a sample on each probe segment whose opacity exceeds
   ``shell_probe_tau``, with the field's own opacity (or, for a crossing at least
   ``shell_probe_solid`` opaque, one sample at the crossing carrying the descent's whole NeuS
   opacity; the default ``solid`` 1 leaves that to crossings opaque to float precision, the fast
   render 0.995 to those that let through at most half a percent; ``shell_probe_cut`` stops a
   ray's samples once the grid says it is opaque). The probe sampler's crossings come from a
   first BVH query for ``shell_first_hits`` of them, and a second for ``shell_max_hits`` only for
   the rays the probe leaves open (:meth:`ShellRenderer.probe_rays`); rays that cross no shell
   are neither probed nor composited. The older rules
   (``shell_probe_grid 0``) decide from the meshes alone:
   :func:`shaders.band_sampler.band_samples` (Taichi; torch twin ``band_samples_reference``): an
   interval of length ``len`` gets ``n = clamp(ceil(len / step), 1,
   max)`` samples at the centres of ``n`` equal sub-intervals (so a thin band on a solid surface
   gets exactly one sample, whose NeuS interval spans the whole band and gives opacity ~1), at
   most ``max_samples`` per ray, front first. With ``shell_surface_samples`` the surface mesh is in
   the BVH too, and the single sample of a thin interval sits where the ray crosses the surface.
   With ``shell_one_sample_crossings`` an interval from the outer to the inner shell (one
   crossing of a solid surface) gets one sample, placed where the ray crosses the surface mesh
   (which joins the BVH), and its opacity is the drop of the NeuS logistic CDF ``Phi(s(x) f(x))``
   between the interval's two ends, with ``s f`` interpolated from its values at the shells'
   vertices (:meth:`ShellMeshes.update_vertex_sdf`). Neither the SDF nor the kernel size at the
   one sample would do: inside a band the SDF along a ray is often far from linear (nearby parts,
   grazing angles), so extrapolating it from one point misses crossings, and the learned ``s(x)``
   varies by orders of magnitude across a thin band (low exactly on textured surfaces, at its
   clamp just inside), so the ``s`` at the sample can make a solid crossing half transparent.
   (The ends' logits overstate the opacity where ``s`` is low at the surface: the probe sampler
   multiplies the opacities of the descent's segments instead, and on lego_200 that alone is worth
   about +0.5 dB.)
   ``shell_one_sample_max_len`` limits these rules to intervals up to that length; longer ones
   (grazing rays, which can pass near the surface without crossing it) are sampled every step.
4. The field's NeuS opacity and colour at those samples (interval lengths ``len / n``),
   composited front to back interval by interval, and a ray stops once its transmittance is below
   ``t_stop`` (:func:`.volume.shade_and_composite`): behind a solid surface nothing is evaluated.
   With the probe sampler's cut (``shell_probe_cut`` > 0) and ``shell_probe_one_round`` all of a
   ray's samples are evaluated in one round instead: the cut already stopped the sampler where
   the grid says the ray is opaque. Gradients flow into the field, so the same path fine-tunes it
   inside the band.
"""
from __future__ import annotations

import math

import torch

from shaders.band_sampler import band_samples, kinds_from_faces, place_samples_reference

from .field import ShellField
from .volume import shade_and_composite


class ShellMeshes:
    """The outer shell, the inner shell and optionally the surface in one triangle BVH.

    Faces ``[0, n_outer)`` are the outer shell, ``[n_outer, n_outer + n_inner)`` the inner one and
    the rest the surface (SDF zero level set).
    """

    def __init__(self, outer, inner, surface=None, device=None):
        from shaders.bvh import build_triangle_bvh

        device = torch.device("cpu" if device is None else device)

        parts = [outer, inner] + ([surface] if surface is not None else [])
        Vs, Fs, off = [], [], 0
        for v, f in parts:
            v, f = torch.as_tensor(v).to(device, torch.float32), torch.as_tensor(f).to(device, torch.int64)
            Vs.append(v)
            Fs.append(f + off)
            off += v.shape[0]
        if Fs[0].shape[0] == 0:
            raise ValueError("the outer shell is empty: nothing to render (is the field trained?)")
        self.n_outer = int(Fs[0].shape[0])
        self.n_inner = int(Fs[1].shape[0])
        self.vertices = torch.cat(Vs, 0)
        self.faces = torch.cat(Fs, 0)
        self.n_shell_vertices = int(Vs[0].shape[0] + Vs[1].shape[0])
        # the outer shell's bounding box: a ray starting outside it starts outside both shells,
        # whatever the parity of its crossings (a crossing missed at a shared edge flips it)
        self.box_lo, self.box_hi = Vs[0].amin(0), Vs[0].amax(0)
        self.vertex_sdf = torch.zeros(self.vertices.shape[0], device=device)
        self.vertex_logit = torch.zeros(self.vertices.shape[0], device=device)
        self.has_vertex_sdf = False
        self.bvh = build_triangle_bvh(self.vertices, self.faces)

    @torch.no_grad()
    def update_vertex_sdf(self, field: ShellField, chunk: int = 65536) -> None:
        """Evaluate the field at the shells' vertices: :attr:`vertex_sdf` (the SDF ``f``) and
        :attr:`vertex_logit` (the NeuS logit ``s(x) f(x)``, the argument of the logistic CDF whose
        drop along a ray is the opacity). The surface mesh, if any, keeps 0."""
        n = self.n_shell_vertices
        for i in range(0, n, chunk):
            j = min(i + chunk, n)
            f, log_s, _ = field.geometry(self.vertices[i:j])
            self.vertex_sdf[i:j] = f.to(self.vertex_sdf)
            self.vertex_logit[i:j] = (f * torch.exp(log_s)).to(self.vertex_logit)
        self.has_vertex_sdf = True


def shell_hits(meshes: ShellMeshes, o: torch.Tensor, d: torch.Tensor, max_hits: int = 8,
               eps: float = 1e-5, values: torch.Tensor | None = None):
    """First ``max_hits`` crossings of rays (R, 3) with the meshes: ``ts (R, K)`` (inf when none) and
    ``kind (R, K)`` int32 (1 outer, 2 inner, 3 surface, 0 none), from one BVH traversal per ray
    (:func:`shaders.bvh.closest_hits`; a hit within ``eps`` of a kept one, the second triangle of
    a shared edge, is dropped).

    With per-vertex ``values`` (e.g. :attr:`ShellMeshes.vertex_logit`) also ``vh (R, K)``: those
    values at each crossing, interpolated with the hit's barycentric coordinates.
    """
    from shaders.bvh import closest_hits

    ts, face, uv = closest_hits(meshes.bvh, o, d, int(max_hits), dedup=eps)
    kind = kinds_from_faces(face, meshes.n_outer, meshes.n_inner)
    fc = face.long()
    if values is None:
        return ts, kind
    tri = meshes.faces[fc.clamp_min(0)]                 # (R, K, 3)
    u, v = uv[..., 0], uv[..., 1]
    vals = values[tri]
    vh = (1 - u - v) * vals[..., 0] + u * vals[..., 1] + v * vals[..., 2]
    return ts, kind, torch.where(fc >= 0, vh, torch.zeros_like(vh))


def starts_outside(meshes: ShellMeshes, o: torch.Tensor) -> torch.Tensor:
    """(R,) bool: ray origins outside the outer shell's bounding box (so outside both shells)."""
    return ((o < meshes.box_lo.to(o)) | (o > meshes.box_hi.to(o))).any(-1)


def band_intervals(meshes: ShellMeshes, o: torch.Tensor, d: torch.Tensor, max_hits: int = 8, eps: float = 1e-5):
    """Band intervals of rays (R, 3): ``t0, t1`` (R, K) float32 and ``ok`` (R, K) int32 (see
    :func:`shaders.band_sampler.band_intervals_from_hits`; computed from the hits' faces in one kernel,
    :func:`shaders.band_sampler.band_intervals_from_faces`)."""
    from shaders.band_sampler import band_intervals_from_faces
    from shaders.bvh import closest_hits

    ts, face, _ = closest_hits(meshes.bvh, o, d, int(max_hits), dedup=eps)
    return band_intervals_from_faces(ts, face, meshes.n_outer, meshes.n_inner, starts_outside(meshes, o))


#: Samples in intervals, pure torch (the reference of the Taichi :func:`shaders.band_sampler.band_samples`).
place_samples = place_samples_reference


class ProbeGrid:
    """The SDF and log kernel size of a field on a ``res^3`` grid over its cubic box: the cheap
    stand-in that :func:`shaders.band_probe.probe_samples` probes along band intervals.

    Band intervals only reach the nodes near the band (about 6 % of a trained lego_200 field's
    grid), so only the coarse cells around those are evaluated with the network
    (:func:`.extract.band_grids`); nothing probes the others. At 256^3 on 2 CPU cores: 2.4-3.0 s
    for lego_200 (13 % of the nodes evaluated), 3.2-4.9 s for scan24_400 (19 %), against 10-12 s
    dense (``coarse=0``), and the near-band values are identical. Not saved with checkpoints.
    :meth:`refresh` re-evaluates the near-band cells, so the grid can follow a field that is being
    fine-tuned.
    """

    def __init__(self, field: ShellField, cfg, coarse: int = 64, _seed_cells=None):
        from .extract import band_grids, grid_axes

        res = int(cfg.shell_probe_grid)
        if res < 2:
            raise ValueError(f"shell_probe_grid must be >= 2 (or 0 = off), got {res}")
        a = float(field.half_size)
        self.res = res
        self.lo = (field.center - a).float().cpu()      # three numbers, passed to the kernel as floats
        self.cell = 2.0 * a / (self.res - 1)
        self._axes = grid_axes(field, res)
        # nodes that band intervals can reach: inside the band (half-width from the local kernel
        # size, as at extraction), plus the dilation margin and two cells of slack for the corners
        # of trilinear lookups and for extraction grids coarser than this one
        ext_cell = 2.0 * a / max(int(cfg.shell_grid_res) - 1, 1)
        slack = math.sqrt(3.0) * (max(int(cfg.shell_dilate_voxels), 0) * ext_cell + 2.0 * max(ext_cell, self.cell))
        from shaders.band_probe import pack_grids

        f, log_s, near, self.evaluated = band_grids(
            field, res, eps=cfg.shell_eps, min_halfwidth=cfg.shell_min_halfwidth * a,
            max_halfwidth=cfg.shell_max_halfwidth * a, margin=slack, coarse=coarse, seed_cells=_seed_cells)
        # (res, res, res, 2): both values of a node side by side, the layout the probe kernel reads
        self.packed = pack_grids(f, log_s)
        del f, log_s
        self.refresh_index = near.reshape(-1).nonzero(as_tuple=True)[0]
        self._dev = {}

    @property
    def f(self) -> torch.Tensor:
        """The SDF grid (res, res, res) (a view of :attr:`packed`)."""
        return self.packed[..., 0]

    @property
    def log_s(self) -> torch.Tensor:
        """The log kernel size grid (res, res, res) (a view of :attr:`packed`)."""
        return self.packed[..., 1]

    def grid_on(self, device) -> torch.Tensor:
        """:attr:`packed` on ``device`` (copies kept until the next :meth:`refresh`: on a GPU the
        grid is not sent again for every chunk of rays)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.packed
        if device not in self._dev:
            self._dev[device] = self.packed.to(device)
        return self._dev[device]

    @torch.no_grad()
    def refresh(self, field: ShellField, chunk: int = 65536) -> None:
        """Re-evaluate the field at the cells near the band."""
        from .extract import grid_points

        idx = self.refresh_index
        self._dev = {}
        flat = self.packed.view(-1, 2)
        for i in range(0, idx.numel(), chunk):
            j = idx[i:i + chunk]
            a, b, _ = field.geometry(grid_points(self._axes, j))
            flat[j] = torch.stack([a, b], -1).to(flat)


#: The per-ray outputs of :func:`.volume.shade_and_composite` (the others are per sample).
_PER_RAY = ("rgb", "alpha", "depth", "depth_sum", "cost", "normal", "geo_evals")


def _scatter_rays(sub: dict, sel: torch.Tensor, n: int, background=None) -> dict:
    """The outputs of :func:`.volume.shade_and_composite` for the rays ``sel`` of ``n``, for all ``n``
    rays: the others evaluated nothing and see the background (differentiable w.r.t. ``sub``)."""
    out = dict(sub)
    for k in _PER_RAY:
        v = sub[k]
        full = torch.zeros((n,) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device)
        if k == "rgb" and background is not None:
            full = full + torch.as_tensor(background).to(v)
        out[k] = full.index_put((sel,), v)
    out["opacity"], out["samples"] = out["alpha"], out["cost"]
    return out


class ShellRenderer:
    """Renders a :class:`~.field.ShellField` inside its shells (see the module docstring)."""

    def __init__(self, field: ShellField, shells, cfg):
        self.field = field
        self.cfg = cfg
        self.probe = None
        probed = int(cfg.shell_probe_grid) > 0
        surface = not probed and (cfg.shell_surface_samples or cfg.shell_one_sample_crossings)
        # the meshes (and the BVH, on the Taichi device) follow the field's device
        self.meshes = ShellMeshes(shells.outer, shells.inner, shells.surface if surface else None,
                                  device=field.center.device)

    def update_vertex_sdf(self) -> None:
        """Follow a field that changed (fine-tuning): the SDF at the shell vertices, or the cells of
        the probe grid near the band."""
        if self.probe is not None:
            self.probe.refresh(self.field)
        elif self.cfg.shell_one_sample_crossings and int(self.cfg.shell_probe_grid) <= 0:
            self.meshes.update_vertex_sdf(self.field)

    def probe_grid(self) -> ProbeGrid:
        if self.probe is None:
            self.probe = ProbeGrid(self.field, self.cfg)
        return self.probe

    def probe_rays(self, o, d, solid: float):
        """The probe sampler's samples for rays (R, 3): ``rows (R',)`` the rays that cross a shell
        (or whose origin may be inside one: no other ray has a sample or a probe) and, for those,
        ``[t, delta, interval, alpha, count, t_start, n_seg, probes]`` of
        :func:`shaders.band_probe.probe_samples` over their band intervals.

        Crossings come from at most two BVH queries. With ``0 < shell_first_hits < shell_max_hits``
        the first gathers each ray's first ``shell_first_hits`` crossings, whose band intervals are
        probed; only the rays that are still open after them (the probe's ``alive``: neither its cut
        nor the early termination reached) and whose hit list was full, and the rays whose origin is
        not known to be outside the shells (the parity of all their crossings decides where they
        start), are traced again for ``shell_max_hits`` and probed again. The band intervals among a
        ray's first crossings are its first intervals, so the samples are exactly those of one query
        for ``shell_max_hits`` (tested); the probes of the rays traced twice count twice (all of them
        are made).
        """
        from shaders.band_probe import probe_samples
        from shaders.band_sampler import band_intervals_from_faces
        from shaders.bvh import closest_hits

        c, m = self.cfg, self.meshes
        g = self.probe_grid()
        grid = g.grid_on(o.device)
        step = c.shell_probe_step * float(self.field.half_size)

        def query(idx, k, drop_misses):
            """Crossings and probe samples of the rays ``idx`` (None: all); with ``drop_misses`` only
            those with a crossing (or an origin that may be inside) are probed and returned."""
            oo, dd = (o, d) if idx is None else (o[idx], d[idx])
            ts, face, _ = closest_hits(m.bvh, oo, dd, int(k), dedup=1e-5)
            outside = starts_outside(m, oo)
            rows = torch.arange(oo.shape[0], device=oo.device) if idx is None else idx
            if drop_misses:
                sel = ((face[:, 0] >= 0) | ~outside).nonzero(as_tuple=True)[0]
                ts, face, outside, oo, dd, rows = ts[sel], face[sel], outside[sel], oo[sel], dd[sel], rows[sel]
            t0, t1, ok = band_intervals_from_faces(ts, face, m.n_outer, m.n_inner, outside)
            res = probe_samples(oo, dd, t0, t1, ok, grid, None, g.lo, g.cell, step, tau=c.shell_probe_tau,
                                max_samples=c.shell_max_samples, solid=solid, t_stop=c.t_stop,
                                cut=c.shell_probe_cut)
            return rows, list(res[:8]), face[:, -1] >= 0, ~outside, res[8]

        k1, k = int(c.shell_first_hits), int(c.shell_max_hits)
        if not 0 < k1 < k:
            return query(None, k, True)[:2]
        rows, res, full, inside, alive = query(None, k1, True)
        redo = (inside | (full & (alive != 0))).nonzero(as_tuple=True)[0]
        if redo.numel():
            res2 = query(rows[redo], k, False)[1]
            res[7] = res[7].index_add(0, redo, res2[7])        # the first query's probes were made too
            for i in range(7):
                res[i][redo] = res2[i]
        return rows, res

    def render_rays(self, o, d, view_enc, background=None, anneal: float = 1.0,
                    differentiable: bool = False, solid: float | None = None) -> dict:
        """Render rays (R, 3) (unit ``d``): the outputs of :func:`.volume.shade_and_composite`, plus
        ``probes (R,)``: the probe grid's lookups per ray (0 without the probe sampler).

        ``solid``: the probe sampler's ``shell_probe_solid`` for this call (the fine-tuning passes
        ``shell_finetune_solid``); default the config's.

        ``differentiable``: the probe sampler's crossing samples take their opacity from the field
        at their descent's probe points instead of from the grid (the sample positions still come
        from the grid), so the image loss reaches the SDF network, the hash grid and the kernel
        size (whole-field fine-tuning in the band). The other samplers are differentiable anyway.
        """
        c = self.cfg
        a = float(self.field.half_size)
        dev = o.device
        if int(c.shell_probe_grid) > 0:
            solid = c.shell_probe_solid if solid is None else float(solid)
            rows, (t, delta, group, alpha, count, t_start, n_seg, probes) = self.probe_rays(o, d, solid)
            # only the rays with samples are composited; the others see the background
            has = (count > 0).nonzero(as_tuple=True)[0]
            sel = rows[has]
            S = int(count.max()) if count.numel() else 0
            t, delta, group, alpha = t[has, :S], delta[has, :S], group[has, :S].long(), alpha[has, :S]
            if c.shell_probe_cut > 0 and c.shell_probe_one_round:
                group = torch.zeros_like(group)     # the sampler's cut did the early termination
            valid = torch.arange(S, device=dev)[None] < count[has, None]
            descent = (t_start[has, :S], n_seg[has, :S]) if differentiable else None
            sub = shade_and_composite(self.field, o[sel], d[sel], view_enc[sel], t, delta, valid, group, background,
                                      anneal, c.t_stop, fixed_alpha=alpha, descent=descent)
            out = _scatter_rays(sub, sel, o.shape[0], background)
            out["probes"] = torch.zeros_like(out["cost"]).index_put((rows,), probes.to(out["cost"].dtype))
            return out
        one = bool(c.shell_one_sample_crossings)
        if one and not self.meshes.has_vertex_sdf:
            self.meshes.update_vertex_sdf(self.field)
        ts, kind, zh = shell_hits(self.meshes, o, d, c.shell_max_hits, values=self.meshes.vertex_logit) if one \
            else (*shell_hits(self.meshes, o, d, c.shell_max_hits), None)
        max_len = float(c.shell_one_sample_max_len) * a if c.shell_one_sample_max_len > 0 else math.inf
        out = band_samples(ts, kind, c.shell_step * a, c.shell_max_samples, c.shell_max_samples, zh, one, max_len,
                           starts_outside(self.meshes, o))
        t, delta, group, count = out[:4]
        S = int(count.max()) if count.numel() else 0
        t, delta, group = t[:, :S], delta[:, :S], group[:, :S].long()
        ends = tuple(x[:, :S] for x in out[4:]) if one else None
        valid = torch.arange(S, device=dev)[None] < count[:, None]
        out = shade_and_composite(self.field, o, d, view_enc, t, delta, valid, group, background, anneal,
                                  c.t_stop, ends)
        out["probes"] = torch.zeros_like(out["cost"])
        return out
