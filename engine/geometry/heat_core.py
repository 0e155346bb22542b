"""Shared machinery of the heat method: sparse SPD factorisations, the heat and Poisson solves.

Used by :mod:`engine.geometry.geodesic` for meshes and point clouds. Internal module; the public
API is in :mod:`engine.geometry.geodesic`.

Factorisation backends (:class:`SPDFactor`, chosen by ``backend=`` or ``KERNELIGHT_SPARSE_SOLVER``):

- ``"qdldl"`` (default when the ``qdldl`` package is installed): a sparse LDL^T with an AMD
  fill-reducing ordering. LDL^T needs no square roots, so it also factors the (almost singular)
  shifted Poisson matrix without the "not positive definite" failures an LL^T Cholesky can hit.
  Measured (CPU time, 2 shared cores): 110-160 ms to factor the heat system of the bunny
  (34,834 vertices) or armadillo (49,990), 4-5 ms per solve.
- ``"superlu"`` (fallback, scipy only): SuperLU in symmetric mode (``diag_pivot_thresh=0``,
  ``SymmetricMode=True``) with the ``MMD_AT_PLUS_A`` ordering, the same fill as a Cholesky
  with minimum degree: ~200-250 ms to factor, ~5 ms per solve. The default COLAMD ordering
  doubles the fill; non-symmetric mode with partial pivoting takes ~17 s on armadillo.

Also measured and not used: CHOLMOD through ``sksparse-minimal`` (~95 ms per factor, about the
same as qdldl, but a small package that conflicts with ``cholespy`` when both are imported and
silently returns a bad factor on a matrix it finds indefinite) and ``cholespy`` (slower to
factor here, 230-480 ms). ``scikit-sparse`` has no wheel for this platform.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.sparse.csgraph import connected_components

_SUPERLU_OPTS = dict(diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
BACKENDS = ("qdldl", "superlu")


def default_backend() -> str:
    """The factorisation backend used when none is named: ``$KERNELIGHT_SPARSE_SOLVER`` if set,
    else ``"qdldl"`` when that package imports, else ``"superlu"``."""
    env = os.environ.get("KERNELIGHT_SPARSE_SOLVER", "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"KERNELIGHT_SPARSE_SOLVER must be one of {BACKENDS}, got {env!r}")
        return env
    try:
        import qdldl  # noqa: F401
    except ImportError:
        return "superlu"
    return "qdldl"


class SPDFactor:
    """Factorisation of a sparse symmetric positive definite ``(n, n)`` matrix ``A``.

    ``backend`` is ``"qdldl"`` (LDL^T, AMD ordering), ``"superlu"`` (symmetric-mode LU, minimum
    degree ordering) or ``None`` for :func:`default_backend`. Only the upper triangle of ``A``
    is read by qdldl; SuperLU reads all of it, so ``A`` must really be symmetric.
    """

    def __init__(self, A: sp.spmatrix, backend: str | None = None):
        backend = default_backend() if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        A = sp.csc_matrix(A)
        self.n = A.shape[0]
        if backend == "qdldl":
            import qdldl

            self._f = qdldl.Solver(sp.triu(A, format="csc"), upper=True)
        else:
            self._f = sla.splu(A, permc_spec="MMD_AT_PLUS_A", **_SUPERLU_OPTS)

    def solve(self, B: np.ndarray) -> np.ndarray:
        """Solve ``A X = B`` for ``B`` of shape ``(n,)`` or ``(n, k)``."""
        B = np.asarray(B, dtype=np.float64)
        if self.backend == "superlu":
            return self._f.solve(B)
        if B.ndim == 1:
            return self._f.solve(B)
        X = np.empty_like(B)
        for c in range(B.shape[1]):
            X[:, c] = self._f.solve(np.ascontiguousarray(B[:, c]))
        return X


class HeatCore:
    """The two linear solves of the heat method, prefactorised.

    Parameters
    ----------
    L : (n, n) sparse, positive semi-definite weak Laplacian.
    mass : (n,) lumped mass (all > 0).
    t : diffusion time.
    boundary : (n,) bool mask of boundary vertices, or None. With a boundary the heat solution
        is the average of the Neumann solution and the Dirichlet one (u = u0 on the boundary,
        i.e. zero except at boundary sources), as recommended by Crane et al. 2013, Sec. 3.2.
    backend : factorisation backend for :class:`SPDFactor` (None: :func:`default_backend`).
    poisson_shift : the Poisson system is ``L + poisson_shift * I`` when a number is given (what
        geometry-central / potpourri3d do, see :class:`engine.geometry.geodesic.MeshHeatSolver`);
        ``None`` (default) uses a negligible mass-relative shift that only fixes the constants.
    """

    def __init__(self, L: sp.spmatrix, mass: np.ndarray, t: float, boundary: np.ndarray | None = None,
                 backend: str | None = None, poisson_shift: float | None = None):
        L = sp.csr_matrix(L)
        self.n = L.shape[0]
        self.mass = np.asarray(mass, dtype=np.float64)
        self.t = float(t)
        Mdiag = sp.diags(self.mass)
        A = (Mdiag + self.t * L).tocsc()
        self.backend = default_backend() if backend is None else backend
        jobs = {"heat": A}
        # Poisson: L is singular (constants); a tiny mass shift makes it definite. The right-hand
        # side sums to zero on every component, so the shift only fixes the free constants
        # (removed afterwards) and perturbs other modes by ~1e-11 * (1/h^2) / lambda_1.
        if poisson_shift is None:
            scale = float(L.diagonal().sum() / max(self.mass.sum(), 1e-300))
            jobs["poisson"] = (L + 1e-11 * scale * Mdiag).tocsc()
        else:
            # L + eps I: a screened Poisson problem; it damps the lowest modes by ~eps / lambda_k
            jobs["poisson"] = (L + float(poisson_shift) * sp.eye(self.n, format="csr")).tocsc()
        pattern = L.copy()
        pattern.data = np.ones_like(pattern.data)  # zero cotan weights still connect
        self.n_components, self.labels = connected_components(pattern, directed=False)
        self.interior = None
        if boundary is not None and boundary.any() and not boundary.all():
            self.boundary = np.flatnonzero(boundary)
            self.interior = np.flatnonzero(~boundary)
            A = A.tocsr()
            self._A_IB = A[self.interior][:, self.boundary].tocsr()
            jobs["heat_dirichlet"] = A[self.interior][:, self.interior].tocsc()
        # The factorisations are independent and release the GIL: run them in parallel threads
        # (measured on armadillo, 2 cores: 3 qdldl factorisations 0.33 s sequential, 0.22 s threaded).
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as ex:
            futures = {name: ex.submit(SPDFactor, mat, self.backend) for name, mat in jobs.items()}
            for name, fut in futures.items():
                setattr(self, name, fut.result())

    def diffuse(self, rhs: np.ndarray) -> np.ndarray:
        """Heat solution for initial heat ``rhs`` (integrated: a one-hot vector per source)."""
        u = self.heat.solve(rhs)
        if self.interior is None:
            return u
        g = rhs[self.boundary] / self.mass[self.boundary].reshape((-1,) + (1,) * (rhs.ndim - 1))
        uD = np.empty_like(u)
        uD[self.boundary] = g
        uD[self.interior] = self.heat_dirichlet.solve(rhs[self.interior] - self._A_IB @ g)
        return 0.5 * (u + uD)

    def integrate(self, b: np.ndarray, sources: list[np.ndarray]) -> np.ndarray:
        """Solve the Poisson problem ``L phi = b`` and shift each component so that the mean of
        ``phi`` over its sources is 0; components without a source get ``+inf``.

        ``b`` is ``(n, k)`` and ``sources[q]`` the source indices of column ``q``.
        """
        phi = self.poisson.solve(b)
        if self.n_components == 1:  # common case: no component bookkeeping
            offs = np.array([phi[src, q].mean() for q, src in enumerate(sources)])
            phi -= offs.reshape((1,) * (phi.ndim - 1) + (-1,))
            return np.maximum(phi, 0.0, out=phi)
        out = np.full_like(phi, np.inf)
        for q, src in enumerate(sources):
            lab = self.labels[src]
            comps = np.unique(lab)
            offs = np.bincount(lab, weights=phi[src, q], minlength=self.n_components)
            offs /= np.maximum(np.bincount(lab, minlength=self.n_components), 1)
            reach = np.isin(self.labels, comps)
            out[reach, q] = np.maximum(phi[reach, q] - offs[self.labels[reach]], 0.0)
        return out
