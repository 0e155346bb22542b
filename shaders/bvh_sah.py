"""Binned-SAH BVH (Taichi kernels) used for the triangle closest-hit traversal.

Data: every primitive is a row ``(lo, hi, id bits, 0)`` of ``rows[buf]`` (two (N, 8) float32
buffers); a node owns a contiguous range of rows. A split partitions its range *out of place*
into the other buffer (left child's rows forward from the start, right child's backward from
the end), so every pass over a node reads contiguous memory, and the same pass yields both
children's boxes and centroid bounds (the next step needs no bounds pass). Centroids are
handled doubled (``lo + hi``).

Build, two phases:

1. Top (:func:`_sah_level`, one launch per level): the nodes of a level in parallel, one thread
   per node: split choice, child ids (one serial loop, in node order: deterministic), partition.
   A node of at most ``subtree_max`` primitives is not split here but deferred.
2. Bottom (:func:`_sah_subtrees`, one launch): one thread per deferred node builds its whole
   subtree depth-first with a local stack, in a node-id range reserved for it (``2c - 2`` ids
   for ``c`` primitives, taken from the top of the id space), ids in preorder (children after
   their parent). The subtree's rows stay in cache while it is built, and the per-level kernel
   launches (~0.2-0.3 ms each through Taichi's Python launcher) are paid only for the top.

On the CPU ``subtree_max`` is large (N / 32: the top has ~8 levels and still offers ~32-64
subtrees to the CPU threads); on the GPU it is small, since the
GPU needs tens of thousands of threads (not measured here: no GPU on the development machine).

Split choice (both phases, :func:`_split_choice`): the plane minimising ``area(L) * n(L) +
area(R) * n(R)`` over the ``BINS - 1`` planes of an axis (one pass over the node's rows per
axis): all three axes for nodes of more than :data:`ALL_AXES_MIN` primitives, else only the
longest axis of the centroid bounds. A node of more than :data:`SAMPLE` primitives bins an
evenly strided sample of them (the partition still places and bounds every one). A node of at
most :data:`SMALL` primitives is split at the spatial median of its longest axis (no binning
pass). Measured on the bunny / armadillo in one process (SAH cost of the tree, ``sah_cost``,
lower is better; build CPU time):

=======================================================  =============  ===============
variant (16 bins, sample 1024)                           SAH cost       build CPU ms
=======================================================  =============  ===============
all axes, no spatial median                              31.66 / 29.11  67 / 98
all axes, spatial median <= 16                           32.39 / 29.76  51 / 72
all axes above 256, spatial median <= 16                 32.83 / 30.07  46 / 62
all axes above 1024, spatial median <= 16 (default)      32.96 / 30.20  41 / 62
longest axis only, spatial median <= 16                  33.52 / 30.54  39 / 57
=======================================================  =============  ===============

(The builder before this one, 8 bins, all axes, no sample: 32.04 / 29.48.) Trace times of
these trees were within the run-to-run noise of each other (+-3 %). 8 bins instead of 16 cost
the same build time and gave a higher SAH cost; the sample changed the SAH cost by < 0.3 %.

A node becomes a leaf exactly when it holds <= ``leaf_max`` primitives
(SAH leaf-vs-split decisions on such small nodes cost more build time than they saved traversal
time). When all centroids fall into one bin on every axis (e.g. duplicates), or from depth
:data:`MEDIAN_DEPTH` on, the range is split at its middle (object median by position), which
bounds the depth by ``MEDIAN_DEPTH + log2(N) <= 63`` for N < 2^31, so the 64-entry traversal
stack of :mod:`shaders.bvh_traverse` cannot overflow (the spatial median falls back to the
object median when it separates nothing, so it cannot loop).

Output is the packed layout of ``bvh_build._pack_nodes`` (both child boxes in the parent, leaf
codes with slot ranges), with slots in ``perm`` order and the internal nodes stored in
depth-first order (left subtree first), which measured a few percent faster than level order.
Refit: the subtrees in reverse id order (one launch), then the top levels deepest first.

Cost: see :mod:`shaders.bvh` (measured beside Embree by tools/bench_bvh.py).
"""
import taichi as ti
import torch

from .bvh_build import _CHUNKS, _I3, _V3, leaf_code

_T9 = ti.types.ndarray(dtype=ti.types.vector(9, ti.f32), ndim=1)  # (n, 9) float32

BINS = 16
MEDIAN_DEPTH = 32
#: Nodes of more primitives than this bin all three axes, the others only the longest axis of
#: their centroid bounds.
ALL_AXES_MIN = 1024
#: Nodes of more primitives than this choose their split from a strided sample of them.
SAMPLE = 1024
#: Nodes of at most this many primitives split at the spatial median of their longest axis.
SMALL = 16
_STACK = 64

# Node record columns of ``SAHTree.node_i`` (M, 8) int32.
_START, _COUNT, _C0, _C1, _KIND, _BIN, _NLEFT, _BUF = 0, 1, 2, 3, 4, 5, 6, 7
# _KIND: -1 leaf, 0..2 binned split on that axis, 3 object median (by position), -2 deferred
# to the subtree phase (then _BIN = first reserved id, _NLEFT = ids used, _BUF = row buffer)
_LEAF, _MEDIAN, _DEFER = -1, 3, -2


@ti.func
def _area(lo, hi) -> ti.f32:
    e = ti.max(hi - lo, 0.0)
    return e[0] * e[1] + e[1] * e[2] + e[0] * e[2]


@ti.func
def _bin_of(c2: ti.f32, clo: ti.f32, scale: ti.f32) -> ti.i32:
    """Bin of a doubled centroid coordinate (the one formula for binning and partitioning)."""
    return ti.max(ti.min(ti.cast((c2 - clo) * scale, ti.i32), BINS - 1), 0)


@ti.kernel
def _sah_init(lo: ti.types.ndarray(), hi: ti.types.ndarray(), rows: ti.types.ndarray(),
              node_i: ti.types.ndarray(), node_lo: ti.types.ndarray(),
              node_hi: ti.types.ndarray(), cb: ti.types.ndarray(), part: ti.types.ndarray()):
    """rows[0, p] = (lo, hi, prim id bits, 0) in primitive order; node 0 = the root over all
    of them, with its box and the bounds of the doubled centroids ``lo + hi`` (``cb``):
    _CHUNKS partial reductions in parallel (``part`` (_CHUNKS, 12)), combined by one thread."""
    n = lo.shape[0] // 3
    step = (n + _CHUNKS - 1) // _CHUNKS
    for ch in range(_CHUNKS):
        blo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        bhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        clo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        chi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        for p in range(ch * step, ti.min(n, ch * step + step)):
            a = ti.Vector([lo[p * 3 + 0], lo[p * 3 + 1], lo[p * 3 + 2]], dt=ti.f32)
            b = ti.Vector([hi[p * 3 + 0], hi[p * 3 + 1], hi[p * 3 + 2]], dt=ti.f32)
            for k in ti.static(range(3)):
                rows[p * 8 + k] = a[k]
                rows[p * 8 + 3 + k] = b[k]
            rows[p * 8 + 6] = ti.bit_cast(p, ti.f32)
            rows[p * 8 + 7] = 0.0
            blo = ti.min(blo, a)
            bhi = ti.max(bhi, b)
            clo = ti.min(clo, a + b)
            chi = ti.max(chi, a + b)
        for k in ti.static(range(3)):
            part[ch * 12 + k] = blo[k]
            part[ch * 12 + 3 + k] = bhi[k]
            part[ch * 12 + 6 + k] = clo[k]
            part[ch * 12 + 9 + k] = chi[k]
    for _ in range(1):
        for k in ti.static(range(3)):
            node_lo[k] = 3e38
            node_hi[k] = -3e38
            cb[k] = 3e38
            cb[3 + k] = -3e38
        for ch in range(_CHUNKS):
            for k in ti.static(range(3)):
                node_lo[k] = ti.min(node_lo[k], part[ch * 12 + k])
                node_hi[k] = ti.max(node_hi[k], part[ch * 12 + 3 + k])
                cb[k] = ti.min(cb[k], part[ch * 12 + 6 + k])
                cb[3 + k] = ti.max(cb[3 + k], part[ch * 12 + 9 + k])
        node_i[_START] = 0
        node_i[_COUNT] = n
        node_i[_BUF] = 0


@ti.func
def _split_choice(rows: ti.template(), buf: ti.i32, s0: ti.i32, cnt: ti.i32, cb: ti.template(),
                  node: ti.i32, force_median: ti.i32, all_axes_min: ti.i32,
                  small_max: ti.i32):
    """(kind, best bin, left count) of the binned-SAH split of a node (kind 0..2 = axis, or
    _MEDIAN when no binned plane separates anything / ``force_median``)."""
    nrow = rows.shape[0] // 16
    best_cost = 3e38
    kind = -1
    best_bin = 0
    nleft = 0
    # a large node bins an evenly strided sample of about SAMPLE..2*SAMPLE of its primitives
    # (the partition still places, and bounds, every one of them)
    stride = ti.max(cnt // SAMPLE, 1)
    nsample = (cnt + stride - 1) // stride
    longest = 0
    if cb[node * 6 + 4] - cb[node * 6 + 1] > cb[node * 6 + 3] - cb[node * 6 + 0]:
        longest = 1
    if cb[node * 6 + 5] - cb[node * 6 + 2] > cb[node * 6 + 3 + longest] - cb[node * 6 + longest]:
        longest = 2
    all_axes = cnt > all_axes_min
    small = cnt <= small_max and cb[node * 6 + 3 + longest] - cb[node * 6 + longest] > 1e-30
    if force_median == 0 and small:
        # a small node: spatial median of the longest axis (no binning pass; if that plane
        # separates nothing, _partition falls back to the object median)
        kind = longest
        best_bin = BINS // 2 - 1
    elif force_median == 0:
        for axis in ti.static(range(3)):
            clo = cb[node * 6 + axis]
            ext = cb[node * 6 + 3 + axis] - clo
            if ext > 1e-30 and (all_axes or axis == longest):  # BINS / ext finite
                scale = BINS / ext
                bcnt = ti.Vector.zero(ti.i32, BINS)
                bl = ti.Matrix([[3e38] * 3] * BINS, dt=ti.f32)
                bh = ti.Matrix([[-3e38] * 3] * BINS, dt=ti.f32)
                for j in range(nsample):
                    r = (buf * nrow + s0 + j * stride) * 8
                    bi = _bin_of(rows[r + axis] + rows[r + 3 + axis], clo, scale)
                    bcnt[bi] += 1
                    for k in ti.static(range(3)):
                        bl[bi, k] = ti.min(bl[bi, k], rows[r + k])
                        bh[bi, k] = ti.max(bh[bi, k], rows[r + 3 + k])
                # right sweep: area and count of bins b..BINS-1
                rarea = ti.Vector.zero(ti.f32, BINS)
                rcnt = ti.Vector.zero(ti.i32, BINS)
                rl = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
                rh = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
                rc = 0
                for j in range(BINS - 1):
                    bidx = BINS - 1 - j
                    for k in ti.static(range(3)):
                        rl[k] = ti.min(rl[k], bl[bidx, k])
                        rh[k] = ti.max(rh[k], bh[bidx, k])
                    rc += bcnt[bidx]
                    rarea[bidx] = _area(rl, rh)
                    rcnt[bidx] = rc
                ll = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
                lh = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
                lc = 0
                for bidx in range(BINS - 1):
                    for k in ti.static(range(3)):
                        ll[k] = ti.min(ll[k], bl[bidx, k])
                        lh[k] = ti.max(lh[k], bh[bidx, k])
                    lc += bcnt[bidx]
                    if lc > 0 and rcnt[bidx + 1] > 0:
                        cost = _area(ll, lh) * lc + rarea[bidx + 1] * rcnt[bidx + 1]
                        if cost < best_cost:
                            best_cost = cost
                            kind = axis
                            best_bin = bidx
                            nleft = lc
    if kind < 0:
        # all centroids in one bin on every axis (duplicates), or a deep level
        kind = _MEDIAN
        nleft = cnt // 2
    return kind, best_bin, nleft


@ti.func
def _partition(rows: ti.template(), buf: ti.i32, s0: ti.i32, cnt: ti.i32, kind: ti.i32,
               best_bin: ti.i32, nleft: ti.i32, node: ti.i32, c0: ti.i32, c1: ti.i32,
               node_i: ti.template(), node_lo: ti.template(), node_hi: ti.template(),
               cb: ti.template()):
    """Rows of ``node`` from ``rows[buf]`` into ``rows[1 - buf]`` split by (kind, best_bin) or
    by position (median); writes both children's records, boxes and centroid bounds."""
    nrow = rows.shape[0] // 16
    axis = kind % 3
    clo = cb[node * 6 + axis]
    scale = 0.0
    if kind != _MEDIAN:
        scale = BINS / (cb[node * 6 + 3 + axis] - clo)
    llo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)   # left box
    lhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
    rlo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)   # right box
    rhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
    lclo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)  # left / right centroid bounds
    lchi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
    rclo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
    rchi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
    li = s0
    ri = s0 + cnt - 1
    dbuf = 1 - buf
    for p in range(s0, s0 + cnt):
        r = (buf * nrow + p) * 8
        a = ti.Vector([rows[r + 0], rows[r + 1], rows[r + 2]], dt=ti.f32)
        b = ti.Vector([rows[r + 3], rows[r + 4], rows[r + 5]], dt=ti.f32)
        c2 = a + b
        left = p - s0 < nleft
        if kind != _MEDIAN:
            left = _bin_of(c2[axis], clo, scale) <= best_bin
        # branch free (the side is data dependent: unpredictable at the top levels)
        q = ti.select(left, li, ri)
        li += ti.select(left, 1, 0)
        ri -= ti.select(left, 0, 1)
        llo = ti.select(left, ti.min(llo, a), llo)
        lhi = ti.select(left, ti.max(lhi, b), lhi)
        lclo = ti.select(left, ti.min(lclo, c2), lclo)
        lchi = ti.select(left, ti.max(lchi, c2), lchi)
        rlo = ti.select(left, rlo, ti.min(rlo, a))
        rhi = ti.select(left, rhi, ti.max(rhi, b))
        rclo = ti.select(left, rclo, ti.min(rclo, c2))
        rchi = ti.select(left, rchi, ti.max(rchi, c2))
        for k in ti.static(range(3)):
            rows[(dbuf * nrow + q) * 8 + k] = a[k]
            rows[(dbuf * nrow + q) * 8 + 3 + k] = b[k]
        rows[(dbuf * nrow + q) * 8 + 6] = rows[(buf * nrow + p) * 8 + 6]
    nl = li - s0
    if nl == 0 or nl == cnt:
        # the plane separated nothing (only possible for a small node's spatial median):
        # object median by position instead, bounds recomputed over the copied rows
        nl = cnt // 2
        llo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        lhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        rlo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        rhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        lclo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        lchi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        rclo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        rchi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        for p in range(s0, s0 + cnt):
            r = (dbuf * nrow + p) * 8
            a = ti.Vector([rows[r + 0], rows[r + 1], rows[r + 2]], dt=ti.f32)
            b = ti.Vector([rows[r + 3], rows[r + 4], rows[r + 5]], dt=ti.f32)
            c2 = a + b
            if p - s0 < nl:
                llo = ti.min(llo, a)
                lhi = ti.max(lhi, b)
                lclo = ti.min(lclo, c2)
                lchi = ti.max(lchi, c2)
            else:
                rlo = ti.min(rlo, a)
                rhi = ti.max(rhi, b)
                rclo = ti.min(rclo, c2)
                rchi = ti.max(rchi, c2)
    node_i[c0 * 8 + _START] = s0
    node_i[c0 * 8 + _COUNT] = nl
    node_i[c0 * 8 + _BUF] = dbuf
    node_i[c1 * 8 + _START] = s0 + nl
    node_i[c1 * 8 + _COUNT] = cnt - nl
    node_i[c1 * 8 + _BUF] = dbuf
    for k in ti.static(range(3)):
        node_lo[c0 * 3 + k] = llo[k]
        node_hi[c0 * 3 + k] = lhi[k]
        node_lo[c1 * 3 + k] = rlo[k]
        node_hi[c1 * 3 + k] = rhi[k]
        cb[c0 * 6 + k] = lclo[k]
        cb[c0 * 6 + 3 + k] = lchi[k]
        cb[c1 * 6 + k] = rclo[k]
        cb[c1 * 6 + 3 + k] = rchi[k]


@ti.func
def _make_leaf(rows: ti.template(), buf: ti.i32, s0: ti.i32, cnt: ti.i32,
               perm: ti.template(), vertices: ti.template(), faces: ti.template(),
               tri: ti.template(), with_tri: ti.template()):
    """perm[slot] = primitive id of the leaf's slots; with_tri: also tri[slot] = the face's
    three raw vertices (saves bvh_build._triangle_leaf_data's pass over all faces)."""
    nrow = rows.shape[0] // 16
    for p in range(s0, s0 + cnt):
        prim = ti.bit_cast(rows[(buf * nrow + p) * 8 + 6], ti.i32)
        perm[p] = prim
        if ti.static(with_tri):
            fc = faces[prim]
            a = vertices[fc[0]]
            b = vertices[fc[1]]
            c = vertices[fc[2]]
            tri[p] = ti.Vector([a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]],
                               dt=ti.f32)


@ti.kernel
def _sah_level(rows: ti.types.ndarray(), perm: ti.types.ndarray(), node_i: ti.types.ndarray(),
               node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
               cb: ti.types.ndarray(), first: ti.i32, last: ti.i32, leaf_max: ti.i32,
               subtree_max: ti.i32, force_median: ti.i32, all_axes_min: ti.i32,
               small_max: ti.i32, state: ti.types.ndarray(), deferred: ti.types.ndarray(),
               vertices: _V3, faces: _I3, tri: _T9, with_tri: ti.template()):
    """One top level: nodes ``first .. last-1`` (rows in ``rows[buf]``, box and centroid
    bounds known).

    1. (parallel over nodes) leaf (``count <= leaf_max``), deferred (``count <=
       subtree_max``) or the split choice;
    2. (one thread, in node order) child ids ``last, last+1, ...``; each deferred node gets
       ``2 count - 2`` ids below ``state[1]`` and is appended to ``deferred``
       (``state[2]`` entries); state[0] = the next level's end;
    3. (parallel over nodes) partition.
    """
    for node in range(first, last):
        s0 = node_i[node * 8 + _START]
        cnt = node_i[node * 8 + _COUNT]
        buf = node_i[node * 8 + _BUF]
        node_i[node * 8 + _C0] = -1
        node_i[node * 8 + _C1] = -1
        kind = _LEAF
        best_bin = 0
        nleft = 0
        if cnt <= leaf_max:
            _make_leaf(rows, buf, s0, cnt, perm, vertices, faces, tri, with_tri)
        elif cnt <= subtree_max:
            kind = _DEFER
        else:
            kind, best_bin, nleft = _split_choice(rows, buf, s0, cnt, cb, node, force_median,
                                                  all_axes_min, small_max)
        node_i[node * 8 + _KIND] = kind
        node_i[node * 8 + _BIN] = best_bin
        node_i[node * 8 + _NLEFT] = nleft
    for _ in range(1):  # one thread; the inner loop is sequential (deterministic ids)
        nxt = last
        top = state[1]
        nd = state[2]
        for node in range(first, last):
            kind = node_i[node * 8 + _KIND]
            if kind >= 0:
                node_i[node * 8 + _C0] = nxt
                node_i[node * 8 + _C1] = nxt + 1
                nxt += 2
            elif kind == _DEFER:
                top -= 2 * node_i[node * 8 + _COUNT] - 2
                node_i[node * 8 + _BIN] = top
                node_i[node * 8 + _NLEFT] = 0
                deferred[nd] = node
                nd += 1
        state[0] = nxt
        state[1] = top
        state[2] = nd
    for node in range(first, last):
        kind = node_i[node * 8 + _KIND]
        if kind >= 0:
            r = node * 8
            _partition(rows, node_i[r + _BUF], node_i[r + _START], node_i[r + _COUNT], kind,
                       node_i[r + _BIN], node_i[r + _NLEFT], node, node_i[r + _C0],
                       node_i[r + _C1], node_i, node_lo, node_hi, cb)


@ti.kernel
def _sah_subtrees(rows: ti.types.ndarray(), perm: ti.types.ndarray(),
                  node_i: ti.types.ndarray(), node_lo: ti.types.ndarray(),
                  node_hi: ti.types.ndarray(), cb: ti.types.ndarray(),
                  deferred: ti.types.ndarray(), num_deferred: ti.i32, root_depth: ti.i32,
                  leaf_max: ti.i32, all_axes_min: ti.i32, small_max: ti.i32,
                  state: ti.types.ndarray(), vertices: _V3, faces: _I3, tri: _T9,
                  with_tri: ti.template()):
    """Every deferred node (at depth ``root_depth`` or less) builds its subtree depth-first,
    one thread each; ids from its reserved range in preorder; state[3] = max depth reached."""
    for i in range(num_deferred):
        root = deferred[i]
        nxt = node_i[root * 8 + _BIN]
        base = nxt
        stack = ti.Vector.zero(ti.i32, _STACK)
        depth_of = ti.Vector.zero(ti.i32, _STACK)
        sp = 1
        stack[0] = root
        depth_of[0] = root_depth
        dmax = 0
        while sp > 0:
            sp -= 1
            node = stack[sp]
            depth = depth_of[sp]
            dmax = ti.max(dmax, depth)
            s0 = node_i[node * 8 + _START]
            cnt = node_i[node * 8 + _COUNT]
            buf = node_i[node * 8 + _BUF]
            if node != root:
                node_i[node * 8 + _KIND] = _LEAF
            node_i[node * 8 + _C0] = -1
            node_i[node * 8 + _C1] = -1
            if cnt <= leaf_max:
                _make_leaf(rows, buf, s0, cnt, perm, vertices, faces, tri, with_tri)
            else:
                kind, best_bin, nleft = _split_choice(rows, buf, s0, cnt, cb, node,
                                                      ti.cast(depth >= MEDIAN_DEPTH, ti.i32),
                                                      all_axes_min, small_max)
                if node != root:
                    node_i[node * 8 + _KIND] = kind
                c0 = nxt
                c1 = nxt + 1
                nxt += 2
                node_i[node * 8 + _C0] = c0
                node_i[node * 8 + _C1] = c1
                _partition(rows, buf, s0, cnt, kind, best_bin, nleft, node, c0, c1, node_i,
                           node_lo, node_hi, cb)
                stack[sp] = c1
                depth_of[sp] = depth + 1
                stack[sp + 1] = c0
                depth_of[sp + 1] = depth + 1
                sp += 2
        node_i[root * 8 + _NLEFT] = nxt - base
        ti.atomic_max(state[3], dmax)


@ti.kernel
def _dfs_rows(node_i: ti.types.ndarray(), row_of: ti.types.ndarray(),
              count: ti.types.ndarray()):
    """Serial depth-first walk from the root (left subtree first): row_of[node] = rank of
    each internal node in that order (others keep -1); count[0] = number of internal nodes."""
    for _ in range(1):
        stack = ti.Vector.zero(ti.i32, _STACK + 2)
        sp = 1
        stack[0] = 0
        r = 0
        while sp > 0:
            sp -= 1
            node = stack[sp]
            if node_i[node * 8 + _C0] >= 0:
                row_of[node] = r
                r += 1
                stack[sp] = node_i[node * 8 + _C1]
                stack[sp + 1] = node_i[node * 8 + _C0]
                sp += 2
        count[0] = r


@ti.kernel
def _sah_pack(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
              node_i: ti.types.ndarray(), row_of: ti.types.ndarray(),
              packed: ti.types.ndarray()):
    """Packed rows (see ``bvh_build._pack_nodes``) for the internal nodes reachable from the
    root: node ``i`` goes to row ``row_of[i]`` (depth-first order of the internal nodes; -1
    for leaves and unused ids); leaf children become leaf codes over their slot range."""
    for i in range(row_of.shape[0]):
        row = row_of[i]
        if row >= 0:
            for c in ti.static(range(2)):
                child = node_i[i * 8 + _C0 + c]
                code = 0
                if node_i[child * 8 + _C0] < 0:
                    code = leaf_code(node_i[child * 8 + _START], node_i[child * 8 + _COUNT])
                else:
                    code = row_of[child]
                for k in ti.static(range(3)):  # layout: bvh_build.PACKED_LO / PACKED_HI
                    packed[row * 16 + 4 * k + c] = node_lo[child * 3 + k]
                    packed[row * 16 + 4 * k + 2 + c] = node_hi[child * 3 + k]
                packed[row * 16 + 12 + c] = ti.bit_cast(code, ti.f32)
            packed[row * 16 + 14] = 0.0
            packed[row * 16 + 15] = 0.0


class SAHTree:
    """A binned-SAH tree in packed form (see the module docstring).

    Attributes: ``perm`` (N,) int32 primitive index per slot; ``node_i`` (M, 8) int32 node
    records (slot start, slot count, child 0, child 1 (-1 for leaves), build bookkeeping; ids
    not reachable from the root are unused); ``node_lo, node_hi`` (M, 3); ``level_off``:
    node-id offsets of the top levels (top level L = ids level_off[L]..level_off[L+1]-1);
    ``deferred`` (D,) int32: the subtree roots; ``depth``: the tree's depth (root 0);
    ``packed`` (max(internal, 1), 16) float32; ``root_code`` (0, or a leaf code when the root
    is a leaf); ``row_of`` (M,) int32 packed row of each internal node (-1 otherwise).
    """

    def __init__(self, perm, node_i, node_lo, node_hi, level_off, deferred, depth, packed,
                 root_code, row_of):
        self.perm, self.node_i = perm, node_i
        self.node_lo, self.node_hi, self.level_off = node_lo, node_hi, level_off
        self.deferred, self.depth = deferred, depth
        self.packed, self.root_code, self.row_of = packed, root_code, row_of

    @property
    def children(self) -> torch.Tensor:
        """(M, 2) child ids (-1, -1 for leaves; garbage for unused ids)."""
        return self.node_i[:, _C0:_C1 + 1]


def default_subtree_max(n: int, arch: str) -> int:
    """Nodes of at most this many primitives are built by the subtree phase."""
    if arch == "cuda":
        return 32
    # the split rule is the same in both phases (same tree); a larger value means fewer kernel
    # launches (bunny: n // 32 measured 5-7 % less build time than n // 256) while ~32-64
    # subtrees still balance across the CPU threads
    return max(64, n // 32)


def build_sah(lo, hi, leaf_max: int, dfs_layout: bool = True, subtree_max: int | None = None,
              arch: str = "cpu", all_axes_min: int | None = None,
              small_max: int | None = None, triangles=None) -> SAHTree:
    """Build over float32 contiguous boxes lo, hi (N, 3), N >= 1 (call under the runtime lock).
    ``subtree_max``: see the module docstring (default :func:`default_subtree_max`);
    ``all_axes_min``, ``small_max``: defaults :data:`ALL_AXES_MIN`, :data:`SMALL`.
    ``triangles``: optional ``(vertices (V, 3) float32, faces (N, 3) int32, tri (N, 9))``;
    ``tri[slot]`` is then filled with the raw vertices of the face in each slot."""
    if all_axes_min is None:
        all_axes_min = ALL_AXES_MIN
    if small_max is None:
        small_max = SMALL
    n = lo.shape[0]
    dev = lo.device
    m = 2 * n - 1
    if subtree_max is None:
        subtree_max = default_subtree_max(n, arch)
    subtree_max = max(int(subtree_max), int(leaf_max))
    i32 = dict(dtype=torch.int32, device=dev)
    perm = torch.empty(n, **i32)
    node_i = torch.empty((m, 8), **i32)
    node_lo = torch.empty((m, 3), dtype=torch.float32, device=dev)
    node_hi = torch.empty((m, 3), dtype=torch.float32, device=dev)
    cb = torch.empty((m, 6), dtype=torch.float32, device=dev)
    rows = torch.empty((2, n, 8), dtype=torch.float32, device=dev)
    deferred = torch.empty(max(n // max(leaf_max, 1) + 1, 1), **i32)
    # state: next level end, lowest reserved id, deferred count, max subtree depth
    state = torch.tensor([1, m, 0, 0], **i32)
    if triangles is None:
        dummy_f = torch.zeros((1, 3), dtype=torch.float32, device=dev)
        tri_args = (dummy_f, torch.zeros((1, 3), **i32),
                    torch.zeros((1, 9), dtype=torch.float32, device=dev), False)
    else:
        tri_args = (*triangles, True)
    flat = [t.view(-1) for t in (rows, node_i, node_lo, node_hi, cb)]
    rows_f, node_i_f, node_lo_f, node_hi_f, cb_f = flat
    part = torch.empty(_CHUNKS * 12, dtype=torch.float32, device=dev)
    _sah_init(lo.view(-1), hi.view(-1), rows_f, node_i_f, node_lo_f, node_hi_f, cb_f, part)
    level_off = [0, 1]
    depth = 0
    while level_off[-1] > level_off[-2]:
        first, last = level_off[-2], level_off[-1]
        _sah_level(rows_f, perm, node_i_f, node_lo_f, node_hi_f, cb_f, first, last, leaf_max,
                   subtree_max, int(depth >= MEDIAN_DEPTH), int(all_axes_min), int(small_max),
                   state, deferred, *tri_args)
        level_off.append(int(state[0]))
        depth += 1
    level_off.pop()  # the last level added no nodes
    top_depth = len(level_off) - 2
    num_deferred = int(state[2])
    deferred = deferred[:num_deferred]
    sub_depth = 0
    if num_deferred:
        _sah_subtrees(rows_f, perm, node_i_f, node_lo_f, node_hi_f, cb_f, deferred,
                      num_deferred, top_depth, leaf_max, int(all_axes_min), int(small_max),
                      state, *tri_args)
        sub_depth = int(state[3])
    row_of, n_internal = _depth_first_rows(node_i, level_off, dfs_layout)
    packed = torch.zeros((max(n_internal, 1), 16), dtype=torch.float32, device=dev)
    tree = SAHTree(perm, node_i, node_lo, node_hi, level_off, deferred,
                   max(top_depth, sub_depth), packed, 0, row_of)
    _pack(tree)
    return tree


def _depth_first_rows(node_i, level_off, dfs_layout=True):
    """Row of each internal node in the packed array: depth-first order (left subtree first),
    so that a node's near descendants are near it in memory (``dfs_layout=False``: id order).
    Others get -1. Returns (row_of (M,) int32, number of internal nodes)."""
    m = node_i.shape[0]
    i32 = dict(dtype=torch.int32, device=node_i.device)
    row_of = torch.full((m,), -1, **i32)
    count = torch.zeros(1, **i32)
    _dfs_rows(node_i.view(-1), row_of, count)
    if not dfs_layout:
        internal = row_of >= 0
        row = torch.cumsum(internal.to(torch.int32), 0, dtype=torch.int32) - 1
        row_of = torch.where(internal, row, -1).to(torch.int32).contiguous()
    return row_of, int(count[0])


def _pack(tree: SAHTree) -> None:
    _sah_pack(tree.node_lo.view(-1), tree.node_hi.view(-1), tree.node_i.view(-1), tree.row_of,
              tree.packed.view(-1))
    root_is_leaf = int(tree.node_i[0, _C0]) < 0
    tree.root_code = -1 - (int(tree.node_i[0, _COUNT]) - 1) if root_is_leaf else 0
