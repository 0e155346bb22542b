"""Discrete differential operators on triangle meshes and point clouds (numpy / scipy.sparse).

Conventions used throughout :mod:`engine.geometry`:

- ``V`` is a ``(n, 3)`` float64 array of vertex positions, ``F`` a ``(m, 3)`` int64 array of
  zero-based vertex indices, counter-clockwise seen from outside.
- Laplacians are *weak* and **positive semi-definite**: ``L[i, i] = sum_j w_ij`` and
  ``L[i, j] = -w_ij`` with the cotan weights ``w_ij = (cot a_ij + cot b_ij) / 2``. So
  ``u @ L @ u = integral |grad u|^2`` and ``L @ constant = 0``.
- Mass matrices are lumped (barycentric: a third of each incident triangle's area) and returned
  as a ``(n,)`` array of diagonal entries.
- The face gradient ``G`` is a ``(3m, n)`` sparse matrix: ``(G @ u).reshape(m, 3)[f]`` is the
  (constant) gradient of the piecewise-linear function ``u`` on face ``f``. With face areas
  ``a``, the cotan Laplacian is exactly ``G.T @ diag(repeat(a, 3)) @ G``.

Everything here is vectorised numpy; nothing loops over vertices or faces in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "MeshReport",
    "inspect_mesh",
    "face_areas",
    "cotan_laplacian",
    "lumped_mass",
    "face_gradient",
    "mean_edge_length",
    "unique_edges",
]


def _face_edges(V: np.ndarray, F: np.ndarray):
    """Edge vectors opposite each corner: e_c = x[corner c+2] - x[corner c+1] (c = 0, 1, 2)."""
    x0, x1, x2 = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    return x2 - x1, x0 - x2, x1 - x0


def face_areas(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    """``(m,)`` triangle areas."""
    e0, e1, _ = _face_edges(V, F)
    return 0.5 * np.linalg.norm(np.cross(e0, e1), axis=1)


def unique_edges(F: np.ndarray):
    """Undirected edges of a triangle list.

    Returns ``(edges, counts)``: ``edges`` is ``(E, 2)`` sorted pairs (``i < j``) and ``counts``
    how many faces use each edge (1 = boundary, 2 = manifold interior, > 2 = non-manifold).
    """
    he = np.concatenate([F[:, [1, 2]], F[:, [2, 0]], F[:, [0, 1]]], axis=0)
    he.sort(axis=1)
    if len(he) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    n = int(he.max()) + 1
    keys, counts = np.unique(he[:, 0].astype(np.int64) * n + he[:, 1], return_counts=True)
    return np.stack([keys // n, keys % n], axis=1), counts


def mean_edge_length(V: np.ndarray, F: np.ndarray) -> float:
    """Mean length of the undirected edges of ``F`` (the ``h`` of the heat method)."""
    edges, _ = unique_edges(F)
    if len(edges) == 0:
        return 0.0
    return float(np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1).mean())


def cotan_laplacian(V: np.ndarray, F: np.ndarray, n: int | None = None) -> sp.csr_matrix:
    """Positive semi-definite cotan Laplacian ``(n, n)`` (CSR) of the triangle mesh ``(V, F)``.

    Faces must be non-degenerate (see :func:`inspect_mesh`): a zero-area face has infinite
    cotangents. Works for non-manifold edges too (every incident face adds its cotangent).
    """
    n = len(V) if n is None else n
    e0, e1, e2 = _face_edges(V, F)
    dbl = np.linalg.norm(np.cross(e0, e1), axis=1)  # twice the area
    # cot of the angle at corner c = (dot of the two edges leaving c) / |cross|
    cot0 = -np.einsum("ij,ij->i", e1, e2) / dbl
    cot1 = -np.einsum("ij,ij->i", e2, e0) / dbl
    cot2 = -np.einsum("ij,ij->i", e0, e1) / dbl
    # the angle at corner c is opposite edge (c+1, c+2)
    I = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])
    J = np.concatenate([F[:, 2], F[:, 0], F[:, 1]])
    w = 0.5 * np.concatenate([cot0, cot1, cot2])
    rows = np.concatenate([I, J, I, J])
    cols = np.concatenate([J, I, I, J])
    vals = np.concatenate([-w, -w, w, w])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def lumped_mass(V: np.ndarray, F: np.ndarray, n: int | None = None) -> np.ndarray:
    """``(n,)`` barycentric lumped mass: each vertex gets a third of its incident face areas."""
    n = len(V) if n is None else n
    a = face_areas(V, F)
    return np.bincount(F.ravel(), weights=np.repeat(a / 3.0, 3), minlength=n)


def face_gradient(V: np.ndarray, F: np.ndarray, n: int | None = None):
    """Face gradient operator.

    Returns ``(G, areas, normals)``: ``G`` is ``(3m, n)`` CSR with
    ``grad u|_f = sum_c u[F[f, c]] * (N_f x e_c) / (2 A_f)``, ``areas`` ``(m,)`` and unit
    ``normals`` ``(m, 3)``. Faces must be non-degenerate.
    """
    n = len(V) if n is None else n
    m = len(F)
    e = np.stack(_face_edges(V, F), axis=1)  # (m, 3 corners, 3 xyz)
    cr = np.cross(e[:, 0], e[:, 1])
    dbl = np.linalg.norm(cr, axis=1)
    N = cr / dbl[:, None]
    vals = np.cross(N[:, None, :], e) / dbl[:, None, None]  # (m, corner, xyz)
    rows = (3 * np.arange(m))[:, None, None] + np.arange(3)[None, None, :]
    rows = np.broadcast_to(rows, (m, 3, 3))
    cols = np.broadcast_to(F[:, :, None], (m, 3, 3))
    G = sp.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(3 * m, n))
    return G, 0.5 * dbl, N


@dataclass
class MeshReport:
    """What :func:`inspect_mesh` found. Index arrays refer to the caller's ``V`` / ``F``."""

    n_vertices: int
    n_faces: int
    degenerate_faces: np.ndarray  # (k,) face indices with (near-)zero area or repeated vertices
    unreferenced_vertices: np.ndarray  # (k,) vertex indices used by no (kept) face
    nonmanifold_edges: np.ndarray  # (k, 2) vertex pairs shared by more than two faces
    boundary_vertices: np.ndarray  # (k,) vertices on an edge used by exactly one face
    mean_edge_length: float

    def summary(self) -> str:
        parts = [f"{self.n_vertices} vertices, {self.n_faces} faces"]
        if len(self.degenerate_faces):
            parts.append(f"{len(self.degenerate_faces)} degenerate faces dropped")
        if len(self.unreferenced_vertices):
            parts.append(f"{len(self.unreferenced_vertices)} unreferenced vertices")
        if len(self.nonmanifold_edges):
            parts.append(f"{len(self.nonmanifold_edges)} non-manifold edges")
        if len(self.boundary_vertices):
            parts.append(f"{len(self.boundary_vertices)} boundary vertices")
        return ", ".join(parts)


def inspect_mesh(V: np.ndarray, F: np.ndarray, area_eps: float = 1e-12) -> MeshReport:
    """Find degenerate faces, unreferenced vertices, non-manifold edges and the boundary.

    A face is degenerate when two of its indices repeat or its area is below
    ``area_eps * h^2`` (``h`` = mean edge length). Unreferenced vertices, the boundary and the
    non-manifold edges are computed on the faces that remain after dropping degenerate ones.
    """
    n, m = len(V), len(F)
    repeated = (F[:, 0] == F[:, 1]) | (F[:, 1] == F[:, 2]) | (F[:, 2] == F[:, 0])
    e0, e1, e2 = _face_edges(V, F)
    h = float(np.mean(np.linalg.norm(np.concatenate([e0, e1, e2])[np.tile(~repeated, 3)], axis=1))) if m else 0.0
    areas = face_areas(V, F) if m else np.zeros(0)
    bad = repeated | ~np.isfinite(areas) | (areas <= area_eps * max(h, 1e-300) ** 2)
    good = F[~bad]
    used = np.zeros(n, bool)
    used[good.ravel()] = True
    edges, counts = unique_edges(good)
    boundary = np.unique(edges[counts == 1].ravel())
    return MeshReport(
        n_vertices=n,
        n_faces=m,
        degenerate_faces=np.flatnonzero(bad),
        unreferenced_vertices=np.flatnonzero(~used),
        nonmanifold_edges=edges[counts > 2],
        boundary_vertices=boundary,
        mean_edge_length=float(np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1).mean()) if len(edges) else 0.0,
    )
