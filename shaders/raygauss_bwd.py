"""Hand-written backward Taichi kernels of RayGauss ray casting.

The forward pass (:mod:`shaders.raygauss_fwd`) stores per ray the colour ``C_f`` (no
background), the final transmittance ``T_f``, the depth ``D_f`` and the number of composited
steps. The backward kernels re-trace the same slabs with the same (grouped) collect -- same
BVH, same traversal order, so the same hit lists -- front to back, re-accumulating ``C``, ``D``
and ``T``, and use the "remaining behind" quantities ``C_f - C_{<=i}`` and ``D_f - D_{<=i}``
to get each sample's gradient without storing per-sample state. With upstream gradients
``gC (3,)``, ``gA``, ``gD`` of ``C``, ``A = 1 - T_f`` and ``D``:

Density mode, sample i (``T_{i+1} = T_i exp(-sigma_i dt)``)::

    dL/dsigma_i = dt * ( gC . (T_{i+1} c_i - (C_f - C_{<=i}))
                        + gD   (T_{i+1} t_i - (D_f - D_{<=i})) + gA T_f )
    dL/dc_i     = T_i alpha_i gC
    for each contributing Gaussian l (g_l = s_l phi_l(x_i) >= sigma_thr):
      dL/dg_l   = dL/dsigma_i + dL/dc_i . (c_l - c_i) / sigma_i
      dL/dc_l  += dL/dc_i g_l / sigma_i;   dL/ds_l += dL/dg_l phi_l
      y = M_l (x_i - mu_l):  dL/dy = -dL/dg_l g_l y;  dL/dM_l += dL/dy (x_i - mu_l)^T;
      dL/dmu_l -= M_l^T dL/dy

Opacity mode, Gaussian i composited with alpha_i at t_i = t_near + u_i::

    dL/dalpha_i = gC . (T_i c_i - (C_f - C_{<=i}) / (1 - alpha_i))
                + gD (T_i t_i - (D_f - D_{<=i}) / (1 - alpha_i)) + gA T_f / (1 - alpha_i)
    dL/du_i = gD T_i alpha_i,   dL/dc_i = gC T_i alpha_i
    alpha = o exp(-q/2) (zero gradient where clipped at 0.99); with a = M d, b = M (x_o - mu),
    e = b + u a:  dq/db = 2 e, dq/da = 2 u e, du/db = -a / a.a, du/da = -(b + 2 u a) / a.a.

Per-Gaussian gradients are summed over a slab's samples in registers and added atomically once
per (slab, Gaussian) into ``(N,3)``, ``(N,3,3)``, ``(N,)`` and ``(N,3)`` buffers.
"""

import taichi as ti

from shaders import raygauss_fwd as fwd

_CACHE: dict = {}


def kernels(real, S: int, use_bvh: bool):
    """Backward kernels ``(density, opacity)`` for one (dtype, S, collect)."""
    G = fwd.group_slabs(S)
    key = (real, S, use_bvh, G)
    if key in _CACHE:
        return _CACHE[key]
    cm = fwd.common(real, S, use_bvh)
    load3, load_m = cm["load3"], cm["load_m"]
    density_slab, opacity_eval = cm["density_slab"], cm["opacity_eval"]
    prefilter_limit, in_slab = cm["prefilter_limit"], cm["in_slab"]
    group_collect, slab_list = cm["group_collect"], cm["slab_list"]
    opacity_sort = cm["opacity_sort"]
    nd = ti.types.ndarray()

    @ti.kernel
    def bwd_density(means: nd, M: nd, resp: nd, rgb: nd, rays_o: nd, rays_d: nd, t_near: nd,
                    t_far: nd, node_lo: nd, node_hi: nd, children: nd, box_lo: nd, box_hi: nd,
                    hits: nd, keys: nd, ray0: ti.i32, nray: ti.i32, dt: real, thr: real,
                    cap: ti.i32, out_c: nd, out_T: nd, out_d: nd, out_steps: nd,
                    g_c: nd, g_a: nd, g_d: nd,
                    gr_means: nd, gr_M: nd, gr_resp: nd, gr_rgb: nd):
        for r in range(nray):
            ray = ray0 + r
            o = load3(rays_o, ray)
            d = load3(rays_d, ray)
            o32 = ti.cast(o, ti.f32)
            d32 = ti.cast(d, ti.f32)
            tn = ti.cast(t_near[ray], real)
            tf = ti.cast(t_far[ray], real)
            cf = load3(out_c, ray)
            tfin = ti.cast(out_T[ray], real)
            dfin = ti.cast(out_d[ray], real)
            nsteps = out_steps[ray]
            gc = load3(g_c, ray)
            ga = ti.cast(g_a[ray], real)
            gd = ti.cast(g_d[ray], real)
            T = ti.cast(1.0, real)
            cacc = ti.Vector.zero(real, 3)
            dacc = ti.cast(0.0, real)
            steps = 0
            j = 0
            while steps < nsteps:
                if tn + (ti.cast(j * S, real) + 0.5) * dt >= tf:
                    break  # cannot happen (the forward stopped no later); guards the loop
                g0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                g1 = ti.cast(ti.min(tn + ti.cast((j + G) * S, real) * dt, tf), ti.f32)
                gcnt = group_collect(node_lo, node_hi, children, box_lo, box_hi, means, M, resp,
                                     thr, o, d, o32, d32, g0, g1, hits, keys, r, cap)
                for _jj in range(G):
                    if steps < nsteps:
                        t0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                        t1 = ti.cast(ti.min(tn + ti.cast((j + 1) * S, real) * dt, tf), ti.f32)
                        n_list, direct, _count = slab_list(node_lo, node_hi, children, o32, d32,
                                                           t0, t1, hits, keys, r, cap, gcnt)
                        xs = o + (tn + (ti.cast(j * S, real) + 0.5 * S) * dt) * d
                        sig, col = density_slab(means, M, resp, rgb, hits, keys, r, n_list,
                                                direct, t0, t1, xs, d, dt, thr)
                        dsig = ti.Vector.zero(real, S)
                        act = ti.Vector.zero(ti.i32, S)
                        dcv = ti.Matrix.zero(real, S, 3)
                        cval = ti.Matrix.zero(real, S, 3)
                        for k in ti.static(range(S)):
                            t = tn + (ti.cast(j * S + k, real) + 0.5) * dt
                            if steps < nsteps and t < tf:
                                sg = sig[k]
                                alpha = 1.0 - ti.exp(-sg * dt)
                                w = T * alpha
                                c = ti.Vector.zero(real, 3)
                                if sg > 0:
                                    c = ti.Vector([col[k, 0], col[k, 1], col[k, 2]]) / sg
                                cacc += w * c
                                dacc += w * t
                                tnext = T * (1.0 - alpha)
                                dsig[k] = dt * (gc.dot(tnext * c - (cf - cacc))
                                                + gd * (tnext * t - (dfin - dacc)) + ga * tfin)
                                for ch in ti.static(range(3)):
                                    dcv[k, ch] = w * gc[ch]
                                    cval[k, ch] = c[ch]
                                act[k] = 1
                                T = tnext
                                steps += 1
                        for h in range(n_list):
                            l = hits[r, h]
                            s = ti.cast(resp[l], real)
                            if s >= thr and s > 0 and in_slab(keys, r, h, direct, t0, t1):
                                mu = load3(means, l)
                                mm = load_m(M, l)
                                cl = load3(rgb, l)
                                a = mm @ d
                                dx0 = xs - mu
                                b = mm @ dx0
                                lim = prefilter_limit(s, thr)
                                g_s = ti.cast(0.0, real)
                                g_cl = ti.Vector.zero(real, 3)
                                sdy = ti.Vector.zero(real, 3)     # sum_k dL/dy_k
                                sudy = ti.Vector.zero(real, 3)    # sum_k u_k dL/dy_k
                                used = 0
                                for k in ti.static(range(S)):
                                    if act[k]:
                                        u = (ti.cast(k, real) + 0.5 - 0.5 * S) * dt
                                        y = b + u * a
                                        q = y.dot(y)
                                        if q <= lim:
                                            phi = ti.exp(-0.5 * q)
                                            g = s * phi
                                            if g >= thr:
                                                sg = sig[k]
                                                dck = ti.Vector([dcv[k, 0], dcv[k, 1], dcv[k, 2]])
                                                ck = ti.Vector([cval[k, 0], cval[k, 1],
                                                                cval[k, 2]])
                                                gg = dsig[k] + dck.dot(cl - ck) / sg
                                                g_s += gg * phi
                                                g_cl += dck * (g / sg)
                                                dy = -gg * g * y
                                                sdy += dy
                                                sudy += u * dy
                                                used = 1
                                if used:
                                    # x_k - mu = dx0 + u_k d, so sum_k dy_k (x_k - mu)^T splits
                                    g_m = sdy.outer_product(dx0) + sudy.outer_product(d)
                                    g_mu = -(mm.transpose() @ sdy)
                                    ti.atomic_add(gr_resp[l], g_s)
                                    for p in ti.static(range(3)):
                                        ti.atomic_add(gr_means[l, p], g_mu[p])
                                        ti.atomic_add(gr_rgb[l, p], g_cl[p])
                                        for q2 in ti.static(range(3)):
                                            ti.atomic_add(gr_M[l, p, q2], g_m[p, q2])
                        j += 1

    @ti.kernel
    def bwd_opacity(means: nd, M: nd, resp: nd, rgb: nd, rays_o: nd, rays_d: nd, t_near: nd,
                    t_far: nd, node_lo: nd, node_hi: nd, children: nd, box_lo: nd, box_hi: nd,
                    hits: nd, keys: nd, ray0: ti.i32, nray: ti.i32, dt: real, alpha_min: real,
                    cap: ti.i32, out_c: nd, out_T: nd, out_d: nd, out_steps: nd,
                    g_c: nd, g_a: nd, g_d: nd,
                    gr_means: nd, gr_M: nd, gr_resp: nd, gr_rgb: nd):
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
            cf = load3(out_c, ray)
            tfin = ti.cast(out_T[ray], real)
            dfin = ti.cast(out_d[ray], real)
            nsteps = out_steps[ray]
            gc = load3(g_c, ray)
            ga = ti.cast(g_a[ray], real)
            gd = ti.cast(g_d[ray], real)
            T = ti.cast(1.0, real)
            cacc = ti.Vector.zero(real, 3)
            dacc = ti.cast(0.0, real)
            steps = 0
            j = 0
            while steps < nsteps:
                if ti.cast(j * S, real) * dt >= tlen:
                    break  # cannot happen (the forward stopped no later); guards the loop
                g0 = ti.cast(tn + ti.cast(j * S, real) * dt, ti.f32)
                g1 = ti.cast(tn + ti.min(ti.cast((j + G) * S, real) * dt, tlen), ti.f32)
                gcnt = group_collect(node_lo, node_hi, children, box_lo, box_hi, means, M, resp,
                                     alpha_min, o, d, o32, d32, g0, g1, hits, keys, r, cap)
                for _jj in range(G):
                    if steps < nsteps:
                        u0 = ti.cast(j * S, real) * dt
                        u1 = ti.cast((j + 1) * S, real) * dt
                        t0 = ti.cast(tn + u0, ti.f32)
                        t1 = ti.cast(tn + ti.min(u1, tlen), ti.f32)
                        n_list, direct, _count = slab_list(node_lo, node_hi, children, o32, d32,
                                                           t0, t1, hits, keys, r, cap, gcnt)
                        m = opacity_sort(means, M, resp, hits, keys, r, cap, n_list, direct, t0,
                                         t1, xo, d, u0, u1, tlen, alpha_min)
                        for i in range(m):
                            if steps >= nsteps:
                                break
                            l = hits[r, cap + i]
                            a, b, u, q = opacity_eval(means, M, l, xo, d)
                            op = ti.cast(resp[l], real)
                            phi = ti.exp(-0.5 * q)
                            ar = op * phi
                            alpha = ti.min(ar, 0.99)
                            cl = load3(rgb, l)
                            t = tn + u
                            w = T * alpha
                            cacc += w * cl
                            dacc += w * t
                            inv = 1.0 / (1.0 - alpha)
                            dalpha = (gc.dot(T * cl - (cf - cacc) * inv)
                                      + gd * (T * t - (dfin - dacc) * inv) + ga * tfin * inv)
                            du = gd * w
                            d_op = ti.cast(0.0, real)
                            dq = ti.cast(0.0, real)
                            if ar < 0.99:
                                d_op = dalpha * phi
                                dq = -0.5 * dalpha * ar
                            aa = a.dot(a)
                            e = b + u * a
                            db = 2.0 * dq * e - (du / aa) * a
                            da = 2.0 * dq * u * e - (du / aa) * (b + 2.0 * u * a)
                            mu = load3(means, l)
                            mm = load_m(M, l)
                            g_m = db.outer_product(xo - mu) + da.outer_product(d)
                            g_mu = -(mm.transpose() @ db)
                            ti.atomic_add(gr_resp[l], d_op)
                            for p in ti.static(range(3)):
                                ti.atomic_add(gr_means[l, p], g_mu[p])
                                ti.atomic_add(gr_rgb[l, p], w * gc[p])
                                for q2 in ti.static(range(3)):
                                    ti.atomic_add(gr_M[l, p, q2], g_m[p, q2])
                            T = T * (1.0 - alpha)
                            steps += 1
                        j += 1

    out = (bwd_density, bwd_opacity)
    _CACHE[key] = out
    return out
