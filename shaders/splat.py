"""Tile-based 3D Gaussian splatting of opacity Gaussians (3DGS rules), forward and backward.

The rendering a standard 3DGS file was trained for (Kerbl et al. 2023): each Gaussian is
projected to a 2D footprint (EWA, local affine approximation of the perspective map), footprints
are binned into screen tiles and sorted by depth, and each pixel blends its tile's list front
to back. :func:`splat` is the entry point; :mod:`shaders.splat_ref` is the brute-force torch
twin of the same math.

Per Gaussian (``project``), camera frame ``t = R_w2c mu + t_w2c`` (OpenCV: z forward):

* culled when ``t_z <= near_plane`` (default 0.01, gsplat's default; the 3DGS CUDA code uses 0.2)
  or its quaternion is zero;
* ``Sigma = R(q/|q|) diag(exp(2 log_s)) R^T``, ``V = R_w2c Sigma R_w2c^T``;
* ``J = [[fx/z, 0, -fx r_x/z], [0, fy/z, -fy r_y/z]]`` with ``r_x = clamp(x/z, -(cx/fx + 0.3
  tan_x), (W-cx)/fx + 0.3 tan_x)``, ``tan_x = W/(2 fx)`` (1.3 tan of the half field of view for a
  centred camera, as 3DGS; the asymmetric form is gsplat's), likewise ``r_y``;
* ``cov = J V J^T + 0.3 I`` (the low-pass dilation ``eps2d``); culled when ``det(cov) <= 0``;
  conic ``Q = cov^-1``; centre ``(u, v) = (fx x/z + cx, fy y/z + cy)``;
* 3-sigma extent: ``r = ceil(3 sqrt(lambda_max))``, ``lambda_max = m + sqrt(max(0.1, m^2 - det))``,
  ``m = (cov_00 + cov_11)/2``; the Gaussian goes to every tile with a pixel centre inside the square
  ``[u-r, u+r] x [v-r, v+r]``, counting the pixels of the last tile row/column that lie past the
  image edge, as 3DGS does (3DGS's rounding of the square's far edge differs by < 1 px);
* ``opacity = sigmoid(logit)``, depth ``z = t_z``.

Per pixel (centre ``(px+0.5, py+0.5)``, tile list in increasing ``z``, ties by index), with
``d = (u, v) - pixel``, ``power = -d^T Q d / 2``: skip ``power > 0``; ``alpha = min(0.99,
opacity exp(power))``; skip ``alpha < 1/255``; stop (without this Gaussian) when ``T (1 - alpha) <
1e-4``; else ``C += alpha T c``, ``D += alpha T z``, ``T *= 1 - alpha``, ``n_evals += 1``
(``depth_mode="ray"`` scales D by the pixel's ray length per unit z afterwards).

Backward (hand-written): per pixel back to front from its last blended Gaussian (recovering
``T_i = T_{i+1} / (1 - alpha_i)``), the gradients of ``(u, v, Q, opacity, z, c)`` are accumulated
per Gaussian with atomics; then per Gaussian the chain rule through the projection to means,
log-scales, quaternions (normalisation included), logits and colours. The 0.99 clamp has zero
gradient, like ``torch.clamp``; the x/z clamp of ``J`` passes gradients only where not clamped.

Work blocks (speed only). A 16-px tile list makes every pixel of the tile test every Gaussian
whose 3-sigma square touches the tile. The kernels instead bin into ``block``-px blocks (default
8) the pixels that are both in the Gaussian's 3DGS tiles *and* in the box of the ellipse
``d^T Q d <= 2 ln(255 opacity)`` (padded: 1.01 times that + 0.01): outside it alpha < 1/255,
so the pair would be skipped anyway and the image is the same for every block size (tested
against the twin, which knows nothing of blocks). Entries are emitted in depth order and stably
sorted by block (``torch.sort``: the same path on the CPU and on CUDA).

Cost (2 CPU cores shared with other jobs, 200x150, files of ``../shared/data/gaussians``, 9k-91k
Gaussians): 0.1-0.3 s per frame warm (forward + backward 0.4-0.6 s); the first call in a process
also builds the kernels (about 1-3 s without the offline cache, 0.7-1.7 s with it).
"""

import torch

from shaders import runtime

__all__ = ["splat", "SplatFunction", "TILE", "NEAR_PLANE", "EPS2D", "ALPHA_MAX", "ALPHA_MIN",
           "T_MIN", "EXTENT", "BLOCK", "w2c_from_c2w", "depth_factor"]

TILE = 16            #: tile edge in pixels (3DGS)
NEAR_PLANE = 0.01    #: camera-z cull
EPS2D = 0.3          #: low-pass dilation added to the 2D covariance (pixels^2)
ALPHA_MAX = 0.99     #: alpha clamp
ALPHA_MIN = 1.0 / 255.0  #: contributions below this alpha are skipped
T_MIN = 1e-4         #: a pixel stops before its transmittance would drop below this
EXTENT = 3.0         #: footprint half-size in standard deviations of the major axis
BLOCK = 8            #: work-block edge in pixels (speed only, see ``project``)

#: Packed per-Gaussian record ``P (N, 11)``: u, v, Q00, Q01, Q11, opacity, z, r, g, b and
#: ``ln(1 / (255 opacity)) - 1e-3``: a pixel with ``power`` below it cannot reach alpha 1/255, so
#: it is skipped without an ``exp`` (a shortcut that changes no decision).
_NP = 11

_CACHE: dict = {}


def _kernels(real):
    if real in _CACHE:
        return _CACHE[real]
    import taichi as ti

    nd = ti.types.ndarray()

    @ti.func
    def quat_rot(q):
        w, x, y, z = q[0], q[1], q[2], q[3]
        return ti.Matrix([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                          [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                          [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]],
                         dt=real)

    @ti.func
    def load_view(w2c: ti.template()):
        Rw = ti.Matrix([[w2c[a, c] for c in ti.static(range(3))] for a in ti.static(range(3))],
                       dt=real)
        tw = ti.Vector([w2c[a, 3] for a in ti.static(range(3))], dt=real)
        return Rw, tw

    @ti.func
    def gaussian_frame(l, means: ti.template(), quats: ti.template(), log_scales: ti.template(),
                       Rw, tw):
        """Camera-frame mean t, unit quaternion, its norm, R, scales, M = R diag(s) and
        RM = R_w2c M (so V = RM RM^T)."""
        mu = ti.Vector([means[l, k] for k in ti.static(range(3))], dt=real)
        t = Rw @ mu + tw
        q = ti.Vector([quats[l, k] for k in ti.static(range(4))], dt=real)
        qn = q.norm()
        qh = q / ti.max(qn, 1e-30)
        R = quat_rot(qh)
        s = ti.Vector([ti.exp(log_scales[l, k]) for k in ti.static(range(3))], dt=real)
        M = ti.Matrix([[R[a, c] * s[c] for c in ti.static(range(3))] for a in ti.static(range(3))],
                      dt=real)
        return t, qh, qn, R, s, M, Rw @ M

    @ti.func
    def jacobian(t, fx, fy, cx, cy, W, H):
        """J (2x3), the clamped ratios and whether each ratio is unclamped."""
        z = t[2]
        tanx = 0.5 * W / fx
        tany = 0.5 * H / fy
        ux = t[0] / z
        uy = t[1] / z
        rx = ti.min(ti.max(ux, -(cx / fx + real(0.3) * tanx)), (W - cx) / fx + real(0.3) * tanx)
        ry = ti.min(ti.max(uy, -(cy / fy + real(0.3) * tany)), (H - cy) / fy + real(0.3) * tany)
        J = ti.Matrix([[fx / z, 0.0, -fx * rx / z], [0.0, fy / z, -fy * ry / z]], dt=real)
        return J, rx, ry, ti.cast(rx == ux, real), ti.cast(ry == uy, real)

    @ti.func
    def span(c, h, lo, hi):
        """Pixels p in [lo, hi] whose centre p + 0.5 lies in [c - h, c + h] (empty: p0 > p1)."""
        p0 = ti.cast(ti.ceil(ti.max(c - h - 0.5, lo - 1.0)), ti.i32)
        p1 = ti.cast(ti.floor(ti.min(c + h - 0.5, hi + 1.0)), ti.i32)
        return ti.max(p0, lo), ti.min(p1, hi)

    @ti.kernel
    def project(means: nd, quats: nd, log_scales: nd, logits: nd, colors: nd, w2c: nd,
                fx: real, fy: real, cx: real, cy: real, W: ti.i32, H: ti.i32, T: ti.i32,
                B: ti.i32, near: real, eps2d: real, P: nd, rect: nd, ntiles: nd):
        """Footprint records P and block rectangles [x0, x1) x [y0, y1) (B-pixel blocks)."""
        Rw, tw = load_view(w2c)
        for l in range(means.shape[0]):
            t, qh, qn, R, s, M, RM = gaussian_frame(l, means, quats, log_scales, Rw, tw)
            x0, x1, y0, y1 = 0, 0, 0, 0
            for k in ti.static(range(_NP)):
                P[l, k] = 0.0
            if t[2] > near and qn > 0:
                J, rx, ry, okx, oky = jacobian(t, fx, fy, cx, cy, W, H)
                A = J @ RM
                cov = A @ A.transpose()                    # J V J^T
                a = cov[0, 0] + eps2d
                b = cov[0, 1]
                c = cov[1, 1] + eps2d
                det = a * c - b * b
                if det > 0:
                    u = fx * t[0] / t[2] + cx
                    v = fy * t[1] / t[2] + cy
                    m = 0.5 * (a + c)
                    lam = m + ti.sqrt(ti.max(real(0.1), m * m - det))
                    r = ti.ceil(EXTENT * ti.sqrt(lam))
                    # 3DGS: every tile with a pixel centre in the 3-sigma square; tiles extend
                    # past the image's right and bottom edges (pixel ranges)
                    px0, px1 = span(u, r, 0, (W + T - 1) // T * T - 1)
                    py0, py1 = span(v, r, 0, (H + T - 1) // T * T - 1)
                    px0, px1 = (px0 // T) * T, ti.min((px1 // T + 1) * T, W) - 1
                    py0, py1 = (py0 // T) * T, ti.min((py1 // T + 1) * T, H) - 1
                    # ... but only the pixels that can reach alpha >= 1/255 are visited: those
                    # inside the box of the ellipse d^T Q d <= 2 ln(255 opacity) (padded)
                    op = 1.0 / (1.0 + ti.exp(-ti.cast(logits[l], real)))
                    if op * 255.0 < real(0.999):
                        px1 = -1
                    m2 = 2.0 * ti.log(ti.max(op * 255.0, 1.0)) * real(1.01) + real(0.01)
                    qx0, qx1 = span(u, ti.sqrt(m2 * a) * (1.0 + 1e-4) + 1e-2, px0, px1)
                    qy0, qy1 = span(v, ti.sqrt(m2 * c) * (1.0 + 1e-4) + 1e-2, py0, py1)
                    if qx0 <= qx1 and qy0 <= qy1:
                        x0, x1, y0, y1 = qx0 // B, qx1 // B + 1, qy0 // B, qy1 // B + 1
                        P[l, 0] = u
                        P[l, 1] = v
                        P[l, 2] = c / det
                        P[l, 3] = -b / det
                        P[l, 4] = a / det
                        P[l, 5] = op
                        P[l, 10] = -ti.log(op * 255.0) - real(1e-3)
                        P[l, 6] = t[2]
                        for k in ti.static(range(3)):
                            P[l, 7 + k] = colors[l, k]
            rect[l, 0] = x0
            rect[l, 1] = x1
            rect[l, 2] = y0
            rect[l, 3] = y1
            ntiles[l] = (x1 - x0) * (y1 - y0)

    @ti.kernel
    def emit(order: nd, rect: nd, start: nd, TX: ti.i32, tile_of: nd, gauss_of: nd):
        """Entries of the Gaussians in depth order: entry start[i] + j is the j-th tile of
        Gaussian order[i] (row-major in its rectangle)."""
        for i in range(order.shape[0]):
            l = order[i]
            o = start[i]
            for ty in range(rect[l, 2], rect[l, 3]):
                for tx in range(rect[l, 0], rect[l, 1]):
                    tile_of[o] = ty * TX + tx
                    gauss_of[o] = l
                    o += 1

    @ti.func
    def pixel_of(r, B, TX):
        """Tile-major pixel order: the B*B pixels of a tile are consecutive."""
        tile = r // (B * B)
        k = r % (B * B)
        return tile, (tile % TX) * B + k % B, (tile // TX) * B + k // B

    @ti.func
    def footprint(P: ti.template(), g, fxp, fyp):
        dx = P[g, 0] - fxp
        dy = P[g, 1] - fyp
        power = -0.5 * (P[g, 2] * dx * dx + P[g, 4] * dy * dy) - P[g, 3] * dx * dy
        return dx, dy, power

    @ti.kernel
    def render(P: nd, items: nd, offsets: nd, W: ti.i32, H: ti.i32, B: ti.i32, out_c: nd,
               out_t: nd, out_d: nd, out_last: nd, out_n: nd):
        TX = (W + B - 1) // B
        TY = (H + B - 1) // B
        for r in range(TX * TY * B * B):
            tile, px, py = pixel_of(r, B, TX)
            if px < W and py < H:
                fxp = ti.cast(px, real) + 0.5
                fyp = ti.cast(py, real) + 0.5
                T = ti.cast(1.0, real)
                C = ti.Vector.zero(real, 3)
                D = ti.cast(0.0, real)
                last = 0
                n = 0
                s = offsets[tile]
                e = offsets[tile + 1]
                j = s
                while j < e:
                    g = items[j]
                    dx, dy, power = footprint(P, g, fxp, fyp)
                    if power <= 0 and power >= P[g, 10]:
                        al = ti.min(real(ALPHA_MAX), P[g, 5] * ti.exp(power))
                        if al >= real(ALPHA_MIN):
                            tt = T * (1 - al)
                            if tt < real(T_MIN):
                                break
                            w = al * T
                            for k in ti.static(range(3)):
                                C[k] += w * P[g, 7 + k]
                            D += w * P[g, 6]
                            T = tt
                            last = j - s + 1
                            n += 1
                    j += 1
                for k in ti.static(range(3)):
                    out_c[py, px, k] = C[k]
                out_t[py, px] = T
                out_d[py, px] = D
                out_last[py, px] = last
                out_n[py, px] = n

    @ti.kernel
    def render_bwd(P: nd, items: nd, offsets: nd, W: ti.i32, H: ti.i32, B: ti.i32, out_t: nd,
                   out_last: nd, gC: nd, gA: nd, gD: nd, gP: nd):
        TX = (W + B - 1) // B
        TY = (H + B - 1) // B
        for r in range(TX * TY * B * B):
            tile, px, py = pixel_of(r, B, TX)
            if px < W and py < H:
                fxp = ti.cast(px, real) + 0.5
                fyp = ti.cast(py, real) + 0.5
                T = ti.cast(out_t[py, px], real)
                dC = ti.Vector([gC[py, px, k] for k in ti.static(range(3))], dt=real)
                dA = ti.cast(gA[py, px], real)
                dD = ti.cast(gD[py, px], real)
                Sc = ti.Vector.zero(real, 3)      # colour, depth, alpha blended behind (per T)
                Sz = ti.cast(0.0, real)
                Sa = ti.cast(0.0, real)
                s = offsets[tile]
                j = s + out_last[py, px] - 1
                while j >= s:
                    g = items[j]
                    dx, dy, power = footprint(P, g, fxp, fyp)
                    if power <= 0 and power >= P[g, 10]:
                        G = ti.exp(power)
                        og = P[g, 5] * G
                        al = ti.min(real(ALPHA_MAX), og)
                        if al >= real(ALPHA_MIN):
                            T = T / (1 - al)
                            col = ti.Vector([P[g, 7 + k] for k in ti.static(range(3))], dt=real)
                            z = P[g, 6]
                            w = al * T
                            for k in ti.static(range(3)):
                                ti.atomic_add(gP[g, 7 + k], w * dC[k])
                            ti.atomic_add(gP[g, 6], w * dD)
                            dal = T * (dC.dot(col - Sc) + dD * (z - Sz) + dA * (1 - Sa))
                            Sc = al * col + (1 - al) * Sc
                            Sz = al * z + (1 - al) * Sz
                            Sa = al + (1 - al) * Sa
                            if og <= real(ALPHA_MAX):
                                ti.atomic_add(gP[g, 5], dal * G)
                                dp = dal * og
                                ti.atomic_add(gP[g, 0], -(P[g, 2] * dx + P[g, 3] * dy) * dp)
                                ti.atomic_add(gP[g, 1], -(P[g, 3] * dx + P[g, 4] * dy) * dp)
                                ti.atomic_add(gP[g, 2], -0.5 * dx * dx * dp)
                                ti.atomic_add(gP[g, 3], -dx * dy * dp)
                                ti.atomic_add(gP[g, 4], -0.5 * dy * dy * dp)
                    j -= 1

    @ti.kernel
    def project_bwd(means: nd, quats: nd, log_scales: nd, w2c: nd, fx: real, fy: real, cx: real,
                    cy: real, W: ti.i32, H: ti.i32, eps2d: real, ntiles: nd, P: nd, gP: nd,
                    g_means: nd, g_quats: nd, g_logs: nd, g_logits: nd, g_colors: nd):
        Rw, tw = load_view(w2c)
        for l in range(means.shape[0]):
            for k in ti.static(range(3)):
                g_means[l, k] = 0.0
                g_logs[l, k] = 0.0
                g_colors[l, k] = gP[l, 7 + k]
            for k in ti.static(range(4)):
                g_quats[l, k] = 0.0
            op = P[l, 5]
            g_logits[l] = gP[l, 5] * op * (1 - op)
            if ntiles[l] > 0:
                t, qh, qn, R, s, M, RM = gaussian_frame(l, means, quats, log_scales, Rw, tw)
                J, rx, ry, okx, oky = jacobian(t, fx, fy, cx, cy, W, H)
                A = J @ RM
                cov = A @ A.transpose()
                a = cov[0, 0] + eps2d
                b = cov[0, 1]
                c = cov[1, 1] + eps2d
                det = a * c - b * b
                Q = ti.Matrix([[c / det, -b / det], [-b / det, a / det]], dt=real)
                GQ = ti.Matrix([[gP[l, 2], 0.5 * gP[l, 3]], [0.5 * gP[l, 3], gP[l, 4]]], dt=real)
                GS2 = -(Q @ GQ @ Q)
                GA = 2.0 * (GS2 @ A)                       # cov = A A^T, A = J R_w2c M
                GJ = GA @ RM.transpose()
                x, y, z = t[0], t[1], t[2]
                gu, gv = gP[l, 0], gP[l, 1]
                z2 = z * z
                gt = ti.Vector([gu * fx / z + okx * GJ[0, 2] * (-fx / z2),
                                gv * fy / z + oky * GJ[1, 2] * (-fy / z2),
                                gP[l, 6] - gu * fx * x / z2 - gv * fy * y / z2
                                - GJ[0, 0] * fx / z2 - GJ[1, 1] * fy / z2
                                + GJ[0, 2] * (fx * rx / z2 + okx * fx * x / (z2 * z))
                                + GJ[1, 2] * (fy * ry / z2 + oky * fy * y / (z2 * z))], dt=real)
                gm = Rw.transpose() @ gt
                GM = Rw.transpose() @ (J.transpose() @ GA)
                GR = ti.Matrix([[GM[i, k] * s[k] for k in ti.static(range(3))]
                                for i in ti.static(range(3))], dt=real)
                for k in ti.static(range(3)):
                    g_means[l, k] = gm[k]
                    g_logs[l, k] = (GM[0, k] * R[0, k] + GM[1, k] * R[1, k] + GM[2, k] * R[2, k]) * s[k]
                w, qx, qy, qz = qh[0], qh[1], qh[2], qh[3]
                gqh = 2.0 * ti.Vector([
                    -qz * GR[0, 1] + qy * GR[0, 2] + qz * GR[1, 0] - qx * GR[1, 2]
                    - qy * GR[2, 0] + qx * GR[2, 1],
                    qy * GR[0, 1] + qz * GR[0, 2] + qy * GR[1, 0] - 2 * qx * GR[1, 1]
                    - w * GR[1, 2] + qz * GR[2, 0] + w * GR[2, 1] - 2 * qx * GR[2, 2],
                    -2 * qy * GR[0, 0] + qx * GR[0, 1] + w * GR[0, 2] + qx * GR[1, 0]
                    + qz * GR[1, 2] - w * GR[2, 0] + qz * GR[2, 1] - 2 * qy * GR[2, 2],
                    -2 * qz * GR[0, 0] - w * GR[0, 1] + qx * GR[0, 2] + w * GR[1, 0]
                    - 2 * qz * GR[1, 1] + qy * GR[1, 2] + qx * GR[2, 0] + qy * GR[2, 1]], dt=real)
                gq = (gqh - qh * qh.dot(gqh)) / qn
                for k in ti.static(range(4)):
                    g_quats[l, k] = gq[k]

    out = dict(project=project, emit=emit, render=render, render_bwd=render_bwd,
               project_bwd=project_bwd)
    _CACHE[real] = out
    return out


def _ti_real(dtype: torch.dtype):
    import taichi as ti

    if dtype == torch.float64:
        return ti.f64
    if dtype == torch.float32:
        return ti.f32
    raise TypeError(f"splat supports float32 and float64 tensors, got {dtype}")


def w2c_from_c2w(c2w: torch.Tensor) -> torch.Tensor:
    """(4,4) world-to-camera matrix (float64) of an OpenCV camera-to-world matrix (4,4 or 3,4)."""
    c2w = torch.as_tensor(c2w).detach().double()
    R, t = c2w[:3, :3], c2w[:3, 3]
    out = torch.eye(4, dtype=torch.float64, device=c2w.device)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def depth_factor(cam, depth_mode: str, dtype, device):
    """(H, W) factor from camera z to distance along the pixel-centre ray (ones for "z")."""
    fx, fy, cx, cy, W, H = cam
    if depth_mode == "z":
        return torch.ones(int(H), int(W), dtype=dtype, device=device)
    if depth_mode != "ray":
        raise ValueError(f"depth_mode must be 'ray' or 'z', got {depth_mode!r}")
    x = (torch.arange(int(W), dtype=dtype, device=device) + 0.5 - cx) / fx
    y = (torch.arange(int(H), dtype=dtype, device=device) + 0.5 - cy) / fy
    return torch.sqrt(1 + x[None, :] ** 2 + y[:, None] ** 2)


def _bin(K, rect, ntiles, z, TX, TY, dev):
    """Tile lists: ``items`` (Gaussian ids, each tile's run in increasing depth, ties by index)
    and ``offsets (TX*TY+1,)`` int32. Parallel emit in depth order + stable sort by tile (the
    same path on the CPU and on CUDA)."""
    valid = torch.nonzero(ntiles > 0).reshape(-1)
    order = valid[torch.argsort(z[valid], stable=True)].to(torch.int32).contiguous()
    counts = ntiles[order.long()].long()
    total = int(counts.sum()) if order.numel() else 0
    if total == 0:
        return torch.zeros(1, dtype=torch.int32, device=dev), \
            torch.zeros(TX * TY + 1, dtype=torch.int32, device=dev)
    start = (torch.cumsum(counts, 0) - counts).to(torch.int32).contiguous()
    tile_of = torch.empty(total, dtype=torch.int32, device=dev)
    gauss_of = torch.empty(total, dtype=torch.int32, device=dev)
    K["emit"](order, rect, start, TX, tile_of, gauss_of)
    tile_sorted, perm = torch.sort(tile_of, stable=True)
    items = gauss_of[perm].contiguous()
    per_tile = torch.bincount(tile_sorted.long(), minlength=TX * TY)
    offsets = torch.zeros(TX * TY + 1, dtype=torch.int32, device=dev)
    offsets[1:] = torch.cumsum(per_tile, 0).to(torch.int32)
    return items, offsets


class SplatFunction(torch.autograd.Function):
    """``(means, quats, log_scales, logits, colors, w2c, cam, settings) -> (C (H,W,3), alpha
    (H,W), D (H,W), n_evals (H,W) int32)``; all tensors on the runtime's device, one float dtype.
    ``cam = (fx, fy, cx, cy, W, H)``, ``settings = (tile, block, near_plane, eps2d)``. Differentiable
    w.r.t. the first five inputs; C and D are not composited/normalised."""

    @staticmethod
    def forward(ctx, means, quats, log_scales, logits, colors, w2c, cam, settings):
        fx, fy, cx, cy, W, H = cam
        T, B, near, eps2d = settings
        # detached views for Taichi (it inspects .grad of tensors that require grad)
        means, quats, log_scales, logits, colors = (
            x.detach() for x in (means, quats, log_scales, logits, colors))
        dt, dev = means.dtype, means.device
        K = _kernels(_ti_real(dt))
        N = means.shape[0]
        TX, TY = -(-W // B), -(-H // B)
        P = torch.empty(N, _NP, dtype=dt, device=dev)
        rect = torch.empty(N, 4, dtype=torch.int32, device=dev)
        ntiles = torch.empty(N, dtype=torch.int32, device=dev)
        out_c = torch.empty(H, W, 3, dtype=dt, device=dev)
        out_t = torch.empty(H, W, dtype=dt, device=dev)
        out_d = torch.empty(H, W, dtype=dt, device=dev)
        out_last = torch.empty(H, W, dtype=torch.int32, device=dev)
        out_n = torch.empty(H, W, dtype=torch.int32, device=dev)
        with runtime.runtime_lock:
            if N > 0:
                K["project"](means, quats, log_scales, logits, colors, w2c, fx, fy, cx, cy, W, H,
                             T, B, near, eps2d, P, rect, ntiles)
                items, offsets = _bin(K, rect, ntiles, P[:, 6], TX, TY, dev)
            else:
                items = torch.zeros(1, dtype=torch.int32, device=dev)
                offsets = torch.zeros(TX * TY + 1, dtype=torch.int32, device=dev)
            K["render"](P if N > 0 else torch.zeros(1, _NP, dtype=dt, device=dev), items, offsets,
                        W, H, B, out_c, out_t, out_d, out_last, out_n)
        ctx.save_for_backward(means, quats, log_scales, w2c, P, items, offsets, ntiles, out_t,
                              out_last)
        ctx.cam, ctx.settings = cam, settings
        ctx.mark_non_differentiable(out_n)
        return out_c, 1 - out_t, out_d, out_n

    @staticmethod
    def backward(ctx, gC, gA, gD, _gN):
        means, quats, log_scales, w2c, P, items, offsets, ntiles, out_t, out_last = ctx.saved_tensors
        fx, fy, cx, cy, W, H = ctx.cam
        _T, B, _near, eps2d = ctx.settings
        dt, dev, N = means.dtype, means.device, means.shape[0]
        outs = [torch.zeros(N, 3, dtype=dt, device=dev), torch.zeros(N, 4, dtype=dt, device=dev),
                torch.zeros(N, 3, dtype=dt, device=dev), torch.zeros(N, dtype=dt, device=dev),
                torch.zeros(N, 3, dtype=dt, device=dev)]
        if N > 0:
            K = _kernels(_ti_real(dt))
            gP = torch.zeros(N, _NP, dtype=dt, device=dev)
            prep = [g.to(dev, dt).contiguous() for g in (gC, gA, gD)]
            with runtime.runtime_lock:
                K["render_bwd"](P, items, offsets, W, H, B, out_t, out_last, *prep, gP)
                K["project_bwd"](means, quats, log_scales, w2c, fx, fy, cx, cy, W, H, eps2d,
                                 ntiles, P, gP, *outs)
        return (*outs, None, None, None)


def splat(means, quats, log_scales, opacity_logits, colors, c2w, fx, fy, cx, cy, width, height,
          background=None, *, tile: int = TILE, block: int = BLOCK,
          near_plane: float = NEAR_PLANE, eps2d: float = EPS2D, depth_mode: str = "ray") -> dict:
    """Splat opacity Gaussians into one pinhole image (3DGS rules, module docstring).

    Args:
        means: (N,3) world positions. float32 or float64 (float64 runs float64 kernels: gradcheck).
        quats: (N,4) wxyz quaternions (normalised on use; zero ones are not drawn).
        log_scales: (N,3) natural-log scales.
        opacity_logits: (N,) or (N,1) pre-sigmoid opacities.
        colors: (N,3) per-Gaussian RGB, already evaluated for this view (e.g. SH . basis + 0.5,
            clamped at 0 as 3DGS does: that is the caller's choice).
        c2w: (4,4) or (3,4) OpenCV camera-to-world (+x right, +y down, +z forward); no gradient.
        fx, fy, cx, cy: intrinsics in pixels, pixel centres at +0.5; width, height: image size.
        background: optional (3,) colour composited as ``rgb = C + (1 - alpha) background``.
        tile: 3DGS tile edge (pixels: which Gaussians a pixel may see); block: edge of the
            work blocks (a speed setting: the image does not depend on it); near_plane:
            camera-z cull; eps2d: 2D low-pass dilation.
        depth_mode: ``"ray"`` (default): depths are distances along the pixel's ray through its
            centre, like the ray-traced renderer (each Gaussian's camera z times the pixel's
            ``|((u - cx)/fx, (v - cy)/fy, 1)|``, exact per pixel); ``"z"``: camera z (3DGS).

    Returns:
        dict of tensors on ``means.device`` (computed on the Taichi runtime's device; inputs are
        moved there and gradients moved back):
        ``rgb (H,W,3)``, ``alpha (H,W)`` = 1 - T, ``depth (H,W)`` = expected depth
        normalised by alpha (0 where alpha is 0), ``depth_sum (H,W)`` = sum w_i depth_i,
        ``n_evals (H,W)`` int32 = Gaussians blended into the pixel. Float outputs have the
        dtype of ``means``; rgb, alpha, depth and depth_sum are differentiable w.r.t. means,
        quats, log_scales, opacity_logits and colors.
    """
    dt = means.dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(f"means must be float32 or float64, got {dt}")
    N = means.shape[0]
    for name, x, shape in (("means", means, (N, 3)), ("quats", quats, (N, 4)),
                           ("log_scales", log_scales, (N, 3)), ("colors", colors, (N, 3))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(x.shape)}")
    W, H = int(width), int(height)
    if W <= 0 or H <= 0 or int(tile) <= 0 or int(block) <= 0:
        raise ValueError(f"bad image size {W}x{H}, tile {tile} or block {block}")
    runtime.init()
    dev = runtime.torch_device()
    prep = [x.to(dev, dt).contiguous() for x in
            (means, quats, log_scales, opacity_logits.reshape(N), colors)]
    w2c = w2c_from_c2w(c2w).to(dev, dt).contiguous()
    cam = (float(fx), float(fy), float(cx), float(cy), W, H)
    C, A, D, n = SplatFunction.apply(*prep, w2c, cam, (int(tile), int(block), float(near_plane),
                                                      float(eps2d)))
    out_dev = means.device
    C, A, D, n = C.to(out_dev), A.to(out_dev), D.to(out_dev), n.to(out_dev)
    D = D * depth_factor(cam, depth_mode, dt, out_dev)
    rgb = C
    if background is not None:
        bg = torch.as_tensor(background, dtype=dt, device=out_dev).reshape(3)
        rgb = C + (1 - A)[..., None] * bg
    A_safe = torch.where(A > 0, A, torch.ones_like(A))      # no 0/0 in the backward
    depth = torch.where(A > 0, D / A_safe, torch.zeros_like(D))
    return dict(rgb=rgb, alpha=A, depth=depth, depth_sum=D, n_evals=n)
