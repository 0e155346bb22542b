"""Forward Taichi kernels of RayGauss ray casting (see :mod:`shaders.raygauss` for the math).

Kernels are built per ``(real dtype, samples_per_slab S, use_bvh, group)`` by :func:`kernels`,
cached:
every local variable uses ``real`` (``ti.f32`` or ``ti.f64``), so the float64 instance is exact
enough for ``torch.autograd.gradcheck``. The slab's S samples are unrolled at compile time.

Both kernels take the same argument layout:

``means (N,3)``, ``M (N,3,3)``, ``resp (N,)``, ``rgb (N,3)`` in ``real``;
``rays_o (R,3)``, ``rays_d (R,3)``, ``t_near (R,)``, ``t_far (R,)`` in ``real``;
``node_lo, node_hi (B,3) f32`` and ``children (B,2) i32``: the BVH arrays of
:mod:`shaders.bvh`, or, with ``use_bvh=False``, the per-Gaussian boxes (and a dummy
``children``) scanned brute force; ``box_lo, box_hi (N,3) f32`` the per-Gaussian boxes;
``hits (R_chunk, 2 cap) i32`` and ``keys (R_chunk, 3 cap) real`` scratch rows (row ``r`` serves
ray ``ray0 + r``, see "Grouped collect"); outputs ``out_c (R,3)`` colour without
background, ``out_T (R,)`` final transmittance, ``out_d (R,)`` depth, ``out_ne (R,) i32`` number
of evaluations, ``out_steps (R,) i32`` number of composited samples (density) or Gaussians
(opacity) -- the backward kernel re-traces exactly that many -- and ``capped (1,) i32``, the
number of slabs whose collected count exceeded ``cap`` (atomically incremented).

Grouped collect
---------------
A BVH query per slab costs more than the slab's evaluations at the paper's 8 samples per slab
(grouping 4 slabs per query made the forward 1.8x faster on a 20k-Gaussian scene, measured
interleaved on CPU). So the kernels query the BVH once per group of
``G = ceil(GROUP_SAMPLES / S)`` consecutive slabs, store each hit's entry/exit parameters
``[t_e, t_x]`` (the float32 slab test of :func:`box_interval`, clipped to the group segment) in
``keys[row, 2h], keys[row, 2h+1]``, and give each slab the hits whose interval overlaps the slab
segment. This is exactly the set a per-slab box test gives (bit for bit, see
:func:`box_interval`), so slab semantics, ``n_evals`` and the cap are unchanged. When a group
collects more than ``cap`` hits, its slabs fall back to one BVH query each (the true per-slab
behaviour, cap included). Opacity mode sorts each slab's hits into ``hits[row, cap:2cap]`` with
keys ``keys[row, 2cap:3cap]``.

Ellipsoid clip
--------------
An AABB of a thin, rotated ellipsoid is mostly empty, so a box hit often cannot contribute. When
a group's box hits fit in ``cap``, each hit's box interval is clipped to its ray-ellipsoid
interval (the closed-form t range where ``q = ||M(o + t d - mu)||^2 <= 2 ln(s / thr)``, with
the q limit widened by a relative 1e-3 plus 1e-3 and the t range padded by 1e-5 (1 + |t_c| + h),
far beyond float32 rounding of the per-sample test), and hits whose clipped interval is empty
are dropped before any slab sees them. Slabs then collect only Gaussians whose truncation
ellipsoid the ray can reach inside the slab: the colour is unchanged (the exact ``g >= thr``
rule still decides), ``n_evals`` counts only the evaluations done (on lego, 1,110 -> 526 per
ray). Overflowing groups fall back to the per-slab box collect, unclipped.
"""

import taichi as ti

_CACHE: dict = {}

# Relative/absolute margin of the log-domain pre-filter that skips exp() for samples far outside
# a Gaussian's truncation ellipsoid. The exact rule (g >= sigma_thr) is applied after it.
_PREFILTER_REL = 1e-4
_PREFILTER_ABS = 1e-4
# Margins of the ellipsoid clip (see "Ellipsoid clip"): the q limit is widened by these and the
# t interval padded by _ELLIPSOID_PAD (1 + |t_c| + h).
_ELLIPSOID_REL = 1e-3
_ELLIPSOID_ABS = 1e-3
_ELLIPSOID_PAD = 1e-5


@ti.func
def seg_inv(d: ti.template()):
    """(inv, nz) of a float32 direction: ``inv_k = 1 / d_k`` where ``d_k != 0`` (``nz_k = 1``),
    else 0 (``nz_k = 0``)."""
    inv = ti.Vector.zero(ti.f32, 3)
    nz = ti.Vector.zero(ti.i32, 3)
    for k in ti.static(range(3)):
        if d[k] != 0.0:
            inv[k] = 1.0 / d[k]
            nz[k] = 1
    return inv, nz


@ti.func
def vec_interval(lo: ti.template(), hi: ti.template(), o: ti.template(), inv: ti.template(),
                 nz: ti.template(), t0: ti.f32, t1: ti.f32):
    """The slab test of :func:`box_interval` on the box ``[lo, hi]`` given as two float32
    3-vectors, with ``(inv, nz) = seg_inv(d)``."""
    tmin = t0
    tmax = t1
    ok = 1
    for k in ti.static(range(3)):
        if lo[k] > hi[k]:
            ok = 0
        if nz[k]:
            ta = (lo[k] - o[k]) * inv[k]
            tb = (hi[k] - o[k]) * inv[k]
            tmin = ti.max(tmin, ti.min(ta, tb))
            tmax = ti.min(tmax, ti.max(ta, tb))
        else:
            if o[k] < lo[k] or o[k] > hi[k]:
                ok = 0
    if not ok:
        tmin = ti.f32(1.0)
        tmax = ti.f32(-1.0)
    return tmin, tmax


@ti.func
def node_interval(lo: ti.template(), hi: ti.template(), i: ti.i32, o: ti.template(),
                  inv: ti.template(), nz: ti.template(), t0: ti.f32, t1: ti.f32):
    """:func:`box_interval` with the direction given as ``(inv, nz) = seg_inv(d)`` (the same
    arithmetic, so the same bits; hoists the divisions out of per-box loops)."""
    lv = ti.Vector([lo[i, 0], lo[i, 1], lo[i, 2]], dt=ti.f32)
    hv = ti.Vector([hi[i, 0], hi[i, 1], hi[i, 2]], dt=ti.f32)
    return vec_interval(lv, hv, o, inv, nz, t0, t1)


@ti.func
def box_interval(lo: ti.template(), hi: ti.template(), i: ti.i32, o: ti.template(),
                 d: ti.template(), t0: ti.f32, t1: ti.f32):
    """(tmin, tmax) of the segment o + t d, t in [t0, t1], inside box i of (lo, hi), float32.

    The segment meets the box iff tmin <= tmax. A box with lo > hi on any axis is empty (returns
    tmin > tmax). Axis-parallel rays (d[k] == 0) meet it only if o[k] lies in [lo[k], hi[k]].
    Because only max/min combine t0/t1 with the per-axis slab values, the interval for a
    segment [g0, g1] clipped afterwards to [t0, t1] within it equals the interval computed for
    [t0, t1] directly, bit for bit (the grouped collect relies on this).
    """
    inv, nz = seg_inv(d)
    return node_interval(lo, hi, i, o, inv, nz, t0, t1)


@ti.func
def brute_collect(node_lo: ti.template(), node_hi: ti.template(), children: ti.template(),
                  o: ti.template(), d: ti.template(), t0: ti.f32, t1: ti.f32,
                  out: ti.template(), row: ti.i32, cap: ti.i32) -> ti.i32:
    """Brute-force twin of ``shaders.bvh.bvh_segment_collect``: node_lo/node_hi are the N
    primitive boxes themselves (children is ignored). Writes up to ``cap`` ids, in index order,
    to ``out[row, :]`` and returns the true number of boxes the segment meets."""
    cnt = 0
    for i in range(node_lo.shape[0]):
        tmin, tmax = box_interval(node_lo, node_hi, i, o, d, t0, t1)
        if tmin <= tmax:
            if cnt < cap:
                out[row, cnt] = i
            cnt += 1
    return cnt


def _bvh_collect():
    try:
        from shaders.bvh import bvh_segment_collect  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the BVH module being present
        raise RuntimeError(
            "shaders/raygauss: use_bvh=True needs shaders.bvh.bvh_segment_collect "
            f"({exc}); pass use_bvh=False for the brute-force collect"
        ) from exc
    return bvh_segment_collect


#: Samples covered by one BVH query (a group of slabs); see "Grouped collect".
GROUP_SAMPLES = 64


def group_slabs(S: int) -> int:
    return max(1, -(-GROUP_SAMPLES // S))


def common(real, S: int, use_bvh: bool):
    """ti.funcs shared by the forward and backward kernels for one (dtype, S, collect)."""
    key = ("common", real, S, use_bvh)
    if key in _CACHE:
        return _CACHE[key]
    collect = _bvh_collect() if use_bvh else brute_collect

    @ti.func
    def load3(a: ti.template(), i: ti.i32):
        return ti.Vector([ti.cast(a[i, 0], real), ti.cast(a[i, 1], real),
                          ti.cast(a[i, 2], real)], dt=real)

    @ti.func
    def load_m(a: ti.template(), i: ti.i32):
        return ti.Matrix([[ti.cast(a[i, r, c], real) for c in ti.static(range(3))]
                          for r in ti.static(range(3))], dt=real)

    @ti.func
    def prefilter_limit(s: real, thr: real) -> real:
        """Bound on q = ||M(x-mu)||^2 beyond which s*exp(-q/2) < thr surely (q > 2 ln(s/thr))."""
        lim = ti.cast(1e30, real)
        if thr > 0:
            lim = 2.0 * ti.log(s / thr) * (1.0 + _PREFILTER_REL) + _PREFILTER_ABS
        return lim

    @ti.func
    def ellipsoid_interval(means: ti.template(), M: ti.template(), resp: ti.template(),
                           l: ti.i32, o: ti.template(), d: ti.template(), thr: real):
        """(te, tx) float32: a padded superset of the t where the ray o + t d lies inside
        Gaussian l's truncation ellipsoid ``q <= 2 ln(s / thr)``; te > tx if it misses (or
        s < thr). See "Ellipsoid clip"."""
        s = ti.cast(resp[l], real)
        te = ti.f32(1.0)
        tx = ti.f32(-1.0)
        if s >= thr and s > 0:
            mu = load3(means, l)
            mm = load_m(M, l)
            a = mm @ d
            b = mm @ (o - mu)
            aa = a.dot(a)
            lim = prefilter_limit(s, thr) * (1.0 + _ELLIPSOID_REL) + _ELLIPSOID_ABS
            tc = -a.dot(b) / aa
            e = b + tc * a
            qmin = e.dot(e)
            if qmin <= lim:
                h = ti.sqrt((lim - qmin) / aa)
                pad = _ELLIPSOID_PAD * (1.0 + ti.abs(tc) + h)
                te = ti.cast(tc - h - pad, ti.f32)
                tx = ti.cast(tc + h + pad, ti.f32)
        return te, tx

    @ti.func
    def group_collect(node_lo: ti.template(), node_hi: ti.template(), children: ti.template(),
                      box_lo: ti.template(), box_hi: ti.template(), means: ti.template(),
                      M: ti.template(), resp: ti.template(), thr: real, o: ti.template(),
                      d: ti.template(), o32: ti.template(), d32: ti.template(), g0: ti.f32,
                      g1: ti.f32, hits: ti.template(), keys: ti.template(), row: ti.i32,
                      cap: ti.i32) -> ti.i32:
        """Collect the group segment [g0, g1]. If the box hits fit (count <= cap), keep those
        whose box interval clipped to their ellipsoid interval is not empty, compacted at the
        front of the row with the clipped intervals as keys, and return how many (<= cap);
        else return the true box count (> cap: the group's slabs then collect directly)."""
        cnt = collect(node_lo, node_hi, children, o32, d32, g0, g1, hits, row, cap)
        m = cnt
        if cnt <= cap:
            m = 0
            for h in range(cnt):
                l = hits[row, h]
                te, tx = box_interval(box_lo, box_hi, l, o32, d32, g0, g1)
                ee, ex = ellipsoid_interval(means, M, resp, l, o, d, thr)
                te = ti.max(te, ee)
                tx = ti.min(tx, ex)
                if te <= tx:
                    hits[row, m] = l
                    keys[row, 2 * m] = te
                    keys[row, 2 * m + 1] = tx
                    m += 1
        return m

    @ti.func
    def slab_list(node_lo: ti.template(), node_hi: ti.template(), children: ti.template(),
                  o32: ti.template(), d32: ti.template(), t0: ti.f32, t1: ti.f32,
                  hits: ti.template(), keys: ti.template(), row: ti.i32, cap: ti.i32,
                  gcnt: ti.i32):
        """(n_list, direct, count) for the slab [t0, t1] of a group that collected gcnt hits.

        direct = 0: entries 0..n_list-1 of the row are the group's hits, use those passing
        :func:`in_slab`; direct = 1 (group overflow): the row now holds this slab's own collect.
        count is the slab's true number of hits (may exceed cap only when direct)."""
        n_list = gcnt
        direct = 0
        count = 0
        if gcnt > cap:
            count = collect(node_lo, node_hi, children, o32, d32, t0, t1, hits, row, cap)
            n_list = ti.min(count, cap)
            direct = 1
        else:
            for h in range(gcnt):
                if ti.max(ti.cast(keys[row, 2 * h], ti.f32), t0) <= \
                        ti.min(ti.cast(keys[row, 2 * h + 1], ti.f32), t1):
                    count += 1
        return n_list, direct, count

    @ti.func
    def in_slab(keys: ti.template(), row: ti.i32, h: ti.i32, direct: ti.i32, t0: ti.f32,
                t1: ti.f32) -> ti.i32:
        ok = 1
        if not direct:
            if ti.max(ti.cast(keys[row, 2 * h], ti.f32), t0) > \
                    ti.min(ti.cast(keys[row, 2 * h + 1], ti.f32), t1):
                ok = 0
        return ok

    @ti.func
    def density_slab(means: ti.template(), M: ti.template(), resp: ti.template(),
                     rgb: ti.template(), hits: ti.template(), keys: ti.template(), row: ti.i32,
                     n_list: ti.i32, direct: ti.i32, t0: ti.f32, t1: ti.f32,
                     xs: ti.template(), d: ti.template(), dt: real, thr: real):
        """sigma (S,) and sum_l g_l c_l (S,3) at the S samples xs + (k + 0.5 - S/2) dt d."""
        sig = ti.Vector.zero(real, S)
        col = ti.Matrix.zero(real, S, 3)
        for h in range(n_list):
            l = hits[row, h]
            s = ti.cast(resp[l], real)
            if s >= thr and s > 0 and in_slab(keys, row, h, direct, t0, t1):
                mu = load3(means, l)
                mm = load_m(M, l)
                c = load3(rgb, l)
                a = mm @ d
                b = mm @ (xs - mu)
                lim = prefilter_limit(s, thr)
                for k in ti.static(range(S)):
                    u = (ti.cast(k, real) + 0.5 - 0.5 * S) * dt
                    y = b + u * a
                    q = y.dot(y)
                    if q <= lim:
                        g = s * ti.exp(-0.5 * q)
                        if g >= thr:
                            sig[k] += g
                            for ch in ti.static(range(3)):
                                col[k, ch] += g * c[ch]
        return sig, col

    @ti.func
    def composite_slab(sig: ti.template(), col: ti.template(), tn: real, tf: real, j: ti.i32,
                       dt: real, t_stop: real, T: real, C: ti.template(), D: real,
                       alive: ti.i32):
        """Front-to-back compositing of slab j's S samples (sigma ``sig``, weighted colour sums
        ``col``) onto (T, C, D); stops after the sample that takes T under t_stop. Returns
        ``(T, C, D, alive, n)`` with n the number of samples composited."""
        Cn = C
        n = 0
        for k in ti.static(range(S)):
            t = tn + (ti.cast(j * S + k, real) + 0.5) * dt
            if alive and t < tf:
                sg = sig[k]
                alpha = 1.0 - ti.exp(-sg * dt)
                w = T * alpha
                if sg > 0:
                    for ch in ti.static(range(3)):
                        Cn[ch] += w * (col[k, ch] / sg)
                D += w * t
                T = T * (1.0 - alpha)
                n += 1
                if T < t_stop:
                    alive = 0
        return T, Cn, D, alive, n

    @ti.func
    def opacity_eval(means: ti.template(), M: ti.template(), l: ti.i32, xo: ti.template(),
                     d: ti.template()):
        """For Gaussian l and the ray xo + u d: (a, b, u*, q*) with a = M d, b = M (xo - mu),
        u* = -(a.b)/(a.a) the arg-max of phi along the ray, q* = ||b + u* a||^2."""
        mu = load3(means, l)
        mm = load_m(M, l)
        a = mm @ d
        b = mm @ (xo - mu)
        aa = a.dot(a)
        u = -a.dot(b) / aa
        e = b + u * a
        return a, b, u, e.dot(e)

    @ti.func
    def opacity_sort(means: ti.template(), M: ti.template(), resp: ti.template(),
                     hits: ti.template(), keys: ti.template(), row: ti.i32, cap: ti.i32,
                     n_list: ti.i32, direct: ti.i32, t0: ti.f32, t1: ti.f32, xo: ti.template(),
                     d: ti.template(), u0: real, u1: real, tlen: real, alpha_min: real) -> ti.i32:
        """Insertion-sort by (u*, id) the slab's Gaussians whose peak u* lies in [u0, u1) and
        [0, tlen) with o phi_max >= alpha_min into hits[row, cap:], keys[row, 2cap:]; returns
        how many."""
        m = 0
        for h in range(n_list):
            if in_slab(keys, row, h, direct, t0, t1):
                l = hits[row, h]
                _a, _b, u, q = opacity_eval(means, M, l, xo, d)
                ar = ti.cast(resp[l], real) * ti.exp(-0.5 * q)
                if u >= u0 and u < u1 and u < tlen and ar >= alpha_min:
                    p = m
                    while p > 0:
                        pk = keys[row, 2 * cap + p - 1]
                        ph = hits[row, cap + p - 1]
                        if pk > u or (pk == u and ph > l):
                            hits[row, cap + p] = ph
                            keys[row, 2 * cap + p] = pk
                            p -= 1
                        else:
                            break
                    hits[row, cap + p] = l
                    keys[row, 2 * cap + p] = u
                    m += 1
        return m

    ns = dict(load3=load3, load_m=load_m, density_slab=density_slab, opacity_eval=opacity_eval,
              prefilter_limit=prefilter_limit,
              ellipsoid_interval=ellipsoid_interval, box_interval=box_interval, group_collect=group_collect, slab_list=slab_list,
              in_slab=in_slab, opacity_sort=opacity_sort, composite_slab=composite_slab)
    _CACHE[key] = ns
    return ns


def kernels(real, S: int, use_bvh: bool):
    """Forward kernels ``(density, opacity)`` for one (dtype, S, collect)."""
    G = group_slabs(S)
    key = ("fwd", real, S, use_bvh, G)
    if key in _CACHE:
        return _CACHE[key]
    cm = common(real, S, use_bvh)
    load3, density_slab, opacity_eval = cm["load3"], cm["density_slab"], cm["opacity_eval"]
    composite_slab = cm["composite_slab"]
    group_collect, slab_list = cm["group_collect"], cm["slab_list"]
    opacity_sort = cm["opacity_sort"]
    nd = ti.types.ndarray()

    @ti.kernel
    def fwd_density(means: nd, M: nd, resp: nd, rgb: nd, rays_o: nd, rays_d: nd, t_near: nd,
                    t_far: nd, node_lo: nd, node_hi: nd, children: nd, box_lo: nd, box_hi: nd,
                    hits: nd, keys: nd, ray0: ti.i32, nray: ti.i32, dt: real, thr: real,
                    t_stop: real, cap: ti.i32, out_c: nd, out_T: nd, out_d: nd, out_ne: nd,
                    out_steps: nd, capped: nd):
        for r in range(nray):
            ray = ray0 + r
            o = load3(rays_o, ray)
            d = load3(rays_d, ray)
            o32 = ti.cast(o, ti.f32)
            d32 = ti.cast(d, ti.f32)
            tn = ti.cast(t_near[ray], real)
            tf = ti.cast(t_far[ray], real)
            T = ti.cast(1.0, real)
            C = ti.Vector.zero(real, 3)
            D = ti.cast(0.0, real)
            ne = 0
            steps = 0
            alive = 1
            j = 0
            while alive:
                if tn + (ti.cast(j * S, real) + 0.5) * dt >= tf:
                    break
                g0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                g1 = ti.cast(ti.min(tn + ti.cast((j + G) * S, real) * dt, tf), ti.f32)
                gcnt = group_collect(node_lo, node_hi, children, box_lo, box_hi, means, M, resp,
                                     thr, o, d, o32, d32, g0, g1, hits, keys, r, cap)
                for _jj in range(G):
                    if alive and tn + (ti.cast(j * S, real) + 0.5) * dt < tf:
                        t0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                        t1 = ti.cast(ti.min(tn + ti.cast((j + 1) * S, real) * dt, tf), ti.f32)
                        n_list, direct, count = slab_list(node_lo, node_hi, children, o32, d32,
                                                          t0, t1, hits, keys, r, cap, gcnt)
                        if count > cap:
                            ti.atomic_add(capped[0], 1)
                        nh = ti.min(count, cap)
                        xs = o + (tn + (ti.cast(j * S, real) + 0.5 * S) * dt) * d
                        sig, col = density_slab(means, M, resp, rgb, hits, keys, r, n_list,
                                                direct, t0, t1, xs, d, dt, thr)
                        T, C, D, alive, n_done = composite_slab(sig, col, tn, tf, j, dt, t_stop,
                                                                T, C, D, alive)
                        ne += nh * n_done
                        steps += n_done
                        j += 1
            for ch in ti.static(range(3)):
                out_c[ray, ch] = C[ch]
            out_T[ray] = T
            out_d[ray] = D
            out_ne[ray] = ne
            out_steps[ray] = steps

    @ti.kernel
    def fwd_opacity(means: nd, M: nd, resp: nd, rgb: nd, rays_o: nd, rays_d: nd, t_near: nd,
                    t_far: nd, node_lo: nd, node_hi: nd, children: nd, box_lo: nd, box_hi: nd,
                    hits: nd, keys: nd, ray0: ti.i32, nray: ti.i32, dt: real, alpha_min: real,
                    t_stop: real, cap: ti.i32, out_c: nd, out_T: nd, out_d: nd, out_ne: nd,
                    out_steps: nd, capped: nd):
        for r in range(nray):
            ray = ray0 + r
            o = load3(rays_o, ray)
            d = load3(rays_d, ray)
            o32 = ti.cast(o, ti.f32)
            d32 = ti.cast(d, ti.f32)
            tn = ti.cast(t_near[ray], real)
            tf = ti.cast(t_far[ray], real)
            tlen = tf - tn
            xo = o + tn * d
            T = ti.cast(1.0, real)
            C = ti.Vector.zero(real, 3)
            D = ti.cast(0.0, real)
            ne = 0
            steps = 0
            alive = 1
            j = 0
            while alive:
                if ti.cast(j * S, real) * dt >= tlen:
                    break
                g0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                g1 = ti.cast(tn + ti.min(ti.cast((j + G) * S, real) * dt, tlen), ti.f32)
                gcnt = group_collect(node_lo, node_hi, children, box_lo, box_hi, means, M, resp,
                                     alpha_min, o, d, o32, d32, g0, g1, hits, keys, r, cap)
                for _jj in range(G):
                    u0 = ti.cast(j * S, real) * dt
                    if alive and u0 < tlen:
                        u1 = ti.cast((j + 1) * S, real) * dt
                        t0 = ti.cast(tn + u0, ti.f32)
                        t1 = ti.cast(tn + ti.min(u1, tlen), ti.f32)
                        n_list, direct, count = slab_list(node_lo, node_hi, children, o32, d32,
                                                          t0, t1, hits, keys, r, cap, gcnt)
                        if count > cap:
                            ti.atomic_add(capped[0], 1)
                        ne += ti.min(count, cap)
                        m = opacity_sort(means, M, resp, hits, keys, r, cap, n_list, direct, t0,
                                         t1, xo, d, u0, u1, tlen, alpha_min)
                        for i in range(m):
                            l = hits[r, cap + i]
                            _a, _b, u, q = opacity_eval(means, M, l, xo, d)
                            alpha = ti.min(ti.cast(resp[l], real) * ti.exp(-0.5 * q), 0.99)
                            w = T * alpha
                            c = load3(rgb, l)
                            C += w * c
                            D += w * (tn + u)
                            T = T * (1.0 - alpha)
                            steps += 1
                            if T < t_stop:
                                alive = 0
                                break
                        j += 1
            for ch in ti.static(range(3)):
                out_c[ray, ch] = C[ch]
            out_T[ray] = T
            out_d[ray] = D
            out_ne[ray] = ne
            out_steps[ray] = steps

    out = (fwd_density, fwd_opacity)
    _CACHE[key] = out
    return out
