"""Refit and cost of the binned-SAH trees of :mod:`shaders.bvh_sah` (Taichi kernels + torch).

:func:`refit_sah` gives a built tree new primitive boxes with the same topology (the deferred
subtrees in reverse pre-order, then the top levels bottom-up); :func:`sah_cost` scores a packed
traversal tree of either builder independently of the machine.
"""
import taichi as ti
import torch

from .bvh_build import packed_child_boxes
from .bvh_sah import _C0, _C1, _COUNT, _DEFER, _KIND, _NLEFT, _BIN, _START, SAHTree, _pack


@ti.func
def _refit_node(lo: ti.template(), hi: ti.template(), perm: ti.template(),
                node_i: ti.template(), node_lo: ti.template(), node_hi: ti.template(),
                node: ti.i32):
    blo = ti.Vector([3e38, 3e38, 3e38], dt=ti.f32)
    bhi = ti.Vector([-3e38, -3e38, -3e38], dt=ti.f32)
    c0 = node_i[node * 8 + _C0]
    if c0 < 0:
        s0 = node_i[node * 8 + _START]
        for p in range(s0, s0 + node_i[node * 8 + _COUNT]):
            q = perm[p]
            for k in ti.static(range(3)):
                blo[k] = ti.min(blo[k], lo[q * 3 + k])
                bhi[k] = ti.max(bhi[k], hi[q * 3 + k])
    else:
        c1 = node_i[node * 8 + _C1]
        for k in ti.static(range(3)):
            blo[k] = ti.min(node_lo[c0 * 3 + k], node_lo[c1 * 3 + k])
            bhi[k] = ti.max(node_hi[c0 * 3 + k], node_hi[c1 * 3 + k])
    for k in ti.static(range(3)):
        node_lo[node * 3 + k] = blo[k]
        node_hi[node * 3 + k] = bhi[k]


@ti.kernel
def _sah_refit_subtrees(lo: ti.types.ndarray(), hi: ti.types.ndarray(),
                        perm: ti.types.ndarray(), node_i: ti.types.ndarray(),
                        node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                        deferred: ti.types.ndarray(), num_deferred: ti.i32):
    """Boxes of the subtree phase's nodes: each subtree in reverse (pre)order, then its root."""
    for i in range(num_deferred):
        root = deferred[i]
        base = node_i[root * 8 + _BIN]
        used = node_i[root * 8 + _NLEFT]
        for j in range(used):
            _refit_node(lo, hi, perm, node_i, node_lo, node_hi, base + used - 1 - j)
        _refit_node(lo, hi, perm, node_i, node_lo, node_hi, root)


@ti.kernel
def _sah_refit_level(lo: ti.types.ndarray(), hi: ti.types.ndarray(), perm: ti.types.ndarray(),
                     node_i: ti.types.ndarray(), node_lo: ti.types.ndarray(),
                     node_hi: ti.types.ndarray(), first: ti.i32, last: ti.i32):
    """Boxes of top nodes ``first .. last-1`` from their primitives (leaves) or children."""
    for node in range(first, last):
        if node_i[node * 8 + _KIND] != _DEFER:  # subtree roots: done by _sah_refit_subtrees
            _refit_node(lo, hi, perm, node_i, node_lo, node_hi, node)


def refit_sah(tree: SAHTree, lo, hi) -> None:
    """New primitive boxes, same topology and slots (call under the runtime lock)."""
    args = (lo.view(-1), hi.view(-1), tree.perm, tree.node_i.view(-1), tree.node_lo.view(-1),
            tree.node_hi.view(-1))
    if tree.deferred.shape[0]:
        _sah_refit_subtrees(*args, tree.deferred, tree.deferred.shape[0])
    off = tree.level_off
    for level in range(len(off) - 2, -1, -1):
        _sah_refit_level(*args, off[level], off[level + 1])
    _pack(tree)


def sah_cost(packed, root_lo, root_hi, root_code: int, c_trav: float = 1.0,
             c_isect: float = 1.0) -> float:
    """Surface-area-heuristic cost of a packed traversal tree (either builder): ``(c_trav *
    sum of internal node areas + c_isect * sum of leaf area * leaf size) / root area``, the
    expected number of node visits and triangle tests of a random ray that hits the root box.
    Lower is better; it measures tree quality independently of the machine."""
    def area(lo, hi):
        e = (hi - lo).clamp_min(0).double()
        return e[..., 0] * e[..., 1] + e[..., 1] * e[..., 2] + e[..., 0] * e[..., 2]

    root = float(area(root_lo[0], root_hi[0]))
    if root <= 0.0:
        return float("nan")
    if root_code < 0:
        return c_isect * ((-1 - root_code) % 8 + 1)
    p = packed.detach().cpu()
    codes = p[:, 12:14].contiguous().view(torch.int32).long()
    total = c_trav * root
    rows = torch.zeros(1, dtype=torch.long)  # walk from the root: rows of (only) this tree
    while rows.numel():
        nxt = []
        for c in range(2):
            a = area(*packed_child_boxes(p[rows], c))
            code = codes[rows, c]
            leaf = code < 0
            size = ((-1 - code) & 7) + 1
            total += float((a * torch.where(leaf, c_isect * size.double(),
                                            torch.full_like(a, c_trav))).sum())
            nxt.append(code[~leaf])
        rows = torch.cat(nxt)
    return total / root
