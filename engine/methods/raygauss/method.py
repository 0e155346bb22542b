"""RayGauss as a trainable method (the contract of :mod:`engine.methods.base`): model creation,
optimizer groups, one training step, densification, rendering through the shared Gaussian renderer
(:mod:`engine.render.gaussians`), export to the standard 3DGS ``.ply`` and import of such files.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ...train.densify import RayGaussDensifier
from ..base import Method
from ...train.metrics import composite_on_background, dssim_loss
from .config import RayGaussConfig
from .model import RayGaussModel


def exp_lr(t: float, lr0: float, lr1: float) -> float:
    """Log-linear (exponential) decay from lr0 at progress t=0 to lr1 at t=1."""
    t = min(max(t, 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr0) + t * math.log(lr1))


def is_gaussian_ply(path) -> bool:
    """Whether ``path`` is a PLY whose vertex element has the 3DGS properties (f_dc_0, opacity)."""
    from ...errors import KernelightError
    from ...io.ply import read_ply_header

    try:
        return read_ply_header(path).is_gaussian()
    except (KernelightError, OSError):
        return False


class RayGaussMethod(Method):
    """Volumetric Gaussians (RayGauss) or imported 3DGS Gaussians (``mode="opacity"``), ray cast.

    ``model`` is the :class:`RayGaussModel` (its tensors are the parameters), ``strategy`` the
    densification strategy (:class:`engine.train.densify.RayGaussDensifier`).
    """

    name = "raygauss"
    config_cls = RayGaussConfig
    export_formats = {"ply": "standard 3DGS .ply (density converted to opacity, SG lobes dropped)"}
    devices = ("cpu", "cuda")   # parameters, densification and the shared renderer follow the device

    def __init__(self, cfg: RayGaussConfig, model: RayGaussModel):
        super().__init__(cfg)
        self.model = model
        self.strategy = RayGaussDensifier(cfg, model.scene_extent, seed=cfg.seed)
        # mask_background: on data with masks the object is fitted and evaluated alone (eval_target
        # composites the test views the same way when masked_eval is set)
        self.masked_eval = bool(cfg.mask_background)
        self.train_masks = None

    def bind_training_data(self, dataset) -> None:
        """With ``mask_background`` and training masks, :meth:`train_step` fits the photo inside the
        mask and the background colour outside it."""
        masks = getattr(dataset.splits["train"], "masks", None) if self.cfg.mask_background else None
        self.train_masks = masks
        if masks is not None:
            self.notes.append("the data has masks: fitting the object only (the photo inside the mask, the "
                              "background colour outside; --mask-background false fits whole photos)")

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, cfg: RayGaussConfig, dataset) -> "RayGaussMethod":
        from ...errors import ConfigError
        from ...train.init_points import split_coverage, visual_hull_points

        box = dataset.scene_box
        train = dataset.splits["train"]
        points = getattr(dataset, "points", None)
        has_points = points is not None and len(points) >= 4
        choice = cfg.init
        if choice not in ("auto", "visual_hull", "points", "random"):
            raise ConfigError(f"init must be auto, visual_hull, points or random, got {choice!r}")
        if choice == "auto":
            choice = "visual_hull" if split_coverage(train) is not None else ("points" if has_points else "random")
        model, note = None, ""
        if choice == "visual_hull":
            hull = visual_hull_points(train, box, cfg.init_points, seed=cfg.seed)
            if hull is None:
                note = "visual hull unavailable (no alpha/masks or empty hull); "
                choice = "points" if has_points else "random"
            else:
                model = RayGaussModel.from_points(hull[0], hull[1], box, cfg)
                note = f"initialised {model.num_gaussians} Gaussians inside the visual hull of the training masks"
        if model is None and choice == "points":
            if not has_points:
                raise ConfigError("init=points but the dataset has no points (use init=random or auto)")
            model = RayGaussModel.from_points(_np(points), _np(getattr(dataset, "point_colors", None)), box, cfg)
            note += f"initialised {model.num_gaussians} Gaussians from the dataset's {len(points)} points"
        if model is None:
            model = RayGaussModel.random_in_box(box, cfg)
            note += (f"{'the dataset has no points: ' if not has_points else ''}initialised "
                     f"{model.num_gaussians} Gaussians uniformly at random in the scene box")
        m = cls(cfg, model)
        m.notes.append(note)
        return m

    # ---------------------------------------------------------------- optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        c, m = self.cfg, self.model
        ext = m.scene_extent
        groups = [
            {"name": "means", "params": [m.means], "lr": c.lr_means_init * ext},
            {"name": "log_scales", "params": [m.log_scales], "lr": c.lr_log_scale},
            {"name": "quats", "params": [m.quats], "lr": c.lr_quat},
            {"name": "density", "params": [m.density], "lr": c.lr_density_init},
            {"name": "sh", "params": [m.sh], "lr": c.lr_sh_dc},
            {"name": "sg_amp", "params": [m.sg_amp], "lr": c.lr_sg},
            {"name": "sg_axis", "params": [m.sg_axis], "lr": c.lr_sg},
            {"name": "sg_sharp", "params": [m.sg_sharp], "lr": c.lr_sg},
        ]
        return torch.optim.Adam(groups, lr=0.0, eps=1e-15)

    def update_learning_rates(self, optimizer, step: int, progress: float | None = None) -> dict:
        """Exponential schedules over training progress (default step / max_steps; the trainer
        passes max(step / max_steps, train_time / time_budget) when a time budget is set)."""
        c = self.cfg
        ext = self.model.scene_extent
        t = step / max(c.max_steps, 1) if progress is None else progress
        lrs = {}
        for g in optimizer.param_groups:
            if g["name"] == "means":
                g["lr"] = exp_lr(t, c.lr_means_init * ext, c.lr_means_final * ext)
            elif g["name"] == "density":
                g["lr"] = exp_lr(t, c.lr_density_init, c.lr_density_final)
            lrs[g["name"]] = g["lr"]
        return lrs

    def _unlock(self, step: int) -> None:
        m, c = self.model, self.cfg
        deg = sum(1 for s in c.sh_unlock_steps if step >= s)
        m.active_sh_degree = min(deg, m.max_sh_degree)
        m.active_sg = m.sg_amp.shape[1] > 0 and step >= c.sg_unlock_step

    def train_step(self, step: int, image: torch.Tensor, cameras, index: int, background) -> tuple:
        """Render training view ``index`` and return (loss, stats, prediction (H,W,3))."""
        self._unlock(step)
        out = self.model.render_camera(cameras, index, background=background)
        pred = out["rgb"]
        if self.train_masks is not None:
            image = composite_on_background(image, self.train_masks[index], background)
        w = self.cfg.ssim_weight
        l1 = (pred - image).abs().mean()
        loss = (1 - w) * l1 + (w * dssim_loss(pred, image) if w > 0 else 0.0)
        mse = ((pred.detach() - image) ** 2).mean().clamp_min(1e-12)
        stats = {"l1": float(l1.detach()), "psnr": float(-10 * torch.log10(mse)), "n_capped": out["n_capped"],
                 "evals_per_ray": float(out["cost"].float().mean())}
        return loss, stats, pred

    def after_backward(self) -> None:
        self.strategy.after_backward(self.model)

    def post_step(self, optimizer, step: int) -> dict | None:
        with torch.no_grad():
            if self.model.mode == "density":
                self.model.density.clamp_(min=0.0)
        st = self.strategy.step(self.model, optimizer, step)
        return None if st is None else {"cloned": st.cloned, "split": st.split, "pruned": st.pruned}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def render(self, cameras, index: int, background=None) -> dict:
        return self.model.render_camera(cameras, index, background=background)

    @property
    def num_primitives(self) -> int:
        return self.model.num_gaussians

    def progress_label(self) -> str:
        return f"{self.model.num_gaussians} Gaussians"

    def bounds(self) -> torch.Tensor:
        return self.model.scene_box.detach().clone()

    def points(self) -> torch.Tensor:
        """Centres of the Gaussians that matter (response above a small threshold)."""
        m = self.model
        with torch.no_grad():
            keep = m.response() > (0.1 if m.mode == "opacity" else 1.0)
            return (m.means[keep] if int(keep.sum()) > 10 else m.means).detach()

    # ---------------------------------------------------------------- files
    @classmethod
    def from_file(cls, path, cfg: RayGaussConfig) -> "RayGaussMethod":
        """A standard 3DGS ``.ply`` (opacity Gaussians, rendered by ray casting)."""
        from ...io.ply import read_gaussian_ply

        path = Path(path)
        ply = read_gaussian_ply(path)
        note = None
        if cfg.dt == RayGaussConfig().dt and len(ply) > 0:
            # scale-aware ray step for the ray-traced mode: the paper's 0.0025 is 1/1000 of a
            # NeRF-synthetic scene's half-diagonal; a capture in other units gets the same ratio
            means = torch.from_numpy(ply.means)
            if means.shape[0] > 100000:
                means = means[torch.linspace(0, means.shape[0] - 1, 100000).long()]
            lo, hi = torch.quantile(means.double(), 0.02, 0), torch.quantile(means.double(), 0.98, 0)
            half = float((hi - lo).norm()) / 2
            if half > 0 and math.isfinite(half):
                cfg.dt = 1e-3 * half
                note = (f"ray step dt = {cfg.dt:.4g} (1/1000 of the scene's half-diagonal {half:.4g}; "
                        f"--dt overrides) for --render-mode raytrace")
        m = cls(cfg, RayGaussModel.from_gaussian_ply(ply, cfg))
        m.notes.extend(f"{path.name}: {r}" for r in ply.repairs)
        m.notes.append(f"{path.name}: {len(ply)} 3DGS Gaussians (SH degree {ply.degree}), rendered by "
                       f"{m.model.render_mode()}" + (f"; {note}" if note else ""))
        return m

    def export(self, format: str, out) -> list:
        if format != "ply":
            return super().export(format, out)
        out = Path(out)
        if out.suffix.lower() != ".ply":
            out = out / "point_cloud.ply"
        return [self.model.export_ply(out)]

    def default_export_path(self, format: str, run_dir) -> Path:
        return Path(run_dir) / "export" / "point_cloud.ply"

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        m = self.model
        return {
            "params": {k: v.detach().clone() for k, v in m.named_parameters()},
            "scene_box": m.scene_box.clone(),
            "mode": m.mode,
            "active_sh_degree": m.active_sh_degree,
            "active_sg": m.active_sg,
            "strategy": self.strategy.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, cfg: RayGaussConfig, st: dict) -> "RayGaussMethod":
        p = st["params"]
        model = RayGaussModel(p["means"], p["log_scales"], p["quats"], p["density"], p["sh"],
                              p["sg_amp"], p["sg_axis"], p["sg_sharp"], scene_box=st["scene_box"],
                              mode=st.get("mode", "density"), cfg=cfg)
        model.active_sh_degree = int(st.get("active_sh_degree", model.max_sh_degree))
        model.active_sg = bool(st.get("active_sg", True))
        m = cls(cfg, model)
        if st.get("strategy"):
            m.strategy.load_state_dict(st["strategy"])
        return m


def _np(x):
    if x is None:
        return None
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return x
