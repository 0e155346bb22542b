"""Taichi traversals for :mod:`shaders.bvh`: closest triangle hit and segment queries.

* Segment queries walk the contract LBVH arrays (``node_lo, node_hi, children``).
* Closest hit walks a packed tree (``TriangleBVH.packed``: both child boxes in the parent node,
  leaves of up to 8 triangles as slot ranges; built by ``bvh_build._pack_nodes`` from the LBVH
  or by :mod:`shaders.bvh_sah`).

Both are depth-first with a fixed local stack of :data:`STACK_SIZE` entries, which cannot
overflow: LBVH depth <= 63 (see :mod:`shaders.bvh_build`), SAH tree depth <= 63 (median splits
below depth 32, see :mod:`shaders.bvh_sah`).

Slab tests
----------
* Segment query (exact semantics, matched bit for bit by :mod:`shaders.bvh_ref`): a box
  ``[lo, hi]`` (closed) overlaps the segment ``o + t d, t in [t0, t1]`` iff
  ``max(t0, max_k near_k) <= min(t1, min_k far_k)`` with ``near_k, far_k`` the sorted pair
  ``(lo_k - o_k) * inv_k, (hi_k - o_k) * inv_k`` and ``inv_k = 1 / d_k``. A direction component
  with ``|d_k| < 1e-30`` (zero, or so small that ``1/d_k`` would overflow float32) is treated as
  exactly zero: that axis then constrains nothing in t, and the box is kept iff
  ``lo_k <= o_k <= hi_k``. No inf/NaN arithmetic is relied on (Taichi compiles with fast-math).
* Closest hit (speed first): components with ``|d_k| < 1e-20`` are replaced by ``+-1e-20`` in
  the *box* test only (the Embree trick), which keeps every product finite; a parallel ray then
  gets a huge but finite slab interval, so no box it truly crosses is rejected. The near/far
  plane of each axis is picked by the sign of ``1/d_k`` (the packed layout stores both
  children's planes per axis, ``bvh_build.PACKED_LO``), and with ``tmin >= +0`` the distances
  are compared as int32 bits (``_int_order_note``).

Triangle test
-------------
Watertight (Woop, Benthin and Wald, JCGT 2013), on the raw vertices ``(v0, v1, v2)`` of each leaf
slot: per ray, ``kz`` is the axis of the largest ``|d_k|`` (``kx, ky`` the next two) and the shear
``S = (d_kx / d_kz, d_ky / d_kz, 1 / d_kz)`` maps the ray onto the +z axis. Per vertex ``P``
(float32): ``p = P - o``, ``x = p_kx - Sx p_kz``, ``y = p_ky - Sy p_kz``, ``z = Sz p_kz``. The
2D edge functions ``U = x2 y1 - y2 x1``, ``V = x0 y2 - y0 x2``, ``W = x1 y0 - y1 x0`` are computed in
float64 from those float32 values: the products are exact there, so each is the exact value
rounded once, and the same edge seen from its two faces gives exactly opposite values (with or
without fused multiply-adds, which Taichi's fast math may use on the CPU and the GPU). The ray
hits iff ``U, V, W`` are all >= 0 or all <= 0 (two-sided) and ``det = U + V + W != 0``; then
``t = (U z0 + V z1 + W z2) / det``, ``(u, v) = (V, W) / det`` (weights of ``v1, v2``), accepted iff
``tmin <= t < best``. So a ray through a shared edge or vertex of a closed mesh always hits one
of its faces. (Moller-Trumbore in float32, used before, let about 12 % of rays aimed at points
of the interior edges of an irregular planar grid slip through both faces, test
``test_rays_through_shared_edges_never_slip_through``; a shell renderer that counts crossings
then gets the parity wrong.) Ties in t keep the first face
found. Two-sided (back faces hit too), like Embree/open3d.
"""

import taichi as ti

from .bvh_build import STACK_SIZE

_BIG = 1e30  # stands in for infinity in slab intervals (no inf arithmetic under fast-math)
_PARALLEL_EPS = 1e-30


@ti.func
def _segment_inv(d):
    """(inv, zero) for a segment direction: zero_k = 1.0 where the axis is treated as parallel."""
    inv = ti.Vector([0.0, 0.0, 0.0], dt=ti.f32)
    zero = ti.Vector([0.0, 0.0, 0.0], dt=ti.f32)
    for k in ti.static(range(3)):
        if ti.abs(d[k]) < _PARALLEL_EPS:
            zero[k] = 1.0
        else:
            inv[k] = 1.0 / d[k]
    return inv, zero


@ti.func
def _seg_test(lo, hi, o, inv, zero, has_zero: ti.i32, t0: ti.f32, t1: ti.f32) -> ti.i32:
    a = (lo - o) * inv
    b = (hi - o) * inv
    near = ti.min(a, b) - zero * _BIG
    far = ti.max(a, b) + zero * _BIG
    tn = ti.max(t0, ti.max(near[0], ti.max(near[1], near[2])))
    tf = ti.min(t1, ti.min(far[0], ti.min(far[1], far[2])))
    ok = tn <= tf
    if has_zero:
        for k in ti.static(range(3)):
            if zero[k] > 0.0 and (o[k] < lo[k] or o[k] > hi[k]):
                ok = False
    return ok


@ti.func
def _segment_box(node_lo: ti.template(), node_hi: ti.template(), node: ti.i32, o, inv, zero,
                 has_zero: ti.i32, t0: ti.f32, t1: ti.f32) -> ti.i32:
    lo = ti.Vector([node_lo[node, 0], node_lo[node, 1], node_lo[node, 2]], dt=ti.f32)
    hi = ti.Vector([node_hi[node, 0], node_hi[node, 1], node_hi[node, 2]], dt=ti.f32)
    return _seg_test(lo, hi, o, inv, zero, has_zero, t0, t1)


@ti.func
def bvh_segment_collect(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                        children: ti.types.ndarray(), o: ti.math.vec3, d: ti.math.vec3,
                        t0: ti.f32, t1: ti.f32, out: ti.types.ndarray(), row: ti.i32,
                        cap: ti.i32) -> ti.i32:
    """All primitives whose box the segment ``o + t d, t in [t0, t1]`` overlaps, inside a kernel.

    Writes up to ``cap`` primitive ids (any order) into ``out[row, 0 .. cap-1]`` (entries past the
    returned count are left untouched) and returns the true number of overlapped primitives,
    which may exceed ``cap``. Slab semantics: see the module docstring (closed boxes; a direction
    component with ``|d_k| < 1e-30`` is parallel). The local stack has ``STACK_SIZE = 64``
    entries; the LBVH depth is at most 63 (Karras tie-break on the sorted index), so it cannot
    overflow.

    Usage (the ndarrays are the ``BVH`` tensors, passed as kernel arguments)::

        @ti.kernel
        def my_kernel(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                      children: ti.types.ndarray(), rays_o: ti.types.ndarray(),
                      rays_d: ti.types.ndarray(), out: ti.types.ndarray(),
                      counts: ti.types.ndarray()):
            for r in range(rays_o.shape[0]):
                o = ti.math.vec3(rays_o[r, 0], rays_o[r, 1], rays_o[r, 2])
                d = ti.math.vec3(rays_d[r, 0], rays_d[r, 1], rays_d[r, 2])
                counts[r] = bvh_segment_collect(node_lo, node_hi, children, o, d,
                                                0.0, 1.0, out, r, out.shape[1])

        my_kernel(bvh.node_lo, bvh.node_hi, bvh.children, o, d, out, counts)
    """
    inv, zero = _segment_inv(d)
    has_zero = 0
    if zero[0] + zero[1] + zero[2] > 0.0:
        has_zero = 1
    stack = ti.Vector.zero(ti.i32, STACK_SIZE)
    sp = 0
    count = 0
    node = 0
    go = _segment_box(node_lo, node_hi, 0, o, inv, zero, has_zero, t0, t1)
    while go:
        c0 = children[node, 0]
        c1 = children[node, 1]
        pop = True
        if c0 < 0:
            if count < cap:
                out[row, count] = c1
            count += 1
        else:
            h0 = _segment_box(node_lo, node_hi, c0, o, inv, zero, has_zero, t0, t1)
            h1 = _segment_box(node_lo, node_hi, c1, o, inv, zero, has_zero, t0, t1)
            if h0 and h1:
                stack[sp] = c1
                sp += 1
                node = c0
                pop = False
            elif h0:
                node = c0
                pop = False
            elif h1:
                node = c1
                pop = False
        if pop:
            if sp == 0:
                go = False
            else:
                sp -= 1
                node = stack[sp]
    return count


@ti.kernel
def _segment_query_kernel(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                          children: ti.types.ndarray(), origins: ti.types.ndarray(),
                          dirs: ti.types.ndarray(), t0: ti.types.ndarray(),
                          t1: ti.types.ndarray(), out: ti.types.ndarray(),
                          counts: ti.types.ndarray()):
    """Segment queries on the contract arrays. (A packed layout like the closest-hit one, with
    both child boxes in the parent, measured 1.3x *slower* here: 1M boxes, 50k segments.)"""
    for r in range(origins.shape[0]):
        o = ti.math.vec3(origins[r, 0], origins[r, 1], origins[r, 2])
        d = ti.math.vec3(dirs[r, 0], dirs[r, 1], dirs[r, 2])
        counts[r] = bvh_segment_collect(node_lo, node_hi, children, o, d, t0[r], t1[r],
                                        out, r, out.shape[1])


@ti.func
def _bits(x):
    return ti.bit_cast(x, ti.i32)


_int_order_note = """Slab distances compared as int32 bits (``int_order``: when ``tmin >= +0``).

For float32 values ``>= +0`` the int32 order of the bit patterns is the float order, and every
negative float (``-0`` included) has the sign bit set, so its bits are a negative int below all
of them. Hence, with ``tmin >= +0`` in the set, ``max_int(tmin, a, b, c)`` is exactly the float
``max(tmin, a, b, c)`` (>= 0). ``min_int(best_t, d, e, g)`` is the float minimum when all of
``d, e, g`` are ``>= +0``, and otherwise some negative float, for which the test ``n <= f`` fails
exactly as it does for the true (negative) minimum. The one difference: an exit distance of
exactly ``-0`` (only from ``(-0) - (+0)``: a box plane at ``+-0`` seen from an origin coordinate
of the opposite zero sign) counts as a miss where ``+0 <= -0`` would count a hit at ``t = 0``
(fast math does not keep the sign of zero anyway). Two-lane integer min/max are single
instructions (``vpminsd``/``vpmaxsd``), while Taichi's float min/max keep NaN semantics (no
``nnan`` flag under its fast math): min/max, an unordered compare and a blend, three each.
Measured: 7 % less trace CPU time (tools/bench_bvh.py rays, one run)."""


@ti.func
def _shear(tri: ti.template(), slot: ti.i32, c: ti.template(), o, kx: ti.i32, ky: ti.i32, kz: ti.i32,
           sx: ti.f32, sy: ti.f32, sz: ti.f32):
    """Vertex ``c // 3`` of slot ``slot`` (``tri`` is the flat (F * 9,) view) relative to the ray
    origin, sheared so the ray runs along +z: ``x, y`` as float64 (their products are then
    exact), ``z`` (the ray parameter) as float64."""
    base = slot * 9 + c
    p = ti.math.vec3(tri[base], tri[base + 1], tri[base + 2]) - o
    pz = p[kz]
    x = p[kx] - sx * pz
    y = p[ky] - sy * pz
    return ti.cast(x, ti.f64), ti.cast(y, ti.f64), ti.cast(sz * pz, ti.f64)


@ti.kernel
def _closest_hit_kernel(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                        packed: ti.types.ndarray(), root_code: ti.i32, tri: ti.types.ndarray(),
                        order: ti.types.ndarray(), origins: ti.types.ndarray(),
                        dirs: ti.types.ndarray(), tmin: ti.f32, tmax: ti.f32,
                        miss_t: ti.f32, out_t: ti.types.ndarray(),
                        out_face: ti.types.ndarray(), out_uv: ti.types.ndarray(),
                        int_order: ti.template(), K: ti.template(), dedup: ti.f32):
    """Closest hit over the packed nodes (child boxes stored in the parent, leaves of up to 8
    triangles as slot ranges; see ``bvh_build._pack_nodes``). ``packed`` and ``tri`` are the
    flat views ``packed.view(-1)``, ``tri.view(-1)``; ``node_lo``, ``node_hi`` (root box in row 0),
    ``origins``, ``dirs`` and ``out_uv`` are flat views too (1-D loads are cheaper in Taichi 1.7 on
    the CPU, see :mod:`shaders.bvh`). Near child first (entry
    distance); the far child is pushed and, when popped, its children's boxes are tested
    against the closest hit so far. (Also storing the far child's entry distance and skipping
    it on pop measured ~1.4x slower on CPU.) ``int_order`` (compile-time): compare slab
    distances as int32 bits, valid only for ``tmin >= +0`` (:data:`_int_order_note`).

    ``K`` (compile time): the K closest hits, front to back (``out_t`` etc. hold K per ray, ``r K +
    k``). A hit closer than ``dedup`` to one already kept is dropped (the two triangles of a shared
    edge). The bound that prunes the traversal is then the K-th hit so far (the far end until K
    are found), so ``K = 1`` is the closest hit, unchanged."""
    for r in range(out_t.shape[0] // K):
        o = ti.math.vec3(origins[3 * r], origins[3 * r + 1], origins[3 * r + 2])
        d = ti.math.vec3(dirs[3 * r], dirs[3 * r + 1], dirs[3 * r + 2])
        inv = ti.math.vec3(0.0, 0.0, 0.0)
        for k in ti.static(range(3)):
            dk = d[k]
            if ti.abs(dk) < 1e-20:
                dk = 1e-20 if dk >= 0.0 else -1e-20
            inv[k] = 1.0 / dk
        oinv = o * inv
        # sign-selected slab planes: columns of the near / far plane pair of each axis in a
        # packed node (bvh_build.PACKED_LO: per axis lo0, lo1, hi0, hi1)
        nx = 0 if inv[0] >= 0.0 else 2
        ny = 4 if inv[1] >= 0.0 else 6
        nz = 8 if inv[2] >= 0.0 else 10
        fx = 2 - nx
        fy = 10 - ny
        fz = 18 - nz
        # watertight triangle test set-up: the dominant axis and the shear onto it
        ad = ti.abs(d)
        kz = 0
        if ad[1] > ad[kz]:
            kz = 1
        if ad[2] > ad[kz]:
            kz = 2
        kx = (kz + 1) % 3
        ky = (kx + 1) % 3
        dz = d[kz]
        if dz == 0.0:
            dz = 1e-30           # only for d = 0: every vertex then shears to a finite point
        sz = 1.0 / dz
        sx = d[kx] * sz
        sy = d[ky] * sz
        best_t = tmax
        itmin = _bits(tmin)
        best_s = -1
        best_u = 0.0
        best_v = 0.0
        # K > 1: the hits so far, sorted (t = tmax where none yet)
        hit_t = ti.Vector([tmax] * K, dt=ti.f32)
        hit_s = ti.Vector([-1] * K, dt=ti.i32)
        hit_u = ti.Vector.zero(ti.f32, K)
        hit_v = ti.Vector.zero(ti.f32, K)
        stack = ti.Vector.zero(ti.i32, STACK_SIZE)
        sp = 0
        code = root_code
        root_lo = ti.math.vec3(node_lo[0], node_lo[1], node_lo[2])
        root_hi = ti.math.vec3(node_hi[0], node_hi[1], node_hi[2])
        ra = root_lo * inv - oinv
        rb = root_hi * inv - oinv
        rn = ti.min(ra, rb)
        rf = ti.max(ra, rb)
        go = ti.max(tmin, ti.max(rn[0], ti.max(rn[1], rn[2]))) <= ti.min(
            tmax, ti.min(rf[0], ti.min(rf[1], rf[2])))
        while go:
            pop = True
            if code < 0:
                enc = -1 - code
                start = enc >> 3
                count = (enc & 7) + 1
                for slot in range(start, start + count):
                    x0, y0, z0 = _shear(tri, slot, 0, o, kx, ky, kz, sx, sy, sz)
                    x1, y1, z1 = _shear(tri, slot, 3, o, kx, ky, kz, sx, sy, sz)
                    x2, y2, z2 = _shear(tri, slot, 6, o, kx, ky, kz, sx, sy, sz)
                    eu = x2 * y1 - y2 * x1      # float64: exact products, one rounding
                    ev = x0 * y2 - y0 * x2
                    ew = x1 * y0 - y1 * x0
                    neg = eu < 0.0 or ev < 0.0 or ew < 0.0
                    pos = eu > 0.0 or ev > 0.0 or ew > 0.0
                    det = eu + ev + ew
                    if not (neg and pos) and det != 0.0:
                        rdet = 1.0 / det
                        t = ti.cast((eu * z0 + ev * z1 + ew * z2) * rdet, ti.f32)
                        if t >= tmin and t < best_t:
                            if ti.static(K == 1):
                                best_t = t
                                best_s = slot
                                best_u = ti.cast(ev * rdet, ti.f32)
                                best_v = ti.cast(ew * rdet, ti.f32)
                            else:
                                dup = False
                                for j in ti.static(range(K)):
                                    if ti.abs(hit_t[j] - t) < dedup:
                                        dup = True
                                if not dup:     # insert: shift the later hits back by one
                                    placed = False
                                    for jj in ti.static(range(K - 1, 0, -1)):
                                        if not placed:
                                            if hit_t[jj - 1] > t:
                                                hit_t[jj] = hit_t[jj - 1]
                                                hit_s[jj] = hit_s[jj - 1]
                                                hit_u[jj] = hit_u[jj - 1]
                                                hit_v[jj] = hit_v[jj - 1]
                                            else:
                                                hit_t[jj] = t
                                                hit_s[jj] = slot
                                                hit_u[jj] = ti.cast(ev * rdet, ti.f32)
                                                hit_v[jj] = ti.cast(ew * rdet, ti.f32)
                                                placed = True
                                    if not placed:
                                        hit_t[0] = t
                                        hit_s[0] = slot
                                        hit_u[0] = ti.cast(ev * rdet, ti.f32)
                                        hit_v[0] = ti.cast(ew * rdet, ti.f32)
                                    best_t = hit_t[K - 1]
            else:
                # both children's slabs: near planes give the entry distances n0, n1, far
                # planes the exits (the rounding of x * inv - oinv is monotone in x, so this is
                # exactly min/max of the two plane distances)
                b = code * 16
                n0x = packed[b + nx] * inv[0] - oinv[0]
                n1x = packed[b + nx + 1] * inv[0] - oinv[0]
                f0x = packed[b + fx] * inv[0] - oinv[0]
                f1x = packed[b + fx + 1] * inv[0] - oinv[0]
                n0y = packed[b + ny] * inv[1] - oinv[1]
                n1y = packed[b + ny + 1] * inv[1] - oinv[1]
                f0y = packed[b + fy] * inv[1] - oinv[1]
                f1y = packed[b + fy + 1] * inv[1] - oinv[1]
                n0z = packed[b + nz] * inv[2] - oinv[2]
                n1z = packed[b + nz + 1] * inv[2] - oinv[2]
                f0z = packed[b + fz] * inv[2] - oinv[2]
                f1z = packed[b + fz + 1] * inv[2] - oinv[2]
                h0 = False
                h1 = False
                n0 = 0
                n1 = 0
                if ti.static(int_order):
                    # tmin >= +0: min/max on the float bits as int32 (see _int_order_note)
                    n0 = ti.max(ti.max(_bits(n0x), itmin), ti.max(_bits(n0y), _bits(n0z)))
                    n1 = ti.max(ti.max(_bits(n1x), itmin), ti.max(_bits(n1y), _bits(n1z)))
                    ibest = _bits(best_t)
                    h0 = n0 <= ti.min(ti.min(_bits(f0x), ibest), ti.min(_bits(f0y), _bits(f0z)))
                    h1 = n1 <= ti.min(ti.min(_bits(f1x), ibest), ti.min(_bits(f1y), _bits(f1z)))
                else:
                    fn0 = ti.max(ti.max(n0x, tmin), ti.max(n0y, n0z))
                    fn1 = ti.max(ti.max(n1x, tmin), ti.max(n1y, n1z))
                    h0 = fn0 <= ti.min(ti.min(f0x, best_t), ti.min(f0y, f0z))
                    h1 = fn1 <= ti.min(ti.min(f1x, best_t), ti.min(f1y, f1z))
                    n1 = ti.select(fn1 < fn0, -1, 0)  # only "n1 < n0" is used below
                c0 = ti.bit_cast(packed[b + 12], ti.i32)
                c1 = ti.bit_cast(packed[b + 13], ti.i32)
                if h0 and h1:
                    pop = False
                    if n1 < n0:
                        code = c1
                        stack[sp] = c0
                    else:
                        code = c0
                        stack[sp] = c1
                    sp += 1
                elif h0:
                    code = c0
                    pop = False
                elif h1:
                    code = c1
                    pop = False
            if pop:
                if sp == 0:
                    go = False
                else:
                    sp -= 1
                    code = stack[sp]
        if ti.static(K == 1):
            out_t[r] = miss_t  # a runtime value (inf), not a constant fast-math could fold
            out_face[r] = -1
            if best_s >= 0:
                out_t[r] = best_t
                out_face[r] = order[best_s]
            out_uv[2 * r] = best_u
            out_uv[2 * r + 1] = best_v
        else:
            for j in ti.static(range(K)):
                q = r * K + j
                out_t[q] = miss_t
                out_face[q] = -1
                if hit_s[j] >= 0:
                    out_t[q] = hit_t[j]
                    out_face[q] = order[hit_s[j]]
                out_uv[2 * q] = hit_u[j]
                out_uv[2 * q + 1] = hit_v[j]
