"""Probe-guided band sampling (shaders/band_probe.py): kernel vs the torch twin, and exact cases."""
import math

import pytest
import torch

from shaders import runtime
from shaders.band_probe import probe_samples, probe_samples_reference, trilinear_reference

runtime.init()

G = 33
LO = torch.tensor([-1.0, -1.0, -1.0])
CELL = 2.0 / (G - 1)


def _grid(fn):
    ax = LO[0] + torch.arange(G, dtype=torch.float64) * CELL
    X, Y, Z = torch.meshgrid(ax, ax, ax, indexing="ij")
    return fn(X, Y, Z)


def _logphi(z):
    return torch.nn.functional.logsigmoid(torch.as_tensor(z, dtype=torch.float64))


def _bumpy_sphere():
    """The SDF of a bumpy sphere: crossings, near misses and thin parts."""
    return _grid(lambda X, Y, Z: (X * X + Y * Y + Z * Z).sqrt() - 0.6 + 0.05 * torch.sin(7 * X) * torch.cos(5 * Y))


def _rays_through_slabs(seed: int, R: int = 200, K: int = 6):
    """R rays from a sphere of radius 2 towards the centre, each with the same K back-to-back
    intervals over t in [0.5, 3.5]: ``o, d, t0, t1, ok``."""
    gen = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(R, 3, generator=gen), dim=-1) * 2.0
    d = torch.nn.functional.normalize(torch.randn(R, 3, generator=gen) * 0.3 - o, dim=-1)
    edges = torch.linspace(0.5, 3.5, K + 1)
    t0, t1 = edges[:-1].expand(R, K).contiguous(), edges[1:].expand(R, K).contiguous()
    return o, d, t0, t1, torch.ones(R, K, dtype=torch.bool)


def test_trilinear_reproduces_linear_functions():
    g = _grid(lambda X, Y, Z: 0.3 * X - 0.7 * Y + 0.2 * Z + 0.1)
    x = (torch.rand(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.99
    want = 0.3 * x[:, 0] - 0.7 * x[:, 1] + 0.2 * x[:, 2] + 0.1
    torch.testing.assert_close(trilinear_reference(g, x, LO.double(), CELL), want)


@pytest.mark.parametrize("solid,t_stop,cut", [(0.0, None, 0.0), (0.9, None, 0.0), (0.0, 1e-3, 0.0), (0.9, 1e-3, 0.05)])
def test_kernel_matches_reference(solid, t_stop, cut):
    gen = torch.Generator().manual_seed(1)
    # a bumpy sphere: crossings, near misses and thin parts; a kernel size that varies in space
    gf = _bumpy_sphere()
    gl = _grid(lambda X, Y, Z: math.log(20.0) + 0.5 * torch.sin(3 * Z))
    R, K = 300, 4
    o = torch.nn.functional.normalize(torch.randn(R, 3, generator=gen), dim=-1) * 2.0
    d = torch.nn.functional.normalize(torch.randn(R, 3, generator=gen) * 0.4 - o, dim=-1)
    t0 = torch.sort(torch.rand(R, K, generator=gen) * 3.0, 1).values
    t1 = t0 + torch.rand(R, K, generator=gen) * 0.6
    t1[:, :-1] = torch.minimum(t1[:, :-1], t0[:, 1:])
    ok = torch.rand(R, K, generator=gen) > 0.3
    ok[0] = False                                     # a ray with no interval
    t1[1, 0] = math.inf                               # an open interval is ignored
    args = (0.05, 16, 0.01, 12, solid)
    got = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, *args, t_stop=t_stop, cut=cut)
    looked_up = []

    def counting_lookup(g_f, g_l, x):        # every grid lookup the reference makes passes here
        looked_up.append(x.shape[0])
        return trilinear_reference(g_f, x, LO.double(), CELL), trilinear_reference(g_l, x, LO.double(), CELL)

    want = probe_samples_reference(o.double(), d.double(), t0.double(), t1.double(), ok, gf, gl, LO.double(),
                                   CELL, *args, lookup=counting_lookup, t_stop=t_stop, cut=cut)
    assert torch.equal(got[4], want[4])
    # which rays a further interval could still change (neither t_stop / 2 nor the cut reached)
    assert torch.equal(got[8], want[8])
    if t_stop is not None or cut > 0:
        assert 0 < int(got[8].sum()) < R
    else:
        assert got[8].all()
    # the cost accounting: the kernel's per-ray probe count is the number of lookups actually made
    assert torch.equal(got[7], want[7]) and int(got[7].sum()) == sum(looked_up) > 0
    assert got[7][0] == 0
    assert got[4][0] == 0
    m = torch.arange(12)[None] < got[4][:, None]
    crossing, near = (got[3] >= 0) & m, (got[3] < 0) & m
    assert crossing.sum() > (30 if solid == 0 else 10) and near.sum() > 30       # both kinds of sample occur
    assert torch.equal(got[2][m], want[2].int()[m])
    for i in (0, 1, 3, 5):
        torch.testing.assert_close(got[i][m].double(), want[i][m], atol=2e-5, rtol=0)
    assert torch.equal(got[6][m], want[6][m])
    # a crossing's descent starts before it and ends after it; a near-miss sample is its one segment
    seg_end = got[5] + got[6].float() * got[1]
    assert ((got[5] <= got[0] + 1e-5) & (got[0] <= seg_end + 1e-5))[m].all()
    assert (got[6][near] == 1).all() and (got[6][crossing] >= 1).all()
    # samples are front to back along each ray
    t = torch.where(m, got[0], torch.full_like(got[0], math.inf))
    assert (t[:, 1:] >= t[:, :-1]).all()


def test_early_stop_keeps_every_sample_the_renderer_evaluates():
    """With t_stop, a ray's intervals behind crossings that leave less than t_stop / 2 of its
    transmittance are not walked: the samples before that point are exactly those without t_stop,
    the ones dropped all lie behind it (the renderer, stopping at t_stop, evaluates none of them),
    and the probe count falls."""
    gf = _bumpy_sphere()
    gl = _grid(lambda X, Y, Z: torch.full_like(X, math.log(400.0)))       # solid: crossings are opaque
    R = 200
    o, d, t0, t1, ok = _rays_through_slabs(5, R)
    args = (0.02, 64, 0.003, 32, 0.0)
    full = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, *args)
    cut = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, *args, t_stop=1e-3)
    n_full, n_cut = full[4], cut[4]
    assert (n_cut <= n_full).all() and (n_cut < n_full).any()
    assert (cut[7] <= full[7]).all() and cut[7].sum() < 0.8 * full[7].sum()
    for r in range(R):
        k = int(n_cut[r])
        for i in (0, 1, 2, 3, 5, 6):
            assert torch.equal(cut[i][r, :k], full[i][r, :k])
        if k < int(n_full[r]):       # what was dropped lies behind crossings with transmittance < t_stop / 2
            a = full[3][r, :k]
            cross = a >= 0
            trans = torch.prod(1 - a[cross].double())
            assert trans < 0.5e-3 and (full[2][r, k:int(n_full[r])] > full[2][r, k - 1]).all()


def test_cut_stops_a_ray_once_the_grid_transmittance_is_below_it():
    """With ``cut``, a ray's samples are those without it up to the first one after which the
    grid's estimate of its transmittance (every emitted sample at its grid opacity: a crossing's
    whole descent, a per-segment sample its segment) is below ``cut``; nothing after it is emitted
    and fewer probes are made."""
    gf = _bumpy_sphere()
    gl = _grid(lambda X, Y, Z: math.log(60.0) + 0.8 * torch.sin(4 * Z))
    R = 200
    o, d, t0, t1, ok = _rays_through_slabs(6, R)
    cut_at = 0.02
    args = (0.02, 64, 0.003, 32, 0.99)            # crossings under 0.99 opaque get per-segment samples
    full = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, *args)
    cut = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, *args, cut=cut_at)
    n_full, n_cut = full[4], cut[4]
    assert (n_cut <= n_full).all() and (n_cut < n_full).sum() > 20
    assert (cut[7] <= full[7]).all() and cut[7].sum() < full[7].sum()
    per_segment = 0
    for r in range(R):
        k = int(n_cut[r])
        for i in (0, 1, 2, 3, 5, 6):
            assert torch.equal(cut[i][r, :k], full[i][r, :k])
        # each kept sample's grid opacity: a crossing's is returned, a per-segment one's is its segment's
        a = cut[3][r, :k].double()
        seg = a < 0
        per_segment += int(seg.sum())
        ts, dl = cut[5][r, :k].double(), cut[1][r, :k].double()
        xa = o[r].double() + ts[:, None] * d[r].double()
        xb = o[r].double() + (ts + dl)[:, None] * d[r].double()
        fa, fb = trilinear_reference(gf, xa, LO.double(), CELL), trilinear_reference(gf, xb, LO.double(), CELL)
        ls = trilinear_reference(gl, xa, LO.double(), CELL)
        a = torch.where(seg, -torch.expm1(torch.clamp(_logphi(torch.exp(ls) * fb) - _logphi(torch.exp(ls) * fa), max=0.0)), a)
        before = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - a]), 0)
        assert (before[:k] >= cut_at * (1 - 1e-4)).all()      # every kept sample was emitted above the cut
        if k < int(n_full[r]):
            assert before[k] < cut_at * (1 + 1e-4)           # and the ray stopped only below it
    assert per_segment > 50


def test_plane_crossing_is_one_sample_with_the_exact_opacity():
    # f = x - 0.1 is reproduced exactly by trilinear lookups; rays travelling along -x descend
    gf = _grid(lambda X, Y, Z: X - 0.1)
    s = 30.0
    gl = _grid(lambda X, Y, Z: torch.full_like(X, math.log(s)))
    o = torch.tensor([[0.9, 0.0, 0.0], [0.9, 0.3, -0.2], [-0.9, 0.1, 0.1]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t0 = torch.tensor([[0.5], [0.63], [0.5]])          # the third ray climbs: no opacity, no sample
    t1 = torch.tensor([[1.1], [0.97], [1.1]])
    ok = torch.ones(3, 1, dtype=torch.bool)
    for fn in (probe_samples, probe_samples_reference):
        t, dl, g, alpha, count = fn(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, 0.01)[:5]
        assert count.tolist() == [1, 1, 0]
        for r in range(2):
            fa = 0.9 - float(t0[r, 0]) - 0.1
            fb = 0.9 - float(t1[r, 0]) - 0.1
            # the opacities of the segments telescope to that of the whole descent
            want = 1 - math.exp(float(_logphi(s * fb) - _logphi(s * fa)))
            assert abs(float(t[r, 0]) - 0.8) < 1e-5                  # on the plane
            assert abs(float(alpha[r, 0]) - want) < 1e-5
            assert abs(float(dl[r, 0]) - (float(t1[r, 0] - t0[r, 0]) / math.ceil((t1[r, 0] - t0[r, 0]) / 0.01))) < 1e-6


def test_translucent_crossing_is_sampled_like_a_near_miss_under_solid():
    # the plane of the test above with a wide kernel: the crossing's opacity is about 0.8
    gf = _grid(lambda X, Y, Z: X - 0.1)
    s = 5.0
    gl = _grid(lambda X, Y, Z: torch.full_like(X, math.log(s)))
    o, d = torch.tensor([[0.9, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0]])
    t0, t1, ok = torch.tensor([[0.5]]), torch.tensor([[1.1]]), torch.ones(1, 1, dtype=torch.bool)
    whole = 1 - math.exp(float(_logphi(s * -0.3) - _logphi(s * 0.3)))  # f from 0.3 to -0.3
    assert 0.5 < whole < 0.9
    for fn in (probe_samples, probe_samples_reference):
        one = fn(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, 0.01, tau=0.01, solid=0.5)
        assert int(one[4][0]) == 1 and abs(float(one[3][0, 0]) - whole) < 1e-5   # opaque enough: one sample
        t, dl, g, alpha, count = fn(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, 0.01, tau=0.01, solid=0.9,
                                    max_samples=64)[:5]
        n = int(count[0])
        # one sample at the centre of each segment whose opacity exceeds tau, with the field's
        # opacity (-1)
        nseg = round(0.6 / float(dl[0, 0]))           # ceil(0.6 / 0.01) in float32
        tt = 0.5 + torch.arange(nseg + 1, dtype=torch.float64) * (0.6 / nseg)
        f = 0.8 - tt
        seg = -torch.expm1((_logphi(s * f[1:]) - _logphi(s * f[:-1])).clamp(max=0))
        assert n == int((seg > 0.01).sum()) and 10 < n < nseg
        assert (alpha[0, :n] == -1).all()
        centres = ((tt[:-1] + tt[1:]) / 2)[seg > 0.01]
        torch.testing.assert_close(t[0, :n].double(), centres, atol=1e-5, rtol=0)


def test_near_miss_gets_samples_on_its_descent_only():
    # a sphere of radius 0.5 and a ray passing 0.52 from its centre: the SDF dips to 0.02
    s = 100.0
    gf = _grid(lambda X, Y, Z: (X * X + Y * Y + Z * Z).sqrt() - 0.5)
    gl = _grid(lambda X, Y, Z: torch.full_like(X, math.log(s)))
    o = torch.tensor([[-0.8, 0.52, 0.0], [-0.8, 0.8, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t0 = torch.tensor([[0.5], [0.5]])
    t1 = torch.tensor([[1.1], [1.1]])                 # symmetric about the closest point t = 0.8
    ok = torch.ones(2, 1, dtype=torch.bool)
    t, dl, g, alpha, count = probe_samples(o, d, t0, t1, ok, gf.float(), gl.float(), LO, CELL, 0.01, tau=0.01)[:5]
    n = int(count[0])
    assert n >= 2 and count[1] == 0                   # the far ray: opacity under tau everywhere
    assert (alpha[0, :n] == -1).all()                 # the field's own opacity is used
    assert (t[0, :n] < 0.8).all() and (t[0, :n] > 0.5).all()   # only where the SDF decreases
    # the samples carry exactly the segments whose opacity (from the grid's SDF, within 2e-3 of
    # the sphere's here) exceeds tau; the rest of the descent is left out (here the long logistic
    # tail of a grazing ray: many segments under tau, about 0.1 of opacity in all)
    nseg = round(0.6 / float(dl[0, 0]))               # ceil(0.6 / 0.01) in float32
    tt = 0.5 + torch.arange(nseg + 1, dtype=torch.float64) * (0.6 / nseg)
    x = o[0].double() + tt[:, None] * d[0].double()
    f = trilinear_reference(gf, x, LO.double(), CELL)
    assert (f - (x.norm(dim=-1) - 0.5)).abs().max() < 2e-3
    seg = -torch.expm1((_logphi(s * f[1:]) - _logphi(s * f[:-1])).clamp(max=0))
    kept = (seg > 0.01) & (f[1:] < f[:-1])
    assert int(kept.sum()) == n
    assert float(seg[~kept].max()) <= 0.01 and float(seg[kept].min()) > 0.01


def test_bad_arguments_name_the_problem():
    gf = torch.zeros(G, G, G)
    o = torch.zeros(2, 3)
    t = torch.zeros(2, 1)
    ok = torch.ones(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="grids"):
        probe_samples(o, o, t, t, ok, gf, torch.zeros(G, G, G - 1), LO, CELL, 0.01)
    with pytest.raises(ValueError, match="probe_step"):
        probe_samples(o, o, t, t, ok, gf, gf, LO, CELL, 0.0)
    with pytest.raises(ValueError, match="t0, t1, ok"):
        probe_samples(o, o, t, torch.zeros(3, 1), ok, gf, gf, LO, CELL, 0.01)
    with pytest.raises(ValueError, match="max_segments"):
        probe_samples(o, o, t, t, ok, gf, gf, LO, CELL, 0.01, max_segments=65)
    with pytest.raises(ValueError, match="packed"):
        probe_samples(o, o, t, t, ok, gf, None, LO, CELL, 0.01)


def test_packed_grid_gives_the_same_samples():
    """The renderer passes the grid packed once ((G, G, G, 2), :func:`pack_grids`): the same samples
    as the two grids passed apart, in the kernel and in the reference."""
    from shaders.band_probe import pack_grids

    gf = _grid(lambda X, Y, Z: (X * X + Y * Y + Z * Z).sqrt() - 0.6).float()
    gl = _grid(lambda X, Y, Z: math.log(30.0) + 0.3 * torch.cos(2 * X)).float()
    R = 100
    o, d, t0, t1, ok = _rays_through_slabs(8, R, 1)
    gp = pack_grids(gf, gl)
    assert gp.shape == (G, G, G, 2) and torch.equal(gp[..., 1], gl)
    args = (o, d, t0, t1, ok)
    a = probe_samples(*args, gf, gl, LO, CELL, 0.02, solid=0.9, cut=0.01)
    b = probe_samples(*args, gp, None, LO, CELL, 0.02, solid=0.9, cut=0.01)
    assert int(a[4].sum()) > R and all(torch.equal(x, y) for x, y in zip(a, b))
    ra = probe_samples_reference(*args, gf, gl, LO, CELL, 0.02, solid=0.9, cut=0.01)
    rb = probe_samples_reference(*args, gp, None, LO, CELL, 0.02, solid=0.9, cut=0.01)
    assert all(torch.equal(x, y) for x, y in zip(ra, rb))
