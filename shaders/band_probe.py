"""Probe-guided band sampling for shell rendering (Taichi kernel + pure-torch twin).

The one-sample rules of :mod:`shaders.band_sampler` decide where to sample from the shells alone. This
sampler also looks at the field, through a cheap stand-in: the SDF ``f`` and the log kernel size
``log s`` sampled on a regular grid (trilinear lookups, no network). Along each band interval it
probes every ``probe_step`` and reproduces what fine volumetric sampling would see, with few
network evaluations:

* The interval ``[t0, t1]`` is cut into ``n = clamp(ceil(len / probe_step), 1, max_segments)``
  equal segments; the grid is probed at their ``n + 1`` ends. A segment ``k`` has the NeuS opacity
  ``alpha_k = max(0, 1 - Phi(s_k f_{k+1}) / Phi(s_k f_k))`` (``s_k`` the kernel size at its start,
  ``Phi`` the logistic), which is 0 unless ``f`` decreases along it.
* A *descent* is a maximal run of consecutive segments along which ``f`` decreases. A descent that
  crosses ``f = 0`` (the ray enters the surface) gets **one** sample, at the crossing (``f``
  interpolated linearly in its segment), whose opacity is the descent's whole opacity
  ``1 - prod_k (1 - alpha_k)``, returned in ``alpha``. With a constant ``s`` the product
  telescopes to ``1 - Phi(s f_end) / Phi(s f_start)``, the exact NeuS opacity of the descent.
* A descent that does not cross (the ray passes near the surface: a *near miss*) gets one sample
  at the centre of each of its segments whose ``alpha_k`` exceeds ``tau``; ``alpha`` is -1 there:
  the caller evaluates the field's own NeuS opacity over the segment (``delta`` its length).
* Segments where ``f`` does not decrease have no opacity and get no sample.
* ``solid`` > 0: a crossing descent whose opacity is below ``solid`` (a translucent or fuzzy
  surface) is sampled like a near miss, one sample per segment above ``tau``, so its colour is
  integrated over the descent instead of taken at the zero crossing. On the default lego_200 and
  scan24_400 runs of session 11 0.8 gained 0.05-0.08 dB for 3-15 % more samples. Session 16's
  default was 1 (every crossing per segment: on a 17-minute lego_200 field fine-tuned that way
  30.01 dB on all test views against 28.88 with 0, and 29.65 volumetric). Since session 17 the
  fine-tuning samples at 0.995 (``shell_finetune_solid``), so the colour network also learns the
  one-sample crossings, and a render at 0.995 is about as sharp as the volumetric render at about
  4x its speed; renders still default to 1 (README "Adaptive Shells").

``cut`` > 0 (``shell_probe_cut``): the grid's estimate of a ray's transmittance is kept through
every sample emitted (a crossing at its descent's opacity, a per-segment sample at its segment's
grid opacity), and once it is below ``cut`` the ray gets no more samples and its later intervals
are not walked. This is the renderer's early termination moved into the sampler at per-sample
granularity, but with the grid's opacities standing in for the field's, so it is not exact: on a
17-minute lego_200 field (session 17, all 200 test views) ``cut`` 0.01 dropped 23 % of the samples and
0.01 dB. Without it (0), the per-segment samples of one interval are evaluated together, so those
behind the opaque part of a crossing are evaluated too.

The threshold ``tau`` drops the faint tail of a near miss: a grazing ray whose SDF falls slowly
spreads its opacity over many segments each under ``tau`` (``tests/shaders/test_band_probe.py``
has one that keeps 0.02 of its 0.12 at ``tau`` 0.01). On a volume-only lego_200 field, ``tau``
0.003 instead of 0.01 changed the test PSNR by +0.01 dB for 6 % more samples; one sample per near
miss carrying the descent's whole opacity (like a crossing) lost 0.09 dB. ``shell_probe_step``
0.0075 was chosen on 4 test views of lego_200 and scan24_400; ``shell_probe_tau`` is 0.01 since
session 16 (with ``solid`` 1, 0.003 and 0.01 rendered the same to 0.01 dB, 0.01 with 6 % fewer
samples; README "Adaptive Shells").

Samples are emitted front to back, at most ``max_samples`` per ray; ``interval`` is the rank of
the sample's band interval along the ray (for early ray termination). Lookups outside the grid
clamp to its border.
"""
import math

import taichi as ti
import torch

from . import runtime

__all__ = ["pack_grids", "probe_samples", "probe_samples_reference", "trilinear_reference"]

_K = {}

#: Most probe segments per band interval (``max_segments``): a run's segment opacities are kept in a
#: local array of this size, so that a near miss's samples need no second walk.
MAX_SEGMENTS = 64


def _kernel():
    if "k" in _K:
        return _K["k"]

    @ti.func
    def lookup(gp: ti.template(), x0: ti.f32, x1: ti.f32, x2: ti.f32,
               lo0: ti.f32, lo1: ti.f32, lo2: ti.f32, inv_cell: ti.f32, G: ti.i32):
        top = ti.cast(G - 1, ti.f32)
        u0 = ti.min(ti.max((x0 - lo0) * inv_cell, 0.0), top)
        u1 = ti.min(ti.max((x1 - lo1) * inv_cell, 0.0), top)
        u2 = ti.min(ti.max((x2 - lo2) * inv_cell, 0.0), top)
        i0 = ti.min(ti.cast(ti.floor(u0), ti.i32), G - 2)
        i1 = ti.min(ti.cast(ti.floor(u1), ti.i32), G - 2)
        i2 = ti.min(ti.cast(ti.floor(u2), ti.i32), G - 2)
        w0 = u0 - ti.cast(i0, ti.f32)
        w1 = u1 - ti.cast(i1, ti.f32)
        w2 = u2 - ti.cast(i2, ti.f32)
        vf = 0.0
        vl = 0.0
        for c in ti.static(range(8)):
            a = ti.static(c // 4)
            b = ti.static((c // 2) % 2)
            e = ti.static(c % 2)
            w = (w0 * a + (1.0 - w0) * (1 - a)) * (w1 * b + (1.0 - w1) * (1 - b)) * (w2 * e + (1.0 - w2) * (1 - e))
            vf += w * gp[i0 + a, i1 + b, i2 + e, 0]
            vl += w * gp[i0 + a, i1 + b, i2 + e, 1]
        return vf, vl

    @ti.func
    def seg_log_trans(fa: ti.f32, fb: ti.f32, ls: ti.f32) -> ti.f32:
        """log(1 - alpha) of a segment: min(0, log Phi(s fb) - log Phi(s fa))."""
        s = ti.exp(ls)
        za = s * fa
        zb = s * fb
        # log Phi(z) = -softplus(-z), computed stably
        lpa = -(ti.max(-za, 0.0) + ti.log(1.0 + ti.exp(-ti.abs(za))))
        lpb = -(ti.max(-zb, 0.0) + ti.log(1.0 + ti.exp(-ti.abs(zb))))
        return ti.min(lpb - lpa, 0.0)

    @ti.kernel
    def probe(o: ti.types.ndarray(), d: ti.types.ndarray(), t0: ti.types.ndarray(), t1: ti.types.ndarray(),
              ok: ti.types.ndarray(), gp: ti.types.ndarray(),
              lo0: ti.f32, lo1: ti.f32, lo2: ti.f32, inv_cell: ti.f32, step: ti.f32, max_seg: ti.i32,
              tau: ti.f32, solid: ti.f32, stop: ti.f32, cut: ti.f32, out_t: ti.types.ndarray(), out_d: ti.types.ndarray(), out_g: ti.types.ndarray(),
              out_a: ti.types.ndarray(), count: ti.types.ndarray(), out_ts: ti.types.ndarray(),
              out_n: ti.types.ndarray(), probes: ti.types.ndarray(), alive: ti.types.ndarray()):
        R = t0.shape[0]
        K = t0.shape[1]
        M = out_t.shape[1]
        G = gp.shape[0]
        for r in range(R):
            cnt = 0
            rank = 0
            npr = 0
            trans = 1.0     # through the crossings emitted so far (near misses' opacity is the field's)
            gtrans = 1.0    # through every sample emitted so far, near misses at their grid opacity
            seg_al = ti.Vector.zero(ti.f32, MAX_SEGMENTS)   # a descent's segment opacities (written before read)
            ox, oy, oz = o[r, 0], o[r, 1], o[r, 2]
            dx, dy, dz = d[r, 0], d[r, 1], d[r, 2]
            for j in range(K):
                # an interval with a non-finite end (|t| not below the float range, or NaN) is ignored
                if ok[r, j] != 0 and ti.abs(t0[r, j]) < 3.0e38 and ti.abs(t1[r, j]) < 3.0e38 \
                        and trans >= stop and gtrans >= cut:
                    a = t0[r, j]
                    length = ti.max(t1[r, j] - a, 0.0)
                    n = ti.min(ti.max(ti.cast(ti.ceil(length / step), ti.i32), 1), max_seg)
                    dl = length / ti.cast(n, ti.f32)
                    fp, lp = lookup(gp, ox + a * dx, oy + a * dy, oz + a * dz, lo0, lo1, lo2, inv_cell, G)
                    npr += 1
                    in_run = 0
                    run_k = 0
                    run_cross = 0
                    run_log = 0.0
                    run_tc = 0.0
                    for k in range(n + 1):
                        desc = 0
                        fn = fp
                        ln = lp
                        if k < n:
                            tk = a + ti.cast(k + 1, ti.f32) * dl
                            fn, ln = lookup(gp, ox + tk * dx, oy + tk * dy, oz + tk * dz, lo0, lo1, lo2,
                                            inv_cell, G)
                            npr += 1
                            if fp > fn:
                                desc = 1
                        if desc == 1:
                            if in_run == 0:
                                in_run = 1
                                run_k = k
                                run_cross = 0
                                run_log = 0.0
                            lt = seg_log_trans(fp, fn, lp)
                            seg_al[k - run_k] = 1.0 - ti.exp(lt)
                            run_log += lt
                            if run_cross == 0 and fp > 0.0 and fn <= 0.0:
                                run_cross = 1
                                run_tc = a + (ti.cast(k, ti.f32) + fp / (fp - fn)) * dl
                        elif in_run == 1:
                            in_run = 0
                            if run_cross == 1 and 1.0 - ti.exp(run_log) >= solid:
                                if cnt < M:
                                    out_t[r, cnt] = run_tc
                                    out_d[r, cnt] = dl
                                    out_g[r, cnt] = rank
                                    out_a[r, cnt] = 1.0 - ti.exp(run_log)
                                    out_ts[r, cnt] = a + ti.cast(run_k, ti.f32) * dl
                                    out_n[r, cnt] = k - run_k
                                    cnt += 1
                                    trans *= ti.exp(run_log)
                                    gtrans *= ti.exp(run_log)
                            else:
                                # a near miss (or a translucent crossing): one sample per opaque segment
                                for q in range(run_k, k):
                                    if seg_al[q - run_k] > tau and cnt < M and gtrans >= cut:
                                        out_t[r, cnt] = a + (ti.cast(q, ti.f32) + 0.5) * dl
                                        out_d[r, cnt] = dl
                                        out_g[r, cnt] = rank
                                        out_a[r, cnt] = -1.0
                                        out_ts[r, cnt] = a + ti.cast(q, ti.f32) * dl
                                        out_n[r, cnt] = 1
                                        cnt += 1
                                        gtrans *= 1.0 - seg_al[q - run_k]
                        fp = fn
                        lp = ln
                    rank += 1
            count[r] = cnt
            probes[r] = npr
            alive[r] = 0
            if trans >= stop and gtrans >= cut:
                alive[r] = 1

    _K["k"] = probe
    return probe


def _check(o, d, t0, t1, ok, grid_f, grid_log_s, step, max_segments, max_samples):
    R = o.shape[0]
    if o.shape != (R, 3) or d.shape != (R, 3):
        raise ValueError(f"probe_samples: o and d must be (R, 3), got {tuple(o.shape)} and {tuple(d.shape)}")
    if t0.ndim != 2 or t0.shape[0] != R or t1.shape != t0.shape or ok.shape != t0.shape:
        raise ValueError(f"probe_samples: t0, t1, ok must be the same (R, K) shape with R = {R}, got "
                         f"{tuple(t0.shape)}, {tuple(t1.shape)}, {tuple(ok.shape)}")
    G = grid_f.shape[0]
    if grid_log_s is None:
        if grid_f.shape != (G, G, G, 2) or G < 2:
            raise ValueError(f"probe_samples: a packed grid (grid_log_s None) must be (G, G, G, 2) with G >= 2, "
                             f"got {tuple(grid_f.shape)}")
    elif grid_f.ndim != 3 or grid_f.shape != (G, G, G) or grid_log_s.shape != grid_f.shape or G < 2:
        raise ValueError(f"probe_samples: the grids must be the same (G, G, G) shape with G >= 2, got "
                         f"{tuple(grid_f.shape)} and {tuple(grid_log_s.shape)}")
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"probe_samples: max_segments must be in 1..{MAX_SEGMENTS}, got {max_segments}")
    if not step > 0 or max_samples < 1:
        raise ValueError(f"probe_samples: need probe_step > 0 and max_samples >= 1; got {step}, {max_samples}")


def pack_grids(grid_f: torch.Tensor, grid_log_s: torch.Tensor) -> torch.Tensor:
    """``(G, G, G, 2)`` float32: the SDF and log kernel size side by side, the layout the kernel reads
    (a trilinear lookup of both touches half the cache lines of two separate grids). Pass it to
    :func:`probe_samples` as ``grid_f`` with ``grid_log_s=None`` to skip the packing per call."""
    return torch.stack([grid_f.float(), grid_log_s.float()], -1).contiguous()


def probe_samples(o, d, t0, t1, ok, grid_f, grid_log_s, lo, cell: float, probe_step: float,
                  max_segments: int = 64, tau: float = 0.01, max_samples: int = 32, solid: float = 0.0,
                  t_stop: float | None = None, cut: float = 0.0):
    """Samples in band intervals guided by grid probes (see the module docstring).

    o, d (R, 3) rays; t0, t1, ok (R, K) band intervals (:func:`shaders.band_sampler.band_intervals_from_hits`);
    grid_f, grid_log_s (G, G, G) the SDF and log kernel size at ``lo + (i, j, k) * cell`` (or
    ``grid_f`` (G, G, G, 2) from :func:`pack_grids` and ``grid_log_s`` None).
    Returns, on the device of ``o``:

    * ``t, delta (R, M)``, ``interval (R, M)`` int32, ``alpha (R, M)`` (the opacity of a crossing
      sample, -1 where the field's own opacity is to be used) and ``count (R,)`` int32;
    * ``t_start (R, M)`` and ``n_seg (R, M)`` int32: the probe points behind each sample's opacity,
      ``t_start + i delta`` for ``i = 0..n_seg`` (a crossing: its whole descent; a near-miss
      sample: its one segment). A caller that wants the crossing opacity differentiable w.r.t. the
      field evaluates the field there (``ShellRenderer``, whole-field fine-tuning);
    * ``probes (R,)`` int32: the grid lookups made for each ray (each trilinear lookup of ``f`` and
      ``log s`` at one point counts once), for honest accounting of the sampler's cost;
    * ``alive (R,)`` int32: 1 where the ray is still open at the end (neither ``t_stop / 2`` nor
      ``cut`` reached), so band intervals beyond those given would be walked; 0 where a further
      interval would change nothing. A caller that gathered only a ray's first crossings
      (``ShellRenderer``: a first, cheaper BVH query) needs the rest only where this is 1.

    ``t_stop`` (the renderer's early ray termination, optional): a ray's later band intervals are
    not walked once the transmittance through its crossings so far is below ``t_stop / 2``. The
    renderer evaluates nothing there: its own transmittance is at most that one (near misses only
    lower it) and it stops at ``t_stop`` (half of it leaves room for rounding). Saves the probes
    of the intervals behind an opaque surface; the samples that are evaluated do not change.
    """
    _check(o, d, t0, t1, ok, grid_f, grid_log_s, probe_step, max_segments, max_samples)
    stop = -1.0 if t_stop is None else 0.5 * float(t_stop)
    runtime.init()
    dev = runtime.torch_device()
    R = o.shape[0]
    t = torch.zeros(R, max_samples, dtype=torch.float32, device=dev)
    dl = torch.zeros_like(t)
    al = torch.zeros_like(t)
    ts = torch.zeros_like(t)
    g = torch.zeros(R, max_samples, dtype=torch.int32, device=dev)
    ns = torch.zeros_like(g)
    count = torch.zeros(R, dtype=torch.int32, device=dev)
    probes = torch.zeros(R, dtype=torch.int32, device=dev)
    alive = torch.ones(R, dtype=torch.int32, device=dev)
    if R and t0.shape[1]:
        f32 = dict(device=dev, dtype=torch.float32)
        t0c = t0.to(**f32).contiguous()     # non-finite ends: the kernel ignores the interval
        t1c = t1.to(**f32).contiguous()
        okc = ok.to(dev, torch.int32).contiguous()
        gp = pack_grids(grid_f, grid_log_s) if grid_log_s is not None else grid_f
        gp = gp.to(**f32).contiguous()
        lo = [float(v) for v in torch.as_tensor(lo).reshape(3)]
        with runtime.runtime_lock:
            _kernel()(o.to(**f32).contiguous(), d.to(**f32).contiguous(), t0c, t1c, okc,
                      gp, lo[0], lo[1], lo[2],
                      1.0 / float(cell), float(probe_step), int(max_segments), float(tau), float(solid),
                      stop, float(cut), t, dl, g, al, count, ts, ns, probes, alive)
    home = o.device
    return tuple(x.to(home) for x in (t, dl, g, al, count, ts, ns, probes, alive))


# ------------------------------------------------------------------------------ torch reference
def trilinear_reference(grid: torch.Tensor, x: torch.Tensor, lo, cell: float) -> torch.Tensor:
    """Trilinear lookup of ``grid (G, G, G)`` at points ``x (N, 3)`` (border-clamped), pure torch."""
    G = grid.shape[0]
    u = ((x - torch.as_tensor(lo, dtype=x.dtype)) / cell).clamp(0.0, G - 1)
    i = torch.floor(u).long().clamp(max=G - 2)
    w = u - i.to(u.dtype)
    out = torch.zeros(x.shape[0], dtype=x.dtype)
    for a in (0, 1):
        for b in (0, 1):
            for e in (0, 1):
                wt = ((w[:, 0] if a else 1 - w[:, 0]) * (w[:, 1] if b else 1 - w[:, 1])
                      * (w[:, 2] if e else 1 - w[:, 2]))
                out = out + wt * grid[i[:, 0] + a, i[:, 1] + b, i[:, 2] + e].to(x.dtype)
    return out


def _seg_alpha_ref(fa, fb, ls):
    s = torch.exp(ls)
    return -torch.expm1(torch.clamp(torch.nn.functional.logsigmoid(s * fb)
                                    - torch.nn.functional.logsigmoid(s * fa), max=0.0))


def probe_samples_reference(o, d, t0, t1, ok, grid_f, grid_log_s, lo, cell: float, probe_step: float,
                            max_segments: int = 64, tau: float = 0.01, max_samples: int = 32,
                            solid: float = 0.0, lookup=None, t_stop: float | None = None, cut: float = 0.0):
    """Pure-torch twin of :func:`probe_samples` (one ray and interval at a time; small inputs).

    Every grid lookup goes through ``lookup(grid_f, grid_log_s, x (N, 3))`` (default: two
    :func:`trilinear_reference` calls), which the ``probes`` count is taken from: N lookups per call.
    Pass a counting wrapper to check the kernel's own count (``tests/shaders/test_band_probe.py``).
    """
    _check(o, d, t0, t1, ok, grid_f, grid_log_s, probe_step, max_segments, max_samples)
    if grid_log_s is None:
        grid_f, grid_log_s = grid_f[..., 0], grid_f[..., 1]
    R, K = t0.shape
    dt = o.dtype
    out_t = torch.zeros(R, max_samples, dtype=dt)
    out_d = torch.zeros(R, max_samples, dtype=dt)
    out_a = torch.zeros(R, max_samples, dtype=dt)
    out_ts = torch.zeros(R, max_samples, dtype=dt)
    out_g = torch.zeros(R, max_samples, dtype=torch.int32)
    out_n = torch.zeros(R, max_samples, dtype=torch.int32)
    count = torch.zeros(R, dtype=torch.int32)
    probes = torch.zeros(R, dtype=torch.int32)
    alive = torch.zeros(R, dtype=torch.int32)
    stop = -1.0 if t_stop is None else 0.5 * float(t_stop)
    if lookup is None:
        def lookup(gf, gl, x):
            return trilinear_reference(gf, x, lo, cell), trilinear_reference(gl, x, lo, cell)
    for r in range(R):
        cnt, rank, npr, trans, gtrans = 0, 0, 0, 1.0, 1.0

        def look(x):
            nonlocal npr
            npr += x.shape[0]
            return lookup(grid_f, grid_log_s, x)

        def emit(t, dl, alpha, ts, nseg):
            nonlocal cnt
            if cnt < max_samples:
                out_t[r, cnt], out_d[r, cnt], out_g[r, cnt], out_a[r, cnt] = t, dl, rank, alpha
                out_ts[r, cnt], out_n[r, cnt] = ts, nseg
                cnt += 1

        for j in range(K):
            if not (bool(ok[r, j]) and math.isfinite(float(t0[r, j])) and math.isfinite(float(t1[r, j]))):
                continue
            if trans < stop or gtrans < cut:     # behind an opaque surface
                continue
            a = t0[r, j]
            length = (t1[r, j] - a).clamp_min(0)
            n = int(min(max(math.ceil(float(length / probe_step)), 1), max_segments))
            dl = length / n
            tk = a + torch.arange(n + 1, dtype=dt) * dl
            x = o[r][None] + tk[:, None] * d[r][None]
            f, ls = look(x)
            alpha = _seg_alpha_ref(f[:-1], f[1:], ls[:-1])
            desc = (f[:-1] > f[1:]).tolist()
            k = 0
            while k < n:
                if not desc[k]:
                    k += 1
                    continue
                e = k
                while e < n and desc[e]:
                    e += 1
                seg = range(k, e)
                cross = [q for q in seg if f[q] > 0 and f[q + 1] <= 0]
                if cross and 1 - torch.prod(1 - alpha[k:e]) >= solid:
                    q = cross[0]
                    tc = a + (q + f[q] / (f[q] - f[q + 1])) * dl
                    if cnt < max_samples:
                        trans *= float(torch.prod(1 - alpha[k:e]))
                        gtrans *= float(torch.prod(1 - alpha[k:e]))
                    emit(tc, dl, 1 - torch.prod(1 - alpha[k:e]), tk[k], e - k)
                else:
                    for q in seg:
                        if alpha[q] > tau and gtrans >= cut:
                            if cnt < max_samples:
                                gtrans *= float(1 - alpha[q])
                            emit(a + (q + 0.5) * dl, dl, -1.0, tk[q], 1)
                k = e
            rank += 1
        count[r] = cnt
        probes[r] = npr
        alive[r] = int(trans >= stop and gtrans >= cut)
    return out_t, out_d, out_g, out_a, count, out_ts, out_n, probes, alive
