"""The shared volume renderer against closed forms (a homogeneous slab) and its own contract."""
import math

import torch

from engine.render.volume import OccupancyGrid, composite, composite_packed, march, ray_box, render_rays, render_samples


def _slab(sigma, z0, z1, color=(0.2, 0.4, 0.6)):
    def fn(x, dirs, delta, ray, col):
        inside = ((x[:, 2] >= z0) & (x[:, 2] < z1)).to(x.dtype)
        return {"alpha": 1 - torch.exp(-sigma * inside * delta), "rgb": torch.tensor(color, dtype=x.dtype).expand_as(x),
                "normal": torch.tensor([0.0, 0.0, -1.0], dtype=x.dtype).expand_as(x), "where": x[:, 2]}
    return fn


def test_homogeneous_slab_matches_the_closed_form():
    """A slab of density sigma between z0 and z1, rays along +z: alpha = 1 - exp(-sigma L), expected
    depth = z0 - o_z + 1/sigma - L e^{-sigma L} / (1 - e^{-sigma L}) (step -> 0)."""
    sigma, z0, z1 = 3.0, 0.2, 0.7
    o = torch.tensor([[0.0, 0.0, -1.0], [0.3, -0.2, -1.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    box = torch.tensor([[-1.0] * 3, [1.0] * 3], dtype=torch.float64)
    out = render_rays(_slab(sigma, z0, z1), o, d, box=box, step=1e-3, max_samples=4000, t_stop=0.0,
                      background=torch.ones(3, dtype=torch.float64), weighted=("normal",))
    L = z1 - z0
    a = 1 - math.exp(-sigma * L)
    depth = (z0 + 1.0) + 1 / sigma - L * math.exp(-sigma * L) / a
    assert torch.allclose(out["alpha"], torch.full((2,), a, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(out["depth"], torch.full((2,), depth, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(out["depth_sum"], out["depth"] * out["alpha"])
    rgb = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64) * a + (1 - a)
    assert torch.allclose(out["rgb"], rgb.expand(2, 3), atol=2e-3)
    assert torch.allclose(out["normal"][:, 2], -out["alpha"])
    # every sample inside the box is evaluated (no early stop): ~2/step samples per ray
    assert out["cost"].tolist() == [2000.0, 2000.0] and out["extras"]["where"].numel() == 4000


def test_early_termination_evaluates_less_and_changes_little():
    o, d = torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    full = render_rays(_slab(40.0, -0.5, 0.9), o, d, box=box, step=0.01, t_stop=0.0)
    cut = render_rays(_slab(40.0, -0.5, 0.9), o, d, box=box, step=0.01, t_stop=1e-3, group_size=4)
    assert float(cut["cost"][0]) < 0.4 * float(full["cost"][0])
    assert abs(float(cut["alpha"][0]) - float(full["alpha"][0])) < 1e-3


def test_occupancy_grid_skips_empty_space_and_misses_render_nothing():
    occ = OccupancyGrid(torch.zeros(3), 1.0, 16)
    occ.update(lambda p, r: (p[:, 2].abs() < 0.2 + r))                  # only a band around z = 0
    assert 0.1 < float(occ.occ.float().mean()) < 0.4
    o, d = torch.tensor([[0.0, 0.0, -3.0], [5.0, 5.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]] * 2)
    t, valid = march(o, d, occ, 0.01, 1000)
    z = (o[0, 2] + t[0][valid[0]])
    # occupied cells hold a point within 0.2 + r of z = 0, so samples lie within that plus one cell
    assert 10 < int(valid[0].sum()) < 100 and bool((z.abs() < 0.2 + occ.cell * (0.5 * 3 ** 0.5 + 1)).all())
    assert not bool(valid[1].any())                                      # this ray misses the box
    out = render_samples(_slab(5.0, -0.2, 0.2), o, d, t, torch.full_like(t, 0.01), valid)
    assert float(out["alpha"][1]) == 0.0 and float(out["cost"][1]) == 0.0 and float(out["depth"][1]) == 0.0
    tn, tf = ray_box(o, d, torch.full((3,), -1.0), torch.full((3,), 1.0))
    assert torch.allclose(tn[0], torch.tensor(2.0)) and bool(tf[1] <= tn[1])


def test_partial_occupancy_refresh_follows_a_moving_band_and_keeps_the_rest():
    """A partial refresh re-evaluates the occupied cells, their neighbours and a random fraction of
    the rest: a band that moves by less than a cell is followed exactly as a full refresh would,
    cells outside the chosen set keep their state, and the predicate sees only the chosen cells."""
    occ = OccupancyGrid(torch.zeros(3), 1.0, 16)
    layer = lambda p, k: ((p[:, 2] + 1.0) / occ.cell).floor() == k       # the cells of one z layer, any jitter
    occ.update(lambda p, r: layer(p, 8))                                # a thin band: layer 8
    g = torch.Generator().manual_seed(0)
    cells = occ.refresh_cells(0.0, g)
    # occupied cells and their 26 neighbours, nothing else (fraction 0)
    near = torch.nn.functional.max_pool3d(occ.occ.float()[None, None], 3, 1, 1)[0, 0] > 0
    assert torch.equal(cells, near) and int(cells.sum()) < occ.occ.numel() // 3
    seen = []

    def moved(p, r):
        seen.append(p.shape[0])
        # the band moved by one cell, and a new part appeared far from it
        return layer(p, 9) | (p > 0.75).all(-1)

    cells = occ.refresh_cells(0.0, g)
    occ.update(moved, g, cells=cells)
    assert seen == [int(cells.sum())]
    full = OccupancyGrid(torch.zeros(3), 1.0, 16)
    full.update(moved)
    far = torch.zeros_like(full.occ)
    far[14:, 14:, 14:] = True                                           # the new part's cells
    assert bool(full.occ[far].all()) and not bool(occ.occ[far].any())   # not chosen: kept as they were
    assert torch.equal(occ.occ[~far], full.occ[~far])                   # the band: as a full refresh
    # the far part is found by a refresh that draws it, or by the next full one
    occ.update(moved, g, cells=occ.refresh_cells(1.0, g))
    assert torch.equal(occ.occ, full.occ)
    # a fraction of 1 chooses every cell
    assert bool(occ.refresh_cells(1.0, g).all())


def test_composite_gradients_float64():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    rgb = torch.rand(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.sort(torch.rand(3, 5, generator=g, dtype=torch.float64), 1).values
    torch.autograd.gradcheck(lambda a, c: tuple(composite(a, c, t).values())[:4], (alpha, rgb))


def _ragged(seed: int, n: int = 40, s: int = 9, dtype=torch.float32):
    """A padded layout of n rays with 0..s samples each (front to back), and its packed form."""
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(0, s + 1, (n,), generator=g)
    count[0], count[1] = 0, s                   # a ray with none, one with the most
    valid = torch.arange(s)[None] < count[:, None]
    alpha = torch.rand(n, s, generator=g, dtype=dtype)
    alpha[2, 1] = 1.0                           # an opaque sample: nothing behind it is seen
    rgb = torch.rand(n, s, 3, generator=g, dtype=dtype)
    nrm = torch.rand(n, s, 3, generator=g, dtype=dtype)
    t = torch.sort(torch.rand(n, s, generator=g, dtype=dtype), 1).values
    return alpha, rgb, nrm, t, valid


def test_composite_packed_matches_the_padded_compositor():
    alpha, rgb, nrm, t, valid = _ragged(0)
    ri, ci = valid.nonzero(as_tuple=True)
    n = alpha.shape[0]
    want = composite(alpha, rgb, t, valid, weighted={"normal": nrm})
    got = composite_packed(alpha[ri, ci], rgb[ri, ci], t[ri, ci], ri, n, {"normal": nrm[ri, ci]})
    for k in ("rgb", "opacity", "depth_sum", "normal"):
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["weights"], want["weights"][ri, ci], atol=1e-6, rtol=1e-5)
    assert got["opacity"][0] == 0 and got["weights"][(ri == 2) & (ci > 1)].abs().max() < 1e-6
    assert torch.equal(got["count"], valid.sum(1))
    # each ray restarts: the rays before it do not change its weights
    g2 = composite_packed(alpha[ri, ci][ri >= 5], rgb[ri, ci][ri >= 5], t[ri, ci][ri >= 5], ri[ri >= 5], n)
    torch.testing.assert_close(g2["rgb"][5:], want["rgb"][5:], atol=1e-6, rtol=1e-5)


def test_composite_packed_gradients_float64():
    alpha, rgb, _, t, valid = _ragged(1, n=6, s=4, dtype=torch.float64)
    ri, ci = valid.nonzero(as_tuple=True)
    a = alpha[ri, ci].clamp(0.05, 0.95).requires_grad_()
    c = rgb[ri, ci].requires_grad_()
    tt = t[ri, ci]
    torch.autograd.gradcheck(lambda a, c: tuple(v for k, v in composite_packed(a, c, tt, ri, 6).items() if k != "count"),
                             (a, c))
