"""Tile-binned RayGauss rendering of whole pinhole images (inference; density mode).

Same math and same outputs as :func:`shaders.raygauss.render_rays` (module docstring there),
for the rays of one image that all start at the camera centre. Instead of querying the BVH per
group of slabs, Gaussians are binned once per view into screen tiles and sorted by depth; each
ray then walks its tile's depth-sorted list front to back, so its work ends where the ray stops
(opaque surface) and empty space costs nothing. On CPU (2 cores) this renders the 15-minute
lego model (106k Gaussians, 100 px) in 74 ms per image against 183 ms for the BVH path, same
PSNR (``tools/bench_raygauss_render.py``). There is no backward: training uses the BVH kernels,
and on a GPU rendering stays on them too (the fill below is serial, the active lists are sized
for a CPU).

Layout for the CPU's caches: each Gaussian's data is one packed 96-byte record (:func:`
pack_gaussians`; the model stores Gaussians along a Morton curve), its view colour is written
into the record by one fused SH + SG kernel (:func:`view_colors`), and the rays of a tile run
one after another on one thread.

Binning (all conservative, so no ray misses a Gaussian it can reach)
----------------------------------------------------------------------
* Each Gaussian whose response passes the threshold gets a bounding sphere: centre ``mu``,
  radius ``rho = max_scale * sqrt(lim')`` with ``lim'`` the widened q limit of the ellipsoid
  clip (``shaders.raygauss_fwd``, "Ellipsoid clip"), times ``1 + 1e-4``.
* Camera frame ``R`` (OpenCV, z forward) and centre ``C``: a ray ``C + t d`` has image-plane
  coordinates ``m = (d_x / d_z, d_y / d_z)`` in that frame. Tile column ``tx`` (pixels
  ``[tx B, (tx+1) B)``) spans ``[min, max]`` of ``m_x`` over *its actual rays* (all rows), and
  likewise for rows, so the binning holds for whatever rays the caller passes.
* The truncation ellipsoid (the clip's widened limit, times 1 + 1e-3) is ``{x : (x - p)^T
  Sigma^-1 (x - p) <= 1}`` in the camera frame, ``p = R^T (mu - C)``. Wholly in front
  (``p_z > sqrt(Sigma_zz)``) it projects inside the ``m`` box bounded by its tangent planes
  through ``C``: ``(p_x - m p_z)^2 = Sigma_xx - 2 m Sigma_xz + m^2 Sigma_zz`` (and the same in
  y), solved in float64 and padded by 1e-5 (1 + |m|); one wholly behind the camera is dropped;
  one crossing the camera plane goes to every tile. (Binning the bounding sphere instead gave
  tile lists 1.5x longer on lego: 517k against 344k entries at 2 px tiles.)
* ``near = |p| - rho - 1e-4 (1 + |p| + rho)`` is a lower bound of the entry ``t`` of any ray
  from ``C`` into the sphere; it is then rounded down to one of 2^20 levels between the
  smallest and largest near of the view (minus 1e-6 (1 + |near|)), and tile lists are sorted
  by level (an integer radix sort per view, then a serial fill), so each list is sorted by the
  rounded bound the kernel tests.

Per ray (one thread per ray)
----------------------------
Slabs as in the BVH kernels. Before slab ``j`` is evaluated, every list entry with ``near <=
t1`` is *started*: its interval ``[te, tx]`` is the box interval on ``[t_near, t_far]`` clipped
to the ellipsoid interval (the same functions as the BVH collect), and it joins the ray's
active list (the scratch row) unless empty or already behind ``t0``. An entry not yet started
has ``te >= near > t1``, so the slab's collected set is exactly the active entries whose
interval meets ``[t0, t1]`` -- the BVH path's set, hence the same colour, alpha and depth up
to float32 rounding: each entry stores its ray's quadratic ``q(t) = aa (t - t_c)^2 + q_min``
once, where the BVH kernels evaluate ``||M (x - mu)||^2`` per sample (tests: within 2e-5 on
random scenes; lego's 1e-3-wide Gaussians differ by up to 8e-4 on a few pixels, PSNR equal to
3 decimals), and the same ``n_evals`` except where that rounding moves the early-termination
sample of a ray whose transmittance lands on ``t_stop`` (2 of 160,000 rays of a 400 px lego
view, one sample's count each; with ``t_stop = 0`` the counts agree slab by slab). Entries whose interval ends before the next slab are
dropped; with nothing active the ray jumps to the slab of the next entry's ``near``. A ray
whose active list would exceed ``cap`` is flagged and re-rendered by the caller on the BVH path.
"""

import torch

from shaders import runtime

__all__ = ["TileBins", "pack_gaussians", "ellipsoid_cov", "bin_gaussians", "view_colors",
           "render_tiles", "bounding_radius", "prefilter_limits", "DEFAULT_TILE"]

#: Tile edge in pixels. Lego, 100 px, 2 cores: 2 px tiles bin in 17 ms and render in 61 ms,
#: 4 px in 14 + 86 ms, 8 px in 10 + 110 ms (rays of bigger tiles test more Gaussians they miss).
DEFAULT_TILE = 2

#: Most entries a ray keeps active at once (its scratch row); a ray needing more (or more than
#: ``cfg.cap``) is re-rendered on the BVH path. Small rows let one launch take many rays.
ACTIVE_CAP = 512
#: Packed per-Gaussian record (one row of ``G``): mu 0-2, M 3-11 (row-major), s 12, q limit 13,
#: view colour 14-16, box lo 17-19, box hi 20-22, view near bound 23.
_P_MU, _P_M, _P_S, _P_LIM, _P_RGB, _P_LO, _P_HI, _P_NEAR, _P_SIZE = 0, 3, 12, 13, 14, 17, 20, 23, 24
#: Floats per active entry: te, tx, aa, tc, qmin, lim, s, r, g, b.
_FIELDS = 10
BLOCK = 64
#: Scratch floats per launch (rays per launch = this / (ACTIVE_CAP * _FIELDS)).
_SCRATCH = 1 << 24

_NEAR_PAD = 1e-4
_NEAR_LEVELS = 1 << 20
_LEVEL_PAD = 1e-6
_M_PAD = 1e-5
_RHO_PAD = 1e-4

_CACHE: dict = {}
_SCRATCH_BUF: dict = {}


def bounding_radius(log_scale: torch.Tensor, response: torch.Tensor, thr: float) -> torch.Tensor:
    """Radius (N,) of a sphere around each mean containing the Gaussian's padded truncation
    ellipsoid (the one the ellipsoid clip tests); -1 where ``response < thr`` (never drawn)."""
    from shaders import raygauss_fwd as fwd

    s = response.detach().double().reshape(-1)
    ok = (s >= thr) & (s > 0)
    s_safe = torch.where(ok, s, torch.full_like(s, 2.0 * thr))
    lim = 2.0 * torch.log(s_safe / thr) * (1.0 + fwd._PREFILTER_REL) + fwd._PREFILTER_ABS
    lim = lim * (1.0 + fwd._ELLIPSOID_REL) + fwd._ELLIPSOID_ABS
    rho = torch.exp(log_scale.detach().double()).amax(1) * torch.sqrt(lim) * (1.0 + _RHO_PAD)
    return torch.where(ok, rho, torch.full_like(rho, -1.0)).float()


def _kernels(real, S: int):
    key = (real, S)
    if key in _CACHE:
        return _CACHE[key]
    import taichi as ti

    from shaders import raygauss_fwd as fwd

    cm = fwd.common(real, S, True)
    load3, load_m, composite_slab = cm["load3"], cm["load_m"], cm["composite_slab"]
    nd = ti.types.ndarray()

    @ti.func
    def lower_bound(a: ti.template(), n: ti.i32, x: ti.f32) -> ti.i32:
        """First i in [0, n) with a[i] >= x (n if none); a non-decreasing."""
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) // 2
            if a[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    @ti.func
    def tangent_range(Sa: ti.f64, Saz: ti.f64, Sz: ti.f64, pa: ti.f64, pz: ti.f64):
        """Range of m = x_a / z over the projection of the ellipsoid {(x-p)^T S^-1 (x-p) <= 1}
        (camera frame, in front: pz^2 > Sz): the planes x_a = m z tangent to it satisfy
        (pa - m pz)^2 = Sa - 2 m Saz + m^2 Sz. Float64: the quadratic cancels."""
        A = pz * pz - Sz
        Bq = pa * pz - Saz
        Cq = pa * pa - Sa
        root = ti.sqrt(ti.max(Bq * Bq - A * Cq, 0.0))
        m0 = ti.cast((Bq - root) / A, ti.f32)
        m1 = ti.cast((Bq + root) / A, ti.f32)
        return m0 - _M_PAD * (1.0 + ti.abs(m0)), m1 + _M_PAD * (1.0 + ti.abs(m1))

    @ti.kernel
    def bin_rects(means: nd, rho: nd, cov: nd, rot: nd, center: nd, col_lo: nd, col_hi: nd,
                  row_lo: nd, row_hi: nd, rects: nd, near: nd, G: nd, counts: nd):
        """Tile rectangle [tx0, tx1) x [ty0, ty1) of each Gaussian (empty if none) and its
        near bound; counts[tile] += 1 for each covered tile."""
        TX = col_lo.shape[0]
        TY = row_lo.shape[0]
        for l in range(means.shape[0]):
            r = rho[l]
            tx0, tx1, ty0, ty1 = 0, 0, 0, 0
            nr = ti.f32(1e30)
            if r >= 0:
                q = ti.Vector([means[l, 0] - center[0], means[l, 1] - center[1],
                               means[l, 2] - center[2]], dt=ti.f64)
                Rm = ti.Matrix([[rot[a, c] for c in ti.static(range(3))]
                                for a in ti.static(range(3))], dt=ti.f64)
                p = Rm.transpose() @ q
                Sw = ti.Matrix([[cov[l, 0], cov[l, 1], cov[l, 2]],
                                [cov[l, 1], cov[l, 3], cov[l, 4]],
                                [cov[l, 2], cov[l, 4], cov[l, 5]]], dt=ti.f64)
                Sc = Rm.transpose() @ Sw @ Rm                    # camera-frame ellipsoid matrix
                dist = ti.cast(p.norm(), ti.f32)
                nr = dist - r - _NEAR_PAD * (1.0 + dist + r)
                zext = ti.sqrt(ti.max(Sc[2, 2], 0.0))
                if p[2] > zext * (1.0 + 1e-3) + 1e-6:
                    mx0, mx1 = tangent_range(Sc[0, 0], Sc[0, 2], Sc[2, 2], p[0], p[2])
                    my0, my1 = tangent_range(Sc[1, 1], Sc[1, 2], Sc[2, 2], p[1], p[2])
                    tx0 = lower_bound(col_hi, TX, mx0)          # first column reaching mx0
                    tx1 = lower_bound(col_lo, TX, mx1)          # columns starting <= mx1 ...
                    while tx1 < TX and col_lo[tx1] <= mx1:
                        tx1 += 1
                    ty0 = lower_bound(row_hi, TY, my0)
                    ty1 = lower_bound(row_lo, TY, my1)
                    while ty1 < TY and row_lo[ty1] <= my1:
                        ty1 += 1
                elif p[2] >= -zext * (1.0 + 1e-3) - 1e-6:       # crosses the camera plane
                    tx0, tx1, ty0, ty1 = 0, TX, 0, TY
            rects[l, 0] = tx0
            rects[l, 1] = tx1
            rects[l, 2] = ty0
            rects[l, 3] = ty1
            near[l] = nr
            G[l, _P_NEAR] = nr
            for ty in range(ty0, ty1):
                for tx in range(tx0, tx1):
                    ti.atomic_add(counts[ty * TX + tx], 1)

    @ti.kernel
    def fill(order: nd, rects: nd, cursor: nd, items: nd, TX: ti.i32):
        """Serial fill in near order, so each tile's list is sorted by near."""
        ti.loop_config(serialize=True)
        for i in range(order.shape[0]):
            l = order[i]
            for ty in range(rects[l, 2], rects[l, 3]):
                for tx in range(rects[l, 0], rects[l, 1]):
                    t = ty * TX + tx
                    items[cursor[t]] = l
                    cursor[t] += 1

    @ti.func
    def packed_box(G: ti.template(), l: ti.i32, o: ti.template(), inv: ti.template(),
                   nz: ti.template(), t0: ti.f32, t1: ti.f32):
        """``raygauss_fwd.node_interval`` on the box stored in record l (same arithmetic)."""
        lv = ti.Vector([G[l, _P_LO + k] for k in ti.static(range(3))], dt=ti.f32)
        hv = ti.Vector([G[l, _P_HI + k] for k in ti.static(range(3))], dt=ti.f32)
        return fwd.vec_interval(lv, hv, o, inv, nz, t0, t1)

    @ti.kernel
    def render(G: nd, offsets: nd, items: nd, rays_o: nd, rays_d: nd, t_near: nd, t_far: nd,
               act: nd, ray0: ti.i32, nray: ti.i32, W: ti.i32, B: ti.i32, TX: ti.i32,
               dt: real, thr: real, t_stop: real, cap: ti.i32, out_c: nd, out_T: nd,
               out_d: nd, out_ne: nd, out_over: nd):
        ti.loop_config(block_dim=BLOCK)
        for r in range(nray):
            # tile-major order: the B*B rays of a tile run one after another on one thread and
            # share the tile's list while it is in cache
            i = ray0 + r
            tile = i // (B * B)
            px = (tile % TX) * B + (i % (B * B)) % B
            py = (tile // TX) * B + (i % (B * B)) // B
            if px >= W or py * W + px >= rays_o.shape[0]:
                continue
            ray = py * W + px
            p = offsets[tile]
            end = offsets[tile + 1]
            o = load3(rays_o, ray)
            d = load3(rays_d, ray)
            o32 = ti.cast(o, ti.f32)
            d32 = ti.cast(d, ti.f32)
            inv, nz = fwd.seg_inv(d32)
            tn = ti.cast(t_near[ray], real)
            tf = ti.cast(t_far[ray], real)
            tn32 = ti.cast(tn, ti.f32)
            tf32 = ti.cast(tf, ti.f32)
            T = ti.cast(1.0, real)
            C = ti.Vector.zero(real, 3)
            D = ti.cast(0.0, real)
            ne = 0
            na = 0
            over = 0
            alive = 1
            j = 0
            while alive:
                if tn + (ti.cast(j * S, real) + 0.5) * dt >= tf:
                    break
                t0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                t1 = ti.cast(ti.min(tn + ti.cast((j + 1) * S, real) * dt, tf), ti.f32)
                while p < end:                       # start the entries that may reach slab j
                    l = items[p]
                    if G[l, _P_NEAR] > t1:
                        break
                    p += 1
                    te, tx = packed_box(G, l, o32, inv, nz, tn32, tf32)
                    if te <= tx:
                        # the ellipsoid clip, with the ray's quadratic q(t) = aa (t - tc)^2 + qmin
                        mu = ti.Vector([G[l, _P_MU + k] for k in ti.static(range(3))], dt=real)
                        mm = ti.Matrix([[G[l, _P_M + 3 * a + c] for c in ti.static(range(3))]
                                        for a in ti.static(range(3))], dt=real)
                        a = mm @ d
                        b = mm @ (o - mu)
                        aa = a.dot(a)
                        lim = ti.cast(G[l, _P_LIM], real)
                        lim_c = lim * (1.0 + fwd._ELLIPSOID_REL) + fwd._ELLIPSOID_ABS
                        tc = -a.dot(b) / aa
                        e = b + tc * a
                        qmin = e.dot(e)
                        if qmin <= lim_c:
                            h = ti.sqrt((lim_c - qmin) / aa)
                            pad = fwd._ELLIPSOID_PAD * (1.0 + ti.abs(tc) + h)
                            te = ti.max(te, ti.cast(tc - h - pad, ti.f32))
                            tx = ti.min(tx, ti.cast(tc + h + pad, ti.f32))
                            if te <= tx and tx >= t0:
                                if na < cap:
                                    act[r, na, 0] = te
                                    act[r, na, 1] = tx
                                    act[r, na, 2] = aa
                                    act[r, na, 3] = tc
                                    act[r, na, 4] = qmin
                                    act[r, na, 5] = lim
                                    act[r, na, 6] = G[l, _P_S]
                                    act[r, na, 7] = G[l, _P_RGB]
                                    act[r, na, 8] = G[l, _P_RGB + 1]
                                    act[r, na, 9] = G[l, _P_RGB + 2]
                                    na += 1
                                else:
                                    over = 1
                if over:
                    break
                if na == 0:
                    if p >= end:
                        break                         # nothing left on this ray
                    # every slab ending before the next entry's near bound is empty: jump
                    nxt = G[items[p], _P_NEAR]
                    jn = ti.cast(ti.floor((ti.cast(nxt, real) - tn) / (S * dt)), ti.i32)
                    while jn > j + 1 and ti.cast(
                            ti.min(tn + ti.cast(jn * S, real) * dt, tf), ti.f32) >= nxt:
                        jn -= 1
                    j = ti.max(j + 1, jn)
                    continue
                count = 0
                sig = ti.Vector.zero(real, S)
                col = ti.Matrix.zero(real, S, 3)
                tbase = tn + ti.cast(j * S, real) * dt
                for h in range(na):
                    te = act[r, h, 0]
                    tx = act[r, h, 1]
                    if ti.max(te, t0) <= ti.min(tx, t1):
                        count += 1
                        aa = act[r, h, 2]
                        tc = act[r, h, 3]
                        qmin = act[r, h, 4]
                        lim = act[r, h, 5]
                        sv = act[r, h, 6]
                        for k in ti.static(range(S)):
                            u = tbase + (ti.cast(k, real) + 0.5) * dt - tc
                            q = aa * u * u + qmin
                            if q <= lim:
                                g = sv * ti.exp(-0.5 * q)
                                if g >= thr:
                                    sig[k] += g
                                    for ch in ti.static(range(3)):
                                        col[k, ch] += g * act[r, h, 7 + ch]
                T, C, D, alive, n_done = composite_slab(sig, col, tn, tf, j, dt, t_stop, T, C,
                                                        D, alive)
                ne += count * n_done
                # drop the entries that end before the next slab (swap with the last one: the
                # order of the active entries only changes the summation order)
                tnext = ti.cast(tn + ti.cast((j + 1) * S, real) * dt, ti.f32)
                h = 0
                while h < na:
                    if act[r, h, 1] < tnext:
                        na -= 1
                        if h != na:
                            for f in ti.static(range(_FIELDS)):
                                act[r, h, f] = act[r, na, f]
                    else:
                        h += 1
                j += 1
            for ch in ti.static(range(3)):
                out_c[ray, ch] = C[ch]
            out_T[ray] = T
            out_d[ray] = D
            out_ne[ray] = ne
            out_over[ray] = over

    out = dict(bin_rects=bin_rects, fill=fill, render=render)
    _CACHE[key] = out
    return out


class TileBins:
    """Per-view tile lists: ``offsets (T+1,)``, ``items`` (Gaussian ids, each tile's run sorted
    by ``near``), ``near (N,)``, tile size ``B`` and grid ``TX x TY``."""

    def __init__(self, offsets, items, near, B, TX, TY):
        self.offsets, self.items, self.near = offsets, items, near
        self.B, self.TX, self.TY = B, TX, TY

    @property
    def entries(self) -> int:
        return int(self.items.numel())


def _axis_bounds(m: torch.Tensor, B: int, axis: int):
    """Per tile column (axis=1) or row (axis=0): min and max of m (H,W) over its pixels."""
    H, W = m.shape
    if axis == 1:
        n = -(-W // B)
        pad = n * B - W
        lo = torch.nn.functional.pad(m, (0, pad), value=float("inf")).reshape(H, n, B)
        hi = torch.nn.functional.pad(m, (0, pad), value=float("-inf")).reshape(H, n, B)
        return lo.amin(dim=(0, 2)).contiguous(), hi.amax(dim=(0, 2)).contiguous()
    n = -(-H // B)
    pad = n * B - H
    lo = torch.nn.functional.pad(m, (0, 0, 0, pad), value=float("inf")).reshape(n, B, W)
    hi = torch.nn.functional.pad(m, (0, 0, 0, pad), value=float("-inf")).reshape(n, B, W)
    return lo.amin(dim=(1, 2)).contiguous(), hi.amax(dim=(1, 2)).contiguous()


def pack_gaussians(means, M, resp, lim, box_lo, box_hi) -> torch.Tensor:
    """The packed records ``G (N, 24)`` float32 the tile kernels read (one Gaussian's data
    together, 96 bytes: one or two cache lines instead of six scattered loads): mean, M (N,3,3),
    response, q limit (:func:`prefilter_limits`), box; the view colour and near bound are filled
    per view. The records live on the Taichi device (:func:`shaders.runtime.torch_device`), like the
    :class:`TileBins` made from them."""
    N = means.shape[0]
    G = torch.zeros(N, _P_SIZE, dtype=torch.float32, device=runtime.torch_device())
    # slice assignments copy from the inputs' device
    G[:, _P_MU:_P_MU + 3] = means.detach().float()
    G[:, _P_M:_P_M + 9] = M.detach().float().reshape(N, 9)
    G[:, _P_S] = resp.detach().float().reshape(N)
    G[:, _P_LIM] = lim.float().reshape(N)
    G[:, _P_LO:_P_LO + 3] = box_lo.float()
    G[:, _P_HI:_P_HI + 3] = box_hi.float()
    return G


def ellipsoid_cov(log_scale: torch.Tensor, quat: torch.Tensor, lim: torch.Tensor) -> torch.Tensor:
    """(N,6) float32 ``xx xy xz yy yz zz`` of ``lim' R S^2 R^T``: the padded truncation ellipsoid
    ``{x : (x - mu)^T (M^T M) (x - mu) <= lim'}`` written as ``(x - mu)^T Sigma^-1 (x - mu) <=
    1``; ``lim'`` is the ellipsoid clip's widened limit of ``lim`` (:func:`prefilter_limits`),
    times ``1 + 1e-3``."""
    from shaders import raygauss_fwd as fwd
    from shaders.rotations import quat_to_rotmat

    R = quat_to_rotmat(quat.detach().double())
    s2 = torch.exp(2.0 * log_scale.detach().double())
    lim_c = (lim.double() * (1.0 + fwd._ELLIPSOID_REL) + fwd._ELLIPSOID_ABS) * (1.0 + 1e-3)
    S = (R * s2[:, None, :]) @ R.transpose(1, 2) * lim_c[:, None, None]
    return torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]],
                       -1).float().contiguous()


def bin_gaussians(G, rho, cov, rays_o, rays_d, H: int, W: int, c2w_rot, B: int = DEFAULT_TILE):
    """Bin Gaussians (packed records ``G`` of :func:`pack_gaussians`, bounding radii ``rho
    (N,)`` of :func:`bounding_radius`, ellipsoids ``cov (N,6)`` of :func:`ellipsoid_cov`) into
    B x B pixel tiles of
    an H x W image whose rays ``rays_o, rays_d (H*W, 3)`` (row-major) all start at one camera
    centre; ``c2w_rot (3,3)`` is the camera-to-world rotation (OpenCV axes, z forward).

    Returns a :class:`TileBins`, or None when the rays do not fit the model (different origins,
    a ray not in front of the camera, tile bounds not monotone): then use the BVH path.
    """
    import taichi as ti

    runtime.init()
    dev = runtime.torch_device()
    o = rays_o.to(dev, torch.float32)
    center = o[0]
    if not bool((o == center).all()):
        return None
    Rm = c2w_rot.to(device=o.device, dtype=torch.float32)
    if not torch.allclose(Rm.T @ Rm, torch.eye(3, device=o.device), atol=1e-4):
        return None
    dc = rays_d.to(dev, torch.float32) @ Rm                        # camera-frame directions
    if not bool((dc[:, 2] > 1e-6).all()):
        return None
    mx = (dc[:, 0] / dc[:, 2]).reshape(H, W)
    my = (dc[:, 1] / dc[:, 2]).reshape(H, W)
    col_lo, col_hi = _axis_bounds(mx, B, 1)
    row_lo, row_hi = _axis_bounds(my, B, 0)
    for a in (col_lo, col_hi, row_lo, row_hi):
        if a.numel() > 1 and not bool((a[1:] >= a[:-1]).all()):
            return None
    TX, TY = col_lo.numel(), row_lo.numel()
    k = _kernels(ti.f32, 8)
    N = G.shape[0]
    rects = torch.zeros(N, 4, dtype=torch.int32, device=dev)
    near = torch.empty(N, dtype=torch.float32, device=dev)
    counts = torch.zeros(TX * TY, dtype=torch.int32, device=dev)
    with runtime.runtime_lock:
        k["bin_rects"](G, rho.to(dev).contiguous(), cov.to(dev).contiguous(), Rm.contiguous(),
                       center.contiguous(), col_lo, col_hi, row_lo, row_hi, rects, near, G,
                       counts)
        offsets = torch.zeros(TX * TY + 1, dtype=torch.int32, device=dev)
        offsets[1:] = torch.cumsum(counts, 0)
        total = int(offsets[-1])
        items = torch.empty(max(total, 1), dtype=torch.int32, device=dev)
        if total > 0:
            used = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
            ids = used.nonzero()[:, 0]
            # sort by near quantised to 2^20 levels (an integer radix sort, 10x faster than a
            # float argsort); each record's near becomes its level's lower edge, still a lower
            # bound of its entry t, and tied within a level, so tile lists stay sorted by it
            nr = near[ids].double()
            n0, n1 = float(nr.min()), float(nr.max())
            w = (n1 - n0) / (_NEAR_LEVELS - 1) if n1 > n0 else 1.0
            level = torch.floor((nr - n0) / w).clamp_(0, _NEAR_LEVELS - 1)
            nq = n0 + level * w
            nq = nq - _LEVEL_PAD * (1.0 + nq.abs())
            near[ids] = nq.float()
            G[ids, _P_NEAR] = nq.float()
            order = ids[torch.argsort(level.int(), stable=True)].to(torch.int32).contiguous()
            cursor = offsets[:-1].clone()
            k["fill"](order, rects, cursor, items, TX)
    return TileBins(offsets, items, near, B, TX, TY)


def prefilter_limits(response: torch.Tensor, thr: float) -> torch.Tensor:
    """Per-Gaussian q limit ``2 ln(s / thr) (1 + 1e-4) + 1e-4`` (N,) float32 (the kernels'
    prefilter; 0 where s < thr)."""
    from shaders import raygauss_fwd as fwd

    s = response.detach().float().reshape(-1)
    ok = (s >= thr) & (s > 0)
    lim = 2.0 * torch.log(torch.where(ok, s, torch.full_like(s, thr)) / thr)
    return torch.where(ok, lim * (1.0 + fwd._PREFILTER_REL) + fwd._PREFILTER_ABS,
                       torch.zeros_like(s)).contiguous()


def _color_kernel(deg: int, with_sg: bool):
    key = ("color", deg, with_sg)
    if key in _CACHE:
        return _CACHE[key]
    import taichi as ti

    from shaders import sh as sh_mod

    shk = sh_mod._kernels(torch.float32, deg, "3dgs")
    unit, values = shk["unit"], shk["values"]
    K = (deg + 1) ** 2
    nd = ti.types.ndarray()

    @ti.kernel
    def colors(G: nd, center: nd, sh: nd, axis: nd, lam: nd, amp: nd):
        for n in range(G.shape[0]):
            x, y, z, _inv = unit(G[n, _P_MU] - center[0], G[n, _P_MU + 1] - center[1],
                                 G[n, _P_MU + 2] - center[2])
            Y = values(x, y, z)
            for ch in ti.static(range(3)):
                acc = 0.5
                for k in ti.static(range(K)):
                    acc += Y[k] * sh[n, k, ch]
                if ti.static(with_sg):
                    for lb in range(axis.shape[1]):
                        w = ti.exp(lam[n, lb] * (axis[n, lb, 0] * x + axis[n, lb, 1] * y
                                                 + axis[n, lb, 2] * z - 1.0))
                        acc += w * amp[n, lb, ch]
                G[n, _P_RGB + ch] = ti.max(acc, 0.0)

    _CACHE[key] = colors
    return colors


def view_colors(G, center, sh, deg: int, sg=None) -> None:
    """Write each Gaussian's colour seen from ``center`` (3,) into the records ``G`` in one pass:
    ``max(0, SH_deg(d) . sh + 0.5 + sum_l amp exp(lam (axis . d - 1)))``, ``d = normalise(mu -
    center)``, 3DGS SH signs -- the RayGauss model's colour (``RayGaussModel.colors``, the torch
    reference) for rendering without gradients. ``sh (N,K,3)`` with K >= (deg+1)^2, ``sg`` None
    or ``(axis (N,L,3) unit, lam (N,L), amp (N,L,3))``."""
    runtime.init()
    dev = runtime.torch_device()
    f32 = dict(device=dev, dtype=torch.float32)
    c = torch.as_tensor(center).to(**f32).reshape(3).contiguous()
    sh = sh.detach().to(**f32).contiguous()
    if sg is None:
        axis, lam, amp = torch.zeros(1, 1, 3, **f32), torch.zeros(1, 1, **f32), torch.zeros(1, 1, 3, **f32)
    else:
        axis, lam, amp = (t.detach().to(**f32).contiguous() for t in sg)
    k = _color_kernel(int(deg), sg is not None)
    if G.shape[0]:
        with runtime.runtime_lock:
            k(G, c, sh, axis, lam, amp)


def render_tiles(G, rgb, bins: TileBins, rays_o, rays_d, t_near, t_far, W: int, cfg):
    """Render the image rays of :func:`bin_gaussians` (density mode, float32, no gradient).

    ``G``: the packed records the bins were made from; ``rgb (N,3)`` this view's colours, or
    None when :func:`view_colors` already wrote them into ``G``.
    Returns ``(C (R,3) without background, T_final (R,), depth (R,), n_evals (R,) int32,
    overflow (R,) bool)`` on the device of ``rays_o``; rays flagged in ``overflow`` must be
    re-rendered on the BVH path.
    """
    import taichi as ti

    dev = runtime.torch_device()
    home = rays_o.device
    R = rays_o.shape[0]
    out_c = torch.zeros(R, 3, dtype=torch.float32, device=dev)
    out_T = torch.ones(R, dtype=torch.float32, device=dev)
    out_d = torch.zeros(R, dtype=torch.float32, device=dev)
    out_ne = torch.zeros(R, dtype=torch.int32, device=dev)
    out_over = torch.zeros(R, dtype=torch.int32, device=dev)
    if R == 0 or G.shape[0] == 0:
        return tuple(t.to(home) for t in (out_c, out_T, out_d, out_ne, out_over.bool()))
    if rgb is not None:
        G[:, _P_RGB:_P_RGB + 3] = rgb.detach().float()
    S, cap = int(cfg.samples_per_slab), min(int(cfg.cap), ACTIVE_CAP)
    k = _kernels(ti.f32, S)
    n_iter = bins.TX * bins.TY * bins.B * bins.B          # tile-major ray slots (>= R)
    chunk = max(1, min(n_iter, _SCRATCH // (cap * _FIELDS)))
    key = (str(dev), chunk, cap)
    act = _SCRATCH_BUF.get(key)
    if act is None:
        _SCRATCH_BUF.clear()
        act = _SCRATCH_BUF[key] = torch.empty(chunk, cap, _FIELDS, dtype=torch.float32, device=dev)
    rays = [t.detach().to(dev, torch.float32).contiguous() for t in (rays_o, rays_d, t_near, t_far)]
    with runtime.runtime_lock:
        for r0 in range(0, n_iter, chunk):
            n = min(chunk, n_iter - r0)
            k["render"](G, bins.offsets, bins.items, *rays, act, r0, n, int(W), int(bins.B),
                        int(bins.TX), float(cfg.dt), float(cfg.sigma_thr), float(cfg.t_stop),
                        cap, out_c, out_T, out_d, out_ne, out_over)
    return tuple(t.to(home) for t in (out_c, out_T, out_d, out_ne, out_over.bool()))
