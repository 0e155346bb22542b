"""Band sampling for shell rendering: ray/shell crossings -> samples inside the band (Taichi + torch).

Input per ray: its first ``K`` crossings with two nested closed meshes (an outer and an inner
shell) and, optionally, the surface between them, sorted by ``t``: ``ts (R, K)`` (``inf`` past the
last hit) and ``kind (R, K)`` int32 (1 = outer shell, 2 = inner shell, 3 = surface, 0 = no hit;
hits are contiguous from column 0).

Semantics (the kernel :func:`band_samples` and the pure-torch reference
:func:`band_samples_reference` implement exactly this):

* The ray starts inside the outer (inner) shell iff it crosses it an odd number of times, unless
  its hit list is full (``K`` hits: possibly cut) or the caller knows it starts outside both
  (``outside (R,)``: the renderer flags rays whose origin is outside the outer shell's bounding
  box), in which case it is assumed to start outside. Without that flag, one missed crossing
  (the triangle test was not watertight before; a GPU run still showed one such ray, cause
  unknown) would turn a camera ray into one that starts in the band: an interval from the camera
  to its first hit.
* Each crossing toggles its shell's inside flag; the band is "inside outer and not inside inner".
* Band intervals: ``[0, t_0]`` when the ray starts in the band (and has a hit), and
  ``[t_j, t_{j+1}]`` for every crossing ``j`` after which the ray is in the band and which has a
  next crossing. An interval of length ``len`` gets ``n = clamp(ceil(len / step), 1, max_per)``
  samples at the centres of ``n`` equal parts (``delta = len / n``). When ``n = 1`` and the
  interval contains a surface crossing, the one sample is put at the first such crossing instead
  of the centre (``delta = len``): on a solid surface the field is then evaluated on the surface.
  Surface crossings do not change the inside/outside state. At most ``max_samples`` per ray,
  front first.
* One sample per surface crossing (``one_sample_crossings``, needs a value ``fh`` at each
  crossing -- the renderer passes the NeuS logit ``s f``): an interval that runs from the outer
  to the inner shell, or back, crosses the surface once; it gets one sample (as above: the
  centre, or the surface crossing) flagged ``ends = 1``, with ``f_a, f_b`` the values at the
  interval's start and end, so the opacity of the whole interval can come from its true ends
  instead of an extrapolation from one point.
  An interval that enters and leaves through the outer shell and crosses the surface an even
  number (>= 2) of times passes through thin parts (thinner than the band, so without an inner
  shell): it gets one sample at each entering surface crossing (``ends = 2`` for the first, with
  ``f_a`` the value at the interval's start; ``ends = 3`` for later ones, with ``f_a`` half the
  gap since the previous leaving crossing) and ``f_b`` half the distance to the next (leaving)
  crossing. Other intervals (grazing rays, odd crossing counts) keep the step rule.
  Both rules apply only to intervals at most ``one_sample_max_len`` long (default: any length);
  longer ones keep the step rule. A long interval means a grazing ray, which may also pass close
  to the surface somewhere without crossing it (a near miss: partial NeuS opacity that one sample
  at the crossing cannot see).

Outputs ``t (R, M)``, ``delta (R, M)``, ``interval (R, M)`` int32 (rank of the sample's band
interval along its ray, 0 for the first; used for early ray termination), zero-padded to
``M = max_samples`` columns, and ``count (R,)``.
"""
import math

import taichi as ti
import torch

from . import runtime

__all__ = ["band_samples", "band_samples_reference", "band_intervals_from_hits", "band_intervals_from_faces",
           "kinds_from_faces"]

_K = {}


def _kernel():
    if "k" in _K:
        return _K["k"]

    @ti.kernel
    def band(ts: ti.types.ndarray(), kind: ti.types.ndarray(), fh: ti.types.ndarray(),
             outside: ti.types.ndarray(), step: ti.f32,
             max_per: ti.i32, one_crossing: ti.i32, one_max_len: ti.f32, out_t: ti.types.ndarray(),
             out_d: ti.types.ndarray(),
             out_g: ti.types.ndarray(), out_fa: ti.types.ndarray(), out_fb: ti.types.ndarray(),
             out_e: ti.types.ndarray(), count: ti.types.ndarray()):
        R = ts.shape[0]
        K = ts.shape[1]
        M = out_t.shape[1]
        for r in range(R):
            nh = 0
            n_out = 0
            n_in = 0
            for j in range(K):
                if kind[r, j] > 0:
                    nh += 1
                    if kind[r, j] == 1:
                        n_out += 1
                    elif kind[r, j] == 2:
                        n_in += 1
            in_out = 0
            in_in = 0
            if nh < K and outside[r] == 0:
                in_out = n_out % 2
                in_in = n_in % 2
            cnt = 0
            n_iv = 0
            prev = 0.0
            prev_kind = 0
            prev_j = -1
            prev_f = 0.0
            surf = -1.0
            n_surf = 0
            for j in range(nh):
                tj = ts[r, j]
                kj = kind[r, j]
                if kj == 3:
                    if in_out == 1 and in_in == 0:
                        n_surf += 1
                        if surf < 0.0:
                            surf = tj
                    continue
                if in_out == 1 and in_in == 0:
                    length = ti.max(tj - prev, 0.0)
                    n = ti.min(ti.max(ti.cast(ti.ceil(length / step), ti.i32), 1), max_per)
                    ends = 0
                    one = one_crossing != 0 and length <= one_max_len
                    if one and prev_kind + kj == 3 and prev_kind * kj == 2:
                        ends = 1         # outer -> inner or inner -> outer: one surface crossing
                        n = 1
                    elif one and prev_kind == 1 and kj == 1 and n_surf >= 2 and n_surf % 2 == 0:
                        n = 0            # in and out through the outer shell across thin parts: one
                        m = 0            # sample per entering surface crossing (ends 2, then 3)
                        t_in = 0.0
                        last_out = prev
                        for q in range(prev_j + 1, j):
                            if m % 2 == 0:
                                t_in = ts[r, q]
                            else:
                                if cnt < M:
                                    t_out = ts[r, q]
                                    out_t[r, cnt] = t_in
                                    out_d[r, cnt] = t_out - t_in
                                    out_g[r, cnt] = n_iv
                                    if m == 1:
                                        out_e[r, cnt] = 2
                                        out_fa[r, cnt] = prev_f
                                    else:
                                        out_e[r, cnt] = 3
                                        out_fa[r, cnt] = 0.5 * (t_in - last_out)
                                    out_fb[r, cnt] = 0.5 * (t_out - t_in)
                                    cnt += 1
                                last_out = ts[r, q]
                            m += 1
                    dl = length / ti.cast(ti.max(n, 1), ti.f32)
                    for k in range(n):
                        if cnt < M:
                            tk = prev + (ti.cast(k, ti.f32) + 0.5) * dl
                            if n == 1 and surf >= 0.0:
                                tk = surf
                            out_t[r, cnt] = tk
                            out_d[r, cnt] = dl
                            out_g[r, cnt] = n_iv
                            out_e[r, cnt] = ends
                            out_fa[r, cnt] = prev_f * ti.cast(ends, ti.f32)
                            out_fb[r, cnt] = fh[r, j] * ti.cast(ends, ti.f32)
                            cnt += 1
                    n_iv += 1
                if kj == 1:
                    in_out = 1 - in_out
                else:
                    in_in = 1 - in_in
                prev = tj
                prev_kind = kj
                prev_j = j
                prev_f = fh[r, j]
                surf = -1.0
                n_surf = 0
            count[r] = cnt

    _K["k"] = band
    return band


def band_samples(ts: torch.Tensor, kind: torch.Tensor, step: float, max_per_interval: int,
                 max_samples: int, fh: torch.Tensor | None = None, one_sample_crossings: bool = False,
                 one_sample_max_len: float = math.inf, outside: torch.Tensor | None = None):
    """Samples in the band (see the module docstring): ``t, delta, interval (R, M)``, ``count (R,)``.

    With ``fh (R, K)`` (a value at each crossing: the renderer passes the NeuS logit ``s f``) it
    also returns ``f_a, f_b (R, M)`` and ``ends (R, M)`` int32: with ``one_sample_crossings`` an
    interval from the outer to the inner shell (or back) -- one crossing of the surface -- gets
    exactly one sample whose ``ends`` is 1 and whose ``f_a, f_b`` are the values at the interval's
    start and end (0 elsewhere). ``outside (R,)`` bool: rays known to start outside both shells
    (None: none known). Results are on the device of ``ts``.
    """
    if ts.ndim != 2 or kind.shape != ts.shape:
        raise ValueError(f"band_samples: ts and kind must be the same (R, K) shape, got {tuple(ts.shape)} "
                         f"and {tuple(kind.shape)}")
    if fh is not None and fh.shape != ts.shape:
        raise ValueError(f"band_samples: fh must be the (R, K) shape of ts, got {tuple(fh.shape)}")
    if outside is not None and tuple(outside.shape) != (ts.shape[0],):
        raise ValueError(f"band_samples: outside must be (R,) = ({ts.shape[0]},), got {tuple(outside.shape)}")
    if step <= 0 or max_per_interval < 1 or max_samples < 1:
        raise ValueError(f"band_samples: need step > 0, max_per_interval >= 1, max_samples >= 1; got "
                         f"{step}, {max_per_interval}, {max_samples}")
    runtime.init()
    dev = runtime.torch_device()
    R = ts.shape[0]
    t = torch.zeros(R, max_samples, dtype=torch.float32, device=dev)
    d = torch.zeros_like(t)
    fa = torch.zeros_like(t)
    fb = torch.zeros_like(t)
    g = torch.zeros(R, max_samples, dtype=torch.int32, device=dev)
    e = torch.zeros_like(g)
    count = torch.zeros(R, dtype=torch.int32, device=dev)
    if R:
        tsc = torch.where(torch.isfinite(ts), ts, torch.full_like(ts, 3e38)).to(dev, torch.float32).contiguous()
        fhc = (torch.zeros_like(tsc) if fh is None else fh.to(dev, torch.float32).contiguous())
        one = int(bool(one_sample_crossings) and fh is not None)
        outc = (torch.zeros(R, dtype=torch.int32, device=dev) if outside is None
                else outside.to(dev, torch.int32).contiguous())
        with runtime.runtime_lock:
            _kernel()(tsc, kind.to(dev, torch.int32).contiguous(), fhc, outc, float(step), int(max_per_interval),
                      one,
                      float(min(one_sample_max_len, 3e38)), t, d, g, fa, fb, e, count)
    home = ts.device
    if fh is None:
        return tuple(x.to(home) for x in (t, d, g, count))
    return tuple(x.to(home) for x in (t, d, g, count, fa, fb, e))


# ------------------------------------------------------------------------------ torch reference
def band_intervals_from_hits(ts: torch.Tensor, kind: torch.Tensor, outside: torch.Tensor | None = None):
    """Band intervals from crossings: ``t0 (R, K)``, ``t1 (R, K)``, ``ok (R, K)`` bool (vectorised torch).

    Column 0 is the interval from the ray origin to the first hit; column ``j + 1`` is ``[t_j,
    t_{j+1}]`` (the last column can never be valid). ``outside (R,)``: rays known to start
    outside both shells (see the module docstring).
    """
    R, K = ts.shape
    hit = kind > 0
    outer = kind == 1
    inner = kind == 2
    truncated = hit[:, -1]
    if outside is not None:
        truncated = truncated | outside.to(truncated.device, torch.bool)
    in_outer0 = ((outer.sum(1) % 2) == 1) & ~truncated
    in_inner0 = ((inner.sum(1) % 2) == 1) & ~truncated
    c_out = torch.cumsum(outer.long(), 1) + in_outer0[:, None].long()
    c_in = torch.cumsum(inner.long(), 1) + in_inner0[:, None].long()
    band_after = ((c_out % 2) == 1) & ((c_in % 2) == 0) & hit
    start_band = in_outer0 & ~in_inner0 & hit[:, 0]
    t0 = torch.cat([torch.zeros(R, 1, dtype=ts.dtype, device=ts.device), ts[:, :-1]], 1)
    t1 = ts
    ok = torch.cat([start_band[:, None], band_after[:, :-1] & hit[:, 1:]], 1)
    return t0, t1, ok


def kinds_from_faces(face: torch.Tensor, n_outer: int, n_inner: int) -> torch.Tensor:
    """``kind`` (R, K) int32 from hit face indices (-1 = none) of a BVH over the outer shell's
    ``n_outer`` faces, then the inner shell's ``n_inner``, then the surface's."""
    fc = face.long()
    return torch.where(fc < 0, 0, torch.where(fc < n_outer, 1, torch.where(fc < n_outer + n_inner, 2, 3))
                       ).to(torch.int32)


def _intervals_kernel():
    if "iv" in _K:
        return _K["iv"]

    @ti.kernel
    def intervals(ts: ti.types.ndarray(), face: ti.types.ndarray(), outside: ti.types.ndarray(),
                  n_outer: ti.i32, n_inner: ti.i32, t0: ti.types.ndarray(), t1: ti.types.ndarray(),
                  ok: ti.types.ndarray()):
        R = ts.shape[0]
        K = ts.shape[1]
        for r in range(R):
            n_out = 0
            n_in = 0
            for j in range(K):
                fc = face[r, j]
                if fc >= 0 and fc < n_outer:
                    n_out += 1
                elif fc >= n_outer and fc < n_outer + n_inner:
                    n_in += 1
            truncated = outside[r] != 0 or face[r, K - 1] >= 0
            s_out = 0
            s_in = 0
            if not truncated:
                s_out = n_out % 2
                s_in = n_in % 2
            prev_band = 0       # the state after the previous crossing is "band" (before the first: at the origin)
            if s_out == 1 and s_in == 0:
                prev_band = 1
            prev_t = 0.0
            for j in range(K):
                fc = face[r, j]
                t0[r, j] = 0.0
                t1[r, j] = 0.0
                ok[r, j] = 0
                if fc >= 0:
                    if prev_band == 1:
                        t0[r, j] = prev_t
                        t1[r, j] = ts[r, j]
                        ok[r, j] = 1
                    if fc < n_outer:
                        s_out = 1 - s_out
                    elif fc < n_outer + n_inner:
                        s_in = 1 - s_in
                    prev_band = 0
                    if s_out == 1 and s_in == 0:
                        prev_band = 1
                    prev_t = ts[r, j]
                else:
                    prev_band = 0

    _K["iv"] = intervals
    return intervals


def band_intervals_from_faces(ts: torch.Tensor, face: torch.Tensor, n_outer: int, n_inner: int,
                              outside: torch.Tensor | None = None):
    """:func:`band_intervals_from_hits` from the hits' face indices (a BVH over outer, inner, surface
    faces in that order; -1 = no hit) in one Taichi kernel: ``t0, t1`` (R, K) float32 (0 where not
    ``ok``: always finite) and ``ok`` (R, K) int32, on the device of ``ts``. Same intervals as
    ``band_intervals_from_hits(ts, kinds_from_faces(face, n_outer, n_inner), outside)`` (tested)."""
    R, K = ts.shape
    if face.shape != ts.shape:
        raise ValueError(f"band_intervals_from_faces: ts {tuple(ts.shape)} and face {tuple(face.shape)} differ")
    runtime.init()
    dev = runtime.torch_device()
    t0 = torch.zeros(R, K, dtype=torch.float32, device=dev)
    t1 = torch.zeros_like(t0)
    ok = torch.zeros(R, K, dtype=torch.int32, device=dev)
    if R and K:
        out = torch.zeros(R, dtype=torch.int32, device=dev) if outside is None else outside.to(dev, torch.int32)
        with runtime.runtime_lock:
            _intervals_kernel()(ts.to(dev, torch.float32).contiguous(), face.to(dev, torch.int32).contiguous(),
                                out.contiguous(), int(n_outer), int(n_inner), t0, t1, ok)
    home = ts.device
    return t0.to(home), t1.to(home), ok.to(home)


def place_samples_reference(t0, t1, ok, step: float, max_per_interval: int, max_samples: int):
    """Samples in intervals (torch): ``t, delta, valid, interval (R, S)``, S <= max_samples."""
    R = t0.shape[0]
    rank = torch.cumsum(ok.long(), 1) - 1
    ri, ii = ok.nonzero(as_tuple=True)
    a, b = t0[ri, ii], t1[ri, ii]
    length = (b - a).clamp_min(0.0)
    n = torch.clamp(torch.ceil(length / step), 1, max_per_interval).long()
    if n.numel() == 0:
        z = torch.zeros(R, 0, dtype=t0.dtype)
        return z, z, z.bool(), z.long()
    rep_r = torch.repeat_interleave(ri, n)
    first = torch.cumsum(n, 0) - n
    k = torch.arange(int(n.sum())) - torch.repeat_interleave(first, n)
    delta = torch.repeat_interleave(length / n.to(t0.dtype), n)
    t = torch.repeat_interleave(a, n) + (k.to(t0.dtype) + 0.5) * delta
    grp = torch.repeat_interleave(rank[ri, ii], n)
    counts = torch.bincount(rep_r, minlength=R)
    pos = torch.arange(rep_r.numel()) - (torch.cumsum(counts, 0) - counts)[rep_r]
    keep = pos < max_samples
    rep_r, pos, t, delta, grp = rep_r[keep], pos[keep], t[keep], delta[keep], grp[keep]
    S = int(min(int(counts.max()), max_samples))
    T = torch.zeros(R, S, dtype=t0.dtype)
    D = torch.zeros(R, S, dtype=t0.dtype)
    V = torch.zeros(R, S, dtype=torch.bool)
    G = torch.zeros(R, S, dtype=torch.long)
    T[rep_r, pos] = t
    D[rep_r, pos] = delta
    V[rep_r, pos] = True
    G[rep_r, pos] = grp
    return T, D, V, G


def band_samples_reference(ts, kind, step: float, max_per_interval: int, max_samples: int, fh=None,
                           one_sample_crossings: bool = False, one_sample_max_len: float = math.inf,
                           outside=None):
    """Pure-torch twin of :func:`band_samples` (brute force, one ray at a time; small inputs)."""
    R, K = ts.shape
    out_t = torch.zeros(R, max_samples, dtype=ts.dtype)
    out_d = torch.zeros(R, max_samples, dtype=ts.dtype)
    out_fa = torch.zeros(R, max_samples, dtype=ts.dtype)
    out_fb = torch.zeros(R, max_samples, dtype=ts.dtype)
    out_g = torch.zeros(R, max_samples, dtype=torch.int32)
    out_e = torch.zeros(R, max_samples, dtype=torch.int32)
    count = torch.zeros(R, dtype=torch.int32)
    one = bool(one_sample_crossings) and fh is not None
    for r in range(R):
        ks = [int(k) for k in kind[r] if k > 0]
        tr = ts[r, :len(ks)]
        full = len(ks) == K or (outside is not None and bool(outside[r]))
        in_out = (ks.count(1) % 2 == 1) and not full
        in_in = (ks.count(2) % 2 == 1) and not full
        prev, prev_kind, prev_f, surf, cnt, n_iv = ts.new_zeros(()), 0, 0.0, None, 0, 0
        crossings = []
        for j, (tj, kj) in enumerate(zip(tr, ks)):
            band = in_out and not in_in
            if kj == 3:
                if band:
                    crossings.append(tj)
                    if surf is None:
                        surf = tj
                continue
            if band:
                length = (tj - prev).clamp_min(0)
                n = int(min(max(math.ceil(float(length / step)), 1), max_per_interval))
                short = one and float(length) <= one_sample_max_len
                ends = short and {prev_kind, kj} == {1, 2}
                if ends:
                    n = 1
                elif short and prev_kind == 1 and kj == 1 and len(crossings) >= 2 and len(crossings) % 2 == 0:
                    n = 0
                    last_out = prev
                    for p in range(0, len(crossings), 2):
                        t_in, t_out = crossings[p], crossings[p + 1]
                        if cnt < max_samples:
                            out_t[r, cnt] = t_in
                            out_d[r, cnt] = t_out - t_in
                            out_g[r, cnt] = n_iv
                            out_e[r, cnt] = 2 if p == 0 else 3
                            out_fa[r, cnt] = prev_f if p == 0 else 0.5 * (t_in - last_out)
                            out_fb[r, cnt] = 0.5 * (t_out - t_in)
                            cnt += 1
                        last_out = t_out
                for k in range(n):
                    if cnt < max_samples:
                        out_t[r, cnt] = surf if (n == 1 and surf is not None) else prev + (k + 0.5) * length / n
                        out_d[r, cnt] = length / n
                        out_g[r, cnt] = n_iv
                        if ends:
                            out_e[r, cnt] = 1
                            out_fa[r, cnt] = prev_f
                            out_fb[r, cnt] = fh[r, j]
                        cnt += 1
                n_iv += 1
            if kj == 1:
                in_out = not in_out
            else:
                in_in = not in_in
            prev, prev_kind, surf, crossings = tj, kj, None, []
            prev_f = 0.0 if fh is None else fh[r, j]
        count[r] = cnt
    if fh is None:
        return out_t, out_d, out_g, count
    return out_t, out_d, out_g, count, out_fa, out_fb, out_e
