"""K nearest points within a radius: the Taichi grid kernel (shaders.knn) against the brute-force
torch twin (shaders.knn_ref), on random, clustered and duplicated points, dense and hashed grids,
float32 and float64, plus the edge cases (empty cells, queries outside the box or non-finite,
K larger than the points in reach, no points at all)."""
import math

import pytest
import torch

from shaders import runtime
from shaders.knn import MAX_K, build_grid, knn, knn_query
from shaders.knn_ref import knn_reference

runtime.init()


def _check(points, queries, k, radius, grid=None, **grid_options):
    """Kernel vs twin. Distances must agree everywhere; indices wherever the distance is unique
    (compared with its neighbours in the twin's k+1 list); every returned index must be a real
    point at the returned distance, each row free of repeats; equal distances in ascending index."""
    if grid is None:
        grid = build_grid(points, radius, **grid_options)
    idx, d2 = knn_query(grid, queries, k, radius)
    ridx, rd2 = knn_reference(points, queries, k + 1, radius)
    ridx, rd2, rnext = ridx[:, :k], rd2[:, :k], rd2[:, k]
    assert idx.shape == (queries.shape[0], k) and idx.dtype == torch.int32
    assert d2.dtype == grid.points.dtype
    found = idx >= 0
    assert torch.equal(found, ridx >= 0), "number of neighbours within the radius differs"
    assert torch.isinf(d2[~found]).all()
    tol = 1e-5 if d2.dtype == torch.float32 else 1e-12
    assert torch.allclose(d2[found], rd2[found], rtol=tol, atol=tol * radius ** 2)
    # returned indices are real points at the returned distance, no repeats in a row
    p = points.to(d2.dtype)
    safe = idx.clamp_min(0).long()
    true_d2 = ((p[safe] - queries.to(d2.dtype)[:, None, :]) ** 2).sum(-1)
    assert torch.allclose(true_d2[found], d2[found], rtol=tol, atol=tol * radius ** 2)
    s = torch.where(found, idx, -torch.arange(1, k + 1, dtype=torch.int32)[None].expand_as(idx) - 1)
    assert (s.sort(1).values.diff(dim=1) != 0).all(), "a point appears twice in one row"
    # ascending (d2, idx)
    dd = d2[:, 1:] - d2[:, :-1]
    both = found[:, 1:]
    assert (dd[both] >= 0).all()
    tie = both & (dd == 0)
    assert (idx[:, 1:][tie] > idx[:, :-1][tie]).all()
    # indices wherever the distance is unambiguous
    nxt = torch.cat([rd2[:, 1:], rnext[:, None]], 1)
    prv = torch.cat([torch.full_like(rd2[:, :1], -1.0), rd2[:, :-1]], 1)
    gap = tol * 10 * radius ** 2
    uniq = found & ((nxt - rd2).abs() > gap) & ((rd2 - prv).abs() > gap)
    assert torch.equal(idx[uniq], ridx[uniq])
    return idx, d2, grid


def _rand(n, seed, lo=0.0, hi=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


@pytest.mark.parametrize("hashed", [False, True])
def test_random_points(hashed):
    pts = _rand(2000, 0)
    q = _rand(1500, 1, -0.1, 1.1)       # some queries outside the box, within reach of it
    idx, d2, grid = _check(pts, q, 8, 0.09, hashed=hashed)
    assert grid.hashed == hashed
    n = (idx >= 0).sum(1).float()
    assert 0 < n.mean() < 8 and (n == 8).any() and (n < 8).any()   # both full and partial rows


def test_exact_match_with_twin_on_cpu():
    """Same formula, same order: on the CPU the kernel reproduces the twin bit for bit."""
    pts, q = _rand(1000, 2), _rand(800, 3)
    idx, d2 = knn(pts, q, 8, 0.12)
    ridx, rd2 = knn_reference(pts, q, 8, 0.12)
    if runtime.arch_name() == "cpu":
        assert torch.equal(idx, ridx) and torch.equal(d2, rd2)


def test_clustered_and_duplicated_points():
    g = torch.Generator().manual_seed(4)
    centres = torch.rand(6, 3, generator=g) * 4
    pts = (centres[torch.randint(0, 6, (1500,), generator=g)] + 0.05 * torch.randn(1500, 3, generator=g))
    pts = torch.cat([pts, pts[:300], pts[:100]])        # exact duplicates: ties by construction
    q = torch.cat([pts[::7] + 0.01 * torch.randn(pts[::7].shape, generator=g), torch.rand(300, 3, generator=g) * 4])
    idx, d2, grid = _check(pts, q, 8, 0.1)
    # a query on a duplicated point finds its copies first, in index order
    i, d = knn_query(grid, pts[:5], 4)
    assert torch.equal(d[:, 0], torch.zeros(5)) and torch.equal(d[:, 1], torch.zeros(5))
    assert torch.equal(i[:, 0], torch.arange(5, dtype=torch.int32))
    assert torch.equal(i[:, 1], torch.arange(5, dtype=torch.int32) + 1500)


@pytest.mark.parametrize("hashed", [False, True])
def test_ties_across_cells_in_index_order(hashed):
    """Six points at the same distance in six different cells, numbered against the kernel's visiting
    order (the query's row, then rows +-y, then +-z): the result is still in ascending index order."""
    q = torch.tensor([[0.5, 0.5, 0.5]])
    h = 0.25                                           # exact in binary: all six d2 are bit-equal
    offs = [(0, 0, -h), (0, 0, h), (0, -h, 0), (0, h, 0), (h, 0, 0), (-h, 0, 0)]
    pts = q + torch.tensor(offs)
    idx, d2 = knn(pts, q, 6, 0.3, hashed=hashed)
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5]] and (d2 == h * h).all()


def test_sparse_box_uses_hashed_grid_with_collisions():
    """Two far-apart clusters: the dense table would be huge, so the grid hashes; the hash table
    (2N rounded up) is smaller than the cells in use, so buckets collide."""
    a = _rand(400, 5) * 0.3
    b = _rand(400, 6) * 0.3 + 500.0
    pts = torch.cat([a, b])
    grid = build_grid(pts, 0.05)
    assert grid.hashed and grid.num_cells < 2 * 800 * 2
    used = torch.unique(torch.floor((pts - grid.lo) / grid.cell).long(), dim=0).shape[0]
    assert used > grid.num_cells / 8                  # many cells share few buckets
    q = torch.cat([_rand(300, 7) * 0.3, _rand(300, 8) * 0.3 + 500.0, _rand(50, 9) * 1000])
    _check(pts, q, 8, 0.05, grid=grid)


def test_empty_cells_and_queries_outside():
    # points on two thin sheets: most cells of the box are empty
    g = torch.Generator().manual_seed(10)
    xy = torch.rand(1000, 2, generator=g)
    pts = torch.cat([torch.cat([xy[:500], torch.zeros(500, 1)], 1), torch.cat([xy[500:], torch.ones(500, 1)], 1)])
    q = torch.rand(600, 3, generator=g) * 1.4 - 0.2
    q[:50] = torch.tensor([1e6, -1e6, 3e7])          # far outside: nothing found, no overflow
    idx, d2, _ = _check(pts, q, 4, 0.08)
    assert (idx[:50] == -1).all() and torch.isinf(d2[:50]).all()
    mid = (q[:, 2] - 0.5).abs() < 0.4                  # between the sheets, beyond the radius
    assert (idx[mid] == -1).all()


def test_nonfinite_queries_find_nothing():
    pts = _rand(300, 11)
    q = _rand(10, 12)
    q[1, 0] = float("nan")
    q[2, 1] = float("inf")
    q[3, 2] = -float("inf")
    idx, d2 = knn(pts, q, 4, 0.3)
    assert (idx[1:4] == -1).all() and torch.isinf(d2[1:4]).all()
    assert (idx[[0, 4, 5]] >= 0).any()


def test_k_larger_than_points_in_reach():
    pts = _rand(50, 13)
    q = _rand(40, 14)
    pts = pts[:10]
    idx, d2, _ = _check(pts, q, 12, 0.4)               # K = 12 > 10 points
    assert ((idx >= 0).sum(1) < 10).any()
    idx, d2, _ = _check(pts, q, 12, 10.0)              # everything in reach: all 10, then -1
    assert ((idx >= 0).sum(1) == 10).all()
    assert torch.equal(idx[:, :10].sort(1).values, torch.arange(10, dtype=torch.int32).expand(40, 10))


def test_float64():
    pts = _rand(1500, 15, dtype=torch.float64)
    q = _rand(900, 16, -0.05, 1.05, dtype=torch.float64)
    idx, d2, grid = _check(pts, q, 8, 0.1)
    assert grid.points.dtype == torch.float64 and d2.dtype == torch.float64
    # float64 resolves distances float32 cannot: points 1e-9 apart
    base = torch.tensor([[0.3, 0.3, 0.3]], dtype=torch.float64)
    near = torch.cat([base + 2e-9, base + 1e-9, base + 3e-9])
    idx, _ = knn(near, base, 4, 0.1)
    assert idx.tolist() == [[1, 0, 2, -1]]


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_query_radius_other_than_build(factor):
    pts, q = _rand(1500, 17), _rand(500, 18)
    grid = build_grid(pts, 0.08)
    _check(pts, q, 8, 0.08 * factor, grid=grid)
    _check(pts, q, 8, 0.08, cells_per_radius=2)


def test_degenerate_inputs():
    q = _rand(7, 19)
    idx, d2 = knn(torch.zeros(0, 3), q, 4, 0.1)         # no points at all
    assert (idx == -1).all() and torch.isinf(d2).all() and idx.shape == (7, 4)
    idx, d2 = knn(_rand(20, 20), torch.zeros(0, 3), 4, 0.1)   # no queries
    assert idx.shape == (0, 4)
    one = torch.tensor([[0.5, 0.5, 0.5]])                # one point: a one-cell grid
    idx, d2 = knn(one, torch.tensor([[0.5, 0.5, 0.55], [0.5, 0.5, 0.7]]), 4, 0.1)
    assert idx.tolist() == [[0, -1, -1, -1], [-1] * 4] and math.isclose(float(d2[0, 0]), 0.0025, rel_tol=1e-4)


def test_bad_arguments():
    pts = _rand(10, 21)
    with pytest.raises(ValueError, match="radius"):
        build_grid(pts, 0.0)
    with pytest.raises(ValueError, match="radius"):
        build_grid(pts, float("nan"))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        build_grid(torch.zeros(5, 2), 0.1)
    with pytest.raises(ValueError, match="finite"):
        build_grid(torch.tensor([[0.0, float("nan"), 0.0]]), 0.1)
    grid = build_grid(pts, 0.1)
    with pytest.raises(ValueError, match="k must be"):
        knn_query(grid, pts, 0)
    with pytest.raises(ValueError, match="k must be"):
        knn_query(grid, pts, MAX_K + 1)
    with pytest.raises(ValueError, match="cells per axis|larger radius"):
        build_grid(torch.tensor([[0.0, 0, 0], [1e12, 0, 0]]), 1e-6)
