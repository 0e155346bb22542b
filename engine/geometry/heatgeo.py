"""Heat-geodesic embeddings (HeatGeo, Huguet et al. 2023, KrishnaswamyLab/HeatGeo).

Points -> symmetric kNN graph -> normalised graph Laplacian ``L = I - D^-1/2 W D^-1/2``
(eigenvalues in [0, 2]) -> heat kernel ``H_t = exp(-t L)`` (Chebyshev expansion, or
``scipy.linalg.expm`` for small n) -> heat-geodesic dissimilarity

    d_t(i, j) = sqrt( -4t log H_t(i, j) + sigma * 4t * log((H_t(i, i) + H_t(j, j)) / 2) )

(``sigma`` in [0, 1] is the Harnack regularisation; with ``sigma = 1`` the diagonal is 0) ->
metric MDS (classical MDS start, then SMACOF stress majorisation) to ``n_components`` dims.

Chebyshev: with ``x = L - I`` (spectrum in [-1, 1]),
``exp(-t (1 + x)) = ive(0, t) T_0(x) + 2 sum_k (-1)^k ive(k, t) T_k(x)`` where ``ive`` is the
exponentially scaled modified Bessel function, so the truncation error after ``order`` terms
is about ``2 * ive(order + 1, t)``.

Heat values below ``1e-300`` (far apart points, or Chebyshev round-off) are clipped there
before the logarithm, which caps the dissimilarity instead of producing NaN.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["HeatGeoEmbedding", "knn_normalized_laplacian", "heat_kernel_chebyshev", "heat_kernel_exact",
           "heat_geodesic_dissimilarity", "classical_mds", "smacof"]


def knn_normalized_laplacian(X: np.ndarray, k: int = 10) -> sp.csr_matrix:
    """Symmetric normalised Laplacian ``(n, n)`` of the symmetrised binary kNN graph of ``X``."""
    from scipy.spatial import cKDTree

    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    _, nb = cKDTree(X).query(X, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((np.ones(n * k), (rows, nb[:, 1:].ravel())), shape=(n, n))
    W = ((W + W.T) > 0).astype(np.float64)
    dinv = 1.0 / np.sqrt(np.asarray(W.sum(axis=1)).ravel())
    return (sp.eye(n) - sp.diags(dinv) @ W @ sp.diags(dinv)).tocsr()


def heat_kernel_chebyshev(L: sp.spmatrix, t: float, order: int = 30, B: np.ndarray | None = None) -> np.ndarray:
    """``exp(-t L) @ B`` (``B`` defaults to the identity) by a Chebyshev expansion of ``order``
    terms; ``L`` must have its spectrum in [0, 2] (a normalised Laplacian)."""
    from scipy.special import ive

    n = L.shape[0]
    B = np.eye(n) if B is None else np.asarray(B, dtype=np.float64)
    x = sp.csr_matrix(L) - sp.eye(n)
    c = ive(np.arange(order + 1), t) * 2.0 * (-1.0) ** np.arange(order + 1)
    c[0] /= 2.0
    T0, T1 = B, x @ B
    out = c[0] * T0 + (c[1] * T1 if order >= 1 else 0.0)
    for k in range(2, order + 1):
        T0, T1 = T1, 2.0 * (x @ T1) - T0
        out = out + c[k] * T1
    return out


def heat_kernel_exact(L: sp.spmatrix, t: float) -> np.ndarray:
    """Dense ``exp(-t L)`` by ``scipy.linalg.expm`` (reference; small n only)."""
    from scipy.linalg import expm

    return expm(-t * (L.toarray() if sp.issparse(L) else np.asarray(L)))


def heat_geodesic_dissimilarity(H: np.ndarray, t: float, harnack: float = 1.0) -> np.ndarray:
    """``(n, n)`` heat-geodesic dissimilarity from a heat kernel ``H`` (see module docstring)."""
    if not 0.0 <= harnack <= 1.0:
        raise ValueError(f"harnack (sigma) must be in [0, 1], got {harnack}")
    H = 0.5 * (H + H.T)
    Hc = np.maximum(H, 1e-300)
    diag = np.diag(Hc)
    D2 = -4.0 * t * np.log(Hc) + harnack * 4.0 * t * np.log(0.5 * (diag[:, None] + diag[None, :]))
    D = np.sqrt(np.maximum(D2, 0.0))
    np.fill_diagonal(D, 0.0)
    return D


def classical_mds(D: np.ndarray, dim: int) -> np.ndarray:
    """Classical (Torgerson) MDS of a dissimilarity matrix: ``(n, dim)``."""
    n = len(D)
    J = np.eye(n) - 1.0 / n
    Bm = -0.5 * J @ (D**2) @ J
    w, v = np.linalg.eigh(Bm)
    idx = np.argsort(w)[::-1][:dim]
    return v[:, idx] * np.sqrt(np.maximum(w[idx], 0.0))


def smacof(D: np.ndarray, X0: np.ndarray, n_iter: int = 300, tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Metric MDS by SMACOF (unit weights): Guttman transforms from ``X0`` until the relative
    stress decrease is below ``tol``. Returns ``(X, stress)`` with
    ``stress = sum_{i<j} (|x_i - x_j| - D_ij)^2``."""
    n = len(D)
    X = np.array(X0, dtype=np.float64)

    def stress_of(X):
        E = np.linalg.norm(X[:, None] - X[None], axis=-1)
        return 0.5 * float(((E - D) ** 2).sum()), E

    s, E = stress_of(X)
    for _ in range(n_iter):
        with np.errstate(divide="ignore", invalid="ignore"):
            Bm = np.where(E > 0, -D / E, 0.0)
        np.fill_diagonal(Bm, 0.0)
        np.fill_diagonal(Bm, -Bm.sum(axis=1))
        X = Bm @ X / n
        s_new, E = stress_of(X)
        if s - s_new <= tol * max(s, 1e-300):
            s = s_new
            break
        s = s_new
    return X, s


class HeatGeoEmbedding:
    """Heat-geodesic embedding of a point set.

    Parameters: ``k`` neighbours of the kNN graph, diffusion time ``t``, Chebyshev ``order``
    (``method="chebyshev"``) or ``method="exact"`` (dense expm, n up to a few thousand),
    ``harnack`` (sigma in [0, 1]), ``n_components`` (2 or 3), SMACOF ``n_iter``.

    After :meth:`fit_transform`: ``embedding_`` ``(n, n_components)``, ``dissimilarity_``
    ``(n, n)``, ``heat_kernel_`` ``(n, n)``, ``stress_``.
    """

    def __init__(self, k: int = 10, t: float = 10.0, order: int = 40, harnack: float = 1.0,
                 n_components: int = 2, method: str = "chebyshev", n_iter: int = 300):
        if method not in ("chebyshev", "exact"):
            raise ValueError(f"method must be 'chebyshev' or 'exact', got {method!r}")
        if not t > 0:
            raise ValueError(f"t must be positive, got {t}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.k, self.t, self.order, self.harnack = k, float(t), int(order), float(harnack)
        self.n_components, self.method, self.n_iter = n_components, method, n_iter

    def fit_transform(self, points) -> np.ndarray:
        """Embed ``points`` ``(n, d)``; returns ``(n, n_components)``."""
        X = np.asarray(points, dtype=np.float64)
        if X.ndim != 2 or len(X) < 3 or not np.isfinite(X).all():
            raise ValueError(f"points must be a finite (n >= 3, d) array, got shape {X.shape}")
        L = knn_normalized_laplacian(X, self.k)
        if self.method == "exact":
            H = heat_kernel_exact(L, self.t)
        else:
            H = heat_kernel_chebyshev(L, self.t, self.order)
        D = heat_geodesic_dissimilarity(H, self.t, self.harnack)
        Y0 = classical_mds(D, self.n_components)
        Y, s = smacof(D, Y0, n_iter=self.n_iter)
        self.heat_kernel_, self.dissimilarity_, self.embedding_, self.stress_ = H, D, Y, s
        return Y
