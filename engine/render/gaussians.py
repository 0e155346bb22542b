"""The Gaussian image renderer: raw Gaussian tensors + a camera -> an image, any method.

:func:`render_gaussians` renders one camera of a :class:`engine.cameras.Cameras` batch. It picks the
path itself:

* ``"tiles"`` -- the tile-binned ray caster (:mod:`shaders.raygauss_tiles`): whole images without
  gradients, density mode, undistorted pinhole cameras, on the CPU backend (2.5x faster there);
  rays whose active list outgrows its cap fall back to the BVH path;
* ``"bvh"`` -- the differentiable slab-by-slab ray caster through an AABB BVH
  (:func:`shaders.raygauss.render_rays`): everything else (training, distorted cameras, CUDA);
* ``"splat"`` (only when asked) -- 3DGS splatting (:func:`shaders.splat.splat`: EWA footprints,
  depth-sorted tile lists, front-to-back blending, differentiable): how a standard 3DGS file was
  meant to be seen. Density Gaussians are splatted with the opacity of :func:`density_to_opacity`.

Gaussians (the conventions of DESIGN.md): ``means (N, 3)``, ``quats (N, 4)`` wxyz (normalised on
use), ``log_scales (N, 3)``, ``weights (N,)`` the activated response -- RayGauss density ``s >= 0``
(``mode="density"``) or 3DGS opacity in [0, 1] (``mode="opacity"``, sigmoid of the file's logit)
-- and the colour as either ``colors (N, 3)`` for this view, or SH coefficients ``(N, K, 3)`` with
``sh_degree`` (3DGS signs, rgb = SH . Y(d) + 0.5, ``d`` from the camera centre to each mean) plus
optional spherical-Gaussian lobes ``sg = (amp (N, L, 3), axis (N, L, 3), sharpness (N, L))``
(axis unnormalised, sharpness before softplus).

Returns ``rgb (H, W, 3)``, ``alpha (H, W)``, ``depth (H, W)`` (expected depth, normalised by
alpha), ``depth_sum (H, W)``, ``cost (H, W)`` (Gaussian evaluations per ray) and ``n_capped`` (slabs
whose Gaussians overflowed the collect cap).

Repeated renders of unchanged Gaussians reuse their BVH and packed records when the caller passes
a :class:`GaussianCache` and a ``cache_key`` that changes whenever the parameters do (a model
uses the parameters' ``(data_ptr, _version)``).

>>> import torch
>>> import contextlib, io
>>> from shaders import runtime
>>> with contextlib.redirect_stdout(io.StringIO()):      # Taichi prints a banner on first use
...     arch = runtime.init()
>>> from engine.cameras import Cameras
>>> from engine.render.gaussians import render_gaussians
>>> c2w = torch.eye(4); c2w[2, 3] = -3.0                   # at z = -3 looking down +z
>>> cam = Cameras(40.0, 40.0, 16.0, 16.0, 32, 32, c2w[None])
>>> out = render_gaussians(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), -1.0),
...                        torch.tensor([30.0]), torch.tensor([[1.0, 0.2, 0.2]]), cam,
...                        scene_box=torch.tensor([[-2.0] * 3, [2.0] * 3]), settings={"dt": 0.01})
>>> out["rgb"].shape, round(float(out["alpha"][16, 16]), 2), round(float(out["depth"][16, 16]), 1)
(torch.Size([32, 32, 3]), 1.0, 2.3)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shaders import raygauss as rg_kernels

from .volume import ray_box

PATHS = ("auto", "tiles", "bvh", "splat")


def density_to_opacity(density: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """The opacity a RayGauss density Gaussian gets in a 3DGS file: what a ray through its centre
    along its shortest axis sees, ``1 - exp(-s sqrt(2 pi) min scale)`` (clamped to [1e-6, 1 - 1e-6])."""
    s = density.clamp_min(0)
    smin = torch.exp(log_scales).amin(1)
    return (1 - torch.exp(-s * math.sqrt(2 * math.pi) * smin)).clamp(1e-6, 1 - 1e-6)



def ray_box_clamped(o: torch.Tensor, d: torch.Tensor, box: torch.Tensor):
    """:func:`engine.render.volume.ray_box` with ``t_far >= t_near`` (a miss has an empty interval)."""
    tn, tf = ray_box(o, d, box[0], box[1])
    return tn, torch.maximum(tf, tn)


def gaussian_colors(means, sh, sh_degree: int, cam_center, sg=None) -> torch.Tensor:
    """Per-Gaussian colour (N, 3) seen from ``cam_center`` (3,): ``max(0, SH . Y(d) + 0.5 + sum_l amp
    exp(softplus(sharp) (normalise(axis) . d - 1)))`` with ``d = normalise(mean - center)``."""
    from shaders.sh import sh_eval

    d = F.normalize(means - cam_center.to(means), dim=-1)
    deg = min(int(sh_degree), int(round(sh.shape[1] ** 0.5)) - 1)
    rgb = sh_eval(d, sh, deg, convention="3dgs") + 0.5   # Taichi closed forms, 3DGS signs
    if sg is not None and sg[0].shape[1] > 0:
        amp, axis, sharp = sg
        w = torch.exp(F.softplus(sharp) * ((F.normalize(axis, dim=-1) * d[:, None, :]).sum(-1) - 1.0))
        rgb = rgb + (w[..., None] * amp).sum(1)
    return rgb.clamp_min(0.0)


def kernel_settings(settings=None, mode: str = "density") -> rg_kernels.RayGaussConfig:
    """A :class:`shaders.raygauss.RayGaussConfig` from a dict / object with any of its fields."""
    kc = rg_kernels.RayGaussConfig(mode=mode)
    if settings is None:
        return kc
    items = settings.items() if isinstance(settings, dict) else (
        (k, getattr(settings, k)) for k in ("dt", "samples_per_slab", "cap", "sigma_thr", "t_stop", "alpha_min")
        if hasattr(settings, k))
    for k, v in items:
        setattr(kc, k, v)
    kc.mode = mode
    return kc


class GaussianCache:
    """What repeated renders of unchanged Gaussians reuse: the AABB BVH (refit when only the values
    change, rebuilt when the count does) and the Morton-ordered packed records of the tile path."""

    def __init__(self):
        self.bvh = None
        self.bvh_n = -1
        self.bvh_key = None
        self.infer = None

    def clear(self) -> None:
        self.__init__()


def _bvh_for(cache, key, means, log_scales, quats, weights, kcfg):
    from shaders import bvh as bvh_mod

    n = means.shape[0]
    if cache is not None and key is not None and cache.bvh is not None and cache.bvh_n == n and cache.bvh_key == key:
        return cache.bvh
    with torch.no_grad():
        lo, hi = rg_kernels.gaussian_aabbs(means.detach(), log_scales.detach(), quats.detach(), weights.detach(),
                                           kcfg.mode, kcfg)
        lo, hi = lo.float().contiguous(), hi.float().contiguous()
        if cache is None:
            return bvh_mod.build_aabb_bvh(lo, hi)
        if cache.bvh is None or cache.bvh_n != n:
            cache.bvh = bvh_mod.build_aabb_bvh(lo, hi)
            cache.bvh_n = n
        else:
            bvh_mod.refit_aabb_bvh(cache.bvh, lo, hi)
        cache.bvh_key = key
    return cache.bvh


def render_rays(means, quats, log_scales, weights, rgb, rays_o, rays_d, scene_box, *, mode="density",
                settings=None, background=None, cache=None, cache_key=None) -> dict:
    """Ray cast rays (R, 3) (unit directions, clipped to ``scene_box`` (2, 3)) through the Gaussians
    with per-Gaussian colours ``rgb (N, 3)``; differentiable. Returns rgb (R, 3), alpha (R,),
    depth_sum (R,), n_evals (R,) and n_capped (see :func:`shaders.raygauss.render_rays`)."""
    kcfg = kernel_settings(settings, mode)
    t_near, t_far = ray_box_clamped(rays_o, rays_d, scene_box)
    key = None if cache_key is None else (cache_key, kcfg.sigma_thr, kcfg.alpha_min, kcfg.mode)
    bvh = _bvh_for(cache, key, means, log_scales, quats, weights, kcfg)
    bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)
    out = rg_kernels.render_rays(means, log_scales, quats, weights, rgb, rays_o.contiguous(), rays_d.contiguous(),
                                 t_near.contiguous(), t_far.contiguous(), kcfg, bvh=bvh, background=bg)
    out["depth_sum"] = out.pop("depth")
    return out


def _finish(rgb, alpha, depth_sum, cost, n_capped, H, W) -> dict:
    depth = torch.where(alpha > 1e-6, depth_sum / alpha.clamp_min(1e-6), torch.zeros_like(depth_sum))
    return {"rgb": rgb.reshape(H, W, 3), "alpha": alpha.reshape(H, W), "depth": depth.reshape(H, W),
            "depth_sum": depth_sum.reshape(H, W), "cost": cost.reshape(H, W), "n_capped": int(n_capped)}


def render_gaussians(means, quats, log_scales, weights, colors, cameras, index: int = 0, *, mode: str = "density",
                     sh_degree: int | None = None, sg=None, settings=None, scene_box=None, background=None,
                     path: str = "auto", cache: GaussianCache | None = None, cache_key=None,
                     chunk: int = 1 << 16) -> dict:
    """Render camera ``index`` of ``cameras`` (see the module docstring for shapes and outputs).

    ``settings``: kernel settings (a dict or an object with ``dt``, ``samples_per_slab``, ``cap``,
    ``sigma_thr``, ``t_stop``, ``alpha_min``); ``scene_box (2, 3)``: rays are clipped to it (default:
    the means' bounds padded by 3 of each Gaussian's largest scale); ``path``: auto | tiles | bvh.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if scene_box is None:
        with torch.no_grad():
            r = torch.exp(log_scales.detach()).amax(1, keepdim=True) * 3
            scene_box = torch.stack([(means.detach() - r).amin(0), (means.detach() + r).amax(0)]) \
                if means.shape[0] else torch.zeros(2, 3)
    o, d = cameras.generate_rays(index)
    H, W = o.shape[:2]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    center = cameras.c2w[index, :3, 3]
    sh_given = colors.dim() == 3
    if path == "splat":
        return _render_splat(means, quats, log_scales, weights, colors, sh_degree, sg, cameras, index, mode,
                             background)
    if path == "auto":
        from shaders import runtime

        # CPU only: the tile fill is a serial loop and the active lists are sized for a few
        # thousand rays per launch; a GPU keeps the BVH kernels (SCRATCH_ENTRIES["cuda"])
        path = "tiles" if (not torch.is_grad_enabled() and mode == "density" and cameras.dist is None and sh_given
                           and means.shape[0] > 0 and runtime.init() == "cpu") else "bvh"
    if path == "tiles":
        if not sh_given:
            raise ValueError("the tile path takes SH coefficients (N, K, 3) with sh_degree")
        out = _render_tiles(means, quats, log_scales, weights, colors, sh_degree, sg, o, d, H, W,
                            cameras.c2w[index, :3, :3], center, scene_box, settings, background, cache, cache_key)
        if out is not None:
            return out
    rgb = gaussian_colors(means, colors, sh_degree if sh_degree is not None else 99, center, sg) if sh_given else colors
    parts = [render_rays(means, quats, log_scales, weights, rgb, o[s:s + chunk], d[s:s + chunk], scene_box, mode=mode,
                         settings=settings, background=background, cache=cache, cache_key=cache_key)
             for s in range(0, o.shape[0], chunk)]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("rgb", "alpha", "depth_sum", "n_evals")}
    return _finish(cat["rgb"], cat["alpha"], cat["depth_sum"], cat["n_evals"],
                   sum(int(p["n_capped"]) for p in parts), H, W)


@torch.no_grad()
def _inference_state(means, quats, log_scales, weights, sh, sg, kcfg, cache, key) -> dict:
    """The Gaussians permuted along a Morton curve (neighbours in space are neighbours in memory:
    1.4x faster tile rendering on lego), their M, response, boxes, packed records, ellipsoids,
    bounding radii and colour coefficients (SG axes normalised, sharpness activated)."""
    from shaders.bvh import morton_order
    from shaders.raygauss_tiles import bounding_radius, ellipsoid_cov, pack_gaussians, prefilter_limits

    full_key = None if key is None else (key, kcfg.sigma_thr, kcfg.alpha_min, kcfg.mode, sg is not None)
    if cache is not None and full_key is not None and cache.infer is not None and cache.infer["key"] == full_key:
        return cache.infer
    thr = kcfg.sigma_thr if kcfg.mode == "density" else kcfg.alpha_min
    perm = morton_order(means.detach())
    mu = means.detach()[perm].contiguous()
    ls, q = log_scales.detach()[perm].contiguous(), quats.detach()[perm].contiguous()
    resp = weights.detach()[perm].float().contiguous()
    lo, hi = rg_kernels.gaussian_aabbs(mu, ls, q, resp, kcfg.mode, kcfg)
    M = rg_kernels.build_M(ls, q).contiguous()
    lim = prefilter_limits(resp, thr)
    st = {"key": full_key, "G": pack_gaussians(mu, M, resp, lim, lo, hi), "cov": ellipsoid_cov(ls, q, lim),
          "rho": bounding_radius(ls, resp, thr), "sh": sh.detach()[perm].contiguous(), "sg": None}
    if sg is not None and sg[0].shape[1] > 0:
        amp, axis, sharp = sg
        st["sg"] = (F.normalize(axis.detach()[perm], dim=-1).contiguous(),
                    F.softplus(sharp.detach()[perm]).contiguous(), amp.detach()[perm].contiguous())
    if cache is not None:
        cache.infer = st
    return st


@torch.no_grad()
def _render_tiles(means, quats, log_scales, weights, sh, sh_degree, sg, o, d, H, W, rot, center, scene_box,
                  settings, background, cache, cache_key):
    from shaders import runtime
    from shaders.raygauss_tiles import bin_gaussians, render_tiles, view_colors

    kcfg = kernel_settings(settings, "density").validate()
    runtime.init()
    st = _inference_state(means, quats, log_scales, weights, sh, sg, kcfg, cache, cache_key)
    bins = bin_gaussians(st["G"], st["rho"], st["cov"], o, d, H, W, rot)
    if bins is None:
        return None
    t_near, t_far = ray_box_clamped(o, d, scene_box)
    deg = min(int(sh_degree), int(round(sh.shape[1] ** 0.5)) - 1)
    view_colors(st["G"], center, st["sh"], deg, st["sg"])
    C, T, D, ne, over = render_tiles(st["G"], None, bins, o, d, t_near, t_far, W, kcfg)
    n_capped = 0
    if bool(over.any()):   # a ray whose active list outgrew the cap: BVH path for those rays
        idx = over.nonzero()[:, 0]
        rgb = gaussian_colors(means, sh, deg, center, sg)
        sub = render_rays(means, quats, log_scales, weights, rgb, o[idx], d[idx], scene_box, mode="density",
                          settings=settings, cache=cache, cache_key=cache_key)
        C[idx], T[idx], D[idx], ne[idx] = sub["rgb"], 1.0 - sub["alpha"], sub["depth_sum"], sub["n_evals"]
        n_capped = int(sub["n_capped"])
    if background is not None:
        C = C + T[:, None] * torch.as_tensor(background, dtype=torch.float32).to(C)
    return _finish(C, 1.0 - T, D, ne, n_capped, H, W)


def _render_splat(means, quats, log_scales, weights, colors, sh_degree, sg, cameras, index, mode, background):
    from shaders.splat import splat

    from ..errors import ConfigError

    if cameras.dist is not None:
        raise ConfigError("the splatting path renders undistorted pinhole cameras only; "
                          "use --render-mode raytrace for cameras with lens distortion")
    center = cameras.c2w[index, :3, 3]
    rgb = gaussian_colors(means, colors, sh_degree if sh_degree is not None else 99, center, sg) \
        if colors.dim() == 3 else colors
    op = weights.reshape(-1) if mode == "opacity" else density_to_opacity(weights.reshape(-1), log_scales)
    logits = torch.logit(op.clamp(1e-7, 1 - 1e-7))
    i = int(index)
    out = splat(means, quats, log_scales, logits, rgb, cameras.c2w[i], float(cameras.fx[i]), float(cameras.fy[i]),
                float(cameras.cx[i]), float(cameras.cy[i]), int(cameras.width[i]), int(cameras.height[i]),
                background=background)
    return {"rgb": out["rgb"], "alpha": out["alpha"], "depth": out["depth"], "depth_sum": out["depth_sum"],
            "cost": out["n_evals"], "n_capped": 0}
