"""Shell rendering: band intervals on the shells of a sphere vs the analytic ones, sample placement,
and rendering a solid sphere with one sample per band crossing vs full volumetric rendering."""
import math

import numpy as np
import pytest
import torch

from engine.methods.shells.config import ShellsConfig
from engine.methods.shells.extract import extract_shells, extract_shells_from_grids
from engine.methods.shells.field import ShellField
from engine.methods.shells.method import ShellsMethod
from engine.methods.shells.render import ShellMeshes, band_intervals, place_samples
from shaders import runtime

runtime.init()

R, S = 0.5, 100.0
H = math.log(400) / S


@pytest.fixture(scope="module")
def sphere_meshes():
    n = 96
    ax = np.linspace(-1, 1, n)
    X = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)
    f = np.linalg.norm(X, axis=-1) - R
    sh = extract_shells_from_grids(f, np.full_like(f, math.log(S)), [-1] * 3, [1] * 3, eps=0.01,
                                   min_halfwidth=0.0, max_halfwidth=1.0, dilate_voxels=0)
    return ShellMeshes(sh.outer, sh.inner)


def _chord(o, d, r):
    """Analytic entry/exit of rays with the sphere |x| = r (nan on a miss)."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - r * r
    disc = b * b - c
    sq = torch.sqrt(disc.clamp_min(0))
    bad = disc < 0
    return torch.where(bad, torch.nan, -b - sq), torch.where(bad, torch.nan, -b + sq)


def test_intervals_match_analytic(sphere_meshes):
    g = torch.Generator().manual_seed(0)
    n = 400
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.65
    d = torch.nn.functional.normalize(target - o, dim=-1)
    t0, t1, ok = band_intervals(sphere_meshes, o, d, 8)
    oa, ob = _chord(o, d, R + H)
    ia, ib = _chord(o, d, R - H)
    vox = 2 / 95
    checked = 0
    for r in range(n):
        got = [(float(a), float(b)) for a, b, k in zip(t0[r], t1[r], ok[r]) if k]
        if math.isnan(oa[r]):
            assert got == []
            checked += 1
            continue
        # skip grazing rays whose answer depends on the facetisation
        gr_o = R + H - torch.linalg.cross(o[r], d[r]).norm()
        gr_i = R - H - torch.linalg.cross(o[r], d[r]).norm()
        if abs(gr_o) < 0.02 or abs(gr_i) < 0.02:
            continue
        if math.isnan(ia[r]):
            want = [(float(oa[r]), float(ob[r]))]
        else:
            want = [(float(oa[r]), float(ia[r])), (float(ib[r]), float(ob[r]))]
        assert len(got) == len(want), (r, got, want)
        for (a, b), (wa, wb) in zip(got, want):
            assert abs(a - wa) < 0.05 * vox / 0.2 and abs(b - wb) < 0.05 * vox / 0.2
        checked += 1
    assert checked > 300


def test_ray_starting_inside_band(sphere_meshes):
    o = torch.tensor([[R, 0.0, 0.0]])                    # on the surface, inside the band
    d = torch.tensor([[1.0, 0.0, 0.0]])
    t0, t1, ok = band_intervals(sphere_meshes, o, d, 8)
    got = [(float(a), float(b)) for a, b, k in zip(t0[0], t1[0], ok[0]) if k]
    assert len(got) == 1 and got[0][0] == 0.0 and abs(got[0][1] - H) < 2e-3


def test_place_samples():
    t0 = torch.tensor([[1.0, 2.0, 5.0], [0.0, 0.0, 0.0]])
    t1 = torch.tensor([[1.01, 2.5, 6.0], [0.0, 0.0, 0.0]])
    ok = torch.tensor([[True, True, False], [False, False, False]])
    t, delta, valid, grp = place_samples(t0, t1, ok, step=0.1, max_per_interval=32, max_samples=32)
    assert valid.sum(1).tolist() == [6, 0]               # 1 sample on the thin interval, 5 on the other
    assert grp[0].tolist() == [0, 1, 1, 1, 1, 1]
    torch.testing.assert_close(t[0, :6], torch.tensor([1.005, 2.05, 2.15, 2.25, 2.35, 2.45]))
    torch.testing.assert_close(delta[0, :6], torch.tensor([0.01] + [0.1] * 5))
    t, _, valid, _ = place_samples(t0, t1, ok, step=0.1, max_per_interval=32, max_samples=3)
    assert valid.sum(1).tolist() == [3, 0] and t.shape[1] == 3


@pytest.mark.parametrize("sampler", ["step", "crossings", "probe"])
def test_solid_sphere_one_sample_matches_volume(sampler):
    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64, shell_grid_res=64,
                       shell_dilate_voxels=0, shell_min_halfwidth=0.01, shell_step=0.05,
                       shell_target_faces=0, march_steps=512, max_samples=512, render_chunk=4096,
                       shell_one_sample_crossings=sampler == "crossings",
                       shell_probe_grid=128 if sampler == "probe" else 0)
    field = ShellField(torch.tensor([[-1.0] * 3, [1.0] * 3]), cfg)      # SDF = sphere of radius 0.5
    with torch.no_grad():
        field.log_s.fill_(math.log(2000.0))
    m = ShellsMethod(cfg, field)
    m.extract_shells()
    from engine.cameras import Cameras
    c2w = torch.eye(4)
    c2w[2, 3] = -3.0
    cams = Cameras(20.0, 20.0, 8.0, 8.0, 16, 16, c2w)
    vol = m.render(cams, 0, background=torch.ones(3), mode="volume")
    shl = m.render(cams, 0, background=torch.ones(3), mode="shells")
    hit = vol["alpha"] > 0.5
    assert hit.sum() > 20 and (~hit).sum() > 20
    # one sample per band crossing on the solid surface (a band 2 h_min = 0.02 thick, step 0.05);
    # the back of the sphere is skipped by early termination (the front is opaque)
    assert (shl["cost"][hit] == 1).all() and shl["cost"][~hit].max() == 0
    assert vol["cost"][hit].float().mean() > 20
    torch.testing.assert_close(shl["alpha"], vol["alpha"], atol=2e-3, rtol=0)
    torch.testing.assert_close(shl["rgb"], vol["rgb"], atol=2e-2, rtol=0)
    torch.testing.assert_close(shl["depth"][hit], vol["depth"][hit], atol=0.02, rtol=0)
    # depth is the sphere's near side
    o, d = cams.generate_rays(0)
    ta, _ = _chord(o[hit], d[hit], R)
    assert (vol["depth"][hit] - ta).abs().max() < 0.02


def test_band_samples_kernel_matches_reference():
    from shaders.band_sampler import band_intervals_from_hits, band_samples, band_samples_reference

    g = torch.Generator().manual_seed(4)
    R, K = 300, 6
    nh = torch.randint(0, K + 1, (R,), generator=g)
    ts = torch.sort(torch.rand(R, K, generator=g) * 4, 1).values
    kind = torch.randint(1, 4, (R, K), generator=g, dtype=torch.int32)     # outer, inner, surface
    cols = torch.arange(K)[None]
    kind[cols >= nh[:, None]] = 0
    ts[cols >= nh[:, None]] = math.inf
    fh = torch.randn(R, K, generator=g)
    for step, mp, ms in ((0.3, 4, 10), (5.0, 1, 3), (0.05, 32, 32)):
        t, d, gr, c = band_samples(ts, kind, step, mp, ms)
        rt, rd, rg, rc = band_samples_reference(ts, kind, step, mp, ms)
        assert torch.equal(c, rc) and c.sum() > 0 and torch.equal(gr, rg)
        torch.testing.assert_close(t, rt, atol=1e-5, rtol=0)
        torch.testing.assert_close(d, rd, atol=1e-5, rtol=0)
        for one in (False, True):
            out = band_samples(ts, kind, step, mp, ms, fh, one)
            ref = band_samples_reference(ts, kind, step, mp, ms, fh, one)
            for a, b in zip(out, ref):
                torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=0)
            assert bool(out[6].sum() > 0) == one      # crossings exist; flagged only when asked
            if one:
                assert {1, 2} <= set(out[6].unique().tolist())      # crossings and thin parts occur
            if not one:
                assert torch.equal(out[3], c) and torch.equal(out[0], t)
        # rays known to start outside: odd crossing counts no longer open an interval at t = 0
        outside = torch.rand(R, generator=g) < 0.5
        out = band_samples(ts, kind, step, mp, ms, fh, True, math.inf, outside)
        ref = band_samples_reference(ts, kind, step, mp, ms, fh, True, math.inf, outside)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=0)
        # one-sample rules only for intervals up to a length: longer ones fall back to the step rule
        for max_len in (0.5, 1.2):
            out = band_samples(ts, kind, step, mp, ms, fh, True, max_len)
            ref = band_samples_reference(ts, kind, step, mp, ms, fh, True, max_len)
            for a, b in zip(out, ref):
                torch.testing.assert_close(a, b.to(a.dtype), atol=1e-5, rtol=0)
    # a single-sample interval that contains a surface crossing samples at that crossing
    ts1 = torch.tensor([[1.0, 1.03, 1.05, 2.0, 2.1, math.inf]])
    k1 = torch.tensor([[1, 3, 2, 2, 1, 0]], dtype=torch.int32)
    t, d, gr, c = band_samples(ts1, k1, 0.1, 8, 4)
    assert c.tolist() == [2] and abs(float(t[0, 0]) - 1.03) < 1e-6 and abs(float(d[0, 0]) - 0.05) < 1e-6
    assert abs(float(t[0, 1]) - 2.05) < 1e-6                    # no surface crossing: the centre
    t, _, _, c = band_samples(ts1, k1, 0.01, 8, 16)             # several samples: uniform, no snapping
    assert c.tolist() == [5 + 8] and abs(float(t[0, 0]) - 1.005) < 1e-6  # 8 = max per interval
    # one sample per crossing: outer -> (surface) -> inner is one interval, one sample, with the
    # SDF at its two ends; the inner -> outer interval at the back too; steps elsewhere unchanged
    fh1 = torch.tensor([[0.02, 0.0, -0.03, -0.02, 0.025, 0.0]])
    t, d, gr, c, fa, fb, e = band_samples(ts1, k1, 0.01, 8, 16, fh1, True)
    assert c.tolist() == [2] and e[0, :2].tolist() == [1, 1]
    assert abs(float(t[0, 0]) - 1.03) < 1e-6 and abs(float(d[0, 0]) - 0.05) < 1e-6
    torch.testing.assert_close(fa[0, :2], torch.tensor([0.02, -0.02]))
    torch.testing.assert_close(fb[0, :2], torch.tensor([-0.03, 0.025]))
    # thin parts: outer, in, out, in, out, outer -> one sample per entering crossing
    ts2 = torch.tensor([[1.0, 1.02, 1.05, 1.09, 1.1, 1.2]])
    k2 = torch.tensor([[1, 3, 3, 3, 3, 1]], dtype=torch.int32)
    fh2 = torch.tensor([[7.0, 0.0, 0.0, 0.0, 0.0, 8.0]])
    t, d, gr, c, fa, fb, e = band_samples(ts2, k2, 0.01, 8, 16, fh2, True)
    assert c.tolist() == [2] and e[0, :2].tolist() == [2, 3] and gr[0, :2].tolist() == [0, 0]
    torch.testing.assert_close(t[0, :2], torch.tensor([1.02, 1.09]))
    torch.testing.assert_close(d[0, :2], torch.tensor([0.03, 0.01]))
    torch.testing.assert_close(fa[0, :2], torch.tensor([7.0, 0.02]))
    torch.testing.assert_close(fb[0, :2], torch.tensor([0.015, 0.005]))
    t, _, _, c = band_samples(ts2, k2, 0.01, 8, 16)                    # off: the step rule
    assert c.tolist() == [8]
    k3 = torch.tensor([[1, 3, 3, 3, 1, 0]], dtype=torch.int32)        # odd count: the step rule
    _, _, _, c, _, _, e = band_samples(ts2, k3, 0.06, 8, 16, fh2, True)
    assert c.tolist() == [2] and e[0, :2].tolist() == [0, 0]
    # ... unless an interval is longer than one_sample_max_len: then it is sampled every step
    # (both intervals of ts1 are 0.05 and 0.1 long; the thin-part interval of ts2 0.2)
    t, d, gr, c, fa, fb, e = band_samples(ts1, k1, 0.01, 8, 16, fh1, True, 0.07)
    assert c.tolist() == [1 + 8] and e[0, :9].tolist() == [1] + [0] * 8
    assert abs(float(t[0, 1]) - 2.0 - 0.1 / 16) < 1e-6 and float(fa[0, 1]) == 0.0
    t, d, gr, c, fa, fb, e = band_samples(ts1, k1, 0.01, 8, 16, fh1, True, 0.1)    # at the limit: one sample
    assert c.tolist() == [2]
    _, _, _, c, _, _, e = band_samples(ts2, k2, 0.01, 8, 16, fh2, True, 0.19)
    assert c.tolist() == [8] and int(e.abs().sum()) == 0
    for fn in (band_samples, band_samples_reference):
        assert fn(ts2, k2, 0.01, 8, 16, fh2, True, 0.201)[3].tolist() == [2]
    # a crossing missed at a shared edge: outer in, inner in, inner out, (outer out missed). By parity
    # the ray starts in the band (an interval from t = 0, the camera, to 1.0); flagged as starting
    # outside the outer shell's box, it gets exactly the two real band intervals
    tsm = torch.tensor([[1.0, 1.02, 1.5, math.inf]])
    km = torch.tensor([[1, 2, 2, 0]], dtype=torch.int32)
    for fn in (band_samples, band_samples_reference):
        t, _, _, c = fn(tsm, km, 0.01, 32, 64)
        assert float(t[0, 0]) < 0.5 and c.tolist() == [32]
        t, d, _, c = fn(tsm, km, 0.01, 32, 64, outside=torch.tensor([True]))
        assert c.tolist() == [2] and float(t[0, 0]) > 1.0
    t0, t1, ok = band_intervals_from_hits(tsm, km)
    assert bool(ok[0, 0])
    t0, t1, ok = band_intervals_from_hits(tsm, km, torch.tensor([True]))
    assert ok[0].tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="outside"):
        band_samples(tsm, km, 0.1, 1, 1, outside=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="same"):
        band_samples(ts, kind[:, :2], 0.1, 1, 1)
    with pytest.raises(ValueError, match="fh"):
        band_samples(ts, kind, 0.1, 1, 1, fh[:, :2], True)


def test_shell_hits_equal_repeated_closest_hit_queries(sphere_meshes):
    """One traversal for all crossings gives what repeated closest-hit queries from just past each
    hit give (the way crossings were gathered before): the same faces, kinds and t, on rays that
    cross both shells, graze them, start inside the band or miss."""
    from shaders.bvh import closest_hit

    from engine.methods.shells.render import shell_hits

    g = torch.Generator().manual_seed(3)
    n = 600
    o = torch.cat([torch.nn.functional.normalize(torch.randn(n - 100, 3, generator=g), dim=-1) * 3.0,
                   torch.nn.functional.normalize(torch.randn(100, 3, generator=g), dim=-1) * R])  # on the surface
    d = torch.nn.functional.normalize((torch.rand(n, 3, generator=g) * 2 - 1) * 0.9 - o * (torch.arange(n) < n - 100)[:, None], dim=-1)
    K, eps = 6, 1e-5
    ts, kind = shell_hits(sphere_meshes, o, d, K, eps=eps)
    # the reference: closest_hit again and again, each from just past the previous hit
    rt = torch.full((n, K), math.inf)
    rk = torch.zeros(n, K, dtype=torch.int32)
    t_prev = torch.zeros(n)
    live = torch.ones(n, dtype=torch.bool)
    for k in range(K):
        start = t_prev + (eps if k else 0.0)
        t, face, _ = closest_hit(sphere_meshes.bvh, o + start[:, None] * d, d)
        h = live & (face >= 0)
        rt[h, k] = start[h] + t[h]
        rk[h, k] = torch.where(face[h] < sphere_meshes.n_outer, 1, 2).to(torch.int32)
        t_prev = torch.where(h, rt[:, k], t_prev)
        live = h
    assert torch.equal(kind, rk)
    assert (kind > 0).sum(1).max() >= 4 and (kind == 0).all(1).any()
    torch.testing.assert_close(ts[kind > 0], rt[kind > 0], rtol=0, atol=1e-5)
    assert torch.isinf(ts[kind == 0]).all()


def test_sdf_at_crossings_interpolates_vertex_values(sphere_meshes):
    from engine.methods.shells.render import shell_hits

    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64)
    field = ShellField(torch.tensor([[-1.0] * 3, [1.0] * 3]), cfg)       # SDF = |x| - 0.5
    sphere_meshes.update_vertex_sdf(field)
    nv = sphere_meshes.n_shell_vertices
    vs = sphere_meshes.vertex_sdf[:nv]
    assert vs.abs().max() < 1.2 * H and vs.abs().min() > 0.8 * H
    with torch.no_grad():
        s_v = torch.exp(field.geometry(sphere_meshes.vertices[:nv])[1])
    torch.testing.assert_close(sphere_meshes.vertex_logit[:nv], vs * s_v)
    g = torch.Generator().manual_seed(1)
    o = torch.tensor([0.0, 0.0, -3.0]).expand(200, 3) + torch.randn(200, 3, generator=g) * 0.02
    tgt = torch.cat([torch.rand(200, 2, generator=g) * 0.8 - 0.4, torch.zeros(200, 1)], 1)
    d = torch.nn.functional.normalize(tgt - o, dim=-1)
    ts, kind, fh = shell_hits(sphere_meshes, o, d, 4, values=sphere_meshes.vertex_sdf)
    hit = kind > 0
    assert hit[:, 0].all()
    x = o[:, None] + ts.clamp(max=10)[..., None] * d[:, None]
    with torch.no_grad():
        exact = field.sdf(x[hit])
    # outer crossings at +h, inner at -h, and the interpolation agrees with the field at the hit
    assert ((fh[kind == 1] - H).abs() < 0.2 * H).all() and ((fh[kind == 2] + H).abs() < 0.2 * H).all()
    torch.testing.assert_close(fh[hit], exact, atol=0.1 * H, rtol=0)
    # barycentric interpolation is exact for a linear function of the vertex positions
    lin = sphere_meshes.vertices @ torch.tensor([0.3, -0.7, 0.2]) + 0.1
    ts, kind, fh = shell_hits(sphere_meshes, o, d, 4, values=lin)
    hit = kind > 0
    x = o[:, None] + ts.clamp(max=10)[..., None] * d[:, None]
    torch.testing.assert_close(fh[hit], x[hit] @ torch.tensor([0.3, -0.7, 0.2]) + 0.1, atol=1e-4, rtol=0)


def test_crossing_opacity_uses_interval_ends():
    """A ray that grazes a sphere's surface: at the sample the ray is tangent (cos = 0), so the
    linear extrapolation gives no opacity; from the NeuS logits at the interval's ends it is opaque."""
    from engine.methods.shells.field import neus_alpha_ends
    from engine.methods.shells.volume import shade_and_composite

    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64)
    field = ShellField(torch.tensor([[-1.0] * 3, [1.0] * 3]), cfg)
    with torch.no_grad():
        field.log_s.fill_(math.log(1000.0))
    o = torch.tensor([[0.5, 0.0, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])                      # tangent to |x| = 0.5 at z = 0
    t = torch.tensor([[1.0]])
    delta = torch.tensor([[0.1]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    grp = torch.zeros(1, 1, dtype=torch.long)
    view = field.view_encoding(d)
    with torch.no_grad():
        plain = shade_and_composite(field, o, d, view, t, delta, valid, grp)
        fa, fb = torch.tensor([[6.0]]), torch.tensor([[-5.0]])          # s f at the interval's ends
        ends = shade_and_composite(field, o, d, view, t, delta, valid, grp, ends=(fa, fb, torch.ones(1, 1)))
        off = shade_and_composite(field, o, d, view, t, delta, valid, grp, ends=(fa, fb, torch.zeros(1, 1)))
    assert float(plain["opacity"]) < 0.05
    expect = neus_alpha_ends(fa[0], fb[0], torch.ones(1))
    torch.testing.assert_close(ends["opacity"], expect, atol=1e-4, rtol=0)
    assert float(ends["opacity"]) > 0.99
    torch.testing.assert_close(off["opacity"], plain["opacity"])


@pytest.mark.parametrize("cos", [1.0, 0.5])
@pytest.mark.parametrize("half", [0.001, 0.004, 0.02])
def test_thin_part_opacity_matches_dense_quadrature(half, cos):
    """A slab |z| < half (thinner than the band) crossed head-on or obliquely: one sample at the
    entering surface with ``ends = 2`` gives the opacity that dense NeuS quadrature of the slab's
    SDF gives (the half-thickness along the ray is ``half / cos``; the shading scales it by |cos|)."""
    from engine.methods.shells.field import neus_alpha
    from engine.methods.shells.volume import shade_and_composite

    s_val = 300.0

    class Slab(torch.nn.Module):                    # SDF |z| - half, constant s, grey
        half_size = torch.tensor(1.0)

        def shade_samples(self, x, dirs, delta, view_enc, anneal=1.0):
            f = x[:, 2].abs() - half
            g = torch.zeros_like(x)
            g[:, 2] = torch.where(x[:, 2] >= 0, 1.0, -1.0)
            s = torch.full_like(f, s_val)
            cos = (dirs * g).sum(-1)
            return {"alpha": neus_alpha(f, cos, delta, s), "rgb": torch.full_like(x, 0.5), "sdf": f,
                    "grad": g, "log_s": torch.log(s), "s": s}

    field = Slab()
    d = torch.tensor([[math.sqrt(1.0 - cos * cos), 0.0, cos]])
    o = -d                                               # crosses z = 0 at t = 1
    h = 0.03                                             # band half-width (outer shell at |z| = half + h)
    view = torch.zeros(1, 1)
    # dense reference: 4000 samples across the outer band
    n = 4000
    t0, t1 = 1.0 - (half + h) / cos, 1.0 + (half + h) / cos
    tt = (t0 + (torch.arange(n) + 0.5) * (t1 - t0) / n)[None]
    ref = shade_and_composite(field, o, d, view, tt, torch.full_like(tt, (t1 - t0) / n),
                              torch.ones_like(tt, dtype=torch.bool), torch.zeros_like(tt, dtype=torch.long),
                              t_stop=0.0)
    # one sample at the entering crossing; z_a = s h (f = h on the outer shell); f_b is half the
    # distance along the ray to the leaving crossing
    one = torch.tensor([[1.0 - half / cos]])
    za = torch.tensor([[s_val * h]])
    out = shade_and_composite(field, o, d, view, one, torch.tensor([[2 * half / cos]]),
                              torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.long),
                              ends=(za, torch.tensor([[half / cos]]), torch.tensor([[2]])))
    torch.testing.assert_close(out["opacity"], ref["opacity"], atol=2e-3, rtol=0)


def test_fixed_alpha_replaces_the_opacity_and_leaves_the_kernel_regulariser():
    from engine.methods.shells.volume import shade_and_composite

    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64)
    field = ShellField(torch.tensor([[-1.0] * 3, [1.0] * 3]), cfg)
    o = torch.tensor([[0.0, 0.0, -2.0], [0.1, 0.0, -2.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([[1.2, 1.5], [1.2, 1.5]])
    delta = torch.full_like(t, 0.05)
    valid = torch.ones_like(t, dtype=torch.bool)
    group = torch.zeros_like(t, dtype=torch.long)
    fixed = torch.tensor([[0.25, -1.0], [-1.0, -1.0]])
    view = field.view_encoding(d)
    out = shade_and_composite(field, o, d, view, t, delta, valid, group, None, 1.0, 0.0, fixed_alpha=fixed)
    ref = shade_and_composite(field, o, d, view, t, delta, valid, group, None, 1.0, 0.0)
    assert out["log_s"].shape == (3,) and ref["log_s"].shape == (4,)
    # ray 0: its first sample has opacity 0.25, whatever the field says there
    x = o[:1] + t[0, 1] * d[:1]
    a2 = field.shade_samples(x, d[:1], delta[0, 1:], view[:1])["alpha"]
    torch.testing.assert_close(out["opacity"][0], 1 - 0.75 * (1 - a2[0]))
    torch.testing.assert_close(out["opacity"][1], ref["opacity"][1])


def test_band_intervals_kernel_matches_torch_rules():
    """The renderer's one-kernel intervals (from hit faces) are the torch rules' on random hit lists:
    outer, inner and surface faces, lists cut at K, rays flagged as starting outside."""
    from shaders.band_sampler import band_intervals_from_faces, band_intervals_from_hits, kinds_from_faces

    g = torch.Generator().manual_seed(3)
    R, K, no, ni, ns = 2000, 6, 50, 40, 30
    m = torch.randint(0, K + 1, (R,), generator=g)
    col = torch.arange(K)[None]
    face = torch.randint(0, no + ni + ns, (R, K), generator=g)
    face = torch.where(col < m[:, None], face, -1).to(torch.int32)
    ts = torch.sort(torch.rand(R, K, generator=g) * 5, 1).values
    ts = torch.where(face >= 0, ts, math.inf)
    for outside in (None, torch.rand(R, generator=g) < 0.5):
        want = band_intervals_from_hits(ts, kinds_from_faces(face, no, ni), outside)
        got = band_intervals_from_faces(ts, face, no, ni, outside)
        assert got[2].dtype == torch.int32 and torch.equal(got[2].bool(), want[2])
        ok = want[2]
        assert ok.sum() > 500 and ok[:, 0].any()          # both kinds: from the origin and between hits
        assert torch.equal(got[0][ok], want[0][ok].float()) and torch.equal(got[1][ok], want[1][ok].float())
        assert (got[0][~ok] == 0).all() and (got[1][~ok] == 0).all()


def _two_spheres_renderer(spheres=((-0.5, 0.3), (0.5, 0.3)), **options):
    """A renderer over two spheres one behind the other on the z axis (``spheres``: (centre z,
    radius) each), opaque where x > 0 and translucent where x < 0, with an exact probe grid of that
    SDF (the field itself is the untrained sphere prior); rays along +z from z = -3 through both:
    ``rend, o, d``."""
    from types import SimpleNamespace

    from engine.methods.shells.render import ShellRenderer

    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64, shell_probe_grid=64,
                       shell_max_hits=8, shell_probe_step=0.02, shell_max_samples=32, **options)
    n = 64
    ax = torch.linspace(-1, 1, n)
    X = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1)
    (za, ra), (zb, rb) = spheres
    f = torch.minimum((X - torch.tensor([0.0, 0.0, za])).norm(dim=-1) - ra,
                      (X - torch.tensor([0.0, 0.0, zb])).norm(dim=-1) - rb)
    ls = torch.where(X[..., 0] > 0, math.log(300.0), math.log(8.0))
    sh = extract_shells_from_grids(f, ls, [-1] * 3, [1] * 3, eps=0.01, min_halfwidth=0.0,
                                   max_halfwidth=0.08, dilate_voxels=0)
    field = ShellField(torch.tensor([[-1.0] * 3, [1.0] * 3]), cfg)
    rend = ShellRenderer(field, sh, cfg)
    packed = torch.stack([f, ls], -1).contiguous()
    rend.probe = SimpleNamespace(lo=torch.tensor([-1.0] * 3), cell=2.0 / (n - 1), grid_on=lambda dev: packed)
    g = torch.Generator().manual_seed(3)
    m = 300
    xy = (torch.rand(m, 2, generator=g) * 2 - 1) * 0.35
    o = torch.cat([xy, torch.full((m, 1), -3.0)], 1)
    d = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.02 * torch.randn(m, 3, generator=g), dim=-1)
    return rend, o, d


def test_one_round_with_the_cut_changes_pixels_by_at_most_t_stop():
    """shell_probe_one_round: all of a ray's samples in one round instead of one round per band
    interval. The samples the rounds would skip lie behind a transmittance below t_stop, so every
    pixel moves by at most t_stop (colours are in [0, 1]) and no fewer samples are evaluated. The
    first sphere is the field's own (its prior, radius 0.5 around the origin; s = 200: opaque),
    where the probe grid says about 0.8 on the translucent side: there the rounds stop after the
    first sphere and the one round also evaluates the second."""
    out = {}
    for one in (False, True):
        rend, o, d = _two_spheres_renderer(((0.0, 0.5), (0.9, 0.15)), shell_probe_one_round=one,
                                           shell_probe_solid=1.0)
        with torch.no_grad():
            rend.field.log_s.fill_(math.log(200.0))
            out[one] = rend.render_rays(o, d, rend.field.view_encoding(d), torch.ones(3))
    a, b = out[False], out[True]
    assert (a["cost"] > 0).sum() > 100 and a["cost"].max() >= 3
    assert (b["cost"] >= a["cost"]).all() and (b["cost"] > a["cost"]).sum() > 20
    t_stop = rend.cfg.t_stop
    assert (b["rgb"] - a["rgb"]).abs().max() <= t_stop + 1e-5
    assert (b["alpha"] - a["alpha"]).abs().max() <= t_stop + 1e-5


def test_first_hits_query_gives_the_samples_of_one_query():
    """shell_first_hits: a first BVH query for a ray's first crossings, a second one for the rays the
    probe leaves open, gives exactly the samples of one query for shell_max_hits, with the first
    query's probes counted too. Two translucent spheres one behind the other (four crossings each),
    rays from outside (some stop at the first sphere, some need the second) and from inside the box
    (the parity of all their crossings decides)."""
    rend, o_out, d_out = _two_spheres_renderer()
    cfg, m = rend.cfg, o_out.shape[0]
    g = torch.Generator().manual_seed(4)
    xy = o_out[:50, :2]
    o = torch.cat([o_out,                                                      # from outside, along +z
                   torch.cat([xy, torch.zeros(50, 1)], 1),                     # from between the spheres,
                   torch.cat([xy * 0.3, torch.full((50, 1), -0.8)], 1)])       # from the first one's band
    d = torch.cat([d_out, torch.nn.functional.normalize(
        torch.tensor([0.0, 0.0, 1.0]) + 0.02 * torch.randn(100, 3, generator=g), dim=-1)])
    cfg.shell_first_hits = 0
    rows, one = rend.probe_rays(o, d, 0.995)
    cfg.shell_first_hits = 2
    rows2, two = rend.probe_rays(o, d, 0.995)
    assert torch.equal(rows, rows2)
    # left out: rays from outside that cross no shell (they have no sample and make no probe)
    assert rows.numel() < m + 100 and (rows >= m).sum() == 100

    def expand(x):      # per-ray outputs for all rays (zeros for those left out)
        return torch.zeros((o.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype).index_put((rows,), x)

    one, two = [expand(x) for x in one], [expand(x) for x in two]
    for i in range(7):
        assert torch.equal(one[i], two[i]), i
    # rays traced twice made more probes; the others the same ones
    more = two[7] > one[7]
    assert torch.equal(two[7][~more], one[7][~more])
    hit = one[4] > 0
    assert (more & hit).sum() > 20 and (~more & hit).sum() > 20
    # rays from the first sphere's band start in a band interval (only the parity of all their crossings says so)
    assert (one[4][m + 50:] > 0).all() and (one[0][m + 50:, 0] < 0.1).float().mean() > 0.5
    # rays through two translucent spheres have samples from both
    assert (one[2].amax(1)[:m][(o[:m, 0] < -0.05) & hit[:m]] >= 1).float().mean() > 0.5
