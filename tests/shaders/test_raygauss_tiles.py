"""Tile-binned RayGauss rendering (shaders.raygauss_tiles) against the BVH kernels and the
brute-force reference, the SG kernel against its torch twin, and morton_order."""
import math

import pytest
import torch

from engine.camera_paths import look_at
from engine.cameras import Cameras
from shaders import raygauss_tiles as RT
from shaders import runtime
from shaders.bvh import morton_order
from shaders.raygauss import RayGaussConfig, build_M, gaussian_aabbs, render_rays
from shaders.raygauss_ref import render_rays_reference

runtime.init()


def _scene(n, seed, scale=(0.02, 0.1), dens=(0.05, 30.0)):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 0.8 + 0.1
    lo, hi = math.log(scale[0]), math.log(scale[1])
    log_scale = torch.rand(n, 3, generator=g) * (hi - lo) + lo
    quat = torch.randn(n, 4, generator=g)
    resp = torch.rand(n, generator=g) * (dens[1] - dens[0]) + dens[0]
    rgb = torch.rand(n, 3, generator=g)
    return means, log_scale, quat, resp, rgb


def _camera(eye, W=23, H=17, f=20.0):
    c2w = look_at(eye, (0.5, 0.5, 0.5), (0.0, 0.0, 1.0)).float()
    return Cameras(fx=f, fy=f * 1.1, cx=W / 2 + 0.3, cy=H / 2 - 0.2, width=W, height=H, c2w=c2w[None])


def _box_clip(o, d, lo=0.0, hi=1.0):
    inv = 1.0 / torch.where(d == 0, torch.full_like(d, 1e-12), d)
    ta, tb = (lo - o) * inv, (hi - o) * inv
    tn = torch.minimum(ta, tb).amax(-1).clamp(min=0)
    tf = torch.maximum(torch.minimum(ta, tb).amax(-1).clamp(min=0), torch.maximum(ta, tb).amin(-1))
    return tn, tf


def _tile_render(params, cam, cfg, B):
    means, log_scale, quat, resp, rgb = params
    o, d = cam.generate_rays(0)
    H, W = o.shape[:2]
    o, d = o.reshape(-1, 3).contiguous(), d.reshape(-1, 3).contiguous()
    tn, tf = _box_clip(o, d)
    lo, hi = gaussian_aabbs(means, log_scale, quat, resp, "density", cfg)
    G = RT.pack_gaussians(means, build_M(log_scale, quat), resp,
                          RT.prefilter_limits(resp, cfg.sigma_thr), lo, hi)
    rho = RT.bounding_radius(log_scale, resp, cfg.sigma_thr)
    cov = RT.ellipsoid_cov(log_scale, quat, RT.prefilter_limits(resp, cfg.sigma_thr))
    bins = RT.bin_gaussians(G, rho, cov, o, d, H, W, cam.c2w[0, :3, :3], B=B)
    assert bins is not None
    out = RT.render_tiles(G, rgb, bins, o, d, tn, tf, W, cfg)
    return out, (o, d, tn, tf), bins


@pytest.mark.parametrize("B", [1, 3, 8])
def test_tiles_match_bvh_kernels_and_reference(B):
    params = _scene(150, 0)
    cam = _camera((0.5, -1.6, 1.3))
    cfg = RayGaussConfig(dt=0.01)
    (C, T, D, ne, over), rays, bins = _tile_render(params, cam, cfg, B)
    assert not bool(over.any())
    bvh = render_rays(*params, *rays, cfg)
    assert float((C - bvh["rgb"]).abs().max()) < 2e-5
    assert float(((1 - T) - bvh["alpha"]).abs().max()) < 2e-5
    assert float((D - bvh["depth"]).abs().max()) < 1e-4
    # the same Gaussians are collected per slab, so the same number of evaluations
    assert torch.equal(ne, bvh["n_evals"])
    assert int(ne.sum()) > 0 and float((1 - T).max()) > 0.9    # a non-trivial image
    # and the brute-force reference agrees on a subset of rays
    sel = torch.arange(0, rays[0].shape[0], 7)
    ref = render_rays_reference(*params, *(r[sel] for r in rays), cfg)
    assert float((C[sel] - ref["rgb"]).abs().max()) < 2e-5
    assert float(((1 - T[sel]) - ref["alpha"]).abs().max()) < 2e-5
    assert bins.entries > 0


def test_gaussians_behind_and_around_the_camera():
    """A Gaussian enclosing the camera goes to every tile; one behind it to none."""
    means, log_scale, quat, resp, rgb = _scene(60, 3)
    eye = torch.tensor([0.5, -0.2, 0.9])
    cam = _camera(tuple(eye.tolist()))
    fwd = cam.c2w[0, :3, 2]
    means = torch.cat([means, (eye + 0.01 * fwd)[None], (eye - 0.8 * fwd)[None]])
    log_scale = torch.cat([log_scale, torch.full((2, 3), math.log(0.15))])
    quat = torch.cat([quat, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])])
    resp = torch.cat([resp, torch.tensor([5.0, 5.0])])
    rgb = torch.cat([rgb, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])])
    params = (means, log_scale, quat, resp, rgb)
    o, d = cam.generate_rays(0)
    H, W = o.shape[:2]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    # rays start at the camera (t_near = 0): the enclosing Gaussian is seen by every ray
    tn = torch.zeros(o.shape[0])
    tf = torch.full((o.shape[0],), 3.0)
    cfg = RayGaussConfig(dt=0.01)
    lo, hi = gaussian_aabbs(means, log_scale, quat, resp, "density", cfg)
    G = RT.pack_gaussians(means, build_M(log_scale, quat), resp,
                          RT.prefilter_limits(resp, cfg.sigma_thr), lo, hi)
    rho = RT.bounding_radius(log_scale, resp, cfg.sigma_thr)
    cov = RT.ellipsoid_cov(log_scale, quat, RT.prefilter_limits(resp, cfg.sigma_thr))
    bins = RT.bin_gaussians(G, rho, cov, o, d, H, W, cam.c2w[0, :3, :3], B=4)
    items = bins.items[:bins.entries]
    n_tiles = bins.TX * bins.TY
    assert int((items == len(means) - 2).sum()) == n_tiles      # around the camera: all tiles
    assert int((items == len(means) - 1).sum()) == 0            # behind it: none
    C, T, D, ne, over = RT.render_tiles(G, rgb, bins, o, d, tn, tf, W, cfg)
    ref = render_rays(*params, o, d, tn, tf, cfg)
    assert float((C - ref["rgb"]).abs().max()) < 2e-5
    assert torch.equal(ne, ref["n_evals"])
    assert float(C[:, 0].min()) > 0.05                           # every ray sees the red one


def test_bin_gaussians_refuses_rays_it_cannot_bin():
    params = _scene(20, 1)
    cam = _camera((0.5, -1.6, 1.3))
    o, d = cam.generate_rays(0)
    H, W = o.shape[:2]
    o, d = o.reshape(-1, 3).clone(), d.reshape(-1, 3)
    cfg = RayGaussConfig()
    lo, hi = gaussian_aabbs(*params[:4], "density", cfg)
    G = RT.pack_gaussians(params[0], build_M(params[1], params[2]), params[3],
                          RT.prefilter_limits(params[3], 0.1), lo, hi)
    rho = RT.bounding_radius(params[1], params[3], 0.1)
    cov = RT.ellipsoid_cov(params[1], params[2], RT.prefilter_limits(params[3], 0.1))
    o[5] += 0.01                                                 # not one centre
    assert RT.bin_gaussians(G, rho, cov, o, d, H, W, cam.c2w[0, :3, :3]) is None
    o[5] -= 0.01
    d2 = d.clone()
    d2[3] = -cam.c2w[0, :3, 2]                                   # a ray pointing backwards
    assert RT.bin_gaussians(G, rho, cov, o, d2, H, W, cam.c2w[0, :3, :3]) is None


def test_active_list_overflow_is_flagged(monkeypatch):
    params = _scene(150, 0)
    cam = _camera((0.5, -1.6, 1.3))
    cfg = RayGaussConfig(dt=0.01)
    monkeypatch.setattr(RT, "ACTIVE_CAP", 2)
    (C, T, D, ne, over), rays, _ = _tile_render(params, cam, cfg, 4)
    assert bool(over.any()) and not bool(over.all())
    bvh = render_rays(*params, *rays, cfg)
    ok = ~over
    assert float((C[ok] - bvh["rgb"][ok]).abs().max()) < 2e-5


def test_model_render_camera_tiles_equal_bvh_path():
    from engine.methods.raygauss.config import RayGaussConfig as ModelConfig
    from engine.methods.raygauss.model import RayGaussModel

    means, log_scale, quat, resp, _ = _scene(200, 7)
    g = torch.Generator().manual_seed(8)
    sh = torch.randn(200, 9, 3, generator=g) * 0.3
    model = RayGaussModel(means, log_scale, quat, resp, sh, scene_box=[[0, 0, 0], [1, 1, 1]],
                          cfg=ModelConfig(dt=0.01, sh_degree=2, sg_lobes=3))
    with torch.no_grad():
        model.sg_amp.normal_(0, 0.2, generator=g)
    model.active_sg = True
    cam = _camera((0.5, -1.6, 1.3), W=31, H=29)
    bg = torch.tensor([1.0, 1.0, 1.0])
    with torch.no_grad():
        a = model.render_camera(cam, 0, background=bg, tiles=True)
        b = model.render_camera(cam, 0, background=bg, tiles=False)
    for k in ("rgb", "alpha", "depth", "depth_sum"):
        assert float((a[k] - b[k]).abs().max()) < 1e-4, k
    assert torch.equal(a["cost"], b["cost"])
    # with gradients on, render_camera uses the differentiable BVH path
    out = model.render_camera(cam, 0, background=bg)
    out["rgb"].sum().backward()
    assert model.means.grad is not None


@pytest.mark.parametrize("deg,lobes", [(0, 0), (2, 3), (3, 7)])
def test_view_colors_match_the_model_colours(deg, lobes):
    """The fused colour kernel (SH + SG lobes, written into the records) against the torch
    colour of RayGaussModel (sh_eval + SG expression)."""
    from engine.methods.raygauss.config import RayGaussConfig as ModelConfig
    from engine.methods.raygauss.model import RayGaussModel

    means, log_scale, quat, resp, _ = _scene(300, 9)
    g = torch.Generator().manual_seed(10)
    sh = torch.randn(300, 16, 3, generator=g)
    model = RayGaussModel(means, log_scale, quat, resp, sh, scene_box=[[0, 0, 0], [1, 1, 1]],
                          cfg=ModelConfig(sh_degree=3, sg_lobes=lobes))
    with torch.no_grad():
        model.sg_amp.normal_(0, 0.3, generator=g)
        model.sg_sharp.normal_(0, 2.0, generator=g)
    model.active_sh_degree = deg
    model.active_sg = lobes > 0
    center = torch.tensor([0.3, -1.2, 0.8])
    with torch.no_grad():
        ref = model.colors(center)
        from engine.render.gaussians import _inference_state

        st = _inference_state(model.means, model.quats, model.log_scales, model.response(), model.sh, model.sg(),
                              model.kernel_config(), None, None)
        G = st["G"]
        RT.view_colors(G, center, st["sh"], deg, st["sg"])
    perm = morton_order(model.means)
    out = G[:, RT._P_RGB:RT._P_RGB + 3].cpu()          # the records live on the Taichi device
    assert float((out - ref[perm]).abs().max()) < 1e-5
    assert float(ref.min()) == 0.0 and float(ref.max()) > 0.5     # the clamp is exercised


def test_morton_order_is_a_spatial_permutation():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5000, 3, generator=g)
    perm = morton_order(pts)
    assert torch.equal(torch.sort(perm).values, torch.arange(5000))
    # neighbours along the order are much closer than random pairs
    step = (pts[perm[1:]] - pts[perm[:-1]]).norm(dim=-1).mean()
    rand = (pts[1:] - pts[:-1]).norm(dim=-1).mean()
    assert float(step) < 0.2 * float(rand)
    with pytest.raises(ValueError, match="points"):
        morton_order(torch.zeros(4, 2))
