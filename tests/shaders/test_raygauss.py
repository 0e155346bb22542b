"""RayGauss ray casting: Taichi kernels vs the pure-torch brute-force reference.

Checks: forward values (float32, within 1e-5) in both response modes with the BVH collect and
the brute-force collect; gradients of a random linear loss on rgb/alpha/depth for every input;
float64 gradcheck through the public function; early termination; the cap counter; empty
scenes and rays that miss; the torch helpers build_M / gaussian_aabbs.
"""
import math

import pytest
import torch

from shaders import runtime
from shaders.raygauss import (RayGaussConfig, build_M, gaussian_aabbs, quat_to_rotmat,
                              render_rays)
from shaders.raygauss_ref import render_rays_reference

runtime.init()

OUT_KEYS = ("rgb", "alpha", "depth")


def _box_clip(o, d, lo=0.0, hi=1.0):
    """t_near, t_far of rays against the box [lo, hi]^3 (t_near >= 0; misses get t_far < t_near)."""
    inv = 1.0 / torch.where(d == 0, torch.full_like(d, 1e-12), d)
    ta, tb = (lo - o) * inv, (hi - o) * inv
    tn = torch.minimum(ta, tb).amax(-1).clamp(min=0)
    tf = torch.maximum(ta, tb).amin(-1)
    return tn, tf


def _scene(n, mode, seed, dtype=torch.float32, scale=(0.03, 0.12), dens=(0.05, 20.0)):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=dtype) * 0.8 + 0.1
    lo, hi = math.log(scale[0]), math.log(scale[1])
    log_scale = torch.rand(n, 3, generator=g, dtype=dtype) * (hi - lo) + lo
    quat = torch.randn(n, 4, generator=g, dtype=dtype)
    if mode == "density":
        resp = torch.rand(n, generator=g, dtype=dtype) * (dens[1] - dens[0]) + dens[0]
    else:
        resp = torch.rand(n, generator=g, dtype=dtype) * 0.97 + 0.001
    rgb = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, log_scale, quat, resp, rgb


def _rays(r, seed, dtype=torch.float32, axis_aligned=4):
    """Rays from a sphere around the unit cube towards points inside it, clipped to the cube.
    The first ``axis_aligned`` rays are parallel to the axes (zero direction components)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(r, 3, generator=g, dtype=dtype) * 0.8 + 0.1
    src = torch.randn(r, 3, generator=g, dtype=dtype)
    src = 0.5 + 1.5 * src / src.norm(dim=-1, keepdim=True)
    d = target - src
    for i in range(min(axis_aligned, r)):
        d[i] = 0
        d[i, i % 3] = 1.0
        src[i] = target[i]
        src[i, i % 3] = -0.5
    d = d / d.norm(dim=-1, keepdim=True)
    tn, tf = _box_clip(src, d)
    return src, d, tn, tf


def _linear_loss(out, seed):
    g = torch.Generator().manual_seed(seed)
    r = out["rgb"].shape[0]
    dt = out["rgb"].dtype
    w = [torch.randn(r, 3, generator=g, dtype=dt), torch.randn(r, generator=g, dtype=dt),
         torch.randn(r, generator=g, dtype=dt)]
    return (out["rgb"] * w[0]).sum() + (out["alpha"] * w[1]).sum() + (out["depth"] * w[2]).sum()


def _run(fn, params, rays, cfg, background=None, **kw):
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    bg = None if background is None else background.detach().clone().requires_grad_(True)
    out = fn(*ps, *rays, cfg, background=bg, **kw)
    return out, ps, bg


# --------------------------------------------------------------------------- helpers


def test_build_M_matches_covariance():
    g = torch.Generator().manual_seed(0)
    ls = torch.randn(6, 3, generator=g, dtype=torch.float64) * 0.5
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    M = build_M(ls, q)
    R = quat_to_rotmat(q)
    eye = torch.eye(3, dtype=torch.float64).expand(6, 3, 3)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(6, dtype=torch.float64))
    cov = R @ torch.diag_embed(torch.exp(2 * ls)) @ R.transpose(-1, -2)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    q1 = ((M @ x[..., None])[..., 0] ** 2).sum(-1)
    q2 = (x * torch.linalg.solve(cov, x[..., None])[..., 0]).sum(-1)
    assert torch.allclose(q1, q2, rtol=1e-10)
    # scaling a quaternion does not change M (normalised on use)
    assert torch.allclose(build_M(ls, 3.7 * q), M, atol=1e-12)


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_gaussian_aabbs_tight_and_conservative(mode):
    means, ls, q, resp, _ = _scene(5, mode, seed=3, dtype=torch.float64)
    resp[0] = 0.05 if mode == "density" else 0.001        # under the threshold: empty box
    cfg = RayGaussConfig(mode=mode)
    lo, hi = gaussian_aabbs(means, ls, q, resp, mode, cfg)
    assert lo.dtype == torch.float32 and lo.shape == (5, 3)
    assert bool((lo[0] > hi[0]).all())
    thr = cfg.sigma_thr if mode == "density" else cfg.alpha_min
    # points on the truncation ellipsoid surface: R diag(r) u for unit u
    g = torch.Generator().manual_seed(0)
    u = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    R = quat_to_rotmat(q)
    for i in range(1, 5):
        r = torch.exp(ls[i]) * math.sqrt(2 * math.log(float(resp[i]) / thr))
        pts = means[i] + (R[i] @ (u * r).T).T
        assert bool((pts.float() >= lo[i]).all() and (pts.float() <= hi[i]).all())
        # tight: the extreme points reach within 1% of the half extent
        half = 0.5 * (hi[i] - lo[i]).double()
        reach = (pts - means[i]).abs().amax(0)
        assert bool((reach > 0.99 * half).all()), (reach, half)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("mode", ["density", "opacity"])
@pytest.mark.parametrize("use_bvh", [True, False])
def test_forward_matches_reference(mode, use_bvh):
    for seed in (0, 1):
        params = _scene(60, mode, seed)
        rays = _rays(48, seed + 10)
        cfg = RayGaussConfig(mode=mode)
        bg = torch.tensor([0.3, 0.6, 0.9])
        out = render_rays(*params, *rays, cfg, background=bg, use_bvh=use_bvh)
        ref = render_rays_reference(*params, *rays, cfg, background=bg)
        for k in OUT_KEYS:
            err = (out[k] - ref[k]).abs().max().item()
            assert err < 1e-5, (k, err)
        # the scene is not trivial: most rays see something, some are nearly opaque
        assert float((ref["alpha"] > 0.05).float().mean()) > 0.5
        assert float(ref["alpha"].max()) > 0.9
        assert out["n_capped"] == 0 == ref["n_capped"]
        # n_evals: same collect rule (float32 box tests; allow a rare tie on a box face)
        ne, ne_ref = out["n_evals"].long(), ref["n_evals"].long()
        assert out["n_evals"].dtype == torch.int32
        assert int(ne.sum()) > 0
        if use_bvh:
            assert float((ne - ne_ref).abs().sum()) <= 1e-3 * float(ne_ref.sum())
        else:
            assert torch.equal(ne, ne_ref)


def test_bvh_and_brute_force_collect_agree_exactly_on_colour():
    params = _scene(80, "density", 5)
    rays = _rays(40, 6)
    cfg = RayGaussConfig(dt=0.005)
    a = render_rays(*params, *rays, cfg, use_bvh=True)
    b = render_rays(*params, *rays, cfg, use_bvh=False)
    for k in OUT_KEYS:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_prebuilt_bvh_is_used():
    from shaders.bvh import build_aabb_bvh

    params = _scene(30, "density", 8)
    rays = _rays(16, 9)
    cfg = RayGaussConfig(dt=0.01)
    lo, hi = gaussian_aabbs(*params[:4], cfg.mode, cfg)
    bvh = build_aabb_bvh(lo, hi)
    a = render_rays(*params, *rays, cfg, bvh=bvh)
    b = render_rays_reference(*params, *rays, cfg)
    for k in OUT_KEYS:
        assert (a[k] - b[k]).abs().max() < 1e-5
    # a BVH over far-away boxes collects nothing: proves the given BVH is the one traversed
    far = build_aabb_bvh(lo + 10.0, hi + 10.0)
    c = render_rays(*params, *rays, cfg, bvh=far)
    assert float(c["alpha"].abs().max()) == 0.0 and int(c["n_evals"].sum()) == 0


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_gradients_match_reference(mode):
    params = _scene(40, mode, 11)
    rays = _rays(32, 12)
    cfg = RayGaussConfig(mode=mode, dt=0.005)
    bg = torch.tensor([0.2, 0.5, 0.9])
    out, ps, pbg = _run(render_rays, params, rays, cfg, bg)
    ref, rs, rbg = _run(render_rays_reference, params, rays, cfg, bg)
    _linear_loss(out, 0).backward()
    _linear_loss(ref, 0).backward()
    names = ["means", "log_scale", "quat", "response", "rgb"]
    for name, a, b in zip(names + ["background"], ps + [pbg], rs + [rbg]):
        scale = float(b.grad.abs().max())
        assert scale > 0, name
        err = float((a.grad - b.grad).abs().max())
        assert err <= 1e-4 * scale + 1e-6, (name, err, scale)


def _gradcheck_scene(mode):
    """3 Gaussians on the path of 4 rays, float64, with margins checked (no sample within 1e-3
    relative of the truncation rule, the alpha_min cut, t_stop or a slab boundary)."""
    dt64 = torch.float64
    means = torch.tensor([[0.45, 0.5, 0.4], [0.55, 0.47, 0.55], [0.5, 0.55, 0.7]], dtype=dt64)
    log_scale = torch.log(torch.tensor([[0.08, 0.06, 0.1], [0.07, 0.1, 0.06],
                                        [0.1, 0.08, 0.07]], dtype=dt64))
    quat = torch.tensor([[1.0, 0.2, -0.1, 0.3], [0.9, -0.3, 0.2, 0.1], [0.8, 0.1, 0.4, -0.2]],
                        dtype=dt64)
    if mode == "density":
        resp = torch.tensor([6.0, 9.0, 4.0], dtype=dt64)
    else:
        resp = torch.tensor([0.6, 0.8, 0.7], dtype=dt64)
    rgb = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=dt64)
    o = torch.tensor([[0.5, 0.5, 0.0], [0.47, 0.52, 0.0], [0.53, 0.49, 0.0], [0.5, 0.46, 0.0]],
                     dtype=dt64)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.05, -0.03, 1.0], [-0.04, 0.06, 1.0], [0.02, 0.07, 1.0]],
                     dtype=dt64)
    d = d / d.norm(dim=-1, keepdim=True)
    tn = torch.full((4,), 0.1, dtype=dt64)
    tf = torch.full((4,), 0.943, dtype=dt64)
    cfg = RayGaussConfig(mode=mode, dt=0.02, samples_per_slab=4)
    return (means, log_scale, quat, resp, rgb), (o, d, tn, tf), cfg


def _assert_margins(params, rays, cfg):
    means, ls, q, resp, rgb = params
    o, d, tn, tf = rays
    M = build_M(ls, q)
    if cfg.mode == "density":
        n = int(math.ceil(float((tf - tn).max()) / cfg.dt)) + 1
        t = tn[:, None] + (torch.arange(n, dtype=o.dtype) + 0.5) * cfg.dt
        assert float((t - tf[:, None]).abs().min()) > 1e-3 * cfg.dt
        x = o[:, None] + t[..., None] * d[:, None]
        y = torch.einsum("nab,rknb->rkna", M, x[:, :, None] - means)
        g = resp * torch.exp(-0.5 * (y * y).sum(-1))
        rel = ((g - cfg.sigma_thr) / cfg.sigma_thr).abs()
        assert float(rel.min()) > 1e-3
    else:
        xo = o + tn[:, None] * d
        a = torch.einsum("nab,rb->rna", M, d)
        b = torch.einsum("nab,rnb->rna", M, xo[:, None] - means)
        u = -(a * b).sum(-1) / (a * a).sum(-1)
        e = b + u[..., None] * a
        ar = resp * torch.exp(-0.5 * (e * e).sum(-1))
        assert float(((ar - cfg.alpha_min) / cfg.alpha_min).abs().min()) > 1e-3
        assert float(ar.max()) < 0.99 * (1 - 1e-3)
        slab = cfg.samples_per_slab * cfg.dt
        frac = (u / slab) - torch.floor(u / slab)
        assert float(torch.minimum(frac, 1 - frac).min()) > 1e-3


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_gradcheck_float64(mode):
    params, rays, cfg = _gradcheck_scene(mode)
    _assert_margins(params, rays, cfg)
    bg = torch.tensor([0.3, 0.1, 0.7], dtype=torch.float64)
    ref = render_rays_reference(*params, *rays, cfg, background=bg)
    out = render_rays(*params, *rays, cfg, background=bg)
    assert out["rgb"].dtype == torch.float64
    for k in OUT_KEYS:
        assert torch.allclose(out[k], ref[k], atol=1e-12), k
    # the rays see all 3 Gaussians and are neither empty nor saturated
    assert float(ref["alpha"].min()) > 0.3 and float(ref["alpha"].max()) < 0.99
    assert int(out["n_evals"].min()) > 0

    def f(means, log_scale, quat, response, rgb, background):
        o = render_rays(means, log_scale, quat, response, rgb, *rays, cfg, background=background)
        return o["rgb"], o["alpha"], o["depth"]

    inputs = [p.clone().requires_grad_(True) for p in (*params, bg)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_early_termination(mode):
    # an opaque scene: many dense Gaussians
    params = _scene(120, mode, 21, scale=(0.08, 0.15), dens=(30.0, 60.0))
    if mode == "opacity":
        params[3].uniform_(0.6, 0.95)
    rays = _rays(24, 22, axis_aligned=0)
    cfg = RayGaussConfig(mode=mode, dt=0.005, t_stop=0.01)
    no_stop = RayGaussConfig(mode=mode, dt=0.005, t_stop=0.0)
    out = render_rays(*params, *rays, cfg)
    full = render_rays(*params, *rays, no_stop)
    ref = render_rays_reference(*params, *rays, cfg)
    for k in OUT_KEYS:
        assert (out[k] - ref[k]).abs().max() < 1e-5, k
    stopped = out["alpha"] > 1 - cfg.t_stop
    assert int(stopped.sum()) >= len(stopped) // 2
    # stopping really skipped work, and only on the stopped rays
    assert bool((out["n_evals"][stopped] < full["n_evals"][stopped]).all())
    assert torch.equal(out["n_evals"][~stopped], full["n_evals"][~stopped])
    assert torch.equal(out["n_evals"], ref["n_evals"])
    # gradients with early stop
    o, ps, _ = _run(render_rays, params, rays, cfg)
    r, rs, _ = _run(render_rays_reference, params, rays, cfg)
    _linear_loss(o, 3).backward()
    _linear_loss(r, 3).backward()
    for a, b in zip(ps, rs):
        scale = float(b.grad.abs().max())
        assert float((a.grad - b.grad).abs().max()) <= 1e-4 * scale + 1e-6


@pytest.mark.parametrize("use_bvh", [True, False])
def test_cap_counter(use_bvh):
    params = _scene(60, "density", 31, scale=(0.1, 0.2))
    rays = _rays(16, 32)
    # t_stop = 0: every slab is visited whatever the cap does to the opacity, so the kernel's
    # count and the reference's (which never caps the colour) count the same slabs
    big = RayGaussConfig(dt=0.01, t_stop=0.0)
    tiny = RayGaussConfig(dt=0.01, cap=2, t_stop=0.0)
    out_big = render_rays(*params, *rays, big, use_bvh=use_bvh)
    out_tiny = render_rays(*params, *rays, tiny, use_bvh=use_bvh)
    ref_tiny = render_rays_reference(*params, *rays, tiny)
    assert out_big["n_capped"] == 0
    assert out_tiny["n_capped"] > 0
    assert out_tiny["n_capped"] == ref_tiny["n_capped"]
    # n_evals counts the (capped) evaluations actually done
    assert torch.equal(out_tiny["n_evals"], ref_tiny["n_evals"])
    assert bool((out_tiny["n_evals"] <= out_big["n_evals"]).all())
    # with the cap at most 2 Gaussians are evaluated per sample, so the image changes
    assert float((out_tiny["alpha"] - out_big["alpha"]).abs().max()) > 1e-3


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_group_overflow_falls_back_to_per_slab_collect(mode):
    """The kernels query the BVH once per group of slabs; when a group holds more than ``cap``
    hits but no single slab does, the per-slab fallback must give the uncapped result."""
    from shaders.raygauss_fwd import group_slabs
    from shaders.raygauss_ref import _seg_box_hits

    params = _scene(60, mode, 51, scale=(0.05, 0.1))
    rays = _rays(16, 52)
    o, d, tn, tf = rays
    dt, S = 0.01, 8
    G = group_slabs(S)
    lo, hi = gaussian_aabbs(*params[:4], mode, RayGaussConfig(mode=mode))
    J = int(math.ceil(float((tf - tn).max()) / (S * dt))) + 1
    j = torch.arange(J, dtype=torch.float32)
    slab = _seg_box_hits(o, d, tn[:, None] + (j * S) * dt,
                         torch.minimum(tn[:, None] + ((j + 1) * S) * dt, tf[:, None]), lo, hi)
    grp = _seg_box_hits(o, d, tn[:, None] + (j * G * S) * dt,
                        torch.minimum(tn[:, None] + ((j + 1) * G * S) * dt, tf[:, None]), lo, hi)
    cap = int(slab.sum(-1).max())
    assert int(grp.sum(-1).max()) > cap          # some groups overflow, no slab does
    cfg = RayGaussConfig(mode=mode, dt=dt, samples_per_slab=S, cap=cap, t_stop=0.0)
    ref, rs, _ = _run(render_rays_reference, params, rays, cfg)
    _linear_loss(ref, 4).backward()
    for use_bvh in (True, False):
        out, ps, _ = _run(render_rays, params, rays, cfg, use_bvh=use_bvh)
        assert out["n_capped"] == 0
        for k in OUT_KEYS:
            assert float((out[k] - ref[k]).detach().abs().max()) < 1e-5, (use_bvh, k)
        if not use_bvh:
            assert torch.equal(out["n_evals"], ref["n_evals"])
        _linear_loss(out, 4).backward()
        for a, b in zip(ps, rs):
            scale = float(b.grad.abs().max())
            assert float((a.grad - b.grad).abs().max()) <= 1e-4 * scale + 1e-6


def test_ray_chunks_give_the_same_result(monkeypatch):
    """Rays are processed in chunks sharing one scratch buffer: 3 chunks == 1 chunk."""
    import shaders.raygauss as rg

    params = _scene(30, "density", 61)
    rays = _rays(13, 62)
    cfg = RayGaussConfig(dt=0.01, cap=64)
    one, ps1, _ = _run(render_rays, params, rays, cfg)
    _linear_loss(one, 1).backward()
    monkeypatch.setitem(rg.SCRATCH_ENTRIES, runtime.arch_name(), 5 * cfg.cap)
    assert rg._chunk_rows(13, cfg.cap) == 5
    many, ps3, _ = _run(render_rays, params, rays, cfg)
    _linear_loss(many, 1).backward()
    for k in OUT_KEYS + ("n_evals",):
        assert torch.equal(one[k], many[k]), k
    for a, b in zip(ps1, ps3):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["density", "opacity"])
def test_empty_scene_and_missing_rays(mode):
    cfg = RayGaussConfig(mode=mode, dt=0.01)
    rays = _rays(8, 41)
    bg = torch.tensor([0.25, 0.5, 0.75])
    empty = tuple(torch.zeros(0, k) for k in (3, 3, 4)) + (torch.zeros(0), torch.zeros(0, 3))
    for fn in (render_rays, render_rays_reference):
        out = fn(*empty, *rays, cfg, background=bg)
        assert torch.equal(out["rgb"], bg.expand(8, 3))
        assert float(out["alpha"].abs().max()) == 0 and float(out["depth"].abs().max()) == 0
        assert int(out["n_evals"].sum()) == 0 and out["n_capped"] == 0
    # rays that miss everything (outside the box, pointing away) and zero-length rays
    params = _scene(30, mode, 42)
    o = torch.tensor([[2.0, 2.0, 2.0], [-1.0, 0.5, 0.5], [0.5, 0.5, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tn = torch.tensor([0.0, 0.0, 0.3])
    tf = torch.tensor([1.0, 1.0, 0.3])
    out, ps, _ = _run(render_rays, params, (o, d, tn, tf), cfg)
    assert float(out["rgb"].detach().abs().max()) == 0
    assert float(out["alpha"].detach().abs().max()) == 0
    _linear_loss(out, 0).backward()
    for p in ps:
        assert float(p.grad.abs().max()) == 0


def test_input_errors_name_the_argument():
    params = _scene(4, "density", 0)
    rays = _rays(3, 0)
    with pytest.raises(ValueError, match="rays_d must be unit"):
        render_rays(*params, rays[0], rays[1] * 2, *rays[2:], RayGaussConfig())
    with pytest.raises(ValueError, match="quat must have shape"):
        render_rays(params[0], params[1], params[2][:, :3], *params[3:], *rays)
    with pytest.raises(ValueError, match="mode"):
        render_rays(*params, *rays, RayGaussConfig(mode="alpha"))
    with pytest.raises(ValueError, match="rgb has dtype"):
        render_rays(*params[:4], params[4].double(), *rays)
    with pytest.raises(ValueError, match="t_far must be finite"):
        render_rays(*params, *rays[:3], torch.full_like(rays[3], math.inf))
    # a (N,1) response (3DGS opacity column) is accepted and means the same as (N,)
    cfg = RayGaussConfig(dt=0.02)
    a = render_rays(*params[:3], params[3][:, None], params[4], *rays, cfg)
    b = render_rays(*params, *rays, cfg)
    assert torch.equal(a["rgb"], b["rgb"])
