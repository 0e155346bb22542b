"""Tests of shaders/bvh.py: structure, segment queries and closest hits against brute force
(shaders/bvh_ref.py), refit, the in-kernel ti.func, and real meshes against trimesh and open3d.

"Grazing" (real-mesh comparisons): a ray whose supporting line passes within
``GRAZE_REL * bbox diagonal`` of any mesh edge. Only there may hit/miss or the face id differ
between float32 implementations; every other ray must agree exactly on hit/miss and face, and
distances must agree within 1e-4 relative.
"""
import copy
import math

import numpy as np
import pytest
import taichi as ti
import torch

from shaders import bvh, bvh_ref, runtime
from shaders.bvh_build import PACKED_HI, PACKED_LO, packed_child_boxes
from tests.conftest import require

GRAZE_REL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _init():
    runtime.init()


def _random_boxes(n, gen, spread=1.0, size=0.1):
    c = torch.rand(n, 3, generator=gen) * spread
    s = torch.rand(n, 3, generator=gen) * size
    return c - s, c + s


def _random_segments(r, gen, lo, hi):
    """Segments of several kinds: generic, starting inside a box, axis-parallel, zero dirs."""
    o = torch.rand(r, 3, generator=gen) * 1.4 - 0.2
    d = torch.randn(r, 3, generator=gen)
    q = r // 6
    # start inside (at the centre of) a box
    k = torch.randint(0, lo.shape[0], (q,), generator=gen)
    o[:q] = 0.5 * (lo[k] + hi[k])
    # one or two zero direction components, including -0.0
    d[q:2 * q, 0] = 0.0
    d[2 * q:3 * q, 1:] = -0.0
    # origin exactly on a box face plane with a zero component along that axis
    k = torch.randint(0, lo.shape[0], (q,), generator=gen)
    o[3 * q:4 * q, 2] = lo[k, 2]
    d[3 * q:4 * q, 2] = 0.0
    t0 = torch.rand(r, generator=gen) - 0.3
    t1 = t0 + torch.rand(r, generator=gen) * 1.5
    t1[4 * q:4 * q + 5] = t0[4 * q:4 * q + 5]  # zero-length segments
    return o, d, t0, t1


def _host(b):
    """A shallow copy of a BVH object with its tensors on the CPU: the structures live on the
    Taichi device (the GPU under KERNELIGHT_ARCH=cuda), the references on the CPU."""
    c = copy.copy(b)
    for k, v in vars(b).items():
        if isinstance(v, torch.Tensor):
            setattr(c, k, v.cpu())
    return c


def _check_structure(b, n):
    b = _host(b)
    m = 2 * n - 1
    assert b.node_lo.shape == (m, 3) and b.node_hi.shape == (m, 3)
    assert b.children.shape == (m, 2) and b.parent.shape == (m,)
    assert b.node_lo.dtype == torch.float32 and b.children.dtype == torch.int32
    ch = b.children.long()
    leaf = ch[:, 0] < 0
    assert int(leaf.sum()) == n
    assert sorted(ch[leaf, 1].tolist()) == list(range(n))
    assert int(b.parent[0]) == -1
    internal = torch.nonzero(~leaf).flatten()
    if n > 1:
        assert not bool(leaf[0])
        kids = ch[internal].flatten()
        assert sorted(kids.tolist()) == list(range(1, m))  # every non-root node has one parent
        assert torch.equal(b.parent[kids].long(), internal.repeat_interleave(2))
        for c in (0, 1):
            assert bool((b.node_lo[internal] <= b.node_lo[ch[internal, c]]).all())
            assert bool((b.node_hi[internal] >= b.node_hi[ch[internal, c]]).all())
    assert bvh_ref.tree_depth(b.parent) < bvh.STACK_SIZE


def _check_segments(b, lo, hi, o, d, t0, t1):
    n = lo.shape[0]
    ids, counts = bvh.segment_query(b, o, d, t0, t1, cap=n)
    ref = bvh_ref.segment_overlap_ref(lo, hi, o, d, t0, t1)
    assert torch.equal(counts.long(), ref.sum(1))
    got = torch.zeros_like(ref)
    rows = torch.arange(o.shape[0])[:, None].expand_as(ids)
    valid = ids >= 0
    got[rows[valid], ids[valid].long()] = True
    assert int(valid.sum()) == int(counts.sum())  # no duplicates, nothing missing
    assert torch.equal(got, ref)
    return ref


@pytest.mark.parametrize("n", [1, 2, 3, 17, 500])
def test_aabb_build_and_segment_query_match_brute_force(n):
    gen = torch.Generator().manual_seed(n)
    lo, hi = _random_boxes(n, gen)
    b = bvh.build_aabb_bvh(lo, hi)
    assert b.num_prims == n
    _check_structure(b, n)
    o, d, t0, t1 = _random_segments(600, gen, lo, hi)
    ref = _check_segments(b, lo, hi, o, d, t0, t1)
    if n == 500:
        assert ref.any(1).float().mean() > 0.3  # the test exercises real overlaps


def test_duplicate_boxes_bounded_depth():
    gen = torch.Generator().manual_seed(1)
    lo, hi = _random_boxes(40, gen)
    # 3000 copies of 40 boxes plus 1000 identical points: massive Morton-code duplication
    lo = torch.cat([lo.repeat(75, 1), torch.full((1000, 3), 0.25)])
    hi = torch.cat([hi.repeat(75, 1), torch.full((1000, 3), 0.25)])
    b = bvh.build_aabb_bvh(lo, hi)
    _check_structure(b, lo.shape[0])
    assert bvh_ref.tree_depth(b.parent.cpu()) <= 30 + math.ceil(math.log2(lo.shape[0])) + 1
    o, d, t0, t1 = _random_segments(200, gen, lo, hi)
    _check_segments(b, lo, hi, o, d, t0, t1)


def test_degenerate_scene_all_identical_centroids():
    n = 257
    lo = torch.zeros(n, 3)
    hi = torch.ones(n, 3)
    b = bvh.build_aabb_bvh(lo, hi)
    _check_structure(b, n)
    assert bvh_ref.tree_depth(b.parent.cpu()) == math.ceil(math.log2(n))
    ids, counts = bvh.segment_query(b, torch.tensor([[0.5, 0.5, -1.0]]),
                                    torch.tensor([[0.0, 0.0, 1.0]]), 0.0, 10.0, cap=n)
    assert int(counts[0]) == n and sorted(ids[0].tolist()) == list(range(n))


def test_segment_cap_truncates_but_counts_all():
    gen = torch.Generator().manual_seed(2)
    lo, hi = _random_boxes(300, gen, size=0.3)
    b = bvh.build_aabb_bvh(lo, hi)
    o, d, t0, t1 = _random_segments(200, gen, lo, hi)
    ref = bvh_ref.segment_query_ref(lo, hi, o, d, t0, t1)
    cap = 5
    ids, counts = bvh.segment_query(b, o, d, t0, t1, cap=cap)
    assert ids.shape == (200, cap)
    assert any(len(s) > cap for s in ref)
    for r, s in enumerate(ref):
        assert int(counts[r]) == len(s)
        got = [i for i in ids[r].tolist() if i >= 0]
        assert len(got) == min(cap, len(s)) and len(set(got)) == len(got) and set(got) <= s


def test_refit_matches_fresh_build():
    gen = torch.Generator().manual_seed(3)
    lo, hi = _random_boxes(400, gen)
    b = bvh.build_aabb_bvh(lo, hi)
    children = b.children.cpu().clone()
    # move and resize every box
    shift = torch.randn(400, 3, generator=gen) * 0.3
    lo2 = lo + shift
    hi2 = hi + shift + torch.rand(400, 3, generator=gen) * 0.1
    bvh.refit_aabb_bvh(b, lo2, hi2)
    assert torch.equal(b.children.cpu(), children)  # topology kept
    _check_structure(b, 400)
    fresh = bvh.build_aabb_bvh(lo2, hi2)
    o, d, t0, t1 = _random_segments(400, gen, lo2, hi2)
    _check_segments(b, lo2, hi2, o, d, t0, t1)
    _check_segments(fresh, lo2, hi2, o, d, t0, t1)
    # root box is exactly the union of the new boxes
    assert torch.equal(b.node_lo[0].cpu(), lo2.min(0).values)
    assert torch.equal(b.node_hi[0].cpu(), hi2.max(0).values)
    with pytest.raises(ValueError, match="built over 400"):
        bvh.refit_aabb_bvh(b, lo2[:10], hi2[:10])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="zero primitives"):
        bvh.build_aabb_bvh(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="lo/hi"):
        bvh.build_aabb_bvh(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="faces"):
        bvh.build_triangle_bvh(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]))


@ti.kernel
def _collect_in_user_kernel(node_lo: ti.types.ndarray(), node_hi: ti.types.ndarray(),
                            children: ti.types.ndarray(), rays_o: ti.types.ndarray(),
                            rays_d: ti.types.ndarray(), t0: ti.types.ndarray(),
                            t1: ti.types.ndarray(), out: ti.types.ndarray(),
                            counts: ti.types.ndarray()):
    for r in range(rays_o.shape[0]):
        o = ti.math.vec3(rays_o[r, 0], rays_o[r, 1], rays_o[r, 2])
        d = ti.math.vec3(rays_d[r, 0], rays_d[r, 1], rays_d[r, 2])
        counts[r] = bvh.bvh_segment_collect(node_lo, node_hi, children, o, d, t0[r], t1[r],
                                            out, r, out.shape[1])


def test_bvh_segment_collect_inside_a_user_kernel():
    gen = torch.Generator().manual_seed(4)
    lo, hi = _random_boxes(200, gen)
    b = bvh.build_aabb_bvh(lo, hi)
    o, d, t0, t1 = _random_segments(300, gen, lo, hi)
    out = torch.full((300, 200), -1, dtype=torch.int32)
    counts = torch.zeros(300, dtype=torch.int32)
    with runtime.runtime_lock:
        _collect_in_user_kernel(b.node_lo, b.node_hi, b.children, o, d, t0, t1, out, counts)
    ref = bvh_ref.segment_query_ref(lo, hi, o, d, t0, t1)
    for r, s in enumerate(ref):
        assert int(counts[r]) == len(s)
        assert set(out[r, :len(s)].tolist()) == s


# ----------------------------------------------------------------------------- triangles


def _check_traversal_tree(tb):
    """The packed traversal tree: leaves partition the slots, child boxes contain their
    triangles, slot_face is a permutation and tri holds the slot's triangle."""
    tb = _host(tb)
    nf = tb.num_faces
    assert sorted(tb.slot_face.tolist()) == list(range(nf))
    tri = tb.vertices[tb.faces[tb.slot_face.long()].long()]  # (F, 3, 3) in slot order
    assert torch.equal(tb.tri.reshape(-1, 3, 3), tri.float())        # raw vertices, bit for bit
    covered = torch.zeros(nf, dtype=torch.int64)
    codes = tb.packed[:, 12:14].contiguous().view(torch.int32)
    stack = [(tb.root_code, tb.root_lo[0], tb.root_hi[0], 0)]
    max_depth = 0
    while stack:
        code, lo, hi, depth = stack.pop()
        max_depth = max(max_depth, depth)
        if code < 0:
            enc = -1 - code
            start, count = enc >> 3, (enc & 7) + 1
            assert count <= tb.leaf_size or tb.builder == "lbvh" and count == 1
            covered[start:start + count] += 1
            pts = tri[start:start + count].reshape(-1, 3)
            assert bool((pts >= lo).all()) and bool((pts <= hi).all())
        else:
            for c in (0, 1):
                clo, chi = (b[0] for b in packed_child_boxes(tb.packed[code:code + 1], c))
                assert bool((clo >= lo).all()) and bool((chi <= hi).all())
                stack.append((int(codes[code, c]), clo, chi, depth + 1))
    assert bool((covered == 1).all())
    assert max_depth < bvh.STACK_SIZE


def _random_soup(nf, gen, size=0.15):
    c = torch.rand(nf, 1, 3, generator=gen)
    v = (c + (torch.rand(nf, 3, 3, generator=gen) - 0.5) * size).reshape(-1, 3)
    return v, torch.arange(3 * nf, dtype=torch.int32).reshape(nf, 3)


def _rays_at(vertices, r, gen):
    target = torch.rand(r, 3, generator=gen)
    o = torch.randn(r, 3, generator=gen)
    o = 0.5 + 1.5 * o / o.norm(dim=1, keepdim=True)
    d = (target - o) * (0.5 + torch.rand(r, 1, generator=gen))  # not normalised
    return o, d


def _compare_with_ref(tb, v, f, o, d, tmin=0.0, tmax=math.inf):
    t, face, uv = bvh.closest_hit(tb, o, d, tmin, tmax)
    vd, od, dd = v.double(), o.double(), d.double()
    t_all, u_all, v_all = bvh_ref.ray_triangle_ref(vd, f, od, dd, tmin, tmax)
    tr, idx = t_all.min(-1)
    fr = torch.where(torch.isfinite(tr), idx, -1).to(torch.int32)
    rows = torch.arange(o.shape[0])
    uvr = torch.stack([u_all[rows, idx], v_all[rows, idx]], -1)
    # unambiguous rays: the supporting line crosses no triangle's plane near that triangle's
    # edges (|min barycentric| < 1e-4), and no second face is hit within 1e-4 relative distance
    t_line, u_line, v_line = bvh_ref.ray_triangle_ref(vd, f, od, dd, -1e30, 1e30)
    w = torch.minimum(torch.minimum(u_line, v_line), 1 - u_line - v_line)
    near_edge = (w.abs() < 1e-4) & torch.isfinite(t_line)
    tie = torch.zeros(o.shape[0], dtype=torch.bool)
    if f.shape[0] > 1:
        t_sorted = t_all.sort(dim=1).values
        tie = (t_sorted[:, 1] - t_sorted[:, 0]).abs() <= 1e-4 * t_sorted[:, 0].abs()
    ok = ~near_edge.any(1) & ~tie
    hit = fr >= 0
    assert ok.float().mean() > 0.8
    assert torch.equal(face[ok], fr[ok])
    assert torch.equal(torch.isinf(t[ok]), ~hit[ok])
    both = ok & hit
    assert both.sum() > 0
    assert torch.allclose(t[both].double(), tr[both], rtol=1e-5, atol=0)
    assert torch.allclose(uv[both].double(), uvr[both], atol=1e-4)
    # the reported (t, u, v) is consistent with the reported face
    hit_all = face >= 0
    tri = v.double()[f[face[hit_all].long()].long()]
    uu, vv = uv[hit_all, 0:1].double(), uv[hit_all, 1:2].double()
    p_bary = (1 - uu - vv) * tri[:, 0] + uu * tri[:, 1] + vv * tri[:, 2]
    p_ray = o[hit_all].double() + t[hit_all, None].double() * d[hit_all].double()
    assert (p_bary - p_ray).norm(dim=1).max() < 1e-5
    assert bool((face[~hit_all] == -1).all()) and bool((uv[~hit_all] == 0).all())
    return t, face


@pytest.mark.parametrize("builder,leaf_size", [("sah", 4), ("sah", 8), ("lbvh", 1),
                                               ("lbvh", 4)])
def test_closest_hit_matches_brute_force(builder, leaf_size):
    gen = torch.Generator().manual_seed(10 + leaf_size)
    v, f = _random_soup(400, gen)
    tb = bvh.build_triangle_bvh(v, f, leaf_size=leaf_size, builder=builder)
    _check_traversal_tree(tb)
    _check_structure(tb.bvh, 400)
    o, d = _rays_at(v, 800, gen)
    _compare_with_ref(tb, v, f, o, d)
    # a t-window: hits must respect [tmin, tmax)
    _compare_with_ref(tb, v, f, o, d, tmin=0.9, tmax=1.3)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_closest_hits_match_brute_force(k):
    """The k nearest hits from one traversal against every hit sorted (the reference), on rays
    without near-ties; k = 1 is closest_hit exactly."""
    gen = torch.Generator().manual_seed(40 + k)
    v, f = _random_soup(2000, gen, size=0.3)
    tb = bvh.build_triangle_bvh(v, f)
    o, d = _rays_at(v, 400, gen)
    t, face, uv = bvh.closest_hits(tb, o, d, k)
    tr, fr, uvr = bvh_ref.closest_hits_ref(v.double(), f, o.double(), d.double(), k)
    t_all = bvh_ref.ray_triangle_ref(v.double(), f, o.double(), d.double())[0].sort(dim=1).values
    gaps = (t_all[:, 1:] - t_all[:, :-1]).nan_to_num(nan=math.inf)
    ok = (gaps[:, :k] > 1e-4).all(1)             # no two of the first k + 1 hits nearly tied
    assert ok.float().mean() > 0.5
    n_hits = (fr >= 0).sum(1)
    assert bool((n_hits[ok] >= 2).any()) and bool((n_hits == k).any())   # several hits, some rays full
    assert torch.equal(face[ok], fr[ok])
    hit = ok[:, None] & (fr >= 0)
    assert torch.equal(torch.isinf(t[ok]), fr[ok] < 0)
    assert torch.allclose(t[hit].double(), tr[hit], rtol=1e-5, atol=0)
    assert torch.allclose(uv[hit].double(), uvr[hit], atol=1e-4)
    assert bool((t[:, 1:] >= t[:, :-1]).all())    # front to back everywhere
    t1, f1, uv1 = bvh.closest_hit(tb, o, d)
    tk, fk, uvk = bvh.closest_hits(tb, o, d, 1)
    assert torch.equal(tk[:, 0], t1) and torch.equal(fk[:, 0], f1) and torch.equal(uvk[:, 0], uv1)
    # a window: only hits in [tmin, tmax)
    tw, fw, _ = bvh.closest_hits(tb, o, d, k, tmin=0.9, tmax=1.3)
    assert bool(((tw >= 0.9) & (tw < 1.3))[fw >= 0].all())


def test_closest_hits_drop_the_second_triangle_of_a_shared_edge():
    """A ray through the shared edge of two triangles hits both at the same t: with dedup it is one
    crossing, as repeated closest_hit queries from just past each hit see it."""
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0],
                      [0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    f = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]], dtype=torch.int32)
    tb = bvh.build_triangle_bvh(v, f)
    o = torch.tensor([[0.5, 0.5, -1.0], [0.25, 0.25, -1.0]])    # the diagonal edge; inside one triangle
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t, face, _ = bvh.closest_hits(tb, o, d, 4, dedup=1e-5)
    assert t[0, :2].tolist() == [1.0, 2.0] and math.isinf(t[0, 2]) and (face[0, 2:] == -1).all()
    assert t[1, :2].tolist() == [1.0, 2.0] and math.isinf(t[1, 2])
    t0, face0, _ = bvh.closest_hits(tb, o, d, 4)          # without dedup: the edge counts twice
    assert t0[0].tolist() == [1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="k must be"):
        bvh.closest_hits(tb, o, d, 0)
    with pytest.raises(ValueError, match="dedup"):
        bvh.closest_hits(tb, o, d, 2, dedup=-1.0)


def test_closest_hit_slab_orders_agree():
    """tmin >= +0 compares slab distances as int32 bits, tmin < 0 as floats (shaders.bvh_traverse):
    both against the reference, with ray origins inside the soup (boxes around and behind the
    origin, negative slab distances) and a window reaching behind the origin; and for a tmin
    that excludes nothing more, the two orders give the same hits bit for bit."""
    gen = torch.Generator().manual_seed(77)
    v, f = _random_soup(600, gen)
    tb = bvh.build_triangle_bvh(v, f)
    o = torch.rand(1500, 3, generator=gen)
    d = torch.randn(1500, 3, generator=gen)
    t_int, face_int = _compare_with_ref(tb, v, f, o, d)                     # int order
    t_neg, face_neg = _compare_with_ref(tb, v, f, o, d, tmin=-0.4, tmax=2.0)  # float order
    assert bool((t_neg[face_neg >= 0] < 0).any())                  # hits behind the origin found
    t_f, face_f, uv_f = bvh.closest_hit(tb, o, d, tmin=-1e-30)      # float order, same window
    t_i, face_i, uv_i = bvh.closest_hit(tb, o, d, tmin=-0.0)        # -0 -> +0: int order
    assert torch.equal(face_f, face_i) and torch.equal(face_i, face_int)
    assert torch.equal(t_f, t_i) and torch.equal(uv_f, uv_i)


@pytest.mark.parametrize("builder", ["sah", "lbvh"])
@pytest.mark.parametrize("nf", [1, 2, 5])
def test_closest_hit_tiny_meshes(nf, builder):
    gen = torch.Generator().manual_seed(nf)
    v, f = _random_soup(nf, gen, size=0.8)
    tb = bvh.build_triangle_bvh(v, f, leaf_size=2, builder=builder)
    _check_traversal_tree(tb)
    o, d = _rays_at(v, 400, gen)
    t, face = _compare_with_ref(tb, v, f, o, d)


def test_rays_through_shared_edges_never_slip_through():
    """Watertightness: rays aimed at points of interior edges of an irregular planar grid (in a
    random plane, so nothing is axis aligned) must all hit it. Moller-Trumbore in float32 let
    about 12 % of these rays through both faces; the watertight test lets none."""
    g = torch.Generator().manual_seed(0)
    n = 12
    ij = torch.stack(torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij"), -1)
    ij = ij.reshape(-1, 2).double()
    inner = ((ij > 0) & (ij < n)).all(1, keepdim=True)
    xy = ij / n + inner * (torch.rand(ij.shape, generator=g, dtype=torch.float64) - 0.5) * 0.3 / n
    rot, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    v = (torch.cat([xy - 0.5, torch.zeros(len(xy), 1, dtype=torch.float64)], 1) @ rot.T).float()
    faces, edges = [], set()
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1, i * (n + 1) + j + 1
            faces += [[a, b, c], [a, c, d]] if (i + j) % 2 else [[a, b, d], [b, c, d]]
    f = torch.tensor(faces, dtype=torch.int32)
    for tri in faces:
        for k in range(3):
            e = tuple(sorted((tri[k], tri[(k + 1) % 3])))
            if not (ij[list(e)] == 0).all(0).any() and not (ij[list(e)] == n).all(0).any():
                edges.add(e)                                   # interior edges (shared by two faces)
    e = torch.tensor(sorted(edges))
    tb = bvh.build_triangle_bvh(v, f)
    total = 0
    for w in (0.5, 0.3, 0.1):
        p = v[e[:, 0]] * w + v[e[:, 1]] * (1 - w)              # float32 points on the edges
        for _ in range(4):
            cam = torch.randn(3, generator=g)
            o = (cam / cam.norm() * 2.0).expand_as(p).contiguous()
            d = torch.nn.functional.normalize(p - o, dim=1)
            t, face, _ = bvh.closest_hit(tb, o, d)
            assert int((face < 0).sum()) == 0
            tr, fr, _ = bvh_ref.closest_hit_ref(v, f, o, d)    # the float32 reference: same test
            assert int((fr < 0).sum()) == 0
            total += len(p)
    assert total > 3000


def test_closest_hit_axis_aligned_rays():
    # a unit quad in the z = 0 plane, rays along +z and with zero x/y components
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    tb = bvh.build_triangle_bvh(v, f)
    xy = torch.tensor([[0.3, 0.2], [0.7, 0.9], [1.5, 0.5], [0.5, -0.1]])
    o = torch.cat([xy, torch.full((4, 1), -2.0)], 1)
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    t, face, uv = bvh.closest_hit(tb, o, d)
    assert torch.allclose(t[:2], torch.tensor([2.0, 2.0]))
    assert face.tolist() == [0, 1, -1, -1]
    assert math.isinf(t[2]) and math.isinf(t[3])
    # hit point from barycentrics
    p = (1 - uv[0].sum()) * v[0] + uv[0, 0] * v[1] + uv[0, 1] * v[2]
    assert torch.allclose(p, torch.tensor([0.3, 0.2, 0.0]), atol=1e-6)


@pytest.mark.parametrize("builder", ["sah", "lbvh"])
def test_refit_triangles_matches_fresh_build(builder):
    gen = torch.Generator().manual_seed(20)
    v, f = _random_soup(400, gen)
    tb = bvh.build_triangle_bvh(v, f, builder=builder)
    packed_codes = tb.packed[:, 12:14].clone()
    v2 = v + torch.randn(v.shape, generator=gen) * 0.05
    bvh.refit_triangle_bvh(tb, v2)
    assert torch.equal(tb.packed[:, 12:14].view(torch.int32),
                       packed_codes.view(torch.int32))  # traversal topology kept
    _check_structure(tb.bvh, 400)
    _check_traversal_tree(tb)
    o, d = _rays_at(v2, 800, gen)
    _compare_with_ref(tb, v2, f, o, d)
    fresh = bvh.build_triangle_bvh(v2, f, builder=builder)
    t1, f1, _ = bvh.closest_hit(tb, o, d)
    t2, f2, _ = bvh.closest_hit(fresh, o, d)
    assert torch.equal(f1, f2) and torch.equal(t1, t2)


def test_sah_tree_duplicates_bounded_depth():
    # 600 copies of the same triangle + 400 copies of another: no centroid split exists
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 2, 2], [3, 2, 2], [2, 3, 2.0]])
    f = torch.tensor([[0, 1, 2]] * 600 + [[3, 4, 5]] * 400, dtype=torch.int32)
    tb = bvh.build_triangle_bvh(v, f, leaf_size=2)
    _check_traversal_tree(tb)
    assert tb.sah.depth <= 1 + math.ceil(math.log2(600))
    t, face, _ = bvh.closest_hit(tb, torch.tensor([[0.2, 0.2, -1.0], [2.2, 2.2, 5.0]]),
                                 torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]))
    assert torch.allclose(t, torch.tensor([1.0, 3.0]))
    assert 0 <= int(face[0]) < 600 and 600 <= int(face[1]) < 1000


@pytest.mark.parametrize("subtree_max,all_axes_min,small", [(1, 0, 0), (40, 0, 16),
                                                             (40, 10**9, 0), (10**9, 0, 16),
                                                             (40, 100, 10**9), (40, 100, 16)])
def test_sah_build_phases_match_brute_force(monkeypatch, subtree_max, all_axes_min, small):
    """The SAH builder's two phases (per-level top, per-thread subtrees) alone and mixed, with
    all axes or the longest only, small nodes split by binned SAH or at the spatial median:
    a valid tree, exact closest hits, refit == fresh build."""
    from shaders import bvh_sah

    monkeypatch.setattr(bvh_sah, "default_subtree_max", lambda n, arch: subtree_max)
    monkeypatch.setattr(bvh_sah, "ALL_AXES_MIN", all_axes_min)
    monkeypatch.setattr(bvh_sah, "SMALL", small)
    gen = torch.Generator().manual_seed(30)
    v, f = _random_soup(700, gen)
    tb = bvh.build_triangle_bvh(v, f, leaf_size=3)
    _check_traversal_tree(tb)
    if subtree_max == 1:
        assert tb.sah.deferred.shape[0] == 0
    if subtree_max == 10**9:
        assert len(tb.sah.level_off) == 2  # only the root was handled by the top phase
    assert tb.sah.depth <= 2 * math.ceil(math.log2(700))
    o, d = _rays_at(v, 800, gen)
    _compare_with_ref(tb, v, f, o, d)
    v2 = v + torch.randn(v.shape, generator=gen) * 0.05
    bvh.refit_triangle_bvh(tb, v2)
    _check_traversal_tree(tb)
    fresh_boxes = bvh.build_triangle_bvh(v2, f, leaf_size=3)
    _compare_with_ref(tb, v2, f, o, d)
    t1, f1, _ = bvh.closest_hit(tb, o, d)
    t2, f2, _ = bvh.closest_hit(fresh_boxes, o, d)
    assert torch.equal(f1, f2) and torch.equal(t1, t2)


def test_sah_cost_prefers_the_sah_tree():
    """sah_cost: a single leaf costs its size; the binned-SAH tree beats the collapsed LBVH
    and a tree whose boxes are all the root's (what a useless hierarchy would cost)."""
    from shaders import bvh_sah_refit

    gen = torch.Generator().manual_seed(31)
    v, f = _random_soup(3, gen)
    tb = bvh.build_triangle_bvh(v, f, leaf_size=4)
    assert bvh_sah_refit.sah_cost(tb.packed, tb.root_lo, tb.root_hi, tb.root_code) == 3.0
    v, f = _random_soup(2000, gen, size=0.05)
    costs = {}
    for builder in ("lbvh", "sah"):
        tb = bvh.build_triangle_bvh(v, f, leaf_size=4, builder=builder)
        costs[builder] = bvh_sah_refit.sah_cost(tb.packed, tb.root_lo, tb.root_hi, tb.root_code)
    assert costs["sah"] < costs["lbvh"]
    # every packed row of the SAH tree is one internal node: all boxes = the root's box costs
    # one per internal node plus one per triangle
    bloated = tb.packed.clone()
    for c in range(2):
        bloated[:, list(PACKED_LO[c])] = tb.root_lo[0]
        bloated[:, list(PACKED_HI[c])] = tb.root_hi[0]
    worst = bvh_sah_refit.sah_cost(bloated, tb.root_lo, tb.root_hi, tb.root_code)
    assert worst > 20 * costs["lbvh"]
    assert worst == pytest.approx((tb.packed.shape[0] + 2000), rel=1e-6)


def _load_mesh(path):
    import trimesh

    m = trimesh.load(path, force="mesh", process=False)
    return m, torch.tensor(np.asarray(m.vertices), dtype=torch.float32), torch.tensor(
        np.asarray(m.faces), dtype=torch.int32)


def _mesh_rays(v, r, seed):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = v.min(0).values, v.max(0).values
    c, ext = 0.5 * (lo + hi), hi - lo
    o = torch.randn(r, 3, generator=gen)
    o = c + 1.5 * ext.norm() * o / o.norm(dim=1, keepdim=True)
    target = c + (torch.rand(r, 3, generator=gen) - 0.5) * ext
    d = target - o
    return o, d / d.norm(dim=1, keepdim=True)


def test_real_mesh_vs_trimesh_and_open3d(shared_data):
    pytest.importorskip("rtree", reason="trimesh ray queries need rtree")
    import open3d as o3d

    path = require(shared_data / "meshes" / "bunny_small.ply")
    m, v, f = _load_mesh(path)
    o, d = _mesh_rays(v, 3000, seed=5)
    tb = bvh.build_triangle_bvh(v, f)
    t, face, uv = bvh.closest_hit(tb, o, d)
    diag = float((v.max(0).values - v.min(0).values).norm())
    edges = torch.as_tensor(np.asarray(m.edges_unique), dtype=torch.int64)
    hit = face >= 0
    assert 0.2 < hit.float().mean() < 0.9

    def check_against(other_face, other_t, name):
        other_hit = other_face >= 0
        both = hit & other_hit
        differ = (hit != other_hit) | (both & (face.long() != other_face))
        # every disagreement must be a grazing ray (few of them)
        assert differ.float().mean() < 0.01, name
        if differ.any():
            dist = bvh_ref.ray_edge_distance(v, edges, o[differ], d[differ])
            assert bool((dist < GRAZE_REL * diag).all()), (name, dist.max().item() / diag)
        same = both & ~differ
        assert torch.allclose(t[same].double(), other_t[same].double(), rtol=1e-4, atol=0), name

    # open3d (Embree)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v.numpy()), o3d.core.Tensor(f.numpy().astype(np.uint32)))
    ans = scene.cast_rays(o3d.core.Tensor(torch.cat([o, d], 1).numpy()))
    et = torch.from_numpy(ans["t_hit"].numpy().copy())
    ef = torch.from_numpy(ans["primitive_ids"].numpy().astype(np.int64))
    ef[~torch.isfinite(et)] = -1
    check_against(ef, et, "open3d")

    # trimesh (its own ray/triangle code, rtree candidates)
    tri_idx, ray_idx, loc = m.ray.intersects_id(o.double().numpy(), d.double().numpy(),
                                                multiple_hits=False, return_locations=True)
    tm_face = torch.full((o.shape[0],), -1, dtype=torch.int64)
    tm_t = torch.full((o.shape[0],), math.inf, dtype=torch.float64)
    tm_face[torch.as_tensor(ray_idx)] = torch.as_tensor(tri_idx)
    tm_t[torch.as_tensor(ray_idx)] = torch.as_tensor(
        np.linalg.norm(loc - o.double().numpy()[ray_idx], axis=1))
    check_against(tm_face, tm_t, "trimesh")
