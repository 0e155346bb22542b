"""GaussianVolume (GVGEN, ECCV 2024) as a trainable method (the contract of :mod:`engine.methods.base`).

A fixed grid of N^3 Gaussian slots (:class:`~.model.GaussianVolume`) fitted to the training images
by 3DGS splatting (:func:`engine.render.gaussians.render_gaussians`, ``path="splat"``) with
GVGEN's Candidate Pool Strategy (:mod:`.pool`) and offset loss; exported as a standard 3DGS ``.ply``
or as the Gaussian Distance Field (``gdf``: an (N, N, N) ``.npy``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from ...train.metrics import dssim_loss
from ..base import Method
from .config import GVolumeConfig
from .model import PARAMS, SH_C0, GaussianVolume, grid_points
from .pool import CandidatePoolStrategy


def _exp_lr(t: float, lr0: float, lr1: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr0) + t * math.log(lr1))


class GVolumeMethod(Method):
    """N^3 Gaussians on a grid (see the package modules). ``vol`` is the :class:`GaussianVolume`,
    ``strategy`` the :class:`~.pool.CandidatePoolStrategy`."""

    name = "gvolume"
    config_cls = GVolumeConfig
    # for methods built on fitted volumes (gvgen), reached through the registry, never by import
    volume_cls = GaussianVolume
    grid_points = staticmethod(grid_points)
    export_formats = {"ply": "standard 3DGS .ply of the active Gaussians (all N^3 once densification ended)",
                      "gdf": "Gaussian Distance Field: (N, N, N) float32 .npy, per grid point the distance "
                             "(world units) to the nearest Gaussian centre"}
    # the volume, the pool's statistics and every tensor the strategy makes follow the volume's device;
    # the greedy anchor matching of a densification round runs on the CPU (one copy per round)
    devices = ("cpu", "cuda")

    def __init__(self, cfg: GVolumeConfig, vol: GaussianVolume):
        super().__init__(cfg)
        self.vol = vol
        self.strategy = CandidatePoolStrategy(cfg, vol.extent, seed=cfg.seed)
        self._view = None
        self._progress = None

    def to(self, device) -> "GVolumeMethod":
        """The volume (parameters and buffers, in place: an optimizer made before keeps them) and the
        candidate pool's gradient statistics on ``device``."""
        device = torch.device(device)
        self.vol.to(device)
        st = self.strategy
        st.grad_accum = None if st.grad_accum is None else st.grad_accum.to(device)
        st.count = None if st.count is None else st.count.to(device)
        return self

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, cfg: GVolumeConfig, dataset) -> "GVolumeMethod":
        from ...train.init_points import split_coverage, visual_hull_points

        n = cfg.grid_size
        train = dataset.splits["train"]
        scene_box = torch.as_tensor(dataset.scene_box, dtype=torch.float32).reshape(2, 3).cpu()
        points = getattr(dataset, "points", None)
        has_points = points is not None and len(points) >= 1
        if cfg.init == "points" and not has_points:
            raise ConfigError("init=points but the dataset has no points (use init=all or auto)")
        hull = None
        if (cfg.volume_box in ("auto", "hull") or cfg.init in ("auto", "visual_hull")) \
                and split_coverage(train) is not None:
            hull = visual_hull_points(train.to("cpu") if hasattr(train, "to") else train, scene_box,
                                      max(8 * n ** 3, 20000), resolution=max(32, 2 * n), seed=cfg.seed)
        notes = []
        if cfg.volume_box == "hull" and hull is None:
            raise ConfigError("volume_box=hull needs training images with alpha or masks and a non-empty visual "
                              "hull; use volume_box=scene")
        if cfg.volume_box in ("auto", "hull") and hull is not None:
            p = torch.from_numpy(hull[0])
            lo, hi = p.amin(0), p.amax(0)
            side = float((hi - lo).max()) * (1 + 2 * cfg.box_padding)
            box = torch.stack([(lo + hi) / 2 - side / 2, (lo + hi) / 2 + side / 2])
            notes.append(f"volume: a cube of side {side:.3g} around the visual hull")
        else:
            box = scene_box
            notes.append("volume: the dataset's scene box")
        vol = GaussianVolume(box, n, cfg.sh_degree, init_scale_cells=cfg.init_scale_cells)
        choice = cfg.init
        if choice == "auto":
            choice = "visual_hull" if hull is not None else ("points" if has_points else "all")
        if choice == "visual_hull" and hull is None:
            raise ConfigError("init=visual_hull needs training images with alpha or masks (use init=points or all)")
        if choice == "all":
            pts, cols = None, None
        elif choice == "visual_hull":
            pts, cols = torch.from_numpy(hull[0]), torch.from_numpy(hull[1])
        else:
            pts = torch.as_tensor(np.asarray(_np(points)), dtype=torch.float32)
            pc = getattr(dataset, "point_colors", None)
            cols = None if pc is None else torch.as_tensor(np.asarray(_np(pc)), dtype=torch.float32)
            if cols is not None and cols.max() > 1.5:
                cols = cols / 255.0
        _init_slots(vol, pts, cols, cfg.init_opacity)
        m = cls(cfg, vol)
        m.notes.extend(notes)
        m.notes.append(f"initialised {vol.num_active:,} of {vol.num_slots:,} slots ({n}^3) from "
                       f"{ {'all': 'every anchor', 'visual_hull': 'the visual hull', 'points': 'the dataset points'}[choice]}; "
                       f"the other anchors are in the candidate pool")
        return m

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        c, v = self.cfg, self.vol
        groups = [
            {"name": "offset", "params": [v.offset], "lr": c.lr_offset_init * v.extent},
            {"name": "sh_dc", "params": [v.sh_dc], "lr": c.lr_sh_dc},
            {"name": "sh_rest", "params": [v.sh_rest], "lr": c.lr_sh_rest},
            {"name": "opacity", "params": [v.opacity], "lr": c.lr_opacity},
            {"name": "log_scales", "params": [v.log_scales], "lr": c.lr_log_scale},
            {"name": "quats", "params": [v.quats], "lr": c.lr_quat},
        ]
        return torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    def update_learning_rates(self, optimizer, step: int, progress: float | None = None) -> dict:
        c = self.cfg
        t = step / max(c.max_steps, 1) if progress is None else progress
        self._progress = progress
        lrs = {}
        for g in optimizer.param_groups:
            if g["name"] == "offset":
                ext = self.strategy.extent      # the volume's (fixed) extent as a float: no device sync per step
                g["lr"] = _exp_lr(t, c.lr_offset_init * ext, c.lr_offset_final * ext)
            lrs[g["name"]] = g["lr"]
        return lrs

    def train_step(self, step: int, image: torch.Tensor, cameras, index: int, background) -> tuple:
        c, v = self.cfg, self.vol
        v.active_sh_degree = min(step // c.sh_unlock_every, v.max_sh_degree)
        out = v.render_camera(cameras, index, background=background)
        pred = out["rgb"]
        l1 = (pred - image).abs().mean()
        loss = (1 - c.ssim_weight) * l1 + (c.ssim_weight * dssim_loss(pred, image) if c.ssim_weight > 0 else 0.0)
        off = v.offset_loss(c.offset_free_cells)
        if c.offset_weight > 0:
            loss = loss + c.offset_weight * off
        i = int(index)
        self._view = (cameras.c2w[i].detach(), float(cameras.fx[i]), float(cameras.fy[i]),
                      int(cameras.width[i]), int(cameras.height[i]))
        mse = ((pred.detach() - image) ** 2).mean().clamp_min(1e-12)
        stats = {"l1": float(l1.detach()), "psnr": float(-10 * torch.log10(mse)),
                 "offset_loss": float(off.detach()), "active": v.num_active}
        return loss, stats, pred

    def after_backward(self) -> None:
        self.strategy.after_backward(self.vol, self._view)

    def post_step(self, optimizer, step: int) -> dict | None:
        self.vol.clamp_offsets(self.cfg.max_offset_cells)
        return self.strategy.step(self.vol, optimizer, step, progress=self._progress)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def render(self, cameras, index: int, background=None) -> dict:
        return self.vol.render_camera(cameras, index, background=background)

    @property
    def num_primitives(self) -> int:
        return self.vol.num_active

    def progress_label(self) -> str:
        n = self.vol.grid_size
        return f"gvolume {n}^3: {self.vol.num_active:,} active"

    def bounds(self) -> torch.Tensor:
        return self.vol.box.detach().clone()

    def points(self) -> torch.Tensor:
        with torch.no_grad():
            v = self.vol
            keep = v.active & (torch.sigmoid(v.opacity) > 0.1)
            if int(keep.sum()) <= 10:
                keep = v.active
            return v.means()[keep].detach()

    def gdf(self) -> torch.Tensor:
        """The Gaussian Distance Field (N, N, N) of :meth:`GaussianVolume.gdf`."""
        return self.vol.gdf()

    # ---------------------------------------------------------------- files
    def export(self, format: str, out) -> list:
        out = Path(out)
        if format == "ply":
            if out.suffix.lower() != ".ply":
                out = out / "point_cloud.ply"
            return [self.vol.export_ply(out)]
        if format == "gdf":
            if out.suffix.lower() != ".npy":
                out = out / "gdf.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, self.vol.gdf().numpy())
            return [out]
        return super().export(format, out)

    def default_export_path(self, format: str, run_dir) -> Path:
        return Path(run_dir) / "export" / ("point_cloud.ply" if format == "ply" else "gdf.npy")

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        v = self.vol
        return {"grid_size": v.grid_size, "box": v.box.detach().cpu().clone(),
                "params": {k: getattr(v, k).detach().clone() for k in PARAMS},
                "active": v.active.clone(), "active_sh_degree": v.active_sh_degree,
                "init_scale_cells": v.init_scale_cells, "strategy": self.strategy.state_dict()}

    @classmethod
    def from_state_dict(cls, cfg: GVolumeConfig, st: dict) -> "GVolumeMethod":
        n = int(st.get("grid_size", -1))
        if n != cfg.grid_size:
            raise ConfigError(f"this GaussianVolume checkpoint holds a {n}^3 volume ({n ** 3:,} Gaussians) but "
                              f"grid_size is {cfg.grid_size} ({cfg.grid_size ** 3:,}): a volume's size is fixed; "
                              f"load it with grid_size={n} (--grid-size {n}) or train a new one")
        p = st["params"]
        rows = {k: int(p[k].shape[0]) for k in PARAMS}
        if any(r != n ** 3 for r in rows.values()) or int(st["active"].shape[0]) != n ** 3:
            raise ConfigError(f"corrupt GaussianVolume checkpoint: grid_size {n} needs {n ** 3} rows, "
                              f"found {rows}")
        K = int(p["sh_rest"].shape[1]) + 1
        vol = GaussianVolume(st["box"], n, int(round(math.sqrt(K))) - 1,
                             init_scale_cells=float(st.get("init_scale_cells", cfg.init_scale_cells)),
                             params=p, active=st["active"])
        vol.active_sh_degree = int(st.get("active_sh_degree", 0))
        m = cls(cfg, vol)
        if st.get("strategy"):
            m.strategy.load_state_dict(st["strategy"])
        return m


@torch.no_grad()
def _init_slots(vol: GaussianVolume, pts, cols, opacity: float) -> None:
    """Activate the anchors nearest ``pts`` (every anchor when None), coloured by the mean colour of
    their points (grey without colours), at opacity ``opacity``."""
    S, n = vol.num_slots, vol.grid_size
    if pts is None:
        rows = torch.arange(S)
        rgb = torch.full((S, 3), 0.5)
    else:
        ijk = vol.to_grid(pts.float()).round().long().clamp(0, n - 1)
        slot = (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]
        cnt = torch.zeros(S).index_add_(0, slot, torch.ones(len(slot)))
        c = torch.full((len(slot), 3), 0.5) if cols is None else cols.float()[:, :3]
        csum = torch.zeros(S, 3).index_add_(0, slot, c)
        rows = torch.nonzero(cnt > 0)[:, 0]
        rgb = csum[rows] / cnt[rows, None]
    vol.reset_rows(rows, opacity=opacity)
    vol.sh_dc.data[rows, 0] = (rgb - 0.5) / SH_C0
    vol.active[rows] = True


def _np(x):
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return x
