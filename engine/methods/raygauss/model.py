"""The RayGauss model: volumetric Gaussians with SH + spherical-Gaussian colour (torch side).

Parameters (pre-activation, all ``nn.Parameter``):

* ``means`` (N,3), ``log_scales`` (N,3), ``quats`` (N,4) wxyz (normalised on use)
* ``density`` (N,) — RayGauss response s, used clamped to >= 0 (no activation, as in the paper);
  in ``opacity`` mode (3DGS files) it holds the opacity logit instead and sigmoid is applied.
* ``sh`` (N,K,3), K = (sh_degree+1)^2, 3DGS sign convention: rgb = SH . Y(d) + 0.5
* ``sg_amp`` (N,L,3), ``sg_axis`` (N,L,3), ``sg_sharp`` (N,L): spherical-Gaussian lobes
  a * exp(lambda (d.xi - 1)), lambda = softplus(sg_sharp), xi = normalise(sg_axis).

The colour of each Gaussian is evaluated once per view with d = normalise(mean - camera centre)
and the per-Gaussian colour table goes to the ray-casting kernel (shaders.raygauss).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shaders import raygauss as rg_kernels

from ...render import gaussians as grender
from .config import RayGaussConfig

PARAM_NAMES = ("means", "log_scales", "quats", "density", "sh", "sg_amp", "sg_axis", "sg_sharp")


def ray_box_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, box: torch.Tensor):
    """Entry/exit distances of rays with an axis-aligned box (2,3). Misses get t_near = t_far."""
    return grender.ray_box_clamped(rays_o, rays_d, box)


class RayGaussModel(nn.Module):
    def __init__(self, means, log_scales, quats, density, sh, sg_amp=None, sg_axis=None, sg_sharp=None,
                 *, scene_box, mode: str = "density", cfg: RayGaussConfig | None = None):
        super().__init__()
        if mode not in ("density", "opacity"):
            raise ValueError(f"mode must be 'density' or 'opacity', got {mode!r}")
        self.cfg = cfg or RayGaussConfig()
        self.mode = mode
        n = means.shape[0]
        L = self.cfg.sg_lobes if sg_amp is None else sg_amp.shape[1]
        if sg_amp is None:
            sg_amp = torch.zeros(n, L, 3)
            sg_axis = torch.randn(n, L, 3, generator=torch.Generator().manual_seed(self.cfg.seed + 1))
            sg_sharp = torch.full((n, L), 1.0)
        for name, val in zip(PARAM_NAMES, (means, log_scales, quats, density, sh, sg_amp, sg_axis, sg_sharp)):
            setattr(self, name, nn.Parameter(torch.as_tensor(val, dtype=torch.float32).contiguous()))
        self.register_buffer("scene_box", torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3))
        self.active_sh_degree = self.max_sh_degree
        self.active_sg = L > 0
        self._gcache = None

    # ------------------------------------------------------------------ construction
    @property
    def max_sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def scene_extent(self) -> float:
        return float((self.scene_box[1] - self.scene_box[0]).norm() / 2)

    @classmethod
    def from_points(cls, points, colors, scene_box, cfg: RayGaussConfig):
        """Initialise one Gaussian per point (subsampled to cfg.init_points), scales from kNN."""
        from scipy.spatial import cKDTree

        g = np.random.default_rng(cfg.seed)
        pts = np.asarray(points, dtype=np.float32)
        if len(pts) > cfg.init_points:
            idx = g.choice(len(pts), cfg.init_points, replace=False)
            pts = pts[idx]
            colors = None if colors is None else np.asarray(colors)[idx]
        n = len(pts)
        if n < 4:
            raise ValueError(f"need at least 4 initial points, got {n}")
        d, _ = cKDTree(pts).query(pts, k=4)
        mean_d = np.sqrt(np.maximum((d[:, 1:] ** 2).mean(1), 1e-10))
        log_scales = np.repeat(np.log(mean_d * cfg.init_scale_mult)[:, None], 3, 1)
        quats = np.zeros((n, 4), np.float32)
        quats[:, 0] = 1.0
        K = (cfg.sh_degree + 1) ** 2
        sh = np.zeros((n, K, 3), np.float32)
        c = np.full((n, 3), 0.5, np.float32) if colors is None else np.asarray(colors, np.float32)
        sh[:, 0, :] = (c - 0.5) / 0.28209479177387814
        density = np.full((n,), cfg.init_density, np.float32)
        model = cls(torch.from_numpy(pts), torch.from_numpy(log_scales.astype(np.float32)),
                    torch.from_numpy(quats), torch.from_numpy(density), torch.from_numpy(sh),
                    scene_box=scene_box, mode="density", cfg=cfg)
        model.active_sh_degree = 0
        model.active_sg = False
        return model

    @classmethod
    def random_in_box(cls, scene_box, cfg: RayGaussConfig):
        g = np.random.default_rng(cfg.seed)
        box = np.asarray(scene_box, np.float32).reshape(2, 3)
        pts = box[0] + g.random((cfg.init_random_points, 3), dtype=np.float32) * (box[1] - box[0])
        return cls.from_points(pts, None, scene_box, cfg)

    @classmethod
    def from_gaussian_ply(cls, ply, cfg: RayGaussConfig | None = None, scene_box=None):
        """A standard 3DGS file (opacity response, no SG lobes)."""
        cfg = cfg or RayGaussConfig()
        cfg.sg_lobes = 0
        cfg.sh_degree = ply.degree
        means = torch.from_numpy(ply.means)
        if scene_box is None:
            radius = torch.from_numpy(np.exp(ply.log_scales).max(1)).unsqueeze(1) * 3
            scene_box = torch.stack([(means - radius).amin(0), (means + radius).amax(0)])
        m = cls(means, torch.from_numpy(ply.log_scales), torch.from_numpy(ply.quats),
                torch.from_numpy(ply.opacity_logits), torch.from_numpy(ply.sh),
                torch.zeros(len(ply), 0, 3), torch.zeros(len(ply), 0, 3), torch.zeros(len(ply), 0),
                scene_box=scene_box, mode="opacity", cfg=cfg)
        return m

    # ------------------------------------------------------------------ activations
    def response(self) -> torch.Tensor:
        if self.mode == "opacity":
            return torch.sigmoid(self.density)
        return self.density.clamp_min(0.0)

    def sg(self):
        """The spherical-Gaussian lobes ``(amp, axis, sharpness)`` when active, else None."""
        return (self.sg_amp, self.sg_axis, self.sg_sharp) if self.active_sg and self.sg_amp.shape[1] > 0 else None

    def colors(self, cam_center: torch.Tensor) -> torch.Tensor:
        """Per-Gaussian colour (N,3) for a camera centre (3,), with the active SH degree / SG."""
        return grender.gaussian_colors(self.means, self.sh, min(self.active_sh_degree, self.max_sh_degree),
                                       cam_center, self.sg())

    def kernel_config(self, **overrides) -> rg_kernels.RayGaussConfig:
        c = self.cfg
        kc = rg_kernels.RayGaussConfig(dt=c.dt, samples_per_slab=c.samples_per_slab, cap=c.cap,
                                       sigma_thr=c.sigma_thr, t_stop=c.t_stop, mode=self.mode)
        for k, v in overrides.items():
            setattr(kc, k, v)
        return kc

    # ------------------------------------------------------------------ rendering
    def render_mode(self) -> str:
        """``splat`` or ``raytrace`` (``render_mode = auto``: splat for imported 3DGS files, which
        are opacity Gaussians trained by splatting; raytrace for RayGauss density Gaussians)."""
        m = self.cfg.render_mode
        if m == "auto":
            return "splat" if self.mode == "opacity" else "raytrace"
        return m

    def _cache_key(self) -> tuple:
        """Identity of the current parameters (the shared renderer's caches follow it)."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters()) + (self.num_gaussians,)

    @property
    def _cache(self) -> grender.GaussianCache:
        if getattr(self, "_gcache", None) is None:
            self._gcache = grender.GaussianCache()
        return self._gcache

    def invalidate_bvh(self):
        self._cache.clear()

    def render_rays(self, rays_o, rays_d, cam_center, background=None, **kernel_overrides) -> dict:
        """Render rays (R,3)/(R,3) (unit directions) seen from ``cam_center``.

        Returns dict(rgb (R,3), alpha (R,), depth_sum (R,) un-normalised expected depth, n_evals (R,),
        n_capped int).
        """
        kcfg = self.kernel_config(**kernel_overrides)
        return grender.render_rays(self.means, self.quats, self.log_scales, self.response(), self.colors(cam_center),
                                   rays_o, rays_d, self.scene_box, mode=self.mode, settings=kcfg,
                                   background=background, cache=self._cache, cache_key=self._geometry_key())

    def _geometry_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in (self.means, self.log_scales, self.quats, self.density)) \
            + (self.num_gaussians,)

    def render_camera(self, cameras, index: int = 0, background=None, chunk: int = 1 << 16,
                      tiles: bool | None = None) -> dict:
        """Render camera ``index`` of a Cameras batch through :func:`engine.render.gaussians.render_gaussians`:
        rgb (H,W,3), alpha/depth/depth_sum/cost (H,W) and the int n_capped.

        ``tiles``: use the tile-binned renderer (same image, 2.5x faster on whole images on CPU).
        Default: on the CPU backend when no gradient is needed, the model is in density mode and the
        camera has no distortion; rays it cannot take fall back to the BVH path.
        """
        path = "auto" if tiles is None else ("tiles" if tiles else "bvh")
        if path == "tiles" and self.mode != "density":
            path = "bvh"
        if tiles is None and self.render_mode() == "splat":
            path = "splat"
        return grender.render_gaussians(
            self.means, self.quats, self.log_scales, self.response(), self.sh, cameras, index, mode=self.mode,
            sh_degree=min(self.active_sh_degree, self.max_sh_degree), sg=self.sg(), settings=self.kernel_config(),
            scene_box=self.scene_box, background=background, path=path, cache=self._cache,
            cache_key=self._geometry_key() if torch.is_grad_enabled() else self._cache_key() + (self.active_sh_degree,),
            chunk=chunk)

    # ------------------------------------------------------------------ export / state
    def export_ply(self, path):
        """Write the standard 3DGS layout. Density-mode Gaussians are written with the opacity that
        a ray through the centre along the shortest axis would see (1 - exp(-s * sqrt(2 pi) * min
        scale)), an approximation documented in the README; SG lobes are not part of the format."""
        from ...io.ply import write_gaussian_ply

        with torch.no_grad():
            if self.mode == "opacity":
                logits = self.density
            else:
                op = grender.density_to_opacity(self.density, self.log_scales)
                logits = torch.log(op / (1 - op))
            quats = F.normalize(self.quats, dim=-1)
        return write_gaussian_ply(path, self.means, self.log_scales, quats, logits, self.sh)

    def extra_state(self) -> dict:
        return {"mode": self.mode, "active_sh_degree": self.active_sh_degree,
                "active_sg": self.active_sg, "num_gaussians": self.num_gaussians}
