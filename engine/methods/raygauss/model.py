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
from shaders.sh import sh_eval

from .config import RayGaussConfig

PARAM_NAMES = ("means", "log_scales", "quats", "density", "sh", "sg_amp", "sg_axis", "sg_sharp")


def ray_box_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, box: torch.Tensor):
    """Entry/exit distances of rays with an axis-aligned box (2,3). Misses get t_near = t_far."""
    inv = 1.0 / torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (box[0] - rays_o) * inv
    t1 = (box[1] - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    t_far = torch.maximum(t_far, t_near)
    return t_near, t_far


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
        self._bvh = None
        self._bvh_n = -1

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

    def colors(self, cam_center: torch.Tensor) -> torch.Tensor:
        """Per-Gaussian colour (N,3) for a camera centre (3,), with the active SH degree / SG."""
        d = F.normalize(self.means - cam_center.to(self.means), dim=-1)
        deg = min(self.active_sh_degree, self.max_sh_degree)
        rgb = sh_eval(d, self.sh, deg, convention="3dgs") + 0.5  # Taichi closed forms, 3DGS signs
        if self.active_sg and self.sg_amp.shape[1] > 0:
            axis = F.normalize(self.sg_axis, dim=-1)
            lam = F.softplus(self.sg_sharp)
            w = torch.exp(lam * ((axis * d[:, None, :]).sum(-1) - 1.0))  # (N,L)
            rgb = rgb + (w[..., None] * self.sg_amp).sum(1)
        return rgb.clamp_min(0.0)

    def kernel_config(self, **overrides) -> rg_kernels.RayGaussConfig:
        c = self.cfg
        kc = rg_kernels.RayGaussConfig(dt=c.dt, samples_per_slab=c.samples_per_slab, cap=c.cap,
                                       sigma_thr=c.sigma_thr, t_stop=c.t_stop, mode=self.mode)
        for k, v in overrides.items():
            setattr(kc, k, v)
        return kc

    # ------------------------------------------------------------------ rendering
    def _params_key(self, kcfg) -> tuple:
        """Identity of the current geometry parameters (and the settings boxes depend on)."""
        key = tuple((p.data_ptr(), p._version) for p in (self.means, self.log_scales, self.quats, self.density))
        return key + (self.num_gaussians, kcfg.sigma_thr, kcfg.alpha_min, kcfg.mode)

    def _current_bvh(self, kcfg):
        """An AABB BVH over the Gaussians: refit when the count is unchanged, else rebuild."""
        from shaders import bvh as bvh_mod

        # parameters unchanged since the last build/refit (e.g. rendering many views of a trained
        # model): reuse the BVH as it is
        key = self._params_key(kcfg)
        if self._bvh is not None and self._bvh_n == self.num_gaussians and key == getattr(self, "_bvh_key", None):
            return self._bvh
        self._bvh_key = key
        with torch.no_grad():
            lo, hi = rg_kernels.gaussian_aabbs(self.means, self.log_scales, self.quats, self.response(),
                                               self.mode, kcfg)
            if self._bvh is None or self._bvh_n != self.num_gaussians:
                self._bvh = bvh_mod.build_aabb_bvh(lo.float().contiguous(), hi.float().contiguous())
                self._bvh_n = self.num_gaussians
            else:
                bvh_mod.refit_aabb_bvh(self._bvh, lo.float().contiguous(), hi.float().contiguous())
        return self._bvh

    @torch.no_grad()
    def _inference_state(self, kcfg) -> dict:
        """Everything rendering without gradients needs, cached until a parameter (or the active
        SH degree / SG switch) changes: the Gaussians permuted along a Morton curve (neighbours in
        space are neighbours in memory: 1.4x faster tile rendering on lego), their M, response,
        boxes, packed records, ellipsoids, bounding radii and colour coefficients (SG axes
        normalised, sharpness activated) for :mod:`shaders.raygauss_tiles`."""
        from shaders.bvh import morton_order
        from shaders.raygauss_tiles import bounding_radius, ellipsoid_cov, pack_gaussians, prefilter_limits

        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        key = key + (self.num_gaussians, kcfg.sigma_thr, kcfg.alpha_min, kcfg.mode,
                     self.active_sh_degree, self.active_sg)
        st = getattr(self, "_infer", None)
        if st is not None and st["key"] == key:
            return st
        thr = kcfg.sigma_thr if self.mode == "density" else kcfg.alpha_min
        perm = morton_order(self.means)
        means = self.means.detach()[perm].contiguous()
        ls, q = self.log_scales.detach()[perm].contiguous(), self.quats.detach()[perm].contiguous()
        resp = self.response().detach()[perm].float().contiguous()
        lo, hi = rg_kernels.gaussian_aabbs(means, ls, q, resp, self.mode, kcfg)
        M = rg_kernels.build_M(ls, q).contiguous()
        lim = prefilter_limits(resp, thr)
        st = {"key": key, "means": means, "M": M, "resp": resp, "lo": lo, "hi": hi,
              "G": pack_gaussians(means, M, resp, lim, lo, hi), "cov": ellipsoid_cov(ls, q, lim),
              "rho": bounding_radius(ls, resp, thr), "sh": self.sh.detach()[perm].contiguous(), "sg": None}
        if self.active_sg and self.sg_amp.shape[1] > 0:
            st["sg"] = (F.normalize(self.sg_axis.detach()[perm], dim=-1).contiguous(),
                        F.softplus(self.sg_sharp.detach()[perm]).contiguous(),
                        self.sg_amp.detach()[perm].contiguous())
        self._infer = st
        return st

    def invalidate_bvh(self):
        self._bvh = None
        self._bvh_n = -1
        self._bvh_key = None

    def render_rays(self, rays_o, rays_d, cam_center, background=None, **kernel_overrides) -> dict:
        """Render rays (R,3)/(R,3) (unit directions) seen from ``cam_center``.

        Returns dict(rgb (R,3), alpha (R,), depth (R,) expected depth, n_evals (R,), n_capped int).
        """
        kcfg = self.kernel_config(**kernel_overrides)
        t_near, t_far = ray_box_intersect(rays_o, rays_d, self.scene_box)
        rgb = self.colors(cam_center)
        bvh = self._current_bvh(kcfg)
        bg = None if background is None else torch.as_tensor(background, dtype=torch.float32)
        return rg_kernels.render_rays(self.means, self.log_scales, self.quats, self.response(), rgb,
                                      rays_o.contiguous(), rays_d.contiguous(), t_near.contiguous(),
                                      t_far.contiguous(), kcfg, bvh=bvh, background=bg)

    def render_camera(self, cameras, index: int = 0, background=None, chunk: int = 1 << 16,
                      tiles: bool | None = None) -> dict:
        """Render camera ``index`` of a Cameras batch. Returns images: rgb (H,W,3), alpha/depth (H,W),
        n_evals (H,W) and the int n_capped.

        ``tiles``: use the tile-binned renderer (:mod:`shaders.raygauss_tiles`; same image, 2.5x
        faster on whole images on CPU). Default: on the CPU backend when no gradient is needed, the
        model is in density mode and the camera has no distortion; rays it cannot take fall back to
        the BVH path.
        """
        o, d = cameras.generate_rays(index)
        H, W = o.shape[:2]
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        center = cameras.c2w[index, :3, 3]
        if tiles is None:
            from shaders import runtime

            # CPU only: the tile fill is a serial loop and the active lists are sized for a few
            # thousand rays per launch; a GPU keeps the BVH kernels (SCRATCH_ENTRIES["cuda"])
            tiles = (not torch.is_grad_enabled() and self.mode == "density" and cameras.dist is None
                     and self.num_gaussians > 0 and runtime.init() == "cpu")
        if tiles:
            out = self._render_image_tiles(o, d, H, W, cameras.c2w[index, :3, :3], center, background)
            if out is not None:
                return out
        outs = []
        for s in range(0, o.shape[0], chunk):
            outs.append(self.render_rays(o[s:s + chunk], d[s:s + chunk], center, background))
        out = {
            "rgb": torch.cat([x["rgb"] for x in outs]).reshape(H, W, 3),
            "alpha": torch.cat([x["alpha"] for x in outs]).reshape(H, W),
            "depth": torch.cat([x["depth"] for x in outs]).reshape(H, W),
            "n_evals": torch.cat([x["n_evals"] for x in outs]).reshape(H, W),
            "n_capped": int(sum(int(x["n_capped"]) for x in outs)),
        }
        return out

    @torch.no_grad()
    def _render_image_tiles(self, o, d, H, W, rot, center, background):
        from shaders import runtime
        from shaders.raygauss_tiles import bin_gaussians, render_tiles, view_colors

        kcfg = self.kernel_config().validate()
        if kcfg.mode != "density":
            return None
        runtime.init()
        st = self._inference_state(kcfg)
        bins = bin_gaussians(st["G"], st["rho"], st["cov"], o, d, H, W, rot)
        if bins is None:
            return None
        t_near, t_far = ray_box_intersect(o, d, self.scene_box)
        view_colors(st["G"], center, st["sh"], min(self.active_sh_degree, self.max_sh_degree), st["sg"])
        C, T, D, ne, over = render_tiles(st["G"], None, bins, o, d, t_near, t_far, W, kcfg)
        n_capped = 0
        if bool(over.any()):   # a ray whose active list outgrew the cap: BVH path for those rays
            idx = over.nonzero()[:, 0]
            sub = self.render_rays(o[idx], d[idx], center, None)
            C[idx], T[idx], D[idx], ne[idx] = sub["rgb"], 1.0 - sub["alpha"], sub["depth"], sub["n_evals"]
            n_capped = int(sub["n_capped"])
        rgb_out = C
        if background is not None:
            rgb_out = C + T[:, None] * torch.as_tensor(background, dtype=torch.float32).to(C)
        return {"rgb": rgb_out.reshape(H, W, 3), "alpha": (1.0 - T).reshape(H, W), "depth": D.reshape(H, W),
                "n_evals": ne.reshape(H, W), "n_capped": n_capped}

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
                s = self.density.clamp_min(0)
                smin = torch.exp(self.log_scales).amin(1)
                op = (1 - torch.exp(-s * math.sqrt(2 * math.pi) * smin)).clamp(1e-6, 1 - 1e-6)
                logits = torch.log(op / (1 - op))
            quats = F.normalize(self.quats, dim=-1)
        return write_gaussian_ply(path, self.means, self.log_scales, quats, logits, self.sh)

    def extra_state(self) -> dict:
        return {"mode": self.mode, "active_sh_degree": self.active_sh_degree,
                "active_sg": self.active_sg, "num_gaussians": self.num_gaussians}
