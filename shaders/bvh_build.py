"""Taichi kernels that build and refit the linear BVH (LBVH) of :mod:`shaders.bvh`.

Pipeline (all on the Taichi arch except the sort):

1. :func:`_centroid_bounds` -- bounds of the primitive centroids (chunked reduction).
2. :func:`_morton_codes` -- 30-bit Morton code of each centroid quantised on a 1024^3 grid.
3. sort -- ``torch.sort(codes, stable=True)`` (a torch radix/merge sort; the one step that is not
   a Taichi kernel). Stability makes the order of equal codes the primitive index order.
4. :func:`_karras_internal` -- Karras 2012 ("Maximizing parallelism in the construction of BVHs,
   octrees and k-d trees"): internal node ``i`` (0 <= i < N-1) finds its key range and split in
   parallel. Equal Morton codes are tie-broken by the sorted position, i.e. the key is the 62-bit
   value ``(code << 32) | position`` -- so every internal node's common prefix length is strictly
   larger than its parent's and the tree depth is at most 30 + 32 = 62 internal levels + 1 leaf,
   whatever the input (duplicates included). Traversal stacks of 64 entries therefore never
   overflow (see :data:`STACK_SIZE`).
5. :func:`_bottom_up` -- leaf boxes are written, then each leaf thread walks to the root; at each
   internal node an atomic counter lets only the second arriving thread (whose sibling is then
   complete) compute the union and continue. Refit reruns only this step.

6. :func:`_pack_nodes` -- optional packed copy for fast closest-hit traversal (child boxes in
   the parent, small subtrees collapsed to multi-primitive leaves).

Node numbering: internal nodes are ``0 .. N-2`` (root 0), the leaf of the primitive at sorted
position ``i`` is node ``N-1+i``. ``children[leaf] = (-1, prim)``.
"""

import taichi as ti

#: Depth bound of an LBVH built here (62 internal levels + leaf) rounded up: traversal stacks of
#: this size cannot overflow (each stack entry is a sibling of a distinct ancestor).
STACK_SIZE = 64

_MORTON_CELLS = 1024  # 10 bits per axis -> 30-bit codes

# Kernel argument types: the (n, 3) / (n, 2) torch tensors are passed as 1-D ndarrays of
# vectors; element loads measured ~3x faster than 2-D indexing (``a[i, k]``) in Taichi 1.7.
_V3 = ti.types.ndarray(dtype=ti.math.vec3, ndim=1)       # (n, 3) float32
_I3 = ti.types.ndarray(dtype=ti.math.ivec3, ndim=1)      # (n, 3) int32
_I2 = ti.types.ndarray(dtype=ti.math.ivec2, ndim=1)      # (n, 2) int32
_CHUNKS = 64  # parallel partial reductions in _centroid_bounds


@ti.kernel
def _centroid_bounds(lo: _V3, hi: _V3, out: ti.types.ndarray(), part: ti.types.ndarray()):
    """out[0] = min centroid, out[1] = max centroid: _CHUNKS chunks reduced in parallel into
    ``part`` (_CHUNKS, 6), then combined by one thread (float atomics from every element
    cost more on the CPU)."""
    n = lo.shape[0]
    step = (n + _CHUNKS - 1) // _CHUNKS
    for ch in range(_CHUNKS):
        cmin = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        cmax = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        for i in range(ch * step, ti.min(n, ch * step + step)):
            c = 0.5 * (lo[i] + hi[i])
            cmin = ti.min(cmin, c)
            cmax = ti.max(cmax, c)
        for k in ti.static(range(3)):
            part[ch, k] = cmin[k]
            part[ch, 3 + k] = cmax[k]
    for _ in range(1):
        for ch in range(_CHUNKS):
            for k in ti.static(range(3)):
                out[0, k] = ti.min(out[0, k], part[ch, k])
                out[1, k] = ti.max(out[1, k], part[ch, 3 + k])


@ti.func
def _expand_bits(v: ti.u32) -> ti.u32:
    """Insert two zero bits after each of the 10 low bits of ``v``."""
    v = (v * ti.u32(0x00010001)) & ti.u32(0xFF0000FF)
    v = (v * ti.u32(0x00000101)) & ti.u32(0x0F00F00F)
    v = (v * ti.u32(0x00000011)) & ti.u32(0xC30C30C3)
    v = (v * ti.u32(0x00000005)) & ti.u32(0x49249249)
    return v


@ti.kernel
def _morton_codes(lo: _V3, hi: _V3, bounds: ti.types.ndarray(), codes: ti.types.ndarray()):
    for i in range(lo.shape[0]):
        code = ti.u32(0)
        c = 0.5 * (lo[i] + hi[i])
        for k in ti.static(range(3)):
            ext = bounds[1, k] - bounds[0, k]
            scale = 0.0
            if ext > 1e-30:  # the scale stays finite
                scale = _MORTON_CELLS / ext
            q = ti.cast(ti.floor((c[k] - bounds[0, k]) * scale), ti.i32)
            q = ti.min(ti.max(q, 0), _MORTON_CELLS - 1)
            code |= _expand_bits(ti.cast(q, ti.u32)) << ti.u32(2 - k)
        codes[i] = ti.cast(code, ti.i32)


@ti.func
def _delta(codes: ti.types.ndarray(), n: ti.i32, i: ti.i32, j: ti.i32) -> ti.i32:
    """Common prefix length of the augmented keys at sorted positions i and j (-1 if j invalid)."""
    r = -1
    if j >= 0 and j < n:
        ci = codes[i]
        cj = codes[j]
        if ci == cj:
            r = 32 + ti.math.clz(i ^ j)
        else:
            r = ti.math.clz(ci ^ cj)
    return r


@ti.kernel
def _karras_internal(codes: ti.types.ndarray(), children: _I2, parent: ti.types.ndarray(),
                     span: _I2):
    n = codes.shape[0]
    for i in range(n - 1):
        d = 1
        if _delta(codes, n, i, i + 1) < _delta(codes, n, i, i - 1):
            d = -1
        dmin = _delta(codes, n, i, i - d)
        lmax = 2
        while _delta(codes, n, i, i + lmax * d) > dmin:
            lmax *= 2
        length = 0
        t = lmax // 2
        while t >= 1:
            if _delta(codes, n, i, i + (length + t) * d) > dmin:
                length += t
            t //= 2
        j = i + length * d
        dnode = _delta(codes, n, i, j)
        # split search over t = ceil(l/2), ceil(l/4), ..., 1
        s = 0
        t = length
        while True:
            t = (t + 1) // 2
            if _delta(codes, n, i, i + (s + t) * d) > dnode:
                s += t
            if t <= 1:
                break
        gamma = i + s * d + ti.min(d, 0)
        first = ti.min(i, j)
        last = ti.max(i, j)
        left = gamma
        if first == gamma:
            left = n - 1 + gamma
        right = gamma + 1
        if last == gamma + 1:
            right = n - 1 + gamma + 1
        children[i] = ti.math.ivec2(left, right)
        span[i] = ti.math.ivec2(first, last)
        parent[left] = i
        parent[right] = i


@ti.kernel
def _leaves(order: ti.types.ndarray(), children: _I2, parent: ti.types.ndarray()):
    n = order.shape[0]
    for i in range(n):
        children[n - 1 + i] = ti.math.ivec2(-1, ti.cast(order[i], ti.i32))
    parent[0] = -1


@ti.kernel
def _bottom_up(lo: _V3, hi: _V3, children: _I2, parent: ti.types.ndarray(),
               flags: ti.types.ndarray(), node_lo: _V3, node_hi: _V3, use_fence: ti.template()):
    """Leaf boxes from (lo, hi), then unions up to the root; ``flags`` must be zero on entry."""
    nleaf = lo.shape[0]
    for i in range(nleaf):
        node = nleaf - 1 + i
        prim = children[node][1]
        node_lo[node] = lo[prim]
        node_hi[node] = hi[prim]
        if ti.static(use_fence):
            ti.simt.grid.memfence()
        p = parent[node]
        while p >= 0:
            old = ti.atomic_add(flags[p], 1)
            if old == 0:
                break  # the sibling subtree is not finished; its thread will continue
            ab = children[p]
            node_lo[p] = ti.min(node_lo[ab[0]], node_lo[ab[1]])
            node_hi[p] = ti.max(node_hi[ab[0]], node_hi[ab[1]])
            if ti.static(use_fence):
                ti.simt.grid.memfence()
            p = parent[p]


@ti.kernel
def _triangle_boxes(vertices: _V3, faces: _I3, lo: _V3, hi: _V3):
    """(Vector-typed ndarrays: element loads measured ~3x faster than 2-D indexing.)"""
    for f in range(faces.shape[0]):
        a = vertices[faces[f][0]]
        b = vertices[faces[f][1]]
        c = vertices[faces[f][2]]
        lo[f] = ti.min(a, ti.min(b, c))
        hi[f] = ti.max(a, ti.max(b, c))


@ti.kernel
def _triangle_leaf_data(vertices: _V3, faces: _I3, order: ti.types.ndarray(),
                        tri: ti.types.ndarray(dtype=ti.types.vector(9, ti.f32), ndim=1)):
    """tri[slot] = (v0, v1, v2) of the face at sorted position ``slot`` (raw vertices: a vertex
    shared by several faces is bit-identical in all of them, which the watertight test needs)."""
    for s in range(order.shape[0]):
        fc = faces[order[s]]
        a = vertices[fc[0]]
        b = vertices[fc[1]]
        c = vertices[fc[2]]
        tri[s] = ti.Vector([a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]], dt=ti.f32)


@ti.func
def leaf_code(start: ti.i32, count: ti.i32) -> ti.i32:
    """Packed-node child code of a leaf of ``count`` (1..8) primitives at sorted slots
    ``start .. start+count-1``: ``-1 - (start * 8 + count - 1)`` (always negative)."""
    return -1 - (start * 8 + count - 1)


#: Packed traversal node (16 float32): both child boxes stored in the parent, per axis ``k`` as
#: ``[4k .. 4k+3] = (lo of child 0, lo of child 1, hi of child 0, hi of child 1)``, then the two
#: child codes (int32 bits) at 12, 13 and two unused entries. Per axis, the two near planes and
#: the two far planes of a ray are adjacent pairs (which pair is "near" depends only on the sign
#: of the ray's direction component), so the slab test of both children compiles to 2-wide
#: vector loads and arithmetic without min/max of the plane distances.
PACKED_LO = ((0, 4, 8), (1, 5, 9))    # PACKED_LO[c][k]: column of child c's lo_k
PACKED_HI = ((2, 6, 10), (3, 7, 11))  # PACKED_HI[c][k]: column of child c's hi_k
PACKED_CODE = (12, 13)                # column of child c's code


def packed_child_boxes(packed, c: int):
    """``(lo, hi)``, (M, 3) each, of child ``c`` (0 or 1) of every packed row (torch)."""
    return packed[:, list(PACKED_LO[c])], packed[:, list(PACKED_HI[c])]


@ti.kernel
def _pack_nodes(node_lo: _V3, node_hi: _V3, children: _I2, span: _I2, leaf_max: ti.i32,
                packed: ti.types.ndarray(dtype=ti.types.vector(16, ti.f32), ndim=1)):
    """packed[i] = the two child boxes (layout: :data:`PACKED_LO`), code 0, code 1, 0, 0 per
    internal node i. A child code >= 0 is an internal node id; a child whose subtree holds at
    most ``leaf_max`` primitives (a contiguous slot range, since leaves are in Morton order)
    becomes a leaf code (:func:`leaf_code`). Codes are stored as int32 bits in the float32
    array."""
    nint = span.shape[0]
    for i in range(nint):
        codes = ti.Vector([0, 0], dt=ti.i32)
        for c in ti.static(range(2)):
            child = children[i][c]
            code = child
            if child >= nint:
                code = leaf_code(child - nint, 1)
            else:
                sp = span[child]
                size = sp[1] - sp[0] + 1
                if size <= leaf_max:
                    code = leaf_code(sp[0], size)
            codes[c] = code
        a0 = node_lo[children[i][0]]
        b0 = node_hi[children[i][0]]
        a1 = node_lo[children[i][1]]
        b1 = node_hi[children[i][1]]
        packed[i] = ti.Vector([a0[0], a1[0], b0[0], b1[0], a0[1], a1[1], b0[1], b1[1],
                               a0[2], a1[2], b0[2], b1[2],
                               ti.bit_cast(codes[0], ti.f32), ti.bit_cast(codes[1], ti.f32),
                               0.0, 0.0], dt=ti.f32)
