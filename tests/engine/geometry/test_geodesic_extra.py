"""Point-cloud heat method, HeatGeo embeddings, isolines and the `kernelight geodesic` command."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from engine.geometry.geodesic import PointCloudHeatSolver
from engine.geometry.geodesic_io import isolines, load_geometry
from engine.geometry.heatgeo import (HeatGeoEmbedding, heat_geodesic_dissimilarity, heat_kernel_chebyshev,
                                     heat_kernel_exact, knn_normalized_laplacian)
from tests.conftest import require


def fibonacci_sphere(n):
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def test_point_cloud_sphere_great_circle():
    P = fibonacci_sphere(2000)
    d = PointCloudHeatSolver(P).compute_distance(0)
    ex = np.arccos(np.clip(P @ P[0], -1, 1))
    err = np.abs(d - ex) / ex.max()
    assert err.mean() < 0.02 and err.max() < 0.08


def test_point_cloud_two_clusters_unreachable_inf():
    P = fibonacci_sphere(300)
    Q = np.concatenate([P, P + [10, 0, 0]])
    d = PointCloudHeatSolver(Q, n_neighbors=10).compute_distance(0)
    assert np.isinf(d[300:]).all() and np.isfinite(d[:300]).all()
    with pytest.raises(ValueError, match="out of range: there are 600 vertices"):
        PointCloudHeatSolver(Q, n_neighbors=10).compute_distance(600)


def swiss_roll(n=200, seed=0):
    rng = np.random.default_rng(seed)
    th = 1.5 * np.pi * (1 + 2 * np.sort(rng.uniform(0, 1, n)))
    h = rng.uniform(0, 10, n)
    X = np.stack([th * np.cos(th), h, th * np.sin(th)], 1)
    arc = 0.5 * (th * np.sqrt(1 + th * th) + np.arcsinh(th))
    G = np.sqrt((arc[:, None] - arc[None]) ** 2 + (h[:, None] - h[None]) ** 2)
    return X, G


def test_chebyshev_heat_kernel_matches_expm():
    X, _ = swiss_roll(150)
    L = knn_normalized_laplacian(X, 8)
    ev = np.linalg.eigvalsh(L.toarray())
    assert ev.min() > -1e-10 and ev.max() < 2 + 1e-10
    for t in (1.0, 10.0):
        He = heat_kernel_exact(L, t)
        assert np.abs(heat_kernel_chebyshev(L, t, order=40) - He).max() < 1e-12
        assert np.abs(heat_kernel_chebyshev(L, t, order=3) - He).max() > 1e-4  # truncation is visible


def test_dissimilarity_harnack_diagonal_and_symmetry():
    X, _ = swiss_roll(60)
    H = heat_kernel_exact(knn_normalized_laplacian(X, 6), 5.0)
    D = heat_geodesic_dissimilarity(H, 5.0, harnack=1.0)
    assert np.allclose(D, D.T) and np.all(np.diag(D) == 0) and (D >= 0).all()
    D0 = heat_geodesic_dissimilarity(H, 5.0, harnack=0.0)
    m = D > 0  # off-diagonal entries not clipped at 0
    assert m.sum() > 0.9 * (len(D) ** 2 - len(D))
    expect = -4 * 5.0 * np.log(0.5 * (np.diag(H)[:, None] + np.diag(H)[None]))
    assert np.allclose((D0**2 - D**2)[m], expect[m], atol=1e-8)
    with pytest.raises(ValueError, match="harnack"):
        heat_geodesic_dissimilarity(H, 5.0, harnack=2.0)


def test_heatgeo_embedding_recovers_swiss_roll_geodesics():
    """The swiss roll's ambient distances rank its geodesics poorly (Spearman ~0.37); the 2-D
    HeatGeo embedding should rank them almost perfectly (measured 0.99 for n=300)."""
    X, G = swiss_roll(300)  # n=200 with k=10 short-circuits between layers (rho 0.84)
    iu = np.triu_indices(len(X), 1)
    emb = HeatGeoEmbedding(k=10, t=10.0, n_components=2, n_iter=100)
    Y = emb.fit_transform(X)
    E = np.linalg.norm(Y[:, None] - Y[None], axis=-1)
    rho = spearmanr(E[iu], G[iu]).correlation
    rho_eucl = spearmanr(np.linalg.norm(X[:, None] - X[None], axis=-1)[iu], G[iu]).correlation
    assert rho > 0.95 and rho_eucl < 0.6
    exact = HeatGeoEmbedding(k=10, t=10.0, method="exact", n_iter=0)
    exact.fit_transform(X)
    # Chebyshev is accurate to ~1e-16 absolute, so log H agrees where H is not tiny
    ok = exact.heat_kernel_ > 1e-8
    assert ok.mean() > 0.2
    diff = np.abs(exact.dissimilarity_ - emb.dissimilarity_)[ok]
    assert diff.max() < 1e-6 * emb.dissimilarity_.max()


def test_isolines_on_flat_square_are_circles():
    from tests.engine.geometry.test_geodesic import grid

    V, F = grid(41, 41)
    d = np.linalg.norm(V, axis=1)  # exact distance from the corner
    pts, segs, lev = isolines(V, F, d, [0.3, 0.6])
    assert len(segs) > 20 and set(lev.tolist()) == {0, 1}
    r = np.linalg.norm(pts, axis=1)
    # crossing points interpolate linearly between vertices: within O(h^2) of the circle
    assert np.abs(r - np.where(np.isclose(r, 0.3, atol=0.01), 0.3, 0.6)).max() < 1e-3
    # each point is shared by at most two segments (polylines)
    assert np.bincount(segs.ravel()).max() <= 2


def test_cli_geodesic_writes_outputs(tmp_path, shared_data):
    from engine.cli import main

    mesh = require(shared_data / "meshes" / "bunny_small.ply")
    out, ply, obj = tmp_path / "d.npy", tmp_path / "c.ply", tmp_path / "l.obj"
    rc = main(["geodesic", str(mesh), "--source", "0", "--source", "17", "--out", str(out), "--ply", str(ply),
               "--isolines", "5", "--isolines-obj", str(obj)])
    assert rc == 0
    d = np.load(out)
    V, F = load_geometry(mesh)
    assert d.shape == (len(V),) and d[0] < 1e-2 * d.max()
    V2, F2 = load_geometry(ply)
    assert np.allclose(V2, V, atol=1e-6) and (F2 == F).all()
    assert obj.read_text().count("\nl ") > 10
    assert main(["geodesic", str(mesh), "--source", "5000"]) == 2
    assert main(["geodesic", str(tmp_path / "missing.obj"), "--source", "0"]) == 2


def test_cli_point_cloud(tmp_path, capsys):
    from engine.cli import main

    P = fibonacci_sphere(500)
    np.save(tmp_path / "p.npy", P)
    assert main(["geodesic", str(tmp_path / "p.npy"), "--source", "3", "--out", str(tmp_path / "d.npy")]) == 0
    assert "point cloud: 500 vertices" in capsys.readouterr().out
    assert main(["geodesic", str(tmp_path / "p.npy"), "--source", "3", "--isolines", "3",
                 "--isolines-obj", str(tmp_path / "l.obj")]) == 2
