"""A volume renderer for any field given as a callable: occupancy grid, ray marching, front-to-back
compositing with early termination, expected depth and accumulated opacity.

The pieces, usable alone or together (:func:`render_rays` chains them):

* :func:`ray_box` -- entry/exit of rays with an axis-aligned box;
* :class:`OccupancyGrid` -- a ``res^3`` boolean grid over a cubic box: where the field may be
  non-empty (filled by a predicate the method supplies; every cell is occupied until then);
* :func:`march` -- uniform samples along rays inside the box, kept only in occupied cells;
* :func:`composite` -- front-to-back compositing of padded samples (weights, opacity, depth);
* :func:`composite_packed` -- the same sums for packed samples (each ray's contiguous), in
  O(samples): what :func:`render_samples` uses;
* :func:`render_samples` -- evaluates a field callable on padded samples group by group, front to
  back, skipping rays whose transmittance fell under ``t_stop``, and composites them.

Shapes: ``R`` rays, ``S`` samples per ray (padded; ``valid`` marks real ones), ``M`` samples
evaluated in one call of the field. The field callable::

    fn(x (M, 3), dirs (M, 3), delta (M,), ray (M,) long, col (M,) long) -> dict(
        alpha (M,)  opacity of the sample's interval,
        rgb   (M, 3),
        <name> (M, C) for each name in ``weighted`` (composited like rgb, e.g. normals),
        <other> tensors, concatenated over all evaluated samples (e.g. gradients for a loss))

Example (a fuzzy ball, no occupancy grid):

>>> import torch
>>> from engine.render.volume import render_rays
>>> def ball(x, dirs, delta, ray, col):
...     sigma = 5.0 * (x.norm(dim=-1) < 0.5).float()
...     return {"alpha": 1 - torch.exp(-sigma * delta), "rgb": torch.ones_like(x) * 0.8}
>>> o = torch.tensor([[0.0, 0.0, -2.0], [0.0, 2.0, -2.0]]); d = torch.tensor([[0.0, 0.0, 1.0]] * 2)
>>> out = render_rays(ball, o, d, box=torch.tensor([[-1.0] * 3, [1.0] * 3]), step=0.01)
>>> [round(float(a), 3) for a in out["alpha"]]
[0.993, 0.0]
>>> round(float(out["depth"][0]), 2)        # 1.5 + 1/5 - e^-5 / (1 - e^-5): the closed form, to 0.01
1.69
"""
from __future__ import annotations

import math
from typing import Callable

import torch

FieldFn = Callable[..., dict]


def ray_box(o: torch.Tensor, d: torch.Tensor, lo, hi):
    """Entry/exit ``t`` of rays ``o, d (R, 3)`` with the box ``[lo, hi]`` (3,) each.

    ``t_near >= 0``; a miss has ``t_far <= t_near``. Directions need not be unit (t is in units of
    ``d``); zero components are handled.
    """
    dd = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    ta, tb = (lo - o) / dd, (hi - o) / dd
    tn = torch.minimum(ta, tb).amax(-1).clamp_min(0.0)
    tf = torch.maximum(ta, tb).amin(-1)
    return tn, tf


class OccupancyGrid:
    """A ``res^3`` boolean grid over the cubic box ``center +- half``: where the field may be non-empty.

    Every cell is occupied until the first :meth:`update`, which evaluates
    ``occupied(points (M, 3), cell_radius) -> bool (M,)`` at one jittered point per cell.
    """

    def __init__(self, center, half: float, res: int):
        self.center = torch.as_tensor(center, dtype=torch.float32)
        self.half_size = float(half)
        self.res = int(res)
        self.occ = torch.ones(self.res, self.res, self.res, dtype=torch.bool)

    @property
    def cell(self) -> float:
        return 2.0 * self.half_size / self.res

    @property
    def box(self) -> torch.Tensor:
        return torch.stack([self.center - self.half_size, self.center + self.half_size])

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Occupancy (bool) of world points ``x (..., 3)``; points outside the box are empty."""
        u = (x - self.center) / (2 * self.half_size) + 0.5
        inside = ((u >= 0) & (u < 1)).all(-1)
        idx = (u * self.res).long().clamp(0, self.res - 1)
        return self.occ[idx[..., 0], idx[..., 1], idx[..., 2]] & inside

    @torch.no_grad()
    def update(self, occupied: Callable[[torch.Tensor, float], torch.Tensor],
               generator: torch.Generator | None = None, chunk: int = 65536,
               cells: torch.Tensor | None = None) -> float:
        """Re-evaluate every cell (one jittered point each), or only where ``cells`` (bool
        ``(res, res, res)``) is set, the others keeping their state; returns the occupied fraction.
        The points are on the device of :attr:`center` (a CPU ``generator`` draws the jitter there)."""
        r = self.res
        dev = self.center.device
        if cells is None:
            ii = torch.stack(torch.meshgrid(*[torch.arange(r, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
        else:
            ii = cells.to(dev).reshape(r, r, r).nonzero()
        jit = torch.rand(ii.shape, generator=generator).to(dev)
        p = self.center - self.half_size + (ii + jit) * self.cell
        occ = torch.empty(p.shape[0], dtype=torch.bool, device=dev)
        radius = self.cell * math.sqrt(3) / 2
        for i in range(0, p.shape[0], chunk):
            occ[i:i + chunk] = occupied(p[i:i + chunk], radius)
        if cells is None:
            self.occ = occ.reshape(r, r, r)
        else:
            grid = self.occ.to(dev).clone()
            grid[ii[:, 0], ii[:, 1], ii[:, 2]] = occ
            self.occ = grid
        return float(self.occ.float().mean())

    def refresh_cells(self, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """The cells a partial refresh re-evaluates (bool ``(res, res, res)``): every occupied cell
        and its 26 neighbours (a surface moving by less than a cell per refresh stays covered), and
        a random ``fraction`` of the others (new parts far from the current ones)."""
        occ = self.occ.float()[None, None]
        near = torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
        rand = torch.rand(self.occ.shape, generator=generator).to(near.device) < float(fraction)
        return near | rand

    def state_dict(self) -> dict:
        return {"occ": self.occ.clone(), "center": self.center.clone(), "half_size": self.half_size}

    @classmethod
    def from_state_dict(cls, st: dict) -> "OccupancyGrid":
        g = cls(st["center"], st["half_size"], st["occ"].shape[0])
        g.occ = st["occ"].clone().bool()
        return g


def march(o, d, occ: OccupancyGrid | None, step: float, max_samples: int, generator=None, box=None,
          offsets=None, backend: str = "auto"):
    """Samples every ``step`` along rays (R, 3) inside the box, kept only in occupied cells.

    The box is the grid's (or ``box`` (2, 3) without a grid). Offsets within the first step are
    0.5 or, with ``generator``, uniform per ray (or ``offsets`` (R, 1) in [0, 1) when given: a
    data-parallel rank's part of offsets drawn for the whole batch). Returns ``t (R, S)`` and ``valid (R, S)`` with at
    most ``max_samples`` kept samples per ray, front first (``t`` where ``valid`` is False is
    padding: finite, not a sample).

    ``backend``: ``torch`` (this function's own tensor code, the reference), ``taichi``
    (:func:`shaders.march.march_occupied`: one pass per ray, no ``(R, K, 3)`` temporaries) or
    ``auto`` (Taichi with a grid, float32 rays on the Taichi runtime's device; torch otherwise).
    """
    if occ is not None:
        lo, hi = occ.center - occ.half_size, occ.center + occ.half_size
    else:
        lo, hi = torch.as_tensor(box, dtype=o.dtype)
    tn, tf = ray_box(o, d, lo, hi)
    diag = float((torch.as_tensor(hi) - torch.as_tensor(lo)).norm())
    K = int(math.ceil(diag / step)) + 1
    if offsets is not None:
        off = offsets.to(o.dtype).reshape(-1, 1)
    else:
        off = 0.5 if generator is None else torch.rand(o.shape[0], 1, generator=generator).to(o.device)
    if backend not in ("auto", "torch", "taichi"):
        raise ValueError(f"march: backend must be auto, torch or taichi, got {backend!r}")
    if occ is not None and backend != "torch" and (backend == "taichi" or _taichi_march_ok(o)):
        from shaders.march import march_occupied

        off_r = off.reshape(-1) if torch.is_tensor(off) else torch.full((o.shape[0],), float(off))
        t_out, count = march_occupied(o, d, tn, tf, off_r.expand(o.shape[0]), occ.occ, occ.center,
                                      occ.half_size, step, K, max_samples)
        S = int(count.max()) if count.numel() else 0
        t_out, count = t_out[:, :S].to(o.device), count.to(o.device)
        return t_out, torch.arange(S, device=o.device)[None] < count[:, None]
    t = tn[:, None] + (torch.arange(K, dtype=o.dtype, device=o.device)[None] + off) * step
    keep = t < tf[:, None]
    if occ is not None:
        keep &= occ.lookup(o[:, None] + t[..., None] * d[:, None])
    counts = keep.sum(1)
    S = int(min(int(counts.max()) if counts.numel() else 0, max_samples))
    if S == 0:
        return t[:, :0], keep[:, :0]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :S]
    return torch.gather(t, 1, order), torch.gather(keep, 1, order)


def _taichi_march_ok(o: torch.Tensor) -> bool:
    """Whether ``march(backend="auto")`` takes the Taichi kernel: float32 rays on the device the
    Taichi runtime works on (an uninitialised runtime is started on its default arch)."""
    if o.dtype != torch.float32:
        return False
    from shaders import runtime

    runtime.init()
    return o.device.type == runtime.torch_device().type


def composite(alpha: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None = None,
              background: torch.Tensor | None = None, normals: torch.Tensor | None = None,
              weighted: dict | None = None) -> dict:
    """Front-to-back compositing of padded samples.

    alpha (R, S), rgb (R, S, 3), t (R, S) sample depths, valid (R, S) bool (padding is False),
    ``weighted`` {name: (R, S, C)} more per-sample values to sum with the weights.
    Returns ``rgb (R, 3)`` (plus ``(1 - opacity) background``), ``opacity (R,)``, ``depth (R,)``
    (expected depth, normalised by opacity), ``depth_sum (R,)``, ``weights (R, S)`` and the weighted
    sums of ``normals`` (as ``normal``) and of every ``weighted`` entry.
    """
    if valid is not None:
        alpha = alpha * valid.to(alpha.dtype)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], 1), 1)[:, :-1]
    w = alpha * trans
    opacity = w.sum(1)
    dsum = (w * t).sum(1)
    out = {"weights": w, "opacity": opacity, "rgb": (w[..., None] * rgb).sum(1),
           "depth": dsum / opacity.clamp_min(1e-6), "depth_sum": dsum}
    if normals is not None:
        out["normal"] = (w[..., None] * normals).sum(1)
    for k, v in (weighted or {}).items():
        out[k] = (w[..., None] * v).sum(1)
    if background is not None:
        out["rgb"] = out["rgb"] + (1.0 - opacity)[:, None] * background.to(alpha)
    return out


def composite_packed(alpha: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, ray: torch.Tensor, n: int,
                     weighted: dict | None = None) -> dict:
    """Front-to-back compositing of packed samples: :func:`composite` without the padding.

    alpha (M,), rgb (M, 3), t (M,) sample depths, ray (M,) long: the ray of each sample, in ``[0, n)``;
    the samples of a ray are contiguous and front to back (e.g. ``valid.nonzero()`` order of a
    padded layout), ``weighted`` {name: (M, C)}. Returns per ray ``rgb (n, 3)`` (no background),
    ``opacity (n,)``, ``depth_sum (n,)``, the weighted sums and ``count (n,)`` (samples), and
    ``weights (M,)``: the same
    values as :func:`composite` on the padded layout (tested), computed in O(M) instead of O(n S),
    which matters when a few rays have many samples and most have few.

    The transmittance in front of each sample is the exponential of a cumulative sum of
    ``log(1 - alpha + 1e-10)`` (the factors :func:`composite` multiplies) restarted at each ray's
    first sample; the sum runs in float64, so one ray's sum does not lose precision to the rays
    before it.
    """
    lt = torch.log(1.0 - alpha + 1e-10)
    cs = torch.cumsum(lt.double(), 0) - lt.double()           # exclusive running sum over all samples
    counts = torch.bincount(ray, minlength=n)
    first = torch.cumsum(counts, 0) - counts                   # each ray's first sample
    w = alpha * torch.exp(cs - cs[first[ray]]).to(alpha.dtype)

    def add(v):
        return torch.zeros((n,) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device).index_add(0, ray, v)

    out = {"weights": w, "opacity": add(w), "rgb": add(w[:, None] * rgb), "depth_sum": add(w * t), "count": counts}
    for k, v in (weighted or {}).items():
        out[k] = add(w[:, None] * v)
    return out


def render_samples(fn: FieldFn, o, d, t, delta, valid, group=None, background=None, t_stop: float = 1e-3,
                   weighted: tuple = ()) -> dict:
    """Evaluate ``fn`` on padded samples and composite them front to back with early termination.

    t, delta (R, S) sample depths and interval lengths, valid (R, S) bool, group (R, S) int (default:
    one group per sample column): the samples of group ``g`` lie before those of ``g + 1`` on every
    ray, and group ``g`` is evaluated only for rays whose transmittance is still above ``t_stop``
    (the rest cannot change the pixel by more than ``t_stop``). ``fn``: see the module docstring.

    Returns ``rgb (R, 3)`` (with ``background``), ``alpha (R,)``, ``depth (R,)`` (normalised by
    alpha), ``depth_sum (R,)``, ``cost (R,)`` (samples evaluated), one ``(R, C)`` weighted sum per
    name in ``weighted``, and ``extras``: {name: tensor} every other entry ``fn`` returned,
    concatenated over the evaluated samples in evaluation order.
    """
    R = o.shape[0]
    dev, dt = o.device, o.dtype
    if group is None:
        group = torch.arange(t.shape[1], device=dev)[None].expand_as(t)
    T = torch.ones(R, device=dev, dtype=dt)
    rgb = torch.zeros(R, 3, device=dev, dtype=dt)
    acc = {}
    dsum, cost = torch.zeros(R, device=dev, dtype=dt), torch.zeros(R, device=dev, dtype=dt)
    extras: dict[str, list] = {}
    # the valid samples once, in (ray, column) order, then bucketed by group (a stable sort keeps that
    # order inside each group): a round touches its own group's samples only, not (R, S) masks
    vr, vc = valid.nonzero(as_tuple=True)
    vg = group[vr, vc].long()
    if vg.numel():
        vg, perm = torch.sort(vg, stable=True)
        vr, vc = vr[perm], vc[perm]
        ids, counts = torch.unique_consecutive(vg, return_counts=True)
        bounds = [0] + torch.cumsum(counts, 0).tolist()
    else:
        ids, bounds = torch.zeros(0, dtype=torch.long), [0]
    for j in range(ids.numel()):
        ri, ci = vr[bounds[j]:bounds[j + 1]], vc[bounds[j]:bounds[j + 1]]
        if j > 0 or t_stop >= 1.0:      # every ray is open in the first round
            live = T.detach()[ri] > t_stop
            ri, ci = ri[live], ci[live]
        if ri.numel() == 0:
            continue
        # the round's samples, packed: each ray's contiguous and front to back (nonzero's row-major
        # order, which the stable sort by group kept)
        tt = t[ri, ci]
        x = o[ri] + tt[:, None] * d[ri]
        res = fn(x, d[ri], delta[ri, ci], ri, ci)
        out = composite_packed(res["alpha"], res["rgb"], tt, ri, R, {k: res[k] for k in weighted})
        rgb = rgb + T[:, None] * out["rgb"]
        for k in weighted:
            prev = acc.get(k)
            acc[k] = T[:, None] * out[k] if prev is None else prev + T[:, None] * out[k]
        dsum = dsum + T * out["depth_sum"]
        T = T * (1.0 - out["opacity"])
        cost = cost + out["count"].to(dt)
        for k, v in res.items():
            if k not in ("alpha", "rgb") and k not in weighted:
                extras.setdefault(k, []).append(v)
    alpha = 1.0 - T
    if background is not None:
        rgb = rgb + T[:, None] * torch.as_tensor(background).to(rgb)
    result = {"rgb": rgb, "alpha": alpha, "depth": dsum / alpha.clamp_min(1e-6), "depth_sum": dsum, "cost": cost,
              "extras": {k: torch.cat(v, 0) for k, v in extras.items()}}
    for k in weighted:
        result[k] = acc.get(k, torch.zeros(R, 3, device=dev, dtype=dt))
    return result


def render_rays(fn: FieldFn, o, d, *, occ: OccupancyGrid | None = None, box=None, step: float,
                max_samples: int = 1024, group_size: int = 8, background=None, t_stop: float = 1e-3,
                generator=None, weighted: tuple = ()) -> dict:
    """March rays (R, 3) through the occupied part of the box every ``step`` and composite ``fn``.

    The convenience chain of :func:`march` and :func:`render_samples` (``group_size`` samples per
    round of early termination); outputs as :func:`render_samples`.
    """
    t, valid = march(o, d, occ, step, max_samples, generator, box=box)
    group = torch.arange(t.shape[1], device=o.device)[None].expand_as(t) // max(int(group_size), 1)
    return render_samples(fn, o, d, t, torch.full_like(t, step), valid, group, background, t_stop, weighted)
