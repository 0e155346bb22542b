"""Binned-SAH BVH (Taichi kernels) used for the triangle closest-hit traversal.

Built top-down, one level at a time: every node of the current level is handled by one thread
that (1) computes its box and centroid bounds, (2) bins its primitives' centroids into
:data:`BINS` bins on each axis and evaluates the surface area heuristic for the ``BINS - 1``
planes of each axis, (3) either becomes a leaf or partitions its primitive range in place
(two-pointer partition of ``perm``). Node ids are assigned level by level (a serial kernel),
so the layout is deterministic and the nodes of one level are contiguous, which makes refit a
simple deepest-level-first sweep (no atomics).

Split choice: the plane minimising ``area(L) * n(L) + area(R) * n(R)`` over the ``BINS - 1``
planes of each axis. A node becomes a leaf exactly when it holds <= ``leaf_max`` primitives
(SAH leaf-vs-split decisions on such small nodes cost more build time than they saved
traversal time). When all centroids fall into one bin on every axis (e.g. duplicates), or from
depth :data:`MEDIAN_DEPTH` on, the range is split at its middle (object median by position),
which bounds the depth by ``MEDIAN_DEPTH + log2(N) <= 63`` for N < 2^31, so the 64-entry
traversal stack of :mod:`shaders.bvh_traverse` cannot overflow.

Output is the packed layout of ``bvh_build._pack_nodes`` (both child boxes in the parent, leaf
codes with slot ranges), with slots in ``perm`` order and the internal nodes stored in
depth-first order (left subtree first), which measured a few percent faster than level order.

Cost (this 2-core CPU, 100k triangles): ~0.15-0.25 s CPU, about 3-5x the LBVH build (one node per
thread, so the top levels are serial). Binning all three axes in one pass over the primitives
(3x fewer reads) measured ~2.5x *slower*: Taichi handles the 3x larger local bin arrays badly.
Refit: ~10 ms.
"""
import taichi as ti
import torch

from .bvh_build import leaf_code

BINS = 8
MEDIAN_DEPTH = 32


@ti.func
def _area(lo, hi) -> ti.f32:
    e = ti.max(hi - lo, 0.0)
    return e[0] * e[1] + e[1] * e[2] + e[0] * e[2]


@ti.kernel
def _sah_level(lo: ti.types.ndarray(), hi: ti.types.ndarray(), perm: ti.types.ndarray(),
               nstart: ti.types.ndarray(), ncount: ti.types.ndarray(),
               node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
               split_at: ti.types.ndarray(), first: ti.i32, last: ti.i32, leaf_max: ti.i32,
               force_median: ti.i32):
    """Process nodes ``first .. last-1``: box, split decision, partition.

    ``split_at[node]`` = the position where the right child's range starts, or -1 for a leaf.
    """
    for node in range(first, last):
        s0 = nstart[node]
        cnt = ncount[node]
        blo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        bhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        clo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        chi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        for p in range(s0, s0 + cnt):
            q = perm[p]
            a = ti.Vector([lo[q, 0], lo[q, 1], lo[q, 2]], dt=ti.f32)
            b = ti.Vector([hi[q, 0], hi[q, 1], hi[q, 2]], dt=ti.f32)
            blo = ti.min(blo, a)
            bhi = ti.max(bhi, b)
            c = 0.5 * (a + b)
            clo = ti.min(clo, c)
            chi = ti.max(chi, c)
        for k in ti.static(range(3)):
            node_lo[node, k] = blo[k]
            node_hi[node, k] = bhi[k]
        split = -1
        if cnt > leaf_max:
            best_cost = 3e38
            best_axis = -1
            best_bin = 0
            if force_median == 0:
                for axis in ti.static(range(3)):
                    ext = chi[axis] - clo[axis]
                    if ext > 1e-30:  # BINS / ext stays finite
                        scale = BINS / ext
                        bcnt = ti.Vector.zero(ti.i32, BINS)
                        bl = ti.Matrix([[3e38] * 3] * BINS, dt=ti.f32)
                        bh = ti.Matrix([[-3e38] * 3] * BINS, dt=ti.f32)
                        for p in range(s0, s0 + cnt):
                            q = perm[p]
                            c = 0.5 * (lo[q, axis] + hi[q, axis])
                            bi = ti.cast((c - clo[axis]) * scale, ti.i32)
                            bi = ti.max(ti.min(bi, BINS - 1), 0)
                            bcnt[bi] += 1
                            for k in ti.static(range(3)):
                                bl[bi, k] = ti.min(bl[bi, k], lo[q, k])
                                bh[bi, k] = ti.max(bh[bi, k], hi[q, k])
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
                                    best_axis = axis
                                    best_bin = bidx
            if best_axis < 0:
                # all centroids in one bin on every axis (duplicates), or a deep level: object
                # median by position
                split = s0 + cnt // 2
            else:
                axis = best_axis
                ext = chi[axis] - clo[axis]
                scale = BINS / ext
                i = s0
                j = s0 + cnt - 1
                while i <= j:
                    qi = perm[i]
                    ci = 0.5 * (lo[qi, axis] + hi[qi, axis])
                    bi = ti.max(ti.min(ti.cast((ci - clo[axis]) * scale, ti.i32), BINS - 1), 0)
                    if bi <= best_bin:
                        i += 1
                    else:
                        perm[i] = perm[j]
                        perm[j] = qi
                        j -= 1
                split = i
                if split == s0 or split == s0 + cnt:
                    split = s0 + cnt // 2  # cannot happen (binning and partition agree); safety
        split_at[node] = split


@ti.kernel
def _sah_children(split_at: ti.types.ndarray(), nstart: ti.types.ndarray(),
                  ncount: ti.types.ndarray(), children: ti.types.ndarray(), first: ti.i32,
                  last: ti.i32, next_off: ti.types.ndarray()):
    """Serially give the split nodes of ``first .. last-1`` their two children (ids from
    ``last`` on, in node order, so the layout is deterministic); next_off[0] = next free id.
    (Serial and in Taichi on purpose: the same bookkeeping as torch ops per level cost ~1 s of
    CPU in OpenMP spinning on this shared 2-core machine.)"""
    for _ in range(1):  # one thread; the inner loop is sequential
        nxt = last
        for node in range(first, last):
            sp = split_at[node]
            if sp >= 0:
                s0 = nstart[node]
                children[node, 0] = nxt
                children[node, 1] = nxt + 1
                nstart[nxt] = s0
                ncount[nxt] = sp - s0
                nstart[nxt + 1] = sp
                ncount[nxt + 1] = s0 + ncount[node] - sp
                nxt += 2
        next_off[0] = nxt


@ti.kernel
def _dfs_rows(children: ti.types.ndarray(), row_of: ti.types.ndarray(),
              stack: ti.types.ndarray(), count: ti.types.ndarray()):
    """Serial depth-first walk from the root (left subtree first): row_of[node] = rank of
    each internal node in that order (leaves keep -1); count[0] = number of internal nodes.
    ``stack`` needs depth + 2 entries."""
    for _ in range(1):
        sp = 1
        stack[0] = 0
        r = 0
        while sp > 0:
            sp -= 1
            node = stack[sp]
            if children[node, 0] >= 0:
                row_of[node] = r
                r += 1
                stack[sp] = children[node, 1]
                stack[sp + 1] = children[node, 0]
                sp += 2
        count[0] = r


@ti.kernel
def _sah_refit_level(lo: ti.types.ndarray(), hi: ti.types.ndarray(), perm: ti.types.ndarray(),
                     nstart: ti.types.ndarray(), ncount: ti.types.ndarray(),
                     children: ti.types.ndarray(), node_lo: ti.types.ndarray(),
                     node_hi: ti.types.ndarray(), first: ti.i32, last: ti.i32):
    """Boxes of nodes ``first .. last-1`` from their primitives (leaves) or children."""
    for node in range(first, last):
        blo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
        bhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
        c0 = children[node, 0]
        if c0 < 0:
            s0 = nstart[node]
            for p in range(s0, s0 + ncount[node]):
                q = perm[p]
                for k in ti.static(range(3)):
                    blo[k] = ti.min(blo[k], lo[q, k])
                    bhi[k] = ti.max(bhi[k], hi[q, k])
        else:
            c1 = children[node, 1]
            for k in ti.static(range(3)):
                blo[k] = ti.min(node_lo[c0, k], node_lo[c1, k])
                bhi[k] = ti.max(node_hi[c0, k], node_hi[c1, k])
        for k in ti.static(range(3)):
            node_lo[node, k] = blo[k]
            node_hi[node, k] = bhi[k]


@ti.kernel
def _sah_pack(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
              children: ti.types.ndarray(), nstart: ti.types.ndarray(),
              ncount: ti.types.ndarray(), row_of: ti.types.ndarray(), num_nodes: ti.i32,
              packed: ti.types.ndarray()):
    """Packed rows (see ``bvh_build._pack_nodes``) for the internal nodes among the first
    ``num_nodes``: node ``i`` goes to row ``row_of[i]`` (depth-first order of the internal
    nodes); leaf children become leaf codes over their slot range."""
    for i in range(num_nodes):
        if children[i, 0] >= 0:
            row = row_of[i]
            for c in ti.static(range(2)):
                child = children[i, c]
                code = 0
                if children[child, 0] < 0:
                    code = leaf_code(nstart[child], ncount[child])
                else:
                    code = row_of[child]
                for k in ti.static(range(3)):
                    packed[row, 6 * c + k] = node_lo[child, k]
                    packed[row, 6 * c + 3 + k] = node_hi[child, k]
                packed[row, 12 + c] = ti.bit_cast(code, ti.f32)
            packed[row, 14] = 0.0
            packed[row, 15] = 0.0


class SAHTree:
    """A binned-SAH tree in packed form (see the module docstring).

    Attributes: ``perm`` (N,) int32 primitive index per slot; ``nstart, ncount`` (M,) int32 slot
    range per node; ``children`` (M, 2) int32 (-1, -1 for leaves); ``node_lo, node_hi`` (M, 3);
    ``level_off`` list of node-id offsets per level (level L = ids level_off[L]..level_off[L+1]-1);
    ``packed`` (max(M, 1), 16) float32; ``root_code`` (0, or a leaf code when the root is a leaf).
    """

    def __init__(self, perm, nstart, ncount, children, node_lo, node_hi, level_off, packed,
                 root_code, row_of=None):
        self.perm, self.nstart, self.ncount, self.children = perm, nstart, ncount, children
        self.node_lo, self.node_hi, self.level_off = node_lo, node_hi, level_off
        self.packed, self.root_code, self.row_of = packed, root_code, row_of

    @property
    def num_nodes(self) -> int:
        return self.level_off[-1]

    @property
    def depth(self) -> int:
        return len(self.level_off) - 2


def build_sah(lo, hi, leaf_max: int, dfs_layout: bool = True) -> SAHTree:
    """Build over float32 contiguous boxes lo, hi (N, 3), N >= 1 (call under the runtime lock)."""
    n = lo.shape[0]
    dev = lo.device
    m = 2 * n - 1
    i32 = dict(dtype=torch.int32, device=dev)
    perm = torch.arange(n, **i32)
    nstart = torch.zeros(m, **i32)
    ncount = torch.zeros(m, **i32)
    ncount[0] = n
    children = torch.full((m, 2), -1, **i32)
    node_lo = torch.empty((m, 3), dtype=torch.float32, device=dev)
    node_hi = torch.empty((m, 3), dtype=torch.float32, device=dev)
    split_at = torch.full((m,), -1, **i32)
    level_off = [0, 1]
    depth = 0
    next_off = torch.zeros(1, **i32)
    while level_off[-1] > level_off[-2]:
        first, last = level_off[-2], level_off[-1]
        _sah_level(lo, hi, perm, nstart, ncount, node_lo, node_hi, split_at, first, last,
                   leaf_max, int(depth >= MEDIAN_DEPTH))
        _sah_children(split_at, nstart, ncount, children, first, last, next_off)
        level_off.append(int(next_off[0]))
        depth += 1
    level_off.pop()  # the last level added no nodes
    num = level_off[-1]
    row_of, n_internal = _depth_first_rows(children[:num], level_off, dfs_layout)
    packed = torch.zeros((max(n_internal, 1), 16), dtype=torch.float32, device=dev)
    tree = SAHTree(perm, nstart, ncount, children, node_lo, node_hi, level_off, packed, 0,
                   row_of)
    _pack(tree)
    return tree


def _depth_first_rows(children, level_off, dfs_layout=True):
    """Row of each internal node in the packed array: depth-first order (left subtree first),
    so that a node's near descendants are near it in memory (``dfs_layout=False``: level
    order). Leaves get -1. Returns (row_of (M,) int32, number of internal nodes)."""
    m = children.shape[0]
    i32 = dict(dtype=torch.int32, device=children.device)
    if not dfs_layout:
        internal = children[:, 0] >= 0
        row = torch.cumsum(internal.to(torch.int32), 0, dtype=torch.int32) - 1
        return torch.where(internal, row, -1).to(torch.int32).contiguous(), int(internal.sum())
    row_of = torch.full((m,), -1, **i32)
    count = torch.zeros(1, **i32)
    stack = torch.zeros(len(level_off) + 2, **i32)
    _dfs_rows(children.contiguous(), row_of, stack, count)
    return row_of, int(count[0])


def _pack(tree: SAHTree) -> None:
    _sah_pack(tree.node_lo, tree.node_hi, tree.children, tree.nstart, tree.ncount,
              tree.row_of, tree.num_nodes, tree.packed)
    root_is_leaf = int(tree.children[0, 0]) < 0
    tree.root_code = -1 - (int(tree.ncount[0]) - 1) if root_is_leaf else 0


def refit_sah(tree: SAHTree, lo, hi) -> None:
    """New primitive boxes, same topology and slots (call under the runtime lock)."""
    off = tree.level_off
    for level in range(len(off) - 2, -1, -1):
        _sah_refit_level(lo, hi, tree.perm, tree.nstart, tree.ncount, tree.children,
                         tree.node_lo, tree.node_hi, off[level], off[level + 1])
    _pack(tree)
