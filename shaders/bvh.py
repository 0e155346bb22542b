"""Bounding volume hierarchy built and traversed by Taichi kernels.

A linear BVH (LBVH, Karras 2012) over (a) arbitrary axis-aligned boxes and (b) triangles, with
refit (new boxes, same topology) and two traversals:

* :func:`closest_hit` -- nearest triangle along each ray: ``t``, face id, barycentrics ``(u, v)``
  with hit point ``(1-u-v) v0 + u v1 + v v2``.
* :func:`segment_query` -- every primitive whose box a ray segment ``o + t d, t in [t0, t1]``
  overlaps (what Gaussian ray casting needs per slab); the same query is available inside other
  Taichi kernels as :func:`bvh_segment_collect`.

Layout (the contract other modules rely on): ``2N-1`` nodes, internal nodes ``0..N-2`` with
node 0 the root, leaves ``N-1..2N-2`` (one primitive each, in Morton order);
``children[i] = (left, right)`` for internal nodes and ``(-1, primitive index)`` for leaves;
``parent[root] = -1``. When ``N == 1`` node 0 is the single leaf.

Build details, the depth bound (<= 63, so 64-entry traversal stacks never overflow) and the
atomic-counter bottom-up box pass: :mod:`shaders.bvh_build`. Slab/triangle epsilons:
:mod:`shaders.bvh_traverse`. Pure-torch references: :mod:`shaders.bvh_ref`.

The sort step uses ``torch.sort`` (stable), everything else is Taichi kernels. All node data is
float32; inputs of other float dtypes are converted.

Which tree for which query (picked by measurement)
--------------------------------------------------
* AABB primitives (Gaussians): the LBVH itself. Its build is fast and fully parallel, refit is
  one bottom-up pass, and its depth bound is guaranteed, which ``bvh_segment_collect`` (usable
  inside any kernel, with a fixed stack) relies on.
* Triangles: the contract LBVH is built too, but :func:`closest_hit` traverses a second, packed
  tree (both child boxes stored in the parent node, 64 bytes; leaves of up to ``leaf_size``
  faces as slot ranges of a face-ordered triangle array). Two such trees are available:
  ``builder="sah"`` (binned SAH, :mod:`shaders.bvh_sah`, default) and ``builder="lbvh"`` (the
  LBVH collapsed to multi-face leaves). Measured on this 2-core CPU (process CPU time, best of
  5, 1M orbit rays, ratio to Embree via open3d in the same process; machine heavily shared):

  ================================  ==========  ==========
  traversal variant                 bunny 69k   armadillo
  ================================  ==========  ==========
  LBVH, separate lo/hi/children     3.0x        3.4x       (wall-clock ratio)
  LBVH packed, leaf 1               1.86x       2.18x
  LBVH packed, leaf 2 / 4 / 8       1.82-1.91x  2.13-2.31x
  SAH (16 bins) packed, leaf 4      1.71x       1.85x
  SAH (8 bins) packed, leaf 4       1.63x       1.84x
  same, BFS rows (one run)          1.85x       1.92x
  same, depth-first rows            1.82x       1.82x
  ================================  ==========  ==========

  (Ratios move by +-0.1 between runs: the 2 cores are shared with other jobs; compare rows
  measured in the same run only. tools/bench_bvh.py reports wall and CPU ratios.)

  Node layout (since issue 19 part 3): the two child boxes are stored per axis as
  ``(lo0, lo1, hi0, hi1)`` (:data:`shaders.bvh_build.PACKED_LO`) and the slab test takes the
  near/far plane pair of each axis by the sign of the ray direction. Both children's entry
  and exit distances are then 2-wide loads and multiply-subtracts (LLVM vectorises them), and
  the six per-axis min/max of plane distances are gone (Taichi's fast math keeps NaN
  semantics, so each float min/max costs three instructions on x86). Same hits bit for bit;
  trace CPU time ratio to Embree in one run (1M rays, load ~2): bunny 1.78x -> 1.56x,
  armadillo 1.81x -> 1.58x (the min/max version with children stored one after the other).
  Then the slab distances are compared as int32 bits when ``tmin >= +0`` (exact there, see
  ``shaders.bvh_traverse._int_order_note``; a negative ``tmin`` uses the float path): integer
  min/max are one instruction each, another ~7 % (CPU time ratio 1.50x -> 1.40x bunny, 1.57x
  -> 1.46x armadillo, 1M rays, same run, load ~14).
  Measured on top of it and rejected (250k rays, 3-7 repeats, 2 cores under load ~20, CPU
  time): ``ti.select`` instead of ``ti.min/max`` (+5 %: LLVM vectorises the selects into
  compare + blend, not min/max), a branch-free child order (+3 %; both-hit/one-hit selects
  +15 %), the far child's entry distance on a second stack to skip it on pop (+17 %, and
  +30 % as a pop loop), u, v recomputed once after traversal instead of at each closer hit
  (within noise), far-plane index recomputed as ``near ^ 2`` (within noise), vertex
  components loaded at the ray's permuted offsets instead of a dynamically indexed local
  vector (within noise), flat 1-D origin/direction/uv arrays (-1 %, within noise), a float32
  triangle test (-3 %, but not watertight). Per-ray set-up (reciprocals, shear, root box) is
  ~7 % of the trace time; per ray 8.7 internal nodes (25 for rays that hit) and 1.3 triangle
  tests (bunny).

  Also measured and rejected: storing the far child's entry distance on the stack to skip it
  on pop (~1.4x slower in Taichi's CPU code), a branch-free push (1.2x slower), sign-selected
  near/far planes (within noise), ``block_dim`` 64..4096 (within noise). Leaf size matters
  little: SAH leaf 2 / 3 / 4 / 6 measured 1.65 / 1.66 / 1.78 / 1.79x (bunny) and 1.85 / 1.83 /
  1.89 / 2.02x (armadillo) in one run; 3 is the default.

  The kernels index 1-D ndarrays (flat views, or (n, 3) tensors passed as arrays of vectors):
  in Taichi 1.7 on the CPU a 2-D ndarray load ``a[i, k]`` measured ~3x slower than ``a[3*i+k]``
  (a serial copy of 69k rows: 1.23 vs 0.44 ms); closest hit got ~5 % faster from it.
  Also measured and rejected: a 4-wide tree (the SAH tree collapsed, even levels kept; four
  child boxes per node in SoA order, hit children sorted by a 5-comparator network or only the
  nearest first): identical hits but 1.5x *slower* than the binary traversal (bunny 2.38x /
  armadillo 2.44x Embree's CPU time vs 1.56x / 1.73x in the same run).

Build cost (``builder="sah"``)
------------------------------
:func:`build_triangle_bvh` builds only what :func:`closest_hit` needs: face boxes, the binned-SAH
tree (:mod:`shaders.bvh_sah`: per-level top phase, then one thread per subtree; out-of-place
partitions over contiguous rows; large nodes choose their split from a strided sample, nodes of
<= 16 faces split at the spatial median) and the per-slot triangles. The contract LBVH
(``.bvh``) is built on first access. Profile of the old builder (bunny, 69k faces, ~88 ms):
SAH 76 ms (one serial kernel launch pair per level; every pass gathered ``lo[perm[p], k]``
through a permutation with 2-D loads, bounds recomputed in a separate pass), contract LBVH
10 ms (unused by closest hit), the rest < 5 ms. Measured against Embree: tools/bench_bvh.py,
results in tools/results/bench_bvh.json and the README.

  The rows above used Moller-Trumbore. The watertight triangle test (:mod:`shaders.bvh_traverse`)
  that replaced it costs about 10 %: in one session, each run of tools/bench_bvh.py beside Embree,
  median cast-time ratio 1.79x / 1.77x with Moller-Trumbore and 1.95x / 1.98x watertight (bunny /
  armadillo), while rays whose face differs from Embree's fell from 11 / 9 to 5 / 5 in a million.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import runtime
from .bvh_traverse import bvh_segment_collect  # noqa: F401  (public, used inside other kernels)
from .bvh_build import STACK_SIZE  # noqa: F401

__all__ = [
    "BVH", "TriangleBVH", "build_aabb_bvh", "refit_aabb_bvh", "build_triangle_bvh",
    "refit_triangle_bvh", "closest_hit", "closest_hits", "segment_query", "bvh_segment_collect", "STACK_SIZE",
    "morton_order",
]

#: Default largest leaf of the packed triangle layout (picked by measurement, see above).
DEFAULT_LEAF_SIZE = 3

_F32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class BVH:
    """An LBVH over N primitives (see the module docstring for the node layout).

    Attributes:
        node_lo, node_hi: (2N-1, 3) float32 node box min / max.
        children: (2N-1, 2) int32, ``(left, right)`` or ``(-1, prim)`` for leaves.
        parent: (2N-1,) int32, -1 for the root.
        num_prims: N.
        order: (N,) int32, primitive index of the leaf at sorted position ``i`` (leaf node
            ``N-1+i``), i.e. ``children[N-1:, 1]``.
        span: (max(N-1, 1), 2) int32, first and last sorted position covered by internal node
            ``i`` (a subtree's leaves are a contiguous range of the Morton order).
    """

    node_lo: torch.Tensor
    node_hi: torch.Tensor
    children: torch.Tensor
    parent: torch.Tensor
    num_prims: int
    order: torch.Tensor
    span: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return 2 * self.num_prims - 1


@dataclass
class TriangleBVH:
    """The traversal tree of a triangle mesh plus the contract LBVH over its faces.

    Attributes:
        bvh: the LBVH over the face boxes (primitive index = face index): the contract layout.
            With ``builder="sah"`` nothing needs it for closest hits, so it is built on first
            access (from the current vertices) and refitted from then on.
        vertices: (V, 3) float32 vertices of the latest build/refit (the input itself when it
            already was contiguous float32: do not modify it in place without a refit).
        faces: (F, 3) int32 faces.
        builder: "sah" (default: binned SAH, :mod:`shaders.bvh_sah`) or "lbvh" (the LBVH above,
            collapsed): the tree that :func:`closest_hit` traverses.
        leaf_size: largest leaf of the traversal tree (1..8 faces).
        slot_face: (F,) int32 face index of each traversal slot.
        tri: (F, 9) float32 ``(v0, v1, v2)`` per slot.
        packed: (M, 16) float32 traversal nodes: both child boxes in the parent and leaves as
            slot ranges (``bvh_build._pack_nodes`` describes the format).
        root_lo, root_hi: tensors whose row 0 is the traversal root's box.
        root_code: child code of the root (0, or a leaf code when the root is a leaf).
        sah: the :class:`shaders.bvh_sah.SAHTree` when ``builder == "sah"`` (for refit).
    """

    lbvh_: BVH | None
    vertices: torch.Tensor
    faces: torch.Tensor
    builder: str
    leaf_size: int
    slot_face: torch.Tensor
    tri: torch.Tensor
    packed: torch.Tensor
    root_lo: torch.Tensor
    root_hi: torch.Tensor
    root_code: int
    sah: object = None

    @property
    def bvh(self) -> BVH:
        if self.lbvh_ is None:
            from .bvh_build import _triangle_boxes

            lo, hi = _face_boxes(self.vertices, self.faces, _triangle_boxes)
            self.lbvh_ = build_aabb_bvh(lo, hi)
        return self.lbvh_

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]


def _face_boxes(v, f, kernel):
    nf = f.shape[0]
    lo = torch.empty((nf, 3), dtype=torch.float32, device=v.device)
    hi = torch.empty_like(lo)
    with runtime.runtime_lock:
        kernel(v, f, lo, hi)
    return lo, hi


def _as_boxes(lo, hi, what="lo/hi"):
    dev = runtime.torch_device()
    lo = torch.as_tensor(lo)
    hi = torch.as_tensor(hi)
    if lo.ndim != 2 or lo.shape[1] != 3 or lo.shape != hi.shape:
        raise ValueError(f"{what}: expected two (N, 3) tensors, got {tuple(lo.shape)} and "
                         f"{tuple(hi.shape)}")
    if lo.shape[0] == 0:
        raise ValueError(f"{what}: cannot build a BVH over zero primitives")
    lo = lo.to(dev, torch.float32).contiguous()
    hi = hi.to(dev, torch.float32).contiguous()
    # one reduction pass each (max propagates NaN); cheaper than a full isfinite mask
    if not bool(torch.isfinite(torch.stack([lo.abs().max(), hi.abs().max()])).all()):
        raise ValueError(f"{what}: boxes must be finite")
    return lo, hi


def _partials(dev):
    from .bvh_build import _CHUNKS

    return torch.empty((_CHUNKS, 6), dtype=torch.float32, device=dev)


def _use_fence() -> bool:
    return runtime.arch_name() == "cuda"


def _bottom_up(bvh: BVH, lo, hi):
    """Node boxes from primitive boxes (build and refit)."""
    from .bvh_build import _bottom_up as k

    n = bvh.num_prims
    flags = torch.zeros(max(n - 1, 1), dtype=torch.int32, device=lo.device)
    k(lo, hi, bvh.children, bvh.parent, flags, bvh.node_lo, bvh.node_hi, _use_fence())



def build_aabb_bvh(lo, hi) -> BVH:
    """Build an LBVH over N boxes ``[lo[i], hi[i]]`` ((N, 3) each, N >= 1)."""
    from .bvh_build import _centroid_bounds, _karras_internal, _leaves, _morton_codes

    runtime.init()
    lo, hi = _as_boxes(lo, hi)
    n = lo.shape[0]
    dev = lo.device
    m = 2 * n - 1
    node_lo = torch.empty((m, 3), dtype=torch.float32, device=dev)
    node_hi = torch.empty((m, 3), dtype=torch.float32, device=dev)
    children = torch.empty((m, 2), dtype=torch.int32, device=dev)
    parent = torch.empty((m,), dtype=torch.int32, device=dev)
    span = torch.zeros((max(n - 1, 1), 2), dtype=torch.int32, device=dev)
    with runtime.runtime_lock:
        bounds = torch.tensor([[_F32_MAX] * 3, [-_F32_MAX] * 3], dtype=torch.float32, device=dev)
        _centroid_bounds(lo, hi, bounds, _partials(dev))
        codes = torch.empty((n,), dtype=torch.int32, device=dev)
        _morton_codes(lo, hi, bounds, codes)
        codes, order = torch.sort(codes, stable=True)
        order = order.to(torch.int32).contiguous()
        codes = codes.contiguous()
        _leaves(order, children, parent)
        if n > 1:
            _karras_internal(codes, children, parent, span)
        bvh = BVH(node_lo, node_hi, children, parent, n, order, span)
        _bottom_up(bvh, lo, hi)
    return bvh


def refit_aabb_bvh(bvh: BVH, lo, hi) -> None:
    """Recompute all node boxes of ``bvh`` in place for new primitive boxes (same N, same tree)."""
    runtime.init()
    lo, hi = _as_boxes(lo, hi)
    if lo.shape[0] != bvh.num_prims:
        raise ValueError(f"refit_aabb_bvh: lo/hi have {lo.shape[0]} boxes, the BVH was built "
                         f"over {bvh.num_prims}")
    with runtime.runtime_lock:
        _bottom_up(bvh, lo, hi)


def _as_mesh(vertices, faces=None):
    dev = runtime.torch_device()
    v = torch.as_tensor(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices: expected (V, 3), got {tuple(v.shape)}")
    v = v.to(dev, torch.float32).contiguous()
    if not bool(torch.isfinite(v.abs().max())):
        raise ValueError("vertices: must be finite")
    if faces is None:
        return v
    f = torch.as_tensor(faces)
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.is_floating_point:
        raise ValueError(f"faces: expected (F, 3) integers, got {tuple(f.shape)} {f.dtype}")
    if f.shape[0] == 0:
        raise ValueError("faces: cannot build a BVH over zero faces")
    if int(f.min()) < 0 or int(f.max()) >= v.shape[0]:
        raise ValueError(f"faces: indices must be in [0, {v.shape[0]}), got "
                         f"[{int(f.min())}, {int(f.max())}]")
    return v, f.to(dev, torch.int32).contiguous()


def _traversal_tree(tbvh: TriangleBVH, lo, hi, rebuild: bool) -> None:
    """(Re)build or refit the traversal tree of ``tbvh`` for face boxes lo, hi, then its
    triangle data. Call under the runtime lock."""
    from .bvh_build import _pack_nodes, _triangle_leaf_data
    from .bvh_sah import build_sah
    from .bvh_sah_refit import refit_sah

    n = tbvh.num_faces
    if tbvh.builder == "sah":
        if rebuild:  # the build also writes the per-slot triangles
            tbvh.sah = build_sah(lo, hi, tbvh.leaf_size, arch=runtime.arch_name(),
                                 triangles=(tbvh.vertices, tbvh.faces, tbvh.tri))
        else:
            refit_sah(tbvh.sah, lo, hi)
        t = tbvh.sah
        tbvh.slot_face, tbvh.packed, tbvh.root_code = t.perm, t.packed, t.root_code
        tbvh.root_lo, tbvh.root_hi = t.node_lo, t.node_hi
        if rebuild:
            return
    else:
        b = tbvh.bvh
        if rebuild:
            tbvh.packed = torch.zeros((max(n - 1, 1), 16), dtype=torch.float32, device=lo.device)
        if n > 1:
            _pack_nodes(b.node_lo, b.node_hi, b.children, b.span, tbvh.leaf_size, tbvh.packed)
        tbvh.root_code = -n if n <= tbvh.leaf_size else 0
        tbvh.slot_face, tbvh.root_lo, tbvh.root_hi = b.order, b.node_lo, b.node_hi
    _triangle_leaf_data(tbvh.vertices, tbvh.faces, tbvh.slot_face, tbvh.tri)


def build_triangle_bvh(vertices, faces, leaf_size: int = DEFAULT_LEAF_SIZE,
                       builder: str = "sah") -> TriangleBVH:
    """Build the BVHs of a mesh: vertices (V, 3) float, faces (F, 3) int.

    Always builds the contract LBVH (``.bvh``); :func:`closest_hit` traverses a second,
    packed tree: binned SAH (``builder="sah"``, the default: faster traversal, see the module
    docstring for the measurement) or the collapsed LBVH (``"lbvh"``). ``leaf_size`` (1..8):
    most faces per traversal leaf (the ``children`` contract keeps one face per leaf).
    """
    from .bvh_build import _triangle_boxes

    if not 1 <= int(leaf_size) <= 8:
        raise ValueError(f"build_triangle_bvh: leaf_size must be in 1..8, got {leaf_size}")
    if builder not in ("sah", "lbvh"):
        raise ValueError(f"build_triangle_bvh: builder must be 'sah' or 'lbvh', got {builder!r}")
    runtime.init()
    v, f = _as_mesh(vertices, faces)
    nf = f.shape[0]
    lo = torch.empty((nf, 3), dtype=torch.float32, device=v.device)
    hi = torch.empty_like(lo)
    tri = torch.empty((nf, 9), dtype=torch.float32, device=v.device)
    with runtime.runtime_lock:
        _triangle_boxes(v, f, lo, hi)
        # the contract LBVH: needed now only by the "lbvh" traversal tree (else built lazily)
        bvh = build_aabb_bvh(lo, hi) if builder == "lbvh" else None
        tbvh = TriangleBVH(bvh, v, f, builder, int(leaf_size), None, tri, None, None, None, 0)
        _traversal_tree(tbvh, lo, hi, rebuild=True)
    return tbvh


def refit_triangle_bvh(tbvh: TriangleBVH, vertices) -> None:
    """Move the mesh to new ``vertices`` (same V, same faces) and refit both trees in place."""
    from .bvh_build import _triangle_boxes

    runtime.init()
    v = _as_mesh(vertices)
    if v.shape[0] != tbvh.vertices.shape[0]:
        raise ValueError(f"refit_triangle_bvh: vertices has {v.shape[0]} rows, the mesh has "
                         f"{tbvh.vertices.shape[0]}")
    nf = tbvh.num_faces
    lo = torch.empty((nf, 3), dtype=torch.float32, device=v.device)
    hi = torch.empty_like(lo)
    with runtime.runtime_lock:
        _triangle_boxes(v, tbvh.faces, lo, hi)
        if tbvh.lbvh_ is not None:
            _bottom_up(tbvh.lbvh_, lo, hi)
        tbvh.vertices = v
        _traversal_tree(tbvh, lo, hi, rebuild=False)


def _home(x) -> torch.device:
    """The device query results go back to: the caller's (tensors), else the CPU. The BVH
    structures themselves live on the Taichi device (:func:`shaders.runtime.torch_device`)."""
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def _as_rays(origins, dirs):
    dev = runtime.torch_device()
    o = torch.as_tensor(origins)
    d = torch.as_tensor(dirs)
    if o.ndim != 2 or o.shape[1] != 3 or o.shape != d.shape:
        raise ValueError(f"origins/dirs: expected two (R, 3) tensors, got {tuple(o.shape)} and "
                         f"{tuple(d.shape)}")
    return o.to(dev, torch.float32).contiguous(), d.to(dev, torch.float32).contiguous()


def closest_hit(tbvh: TriangleBVH, origins, dirs, tmin: float = 0.0, tmax: float = math.inf):
    """Nearest hit of each ray ``o + t d`` (t in [tmin, tmax)) with the mesh of ``tbvh``.

    ``dirs`` need not be normalised (t is in units of ``|d|``). Returns ``t`` (R,) float32
    (inf on a miss), ``face`` (R,) int32 (-1 on a miss) and ``bary`` (R, 2) float32 ``(u, v)``
    (0 on a miss). Triangles are two-sided.
    """
    from .bvh_traverse import _closest_hit_kernel

    runtime.init()
    home = _home(origins)
    o, d = _as_rays(origins, dirs)
    r = o.shape[0]
    t = torch.empty((r,), dtype=torch.float32, device=o.device)
    face = torch.empty((r,), dtype=torch.int32, device=o.device)
    uv = torch.empty((r, 2), dtype=torch.float32, device=o.device)
    if r > 0:
        tmax_f = min(float(tmax), _F32_MAX)
        tmin_f = float(tmin) + 0.0  # -0.0 -> +0.0 (the int-ordered slab test needs tmin >= +0)
        with runtime.runtime_lock:
            _closest_hit_kernel(tbvh.root_lo.view(-1), tbvh.root_hi.view(-1),
                                tbvh.packed.view(-1), tbvh.root_code, tbvh.tri.view(-1),
                                tbvh.slot_face, o.view(-1), d.view(-1), tmin_f, tmax_f,
                                math.inf, t, face, uv.view(-1), tmin_f >= 0.0, 1, 0.0)
    return t.to(home), face.to(home), uv.to(home)


#: Most hits per ray :func:`closest_hits` gathers in one traversal (a compile-time size per K).
MAX_HITS = 32


def closest_hits(tbvh: TriangleBVH, origins, dirs, k: int, tmin: float = 0.0, tmax: float = math.inf,
                 dedup: float = 0.0):
    """The ``k`` nearest hits of each ray ``o + t d`` (t in [tmin, tmax)), front to back, from one
    traversal (the pruning bound is the k-th hit found so far).

    A hit within ``dedup`` (in units of ``|d|``) of one already kept is dropped: a ray through a
    shared edge or vertex can hit both triangles there, which would count one crossing of a
    closed surface twice. (Repeated :func:`closest_hit` queries from just past the previous hit
    drop the same hits; this is one traversal instead of ``k``.) Returns ``t`` (R, k) float32 (inf
    after the last hit), ``face`` (R, k) int32 (-1) and ``bary`` (R, k, 2) float32 (0).
    """
    from .bvh_traverse import _closest_hit_kernel

    k = int(k)
    if not 1 <= k <= MAX_HITS:
        raise ValueError(f"closest_hits: k must be in 1..{MAX_HITS}, got {k}")
    if not dedup >= 0.0:
        raise ValueError(f"closest_hits: dedup must be >= 0, got {dedup}")
    runtime.init()
    home = _home(origins)
    o, d = _as_rays(origins, dirs)
    r = o.shape[0]
    t = torch.empty((r, k), dtype=torch.float32, device=o.device)
    face = torch.empty((r, k), dtype=torch.int32, device=o.device)
    uv = torch.empty((r, k, 2), dtype=torch.float32, device=o.device)
    if r > 0:
        tmax_f = min(float(tmax), _F32_MAX)
        tmin_f = float(tmin) + 0.0
        with runtime.runtime_lock:
            _closest_hit_kernel(tbvh.root_lo.view(-1), tbvh.root_hi.view(-1),
                                tbvh.packed.view(-1), tbvh.root_code, tbvh.tri.view(-1),
                                tbvh.slot_face, o.view(-1), d.view(-1), tmin_f, tmax_f,
                                math.inf, t.view(-1), face.view(-1), uv.view(-1), tmin_f >= 0.0, k,
                                float(dedup))
    return t.to(home), face.to(home), uv.to(home)


def segment_query(bvh: BVH, origins, dirs, t0, t1, cap: int):
    """Primitives whose box each segment ``o + t d, t in [t0, t1]`` overlaps.

    origins, dirs: (R, 3); t0, t1: (R,) or scalars. Returns ``ids`` (R, cap) int32 (any order,
    -1 padded) and ``counts`` (R,) int32, the true count (may exceed ``cap``; then ``ids`` holds
    an arbitrary ``cap`` of them). Slab semantics: :mod:`shaders.bvh_traverse`.
    """
    from .bvh_traverse import _segment_query_kernel

    runtime.init()
    home = _home(origins)
    o, d = _as_rays(origins, dirs)
    r = o.shape[0]
    cap = int(cap)
    if cap < 0:
        raise ValueError(f"segment_query: cap must be >= 0, got {cap}")
    t0 = torch.as_tensor(t0, dtype=torch.float32).to(o.device).expand(r).contiguous()
    t1 = torch.as_tensor(t1, dtype=torch.float32).to(o.device).expand(r).contiguous()
    ids = torch.full((r, max(cap, 1)), -1, dtype=torch.int32, device=o.device)
    counts = torch.zeros((r,), dtype=torch.int32, device=o.device)
    if r > 0:
        with runtime.runtime_lock:
            _segment_query_kernel(bvh.node_lo, bvh.node_hi, bvh.children, o, d, t0, t1, ids,
                                  counts)
    return ids[:, :cap].to(home), counts.to(home)


def morton_order(points) -> torch.Tensor:
    """Permutation (N,) int64 that sorts points (N,3) along the 30-bit Morton curve of their
    bounding box (stable on ties): spatially close points end up close in memory, which is what
    makes per-ray random access to per-point data cache friendly."""
    from .bvh_build import _centroid_bounds, _morton_codes

    runtime.init()
    home = _home(points)
    p = torch.as_tensor(points).detach().to(runtime.torch_device(), torch.float32).contiguous()
    if p.dim() != 2 or p.shape[1] != 3:
        raise ValueError(f"morton_order: points must be (N,3), got {tuple(p.shape)}")
    n = p.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=p.device)
    with runtime.runtime_lock:
        bounds = torch.tensor([[_F32_MAX] * 3, [-_F32_MAX] * 3], dtype=torch.float32,
                              device=p.device)
        _centroid_bounds(p, p, bounds, _partials(p.device))
        codes = torch.empty((n,), dtype=torch.int32, device=p.device)
        _morton_codes(p, p, bounds, codes)
    return torch.sort(codes, stable=True).indices.to(home)
