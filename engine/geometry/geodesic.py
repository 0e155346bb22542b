"""Heat-method geodesic distances on triangle meshes and point clouds.

The heat method (Crane, Weischedel & Wardetzky 2013): diffuse heat from the sources for a short
time ``t = t_coef * h^2`` (``h`` = mean edge length), normalise the negated gradient of the heat
to a unit field ``X`` and recover the distance ``phi`` whose gradient best matches ``X`` by a
Poisson solve. Both systems are factorised once when a solver is built; each query then costs
two sparse triangular solve pairs (three with ``boundary="average"`` on a mesh with a boundary)
and a few sparse products.

Solver objects pay for setup once (as potpourri3d's ``MeshHeatMethodDistanceSolver``)::

    solver = MeshHeatSolver(V, F)              # V (n, 3) float, F (m, 3) int
    d = solver.compute_distance(0)             # (n,) distance to vertex 0
    d = solver.compute_distance([0, 17])       # distance to the nearest of vertices 0 and 17
    D = solver.compute_distances([0, [5, 9]])  # (2, n): one row per query, solved as a batch

and one-off functions :func:`heat_geodesic` and :func:`point_cloud_heat_geodesic`.

Documented behaviour on imperfect input (:class:`MeshHeatSolver`):

- **Unreferenced vertices** (used by no face, e.g. 1,113 in stanford-bunny.obj) are left out of
  the solve and get ``+inf``; indices are always those of the caller's ``V``. Using one as a
  source raises ``ValueError``.
- **Degenerate faces** (repeated indices, or area <= ``area_eps * h^2``) are dropped from all
  operators with a ``RuntimeWarning`` naming their number; vertices used only by such faces
  become unreferenced.
- **Several components**: vertices in a component that holds no source get ``+inf``.
- **Non-manifold edges** (more than two faces): the cotan operators are still well defined, so
  they are handled (each face contributes) after a ``RuntimeWarning`` naming the count and an
  example edge; pass ``nonmanifold="error"`` to refuse them with a ``ValueError`` instead.
- **Boundary**: Neumann conditions (``boundary="neumann"``, the default, as potpourri3d);
  ``boundary="average"`` averages the Neumann and Dirichlet heat solutions (Crane et al. 2013,
  Sec. 3.2) at the cost of one more factorisation and one more solve per query. Measured on
  stanford-bunny.obj (the only real boundary mesh we have exact distances for, 6 sources):
  mean per-vertex error 0.71 % Neumann vs 0.72 % averaged (robust); on a flat jittered square
  the average is better (see the tests).
- **Sources** out of range raise ``ValueError`` naming the index and the vertex count.
- Distances are shifted so the sources sit at 0 (the mean over a component's sources) and
  clipped at 0 from below (the heat method can undershoot by O(h) right next to a source).
- **Bounds** (meshes, ``bounds=True``, the default): every exact polyhedral distance lies between
  the straight-line distance to the nearest source (a path on the surface is no shorter than the
  segment) and, for a mesh neighbour of a source, the length of that edge (the edge is a path on
  the surface). The heat-method distance is clipped into these bounds, which can only bring it
  closer to the exact one, at every vertex. Measured (mean per-vertex error vs exact, 6 sources):
  stanford-bunny 0.702 % -> 0.677 %, armadillo 0.833 % -> 0.823 %, spot 1.69 % -> 1.44 %,
  cow 1.88 % -> 1.79 %; ~0.3 ms per query. ``bounds=False`` returns the heat-method field itself
  (potpourri3d's, see below).

``robust=True`` (the default, as potpourri3d's ``MeshHeatMethodDistanceSolver``) runs the whole
method (Laplacian, mass, gradient, divergence) on the intrinsic Delaunay triangulation of the
mesh (:mod:`engine.geometry.intrinsic`: edge flips on lengths mollified by ``1e-5`` of the mean
length), whose cotan weights are all non-negative. Meshes with a boundary, non-manifold edges or
misoriented neighbours are flipped on their tufted cover (every edge flippable, boundary ones
included). The plain cotan Laplacian (``robust=False``) of a mesh with very obtuse triangles
violates the maximum principle: on cow.obj the heat solution from vertex 2782 is negative at
2,844 of 2,903 vertices and the result is garbage.

The robust path follows geometry-central's ``HeatMethodDistanceSolver(useRobustLaplacian=true)``
(what potpourri3d runs) in the two choices that move the error, both measured against exact
(MMP) distances (mean over vertices of ``|d - exact| / exact``, 6 random sources per mesh):

- ``h`` (for ``t = t_coef * h^2``) is the mean edge length of the *intrinsic* triangulation the
  operators live on, not of the input mesh: flips shorten edges (armadillo.obj: 18,432 flips,
  ``h`` 3.3 % shorter), and with the input's ``h`` the error on armadillo was 0.99 % vs 0.93 %.
- The Poisson system is ``L + 0.5e-6 I`` (geometry-central's ``L + 1e-6 I`` on its two-sheet
  cover), a screened Poisson problem rather than a pure one. On meshes of a few thousand vertices
  this changes nothing; on fine meshes it damps the longest-wavelength part of the distance by a
  few 0.1 %, which offsets the heat method's overestimate there: armadillo 0.93 % -> 0.83 %,
  stanford-bunny 0.706 % -> 0.702 %. (The plain path keeps a negligible shift: there the
  overestimate is smaller and potpourri3d's plain-path ``1e-6 I`` measured worse: 0.75 % vs 0.82 % on
  armadillo.)

With both, our heat-method field (``bounds=False``) equals potpourri3d's to ~1e-13 on closed
meshes (armadillo) and to ~2e-4 of the maximum on the bunny (boundary; the cover's near-co-circular
flips differ); the default then clips it into the bounds above. Per query, the robust path costs
what the plain one does: the front and back copies of the cover that no flip separated are merged
into one face (:func:`engine.geometry.intrinsic.merge_cover_copies`). Benchmark:
``tools/bench_geodesic.py`` (``tools/results/bench_geodesic.json``).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from .heat_core import HeatCore
from .intrinsic import (cotan_from_lengths, gradient_from_lengths, intrinsic_delaunay, lengths_from_positions,
                        mean_intrinsic_edge_length, merge_cover_copies, mollify, needs_cover,
                        tufted_cover)
from .laplacian import cotan_laplacian, face_gradient, inspect_mesh

__all__ = [
    "MeshHeatSolver",
    "PointCloudHeatSolver",
    "heat_geodesic",
    "point_cloud_heat_geodesic",
    "check_sources",
]


#: Poisson regularisation of the robust path: ``L + ROBUST_POISSON_SHIFT * I`` (dimensionless, as
#: the cotan weights are); geometry-central's ``1e-6`` on a cover that counts every face twice.
ROBUST_POISSON_SHIFT = 0.5e-6


# ----------------------------------------------------------------------------- validation
def _as_points(P, name: str = "V") -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {P.shape}")
    if len(P) == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(P).all():
        bad = np.flatnonzero(~np.isfinite(P).all(axis=1))
        raise ValueError(f"{name} has {len(bad)} non-finite rows (first: {bad[0]})")
    return P


def _as_faces(F, n: int) -> np.ndarray:
    F = np.asarray(F)
    if F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"F must have shape (m, 3) (triangles), got {F.shape}")
    if len(F) == 0:
        raise ValueError("F is empty: a mesh needs faces (use PointCloudHeatSolver for points)")
    if not np.issubdtype(F.dtype, np.integer):
        if not np.all(F == np.round(F)):
            raise ValueError("F must hold integer vertex indices")
    F = F.astype(np.int64)
    lo, hi = int(F.min()), int(F.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"F refers to vertex {bad}, but V has {n} vertices (valid: 0..{n - 1})")
    return F


def check_sources(sources, n: int) -> np.ndarray:
    """Validate one query: an int or a sequence of ints in ``[0, n)``. Returns an int64 array."""
    arr = np.atleast_1d(np.asarray(sources))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"sources must be a vertex index or a non-empty list of indices, got {sources!r}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"source indices must be integers, got {sources!r}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise ValueError(f"source index {int(bad[0])} is out of range: there are {n} vertices (valid: 0..{n - 1})")
    return np.unique(arr)


def _split_queries(queries) -> list:
    if np.isscalar(queries) or (isinstance(queries, np.ndarray) and queries.ndim == 0):
        return [queries]
    return list(queries)


# ----------------------------------------------------------------------------- operators
class _FaceOps:
    """Per-face gradient and its adjoint divergence (cotan discretisation).

    ``G`` is ``(dim * m, n)`` (dim 3: extrinsic, dim 2: each face's intrinsic layout)."""

    def __init__(self, G: sp.spmatrix, areas: np.ndarray, dim: int):
        self.m, self.dim = len(areas), dim
        self.G = sp.csr_matrix(G)
        # b = G^T diag(A) X: the divergence paired with L = G^T diag(A) G (the cotan Laplacian)
        self.GtA = (self.G.T @ sp.diags(np.repeat(areas, dim))).tocsr()

    def direction_divergence(self, u: np.ndarray) -> np.ndarray:
        k = u.shape[1]
        g = (self.G @ u).reshape(self.m, self.dim, k)
        norm = np.sqrt(np.einsum("mck,mck->mk", g, g))
        inv = np.divide(-1.0, norm, out=np.zeros_like(norm), where=norm > 0)  # zero gradient -> X = 0
        g *= inv[:, None, :]
        return self.GtA @ g.reshape(self.dim * self.m, k)


class _EdgeOps:
    """Vertex gradients by weighted least squares in the tangent plane, and the divergence that
    is the adjoint of edge differences on the weight graph of ``L``.

    For a unit field ``X`` per vertex, the Poisson step minimises
    ``sum_ij w_ij (phi_j - phi_i - (X_i + X_j)/2 . (x_j - x_i))^2`` whose normal equations are
    ``L phi = b`` with ``b_i = sum_j w_ij (X_i + X_j)/2 . (x_i - x_j)``: consistent (a linear
    ``phi`` with ``X = grad phi`` is reproduced exactly) for any non-negative weights ``w``.
    """

    def __init__(self, P: np.ndarray, L: sp.spmatrix, normals: np.ndarray):
        n = len(P)
        W = -sp.csr_matrix(L)
        W.setdiag(0)
        W.eliminate_zeros()
        W.data = np.maximum(W.data, 0.0)  # intrinsic-Delaunay weights are >= 0; clip round-off
        self.W = W.tocsr()
        self.P = P
        self.LP = (sp.diags(np.asarray(self.W.sum(axis=1)).ravel()) - self.W) @ P  # (n, 3) = L x
        # tangent frames
        nrm = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
        a = np.where(np.abs(nrm[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
        t1 = np.cross(nrm, a)
        t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
        t2 = np.cross(nrm, t1)
        self.T = np.stack([t1, t2], axis=1)  # (n, 2, 3)
        coo = self.W.tocoo()
        i, j, w = coo.row, coo.col, coo.data
        d = P[j] - P[i]
        p = np.einsum("ecx,ex->ec", self.T[i], d)  # (E, 2) tangent coordinates of x_j - x_i
        # normal matrices A_i = sum_j w p p^T, slightly regularised for isolated / flat stars
        A = np.zeros((n, 2, 2))
        np.add.at(A, i, w[:, None, None] * p[:, :, None] * p[:, None, :])
        tr = np.trace(A, axis1=1, axis2=2)
        A += (1e-9 * tr + 1e-300)[:, None, None] * np.eye(2)
        self.Ainv = np.linalg.inv(A)
        # R u = sum_j w_ij (u_j - u_i) p_ij, stacked as rows 2i + c
        rows = np.concatenate([2 * i, 2 * i + 1])
        cols = np.concatenate([j, j])
        vals = np.concatenate([w * p[:, 0], w * p[:, 1]])
        R = sp.csr_matrix((vals, (rows, cols)), shape=(2 * n, n))
        diag = np.asarray(R.sum(axis=1)).ravel()
        self.R = (R - sp.csr_matrix((diag, (np.arange(2 * n), np.repeat(np.arange(n), 2))), shape=(2 * n, n))).tocsr()

    def direction_divergence(self, u: np.ndarray) -> np.ndarray:
        n, k = u.shape
        r = (self.R @ u).reshape(n, 2, k)
        g2 = np.einsum("nab,nbk->nak", self.Ainv, r)
        g = np.einsum("nax,nak->nxk", self.T, g2)  # (n, 3, k)
        norm = np.sqrt(np.einsum("nxk,nxk->nk", g, g))
        with np.errstate(divide="ignore", invalid="ignore"):
            X = np.where(norm[:, None, :] > 0, -g / norm[:, None, :], 0.0)
        # b_i = 1/2 X_i . (L x)_i + 1/2 sum_j w_ij X_j . (x_i - x_j)
        b = 0.5 * np.einsum("nx,nxk->nk", self.LP, X)
        for c in range(3):
            xc = self.P[:, c : c + 1]
            b += 0.5 * (xc * (self.W @ X[:, c, :]) - self.W @ (xc * X[:, c, :]))
        return b


# ----------------------------------------------------------------------------- solvers
class _HeatSolverBase:
    n_vertices: int
    _active: np.ndarray  # (n_active,) indices of the caller's vertices that take part
    _local: np.ndarray  # (n_vertices,) caller index -> active index or -1
    _core: HeatCore
    _ops: object

    def compute_distance(self, sources) -> np.ndarray:
        """Distance ``(n_vertices,)`` to the nearest of ``sources`` (an index or a list)."""
        return self.compute_distances([sources])[0]

    def compute_distances(self, queries: Iterable) -> np.ndarray:
        """Batched queries: ``queries[q]`` is an index or a list of indices (multi-source).
        Returns ``(len(queries), n_vertices)``; all right-hand sides are solved together."""
        qs = [check_sources(q, self.n_vertices) for q in _split_queries(queries)]
        if not qs:
            return np.zeros((0, self.n_vertices))
        local = []
        for q in qs:
            loc = self._local[q]
            if (loc < 0).any():
                bad = int(q[np.flatnonzero(loc < 0)[0]])
                raise ValueError(f"source vertex {bad} is not part of the solve ({self._excluded_reason})")
            local.append(loc)
        na = len(self._active)
        rhs = np.zeros((na, len(qs)))
        for c, loc in enumerate(local):
            rhs[loc, c] = 1.0
        u = self._core.diffuse(rhs)
        b = self._ops.direction_divergence(u)
        phi = self._finish(self._core.integrate(b, local), local)
        out = np.full((len(qs), self.n_vertices), np.inf)
        out[:, self._active] = phi.T
        return out

    def _finish(self, phi: np.ndarray, sources: list[np.ndarray]) -> np.ndarray:
        return phi

    @property
    def t(self) -> float:
        """Diffusion time used (``t_coef * h^2``)."""
        return self._core.t


class MeshHeatSolver(_HeatSolverBase):
    """Prefactorised heat-method geodesic distance on a triangle mesh.

    Parameters
    ----------
    V : (n, 3) vertex positions. F : (m, 3) zero-based triangle indices.
    t_coef : diffusion time factor; ``t = t_coef * h^2`` with ``h`` the mean edge length (of the
        intrinsic Delaunay triangulation when ``robust``).
    robust : (default True) operators on the intrinsic Delaunay triangulation (tufted cover where
        needed), as potpourri3d; False: the plain cotan Laplacian of the input mesh (wrong on
        meshes with many obtuse triangles, see the module docstring).
    boundary : ``"neumann"`` (default) or ``"average"`` (Neumann/Dirichlet average).
    area_eps : faces with area <= ``area_eps * h^2`` count as degenerate and are dropped.
    nonmanifold : ``"warn"`` (handle, default) or ``"error"``.
    bounds : clip to the bounds every exact distance obeys (see the module docstring; default True).
    backend : sparse factorisation, ``"qdldl"`` (LDL^T, the default when installed) or
        ``"superlu"`` (scipy); None picks :func:`engine.geometry.heat_core.default_backend`.

    See the module docstring for the behaviour on imperfect meshes. ``report`` holds what
    :func:`engine.geometry.laplacian.inspect_mesh` found.
    """

    def __init__(self, V, F, t_coef: float = 1.0, robust: bool = True, boundary: str = "neumann",
                 area_eps: float = 1e-12, nonmanifold: str = "warn", backend: str | None = None,
                 bounds: bool = True):
        V = _as_points(V, "V")
        F = _as_faces(F, len(V))
        if not (np.isfinite(t_coef) and t_coef > 0):
            raise ValueError(f"t_coef must be a positive number, got {t_coef}")
        if boundary not in ("average", "neumann"):
            raise ValueError(f"boundary must be 'average' or 'neumann', got {boundary!r}")
        if nonmanifold not in ("warn", "error"):
            raise ValueError(f"nonmanifold must be 'warn' or 'error', got {nonmanifold!r}")
        self.n_vertices = len(V)
        rep = inspect_mesh(V, F, area_eps=area_eps)
        self.report = rep
        if len(rep.nonmanifold_edges):
            e = rep.nonmanifold_edges[0]
            msg = (f"mesh has {len(rep.nonmanifold_edges)} non-manifold edges (shared by more than two "
                   f"faces), e.g. edge ({e[0]}, {e[1]})")
            if nonmanifold == "error":
                raise ValueError(msg)
            warnings.warn(msg + "; each incident face contributes to the operators", RuntimeWarning, stacklevel=2)
        if len(rep.degenerate_faces):
            warnings.warn(f"dropping {len(rep.degenerate_faces)} degenerate (zero-area or repeated-index) faces "
                          f"(first: face {rep.degenerate_faces[0]})", RuntimeWarning, stacklevel=2)
            keep = np.ones(len(F), bool)
            keep[rep.degenerate_faces] = False
            F = F[keep]
        if len(F) == 0:
            raise ValueError("mesh has no non-degenerate faces")
        used = np.zeros(self.n_vertices, bool)
        used[F.ravel()] = True
        self._active = np.flatnonzero(used)
        self._local = np.full(self.n_vertices, -1, np.int64)
        self._local[self._active] = np.arange(len(self._active))
        self._excluded_reason = "it is used by no non-degenerate face"
        Va, Fa = V[self._active], self._local[F]
        h = rep.mean_edge_length
        na = len(Va)
        self.robust, self.covered = bool(robust), False
        if robust:
            lengths = mollify(lengths_from_positions(Va, Fa))
            tw, weight = None, 1.0
            if needs_cover(Fa):  # boundary / non-manifold / misoriented edges: flip on the tufted cover
                Fa, lengths, tw = tufted_cover(Fa, lengths)
                weight, self.covered = 0.5, True  # every face is there twice
            Fi, li, self.n_flips, twi = intrinsic_delaunay(Fa, lengths, twin=tw, return_twin=True)
            # the time step of the triangulation the operators live on (as geometry-central)
            h = mean_intrinsic_edge_length(li, twi)
            if self.covered:  # front and back copies that no flip separated: one face of weight 1
                Fi, li, fw = merge_cover_copies(Fi, li, weight)
            else:
                fw = None
            L = cotan_from_lengths(Fi, li, na, weights=fw)
            G, areas = gradient_from_lengths(Fi, li, na)
            if fw is not None:
                areas = fw * areas
            mass = np.bincount(Fi.ravel(), weights=np.repeat(areas / 3.0, 3), minlength=na)
            self._ops = _FaceOps(G, areas, 2)
        else:
            self.n_flips = 0
            L = cotan_laplacian(Va, Fa)
            G, areas, _ = face_gradient(Va, Fa)
            mass = np.bincount(Fa.ravel(), weights=np.repeat(areas / 3.0, 3), minlength=na)
            self._ops = _FaceOps(G, areas, 3)
        bmask = None
        if boundary == "average" and len(rep.boundary_vertices):
            bmask = np.zeros(len(Va), bool)
            bmask[self._local[rep.boundary_vertices]] = True
        self._core = HeatCore(L, mass, t_coef * h * h, bmask, backend,
                              poisson_shift=ROBUST_POISSON_SHIFT if robust else None)
        self.bounds = bool(bounds)
        if self.bounds:  # input-mesh edges with their lengths (straight segments on the surface)
            Fo = self._local[F]
            i = np.concatenate([Fo[:, 0], Fo[:, 1], Fo[:, 2]])
            j = np.concatenate([Fo[:, 1], Fo[:, 2], Fo[:, 0]])
            E = sp.csr_matrix((np.ones(2 * len(i)), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(na, na))
            E.sum_duplicates()
            r = np.repeat(np.arange(na), np.diff(E.indptr))
            E.data = np.linalg.norm(Va[E.indices] - Va[r], axis=1)
            self._edges, self._pos = E, Va

    def _finish(self, phi: np.ndarray, sources: list[np.ndarray]) -> np.ndarray:
        """Clip each column into [straight-line distance to the nearest source, length of the edge
        to an adjacent source]: both bound the exact distance."""
        if not self.bounds:
            return phi
        P, E = self._pos, self._edges
        for q, src in enumerate(sources):
            col = phi[:, q]
            if len(src) <= 32:
                lo = np.linalg.norm(P - P[src[0]], axis=1)
                for v in src[1:]:
                    np.minimum(lo, np.linalg.norm(P - P[v], axis=1), out=lo)
            else:
                from scipy.spatial import cKDTree

                lo = cKDTree(P[src]).query(P)[0]
            np.maximum(col, lo, out=col)  # +inf (unreachable) stays +inf
            nb = E[src]  # rows: the sources' mesh neighbours and edge lengths
            if nb.nnz:
                j, le = nb.indices, nb.data
                up = np.full(len(col), np.inf)
                np.minimum.at(up, j, le)
                np.minimum(col, up, out=col)
            col[src] = 0.0
        return phi


class PointCloudHeatSolver(_HeatSolverBase):
    """Prefactorised heat-method geodesic distance on a point cloud.

    The Laplacian and mass are the tufted point-cloud Laplacian of Sharp & Crane 2020 (the
    ``robust-laplacian`` package, ``n_neighbors`` nearest neighbours); normals come from PCA of
    the same neighbourhoods; gradients and divergence as in :class:`_EdgeOps`. ``h`` is the mean
    length of the Laplacian's edges and ``t = t_coef * h^2``. Point clouds have no boundary
    treatment (Neumann). Points in a part of the neighbour graph without a source get ``+inf``.
    """

    def __init__(self, P, t_coef: float = 1.0, n_neighbors: int = 30):
        P = _as_points(P, "P")
        if len(P) < 4:
            raise ValueError(f"a point cloud needs at least 4 points, got {len(P)}")
        if not (np.isfinite(t_coef) and t_coef > 0):
            raise ValueError(f"t_coef must be a positive number, got {t_coef}")
        import robust_laplacian
        from scipy.spatial import cKDTree

        self.n_vertices = len(P)
        self._active = np.arange(len(P))
        self._local = np.arange(len(P))
        self._excluded_reason = ""
        k = int(min(n_neighbors, len(P) - 1))
        L, Mm = robust_laplacian.point_cloud_laplacian(P, n_neighbors=k)
        mass = Mm.diagonal().copy()
        _, nb = cKDTree(P).query(P, k=min(k + 1, len(P)))
        Q = P[nb] - P[nb].mean(axis=1, keepdims=True)
        cov = np.einsum("nki,nkj->nij", Q, Q)
        _, evec = np.linalg.eigh(cov)
        normals = evec[:, :, 0]
        coo = sp.triu(L, k=1).tocoo()
        h = float(np.linalg.norm(P[coo.row] - P[coo.col], axis=1).mean())
        self._ops = _EdgeOps(P, L, normals)
        self._core = HeatCore(L, mass, t_coef * h * h, None)


def heat_geodesic(V, F, sources, t_coef: float = 1.0, robust: bool = True) -> np.ndarray:
    """One-off heat-method distance ``(n,)`` on a mesh from ``sources`` (index or list)."""
    return MeshHeatSolver(V, F, t_coef=t_coef, robust=robust).compute_distance(sources)


def point_cloud_heat_geodesic(P, sources, t_coef: float = 1.0, n_neighbors: int = 30) -> np.ndarray:
    """One-off heat-method distance ``(n,)`` on a point cloud from ``sources``."""
    return PointCloudHeatSolver(P, t_coef=t_coef, n_neighbors=n_neighbors).compute_distance(sources)
