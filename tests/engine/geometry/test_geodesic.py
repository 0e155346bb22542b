"""Heat geodesics on meshes: accuracy against exact distances, operators, batching, bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from engine.geometry.geodesic import MeshHeatSolver, check_sources, heat_geodesic
from engine.geometry.heat_core import SPDFactor
from engine.geometry.intrinsic import (areas_from_lengths, cotan_from_lengths, gradient_from_lengths,
                                       intrinsic_delaunay, intrinsic_delaunay_reference, lengths_from_positions,
                                       mean_intrinsic_edge_length, merge_cover_copies, mollify, needs_cover,
                                       tufted_cover)
from engine.geometry.laplacian import cotan_laplacian, face_gradient, inspect_mesh, lumped_mass
from tests.conftest import require


def grid(nx=21, ny=21, jitter=0.0, seed=0):
    """Flat unit square, triangulated; returns V, F."""
    x, y = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny), indexing="ij")
    V = np.stack([x.ravel(), y.ravel(), np.zeros(nx * ny)], axis=1)
    if jitter:
        rng = np.random.default_rng(seed)
        inner = (V[:, 0] > 0) & (V[:, 0] < 1) & (V[:, 1] > 0) & (V[:, 1] < 1)
        V[inner, :2] += rng.uniform(-jitter, jitter, (inner.sum(), 2)) / (nx - 1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    F = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return V, F


def icosphere(subdiv=3):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdiv)
    return np.asarray(m.vertices), np.asarray(m.faces, np.int64)


# ----------------------------------------------------------------------------- operators
def test_cotan_laplacian_matches_gradient_form_and_dense_reference():
    V, F = icosphere(1)
    L = cotan_laplacian(V, F)
    G, a, _ = face_gradient(V, F)
    # L = G^T A G (independent construction through the face gradient)
    assert abs(L - G.T @ sp.diags(np.repeat(a, 3)) @ G).max() < 1e-12
    # brute-force reference: per face, per corner, w = cot(angle)/2 on the opposite edge
    Ld = np.zeros((len(V), len(V)))
    for f in F:
        for c in range(3):
            i, j, k = f[c], f[(c + 1) % 3], f[(c + 2) % 3]
            u, v = V[j] - V[i], V[k] - V[i]
            cot = u @ v / np.linalg.norm(np.cross(u, v))
            Ld[j, k] -= cot / 2
            Ld[k, j] -= cot / 2
            Ld[j, j] += cot / 2
            Ld[k, k] += cot / 2
    assert np.abs(L.toarray() - Ld).max() < 1e-12
    assert np.allclose(L @ np.ones(len(V)), 0, atol=1e-12)
    # mass: total = surface area
    assert np.isclose(lumped_mass(V, F).sum(), a.sum())


def test_gradient_of_linear_function_is_exact():
    V, F = grid(6, 5, jitter=0.3)
    G, _, _ = face_gradient(V, F)
    g = (G @ (2 * V[:, 0] - 3 * V[:, 1])).reshape(-1, 3)
    assert np.allclose(g, [2, -3, 0], atol=1e-12)


def test_intrinsic_operators_agree_with_extrinsic_and_delaunay_flips():
    V, F = grid(8, 8, jitter=0.3, seed=3)
    e1, e2 = V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]
    assert (np.cross(e1, e2)[:, 2] > 0).all()  # no folded triangle: a planar triangulation of the square
    l = lengths_from_positions(V, F)
    L0 = cotan_laplacian(V, F)
    assert abs(cotan_from_lengths(F, l, len(V)) - L0).max() < 1e-10
    G2, a2 = gradient_from_lengths(F, l, len(V))
    assert abs(G2.T @ sp.diags(np.repeat(a2, 2)) @ G2 - L0).max() < 1e-10
    # a planar Delaunay triangulation has non-negative cotan weights; flipping keeps area
    Fi, li, flips = intrinsic_delaunay(F, l)
    Li = cotan_from_lengths(Fi, li, len(V))
    off = Li - sp.diags(Li.diagonal())
    assert flips > 0 and off.max() <= 1e-12
    assert (L0 - sp.diags(L0.diagonal())).max() > 1e-3  # the jittered grid was not Delaunay
    _, ai = gradient_from_lengths(Fi, li, len(V))
    assert np.isclose(ai.sum(), 1.0)


def test_batched_delaunay_flips_match_sequential_reference(shared_data):
    """The batched flipper (independent sets of flips per round) must reach the same intrinsic
    Delaunay triangulation as the one-flip-at-a-time reference: same Laplacian, same areas."""
    import trimesh

    cases = [grid(15, 15, jitter=0.45, seed=7)]
    m = trimesh.load(require(shared_data / "meshes" / "cow.obj"), process=False, maintain_order=True)
    cases.append((np.asarray(m.vertices), np.asarray(m.faces, np.int64)))  # 665 flips, obtuse triangles
    for V, F in cases:
        l = mollify(lengths_from_positions(V, F))
        Fb, lb, nb = intrinsic_delaunay(F, l)
        Fr, lr, nr = intrinsic_delaunay_reference(F, l)
        assert nb > 0 and nr > 0
        Lb, Lr = cotan_from_lengths(Fb, lb, len(V)), cotan_from_lengths(Fr, lr, len(V))
        assert abs(Lb - Lr).max() < 1e-10 * abs(Lr).max()
        assert np.isclose(gradient_from_lengths(Fb, lb, len(V))[1].sum(), gradient_from_lengths(Fr, lr, len(V))[1].sum())
        # every interior edge is Delaunay afterwards: off-diagonal weights <= 0 away from the boundary
        off = (Lb - sp.diags(Lb.diagonal())).tocoo()
        rep = inspect_mesh(V, F)
        inner = ~np.isin(off.row, rep.boundary_vertices) & ~np.isin(off.col, rep.boundary_vertices)
        assert off.data[inner].max() <= 1e-9 * abs(Lr).max()


@pytest.mark.parametrize("backend", ["qdldl", "superlu"])
def test_spd_factor_backends_solve(backend):
    pytest.importorskip(backend) if backend == "qdldl" else None
    V, F = icosphere(2)
    A = (sp.diags(np.full(len(V), 0.1)) + cotan_laplacian(V, F)).tocsc()
    B = np.random.default_rng(0).normal(size=(len(V), 3))
    f = SPDFactor(A, backend)
    assert f.backend == backend
    X = f.solve(B)
    assert np.abs(A @ X - B).max() < 1e-10 and np.allclose(f.solve(B[:, 1]), X[:, 1], atol=1e-12)
    with pytest.raises(ValueError, match="backend must be one of"):
        SPDFactor(A, "umfpack")


def test_solver_backends_agree():
    V, F = grid(21, 21, jitter=0.2)  # has a boundary: three factorisations each
    a = MeshHeatSolver(V, F, backend="superlu").compute_distances([0, 200])
    b = MeshHeatSolver(V, F).compute_distances([0, 200])
    assert np.abs(a - b).max() < 1e-9


# ----------------------------------------------------------------------------- tufted cover
def test_tufted_cover_gluing_and_operators():
    """The cover of a closed mesh is two copies of it; of a mesh with a boundary, one closed
    surface. Every halfedge has a twin running the other way; halved, the cover's operators are
    the mesh's own (before any flip)."""
    for V, F in (icosphere(1), grid(6, 5, jitter=0.3)):
        l = lengths_from_positions(V, F)
        Fc, lc, tw = tufted_cover(F, l)
        m = len(F)
        assert Fc.shape == (2 * m, 3) and (Fc[m:] == F[:, [0, 2, 1]]).all()
        t = tw.ravel()
        assert (t >= 0).all() and (t[t] == np.arange(6 * m)).all() and (t != np.arange(6 * m)).all()
        f, c = np.divmod(np.arange(6 * m), 3)
        g, d = np.divmod(t, 3)
        # twin halfedges: same two vertices, opposite directions, same length
        assert (Fc[f, (c + 1) % 3] == Fc[g, (d + 2) % 3]).all() and (Fc[f, (c + 2) % 3] == Fc[g, (d + 1) % 3]).all()
        assert np.allclose(lc[f, c], lc[g, d])
        L0 = cotan_laplacian(V, F)
        assert abs(0.5 * cotan_from_lengths(Fc, lc, len(V)) - L0).max() < 1e-10
    assert not needs_cover(icosphere(1)[1])
    assert needs_cover(grid(4, 4)[1])  # boundary
    assert needs_cover(book(3)[1])  # non-manifold edge
    F = icosphere(1)[1].copy()
    F[0] = F[0, [0, 2, 1]]  # one face turned over
    assert needs_cover(F)


def test_cover_flips_boundary_edges_matches_sequential_and_robust_laplacian():
    """On the cover every edge is flippable: after flipping, *all* cotan weights are >= 0,
    boundary edges included. The batched flips agree with the one-at-a-time reference, and the
    halved Laplacian with robust-laplacian's tufted intrinsic Delaunay Laplacian (an independent
    implementation of the same construction, Sharp & Crane 2020)."""
    V, F = grid(9, 9, jitter=0.45, seed=5)
    V = V.copy()
    V[:, 2] = 0.3 * np.sin(3 * V[:, 0]) * V[:, 1]  # not flat: the boundary triangles get obtuse angles
    l = mollify(lengths_from_positions(V, F))
    Fc, lc, tw = tufted_cover(F, l)
    Fb, lb, nb, twb = intrinsic_delaunay(Fc, lc, twin=tw, return_twin=True)
    Fr, lr, nr = intrinsic_delaunay_reference(Fc, lc, twin=tw)
    Lb = 0.5 * cotan_from_lengths(Fb, lb, len(V))
    Lr = 0.5 * cotan_from_lengths(Fr, lr, len(V))
    assert nb > 0 and nr > 0 and abs(Lb - Lr).max() < 1e-10 * abs(Lr).max()
    off = (Lb - sp.diags(Lb.diagonal())).tocoo()
    assert off.data.max() <= 1e-12 * abs(Lb).max()  # no negative weight anywhere
    L_plain_off = cotan_laplacian(V, F) - sp.diags(cotan_laplacian(V, F).diagonal())
    rep = inspect_mesh(V, F)
    bnd = (np.isin(L_plain_off.tocoo().row, rep.boundary_vertices) & np.isin(L_plain_off.tocoo().col, rep.boundary_vertices))
    assert (L_plain_off.tocoo().data[bnd] > 1e-6).any()  # the input had negative boundary weights
    assert np.isclose(0.5 * areas_from_lengths(lb).sum(), areas_from_lengths(l).sum())
    t = twb.ravel()
    assert (t[t] == np.arange(len(t))).all()
    assert mean_intrinsic_edge_length(lb, twb) < mean_intrinsic_edge_length(lc, tw)  # flips shorten edges
    # merging the front/back copies that no flip separated changes no operator
    Fm, lm, w = merge_cover_copies(Fb, lb, 0.5)
    assert len(Fm) < 0.85 * len(Fb) and np.isclose(w.sum(), 0.5 * len(Fb)) and set(np.unique(w)) <= {0.5, 1.0}
    assert abs(cotan_from_lengths(Fm, lm, len(V), weights=w) - Lb).max() < 1e-12 * abs(Lb).max()
    Gb, ab = gradient_from_lengths(Fb, lb, len(V))
    Gm, am = gradient_from_lengths(Fm, lm, len(V))
    assert abs(Gm.T @ sp.diags(np.repeat(w * am, 2)) @ Gm - Gb.T @ sp.diags(np.repeat(0.5 * ab, 2)) @ Gb).max() < 1e-10
    mb = np.bincount(Fb.ravel(), weights=np.repeat(0.5 * ab / 3, 3), minlength=len(V))
    mm = np.bincount(Fm.ravel(), weights=np.repeat(w * am / 3, 3), minlength=len(V))
    assert np.allclose(mb, mm, rtol=1e-12)
    robust_laplacian = pytest.importorskip("robust_laplacian")
    Lrl, Mrl = robust_laplacian.mesh_laplacian(V, F, mollify_factor=1e-5)
    assert abs(Lb - Lrl).max() < 1e-6 * abs(Lrl).max()


# ----------------------------------------------------------------------------- accuracy
def _errors(d, ex):
    """(mean per-vertex error |d - exact| / exact, mean error relative to the maximum distance)."""
    m = ex > 0
    return float(np.mean(np.abs(d[m] - ex[m]) / ex[m])), float(np.mean(np.abs(d - ex)) / ex.max())


# Measured with the defaults (robust, Neumann, bounds): per-vertex and vs-max mean errors: spot
# 1.442 % / 0.917 %, cow 1.785 % / 0.698 %. potpourri3d's default on the same meshes
# (heat_potpourri3d in the npz): spot 1.689 % / 0.981 %, cow 1.877 % / 0.704 %; our field
# without the bounds is potpourri3d's. The old default (plain cotan, Neumann/Dirichlet average)
# had cow 2.214 % / 0.869 %.
@pytest.mark.parametrize("name,pv_max,vm_max", [("spot", 0.01445, 0.00919), ("cow", 0.01788, 0.00700)])
def test_default_accuracy_against_exact_geodesics(shared_data, name, pv_max, vm_max):
    r = np.load(require(shared_data / "geodesic_ref" / f"{name}_src0.npz"))
    ex, pp = r["exact_pygeodesic"], r["heat_potpourri3d"]
    s = MeshHeatSolver(r["V"], r["F"])
    assert s.robust and s.bounds
    d = s.compute_distance(0)
    pv, vm = _errors(d, ex)
    assert pv <= pv_max and vm <= vm_max
    pp_pv, pp_vm = _errors(pp, ex)
    assert pv < 0.97 * pp_pv and vm < 0.995 * pp_vm
    assert np.abs(d - ex).max() <= np.abs(pp - ex).max() * (1 + 1e-4)
    # the raw heat-method field is potpourri3d's, up to flips of near-co-circular edges (our
    # flip test is cot sum < -1e-12, geometry-central's < -1e-6): 3.7e-5 of the max on cow
    raw = MeshHeatSolver(r["V"], r["F"], bounds=False).compute_distance(0)
    assert np.abs(raw - pp).max() <= 1e-4 * ex.max()


def test_bounds_only_move_towards_the_exact_distance(shared_data):
    """Clipping into [straight-line distance to the nearest source, edge length to an adjacent
    source] can only reduce the error, at every vertex; multi-source and unreachable included."""
    r = np.load(require(shared_data / "geodesic_ref" / "cow_src0.npz"))
    V, F, ex = r["V"], r["F"].astype(np.int64), r["exact_pygeodesic"]
    for robust in (True, False):
        d = MeshHeatSolver(V, F, robust=robust).compute_distance(0)
        raw = MeshHeatSolver(V, F, robust=robust, bounds=False).compute_distance(0)
        assert (np.abs(d - ex) <= np.abs(raw - ex) + 1e-12).all()
        assert (np.abs(d - ex) < np.abs(raw - ex) - 1e-6).sum() > 50  # and they do bind
        assert (d >= np.linalg.norm(V - V[0], axis=1) - 1e-12).all()
    nb = np.unique(F[(F == 0).any(axis=1)])
    nb = nb[nb != 0]
    # a source's mesh neighbours get the edge length, which is their exact distance
    assert np.allclose(d[nb], np.linalg.norm(V[nb] - V[0], axis=1), rtol=1e-14) and np.allclose(d[nb], ex[nb], rtol=1e-9)
    # several sources: the lower bound is the distance to the nearest; other component stays +inf
    V2 = np.concatenate([V, V + [100.0, 0, 0]])
    F2 = np.concatenate([F, F + len(V)])
    d2 = MeshHeatSolver(V2, F2).compute_distance([0, 17])
    lo = np.minimum(np.linalg.norm(V - V[0], axis=1), np.linalg.norm(V - V[17], axis=1))
    assert (d2[: len(V)] >= lo - 1e-12).all() and np.isinf(d2[len(V):]).all()
    assert d2[0] == 0 and d2[17] == 0


def test_plain_cotan_accuracy_on_a_good_mesh(shared_data):
    r = np.load(require(shared_data / "geodesic_ref" / "spot_src0.npz"))
    s = MeshHeatSolver(r["V"], r["F"], robust=False, bounds=False)
    pv, vm = _errors(s.compute_distance(0), r["exact_pygeodesic"])
    assert pv <= 0.0169 and vm <= 0.0099  # measured 1.686 % / 0.981 %


def test_robust_matches_potpourri3d_on_armadillo(shared_data):
    """The robust path makes the same two choices as geometry-central (t from the intrinsic edge
    lengths, L + 1e-6 I on the two-sheet cover); on a closed mesh our distances are then
    potpourri3d's to round-off. Either choice alone leaves a difference of > 1e-3 of the maximum."""
    pp3d = pytest.importorskip("potpourri3d")
    import trimesh

    m = trimesh.load(require(shared_data / "meshes" / "armadillo.obj"), process=False, maintain_order=True)
    V, F = np.asarray(m.vertices), np.asarray(m.faces, np.int64)
    ours = MeshHeatSolver(V, F, bounds=False)
    theirs = pp3d.MeshHeatMethodDistanceSolver(V, F)
    for src in (0, 31841):
        a, b = ours.compute_distance(src), theirs.compute_distance(src)
        assert np.abs(a - np.maximum(b, 0)).max() < 1e-9 * b.max()


def test_cow_plain_cotan_breaks_where_intrinsic_delaunay_does_not(shared_data):
    """Documented failure mode: obtuse triangles give negative cotan weights (no maximum
    principle); the robust path (the default) fixes it. Source 2782 on cow, distance to vertex 0."""
    r = np.load(require(shared_data / "geodesic_ref" / "cow_src0.npz"))
    exact = r["exact_pygeodesic"][2782]
    robust = MeshHeatSolver(r["V"], r["F"], bounds=False).compute_distance(2782)[0]
    plain = MeshHeatSolver(r["V"], r["F"], robust=False, bounds=False).compute_distance(2782)[0]
    assert abs(robust - exact) / exact < 0.02
    assert abs(plain - exact) / exact > 0.5


def test_sphere_great_circle_distance():
    V, F = icosphere(4)
    d = MeshHeatSolver(V, F).compute_distance(0)
    ex = np.arccos(np.clip(V @ V[0], -1, 1))
    assert np.abs(d - ex).mean() / np.pi < 0.01
    assert d[0] == 0.0


def test_boundary_average_on_flat_square():
    """On a convex flat domain geodesic = Euclidean distance. Measured (31x31 jittered grid,
    centre source): mean error 1.06% averaged vs 1.15% Neumann-only; max 5.4% vs 3.7% (corners,
    where the Dirichlet part pulls the field towards the boundary normal)."""
    V, F = grid(31, 31, jitter=0.2)
    src = 480  # the centre
    ex = np.linalg.norm(V - V[src], axis=1)
    err = {}
    for b in ("average", "neumann"):
        d = MeshHeatSolver(V, F, boundary=b).compute_distance(src)
        err[b] = np.abs(d - ex) / ex.max()
    assert err["average"].mean() < 0.0110 and err["average"].max() < 0.06
    assert err["average"].mean() < 0.95 * err["neumann"].mean()


# ----------------------------------------------------------------------------- API
def test_multi_source_and_batched_queries():
    V, F = icosphere(4)
    s = MeshHeatSolver(V, F)
    d0, d1 = s.compute_distance(0), s.compute_distance(17)
    dm = s.compute_distance([0, 17])
    # shifted so the mean over the sources is 0 (clipped at 0): each source within O(h) of 0
    assert max(dm[0], dm[17]) < 0.02 * d0.max()
    # against the exact distance to the nearest source (great circles on the unit sphere)
    ex = np.minimum(np.arccos(np.clip(V @ V[0], -1, 1)), np.arccos(np.clip(V @ V[17], -1, 1)))
    err = np.abs(dm - ex) / ex.max()
    assert err.mean() < 0.01 and err.max() < 0.05
    D = s.compute_distances([0, [0, 17], 17])
    assert D.shape == (3, len(V))
    assert np.allclose(D[0], d0, atol=1e-10) and np.allclose(D[1], dm, atol=1e-10) and np.allclose(D[2], d1, atol=1e-10)
    assert np.allclose(heat_geodesic(V, F, 0), d0, atol=1e-10)


@pytest.mark.parametrize("bad", [-1, 642, [0, 1000]])
def test_source_out_of_range(bad):
    V, F = icosphere(2)  # 162 vertices
    with pytest.raises(ValueError, match=r"out of range: there are 162 vertices"):
        MeshHeatSolver(V, F).compute_distance(bad if bad != 642 else 162)
    with pytest.raises(ValueError, match="integers"):
        check_sources(1.5, 10)


def test_unreferenced_vertices_get_inf_and_keep_indices():
    V, F = icosphere(2)
    extra = np.array([[5.0, 5, 5], [6.0, 6, 6]])
    V2 = np.concatenate([V[:10], extra, V[10:]])
    F2 = np.where(F >= 10, F + 2, F)
    d_ref = MeshHeatSolver(V, F).compute_distance(0)
    s = MeshHeatSolver(V2, F2)
    d = s.compute_distance(0)
    assert np.isinf(d[10:12]).all()
    assert np.allclose(np.delete(d, [10, 11]), d_ref, atol=1e-12)
    with pytest.raises(ValueError, match="vertex 11 is not part of the solve"):
        s.compute_distance(11)


def test_components_unreachable_get_inf():
    V, F = icosphere(2)
    V2 = np.concatenate([V, V + [5, 0, 0]])
    F2 = np.concatenate([F, F + len(V)])
    d = MeshHeatSolver(V2, F2).compute_distance(3)
    assert np.isinf(d[len(V):]).all() and np.isfinite(d[: len(V)]).all()
    assert np.allclose(d[: len(V)], MeshHeatSolver(V, F).compute_distance(3), atol=1e-8)
    # one source in each component: both finite, each its own field
    d2 = MeshHeatSolver(V2, F2).compute_distance([3, len(V) + 3])
    assert np.allclose(d2[: len(V)], d2[len(V):], atol=1e-8)


def test_degenerate_faces_dropped_with_warning():
    V, F = icosphere(2)
    V2 = np.concatenate([V, [[0.0, 0, 0]]])  # a collinear/zero-area face on existing vertices + a repeat
    F2 = np.concatenate([F, [[F[0, 0], F[0, 1], F[0, 1]], [F[0, 0], F[0, 0], len(V)]]])
    with pytest.warns(RuntimeWarning, match="dropping 2 degenerate"):
        s = MeshHeatSolver(V2, F2)
    d = s.compute_distance(0)
    assert np.isinf(d[len(V)])  # only used by a dropped face -> unreferenced
    assert np.allclose(d[: len(V)], MeshHeatSolver(V, F).compute_distance(0), atol=1e-12)
    # zero area from coincident positions
    V3 = np.concatenate([V, V[:1], V[:1]])
    F3 = np.concatenate([F, [[0, len(V), len(V) + 1]]])
    with pytest.warns(RuntimeWarning, match="degenerate"):
        MeshHeatSolver(V3, F3)


def book(pages=3):
    """Three unit right triangles sharing the edge (0,1): a non-manifold 'book'."""
    V = [[0, 0, 0], [1, 0, 0]]
    F = []
    for k in range(pages):
        ang = 2 * np.pi * k / pages
        V.append([0.5, np.cos(ang), np.sin(ang)])
        F.append([0, 1, 2 + k])
    return np.array(V, float), np.array(F)


def test_nonmanifold_edges_handled_or_refused():
    V, F = book(3)
    with pytest.warns(RuntimeWarning, match=r"1 non-manifold edges .* e\.g\. edge \(0, 1\)"):
        s = MeshHeatSolver(V, F)
    d = s.compute_distance(2)
    assert np.isfinite(d).all() and d[2] == 0
    # pages 3 and 4 are symmetric with respect to page 2
    assert np.isclose(d[3], d[4], rtol=1e-9)
    with pytest.raises(ValueError, match="1 non-manifold edges"):
        MeshHeatSolver(V, F, nonmanifold="error")
    rep = inspect_mesh(V, F)
    assert rep.nonmanifold_edges.tolist() == [[0, 1]]


@pytest.mark.parametrize("kw,msg", [
    (dict(V=np.zeros((3, 2))), "V must have shape"),
    (dict(F=np.array([[0, 1, 5]])), "refers to vertex 5, but V has 3 vertices"),
    (dict(F=np.zeros((0, 3), int)), "F is empty"),
    (dict(t_coef=0.0), "t_coef"),
    (dict(V=np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]])), "non-finite"),
])
def test_bad_input_messages(kw, msg):
    args = dict(V=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), F=np.array([[0, 1, 2]]))
    args.update(kw)
    V, F = args.pop("V"), args.pop("F")
    with pytest.raises(ValueError, match=msg):
        MeshHeatSolver(V, F, **args)


def test_bunny_small_robust_and_plain_agree(shared_data):
    import trimesh

    m = trimesh.load(require(shared_data / "meshes" / "bunny_small.ply"), process=False)
    V, F = np.asarray(m.vertices), np.asarray(m.faces)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean mesh: no warnings
        a = MeshHeatSolver(V, F).compute_distance(0)
        b = MeshHeatSolver(V, F, robust=True).compute_distance(0)
    assert np.abs(a - b).max() < 0.05 * a.max()
    # Euclidean distance is a lower bound of the geodesic (up to O(h) heat-method error)
    h = inspect_mesh(V, F).mean_edge_length
    assert (a >= np.linalg.norm(V - V[0], axis=1) - 2 * h).all()
