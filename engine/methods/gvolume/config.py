"""Configuration of the GaussianVolume method (GVGEN's fitting, REFERENCES.md "GVGEN").

Defaults are compressed for minutes of CPU training at low resolution; ``--preset paper`` sets the
fitting schedule of GVGEN's Candidate Pool Strategy (20,000 steps, densify 500..15,000 every 100,
opacity reset every 3,000). Every field can be set from the command line or a scene TOML.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig, option


@dataclass
class GVolumeConfig(MethodConfig):
    # ---- the volume ------------------------------------------------------------------------------
    grid_size: int = option(32, "N: the volume holds exactly N^3 Gaussian slots, one anchored at each grid point")
    volume_box: str = option("auto", "where the grid lies: scene (the dataset's scene box) | hull (a cube around "
                             "the visual hull of the training masks, as GVGEN's normalised objects) | auto "
                             "(hull when the images have alpha/masks, else scene)", choices=("auto", "scene", "hull"))
    box_padding: float = option(0.05, "hull cube: its side is the hull's largest extent times (1 + 2 x this)")
    init: str = option("auto", "auto | visual_hull (anchors inside the visual hull active, the rest in the pool) | "
                       "points (anchors nearest the dataset points) | all (every anchor active)",
                       choices=("auto", "visual_hull", "points", "all"))
    init_opacity: float = option(0.1, "initial opacity of active slots")
    init_scale_cells: float = option(0.8, "initial scale of every Gaussian, in grid cells")
    sh_degree: int = option(0, "max SH degree of the colour (GVGEN: 0, DC only)")
    sh_unlock_every: int = option(1000, "one more SH degree every N steps (3DGS)")
    max_offset_cells: float = option(3.0, "offsets are clamped to this many cells per axis after each step")
    # ---- optimisation (3DGS rates; positions times the scene box half-diagonal) ---------------------
    lr_offset_init: float = option(1.6e-4, "initial offset learning rate x box half-diagonal, exponential decay")
    lr_offset_final: float = option(1.6e-6, "final offset learning rate x box half-diagonal")
    lr_sh_dc: float = option(2.5e-3, "SH DC learning rate")
    lr_sh_rest: float = option(1.25e-4, "higher SH degrees' learning rate")
    lr_opacity: float = option(0.05, "opacity logit learning rate")
    lr_log_scale: float = option(5e-3, "log-scale learning rate")
    lr_quat: float = option(1e-3, "quaternion learning rate")
    ssim_weight: float = option(0.2, "loss = (1 - w) L1 + w D-SSIM (+ the offset loss)")
    offset_weight: float = option(20.0, "offset loss weight: w * mean(relu(|offset| - offset_free_cells / (N-1))), "
                                  "offsets in units of the volume side (GVGEN: 20, 1.5/31)")
    offset_free_cells: float = option(1.5, "offsets up to this many cells cost nothing in the offset loss")
    # ---- the Candidate Pool Strategy ---------------------------------------------------------------
    densify_from: int = option(300, "first densification step")
    densify_until: int = option(2400, "last densification step; then every free anchor is re-activated")
    densify_every: int = option(100, "densify / prune every N steps")
    densify_grad_thr: float = option(2e-4, "mean screen-space (NDC) position-gradient norm that densifies")
    clone_scale_frac: float = option(0.01, "clone if max scale <= frac x box half-diagonal, else split")
    split_scale_div: float = option(1.6, "split children get the parent scale divided by this")
    prune_opacity: float = option(0.005, "prune active slots whose opacity falls below this")
    split_needs_both: bool = option(False, "a split whose second child finds no free anchor does not happen (the parent "
                                    "stays) instead of leaving one smaller child")
    pool_radius_cells: float = option(1.5, "a child takes the nearest free anchor within this many cells")
    reactivate_opacity: float = option(1e-4, "opacity of the anchors re-activated at the end of densification")
    opacity_reset_every: int = option(0, "reset opacities to <= 0.01 every N steps during densification (0: never; "
                                      "GVGEN/3DGS: 3000)")

    def validate(self) -> None:
        super().validate()
        from ...errors import ConfigError

        if not 2 <= self.grid_size <= 256:
            raise ConfigError(f"option grid_size must be in [2, 256], got {self.grid_size}")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"option sh_degree must be in [0, 3], got {self.sh_degree}")
        for name in ("init_opacity", "reactivate_opacity"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ConfigError(f"option {name} must be in (0, 1), got {v}")
        for name in ("init_scale_cells", "pool_radius_cells", "max_offset_cells", "split_scale_div"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0, got {getattr(self, name)}")
        for name in ("densify_every", "sh_unlock_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name} must be >= 1, got {getattr(self, name)}")
        if self.opacity_reset_every < 0 or self.box_padding < 0 or self.offset_weight < 0:
            raise ConfigError("options opacity_reset_every, box_padding and offset_weight must be >= 0")


PRESETS = {
    # GVGEN's CPS fitting schedule (REFERENCES.md): 20k steps, densify 500..15k every 100, opacity reset 3k
    "paper": {"max_steps": 20000, "densify_from": 500, "densify_until": 15000, "densify_every": 100,
              "opacity_reset_every": 3000, "grid_size": 32},
    # minutes on a CPU at 100-200 px
    "cpu": {"max_steps": 3000, "densify_from": 300, "densify_until": 2400, "densify_every": 100,
            "opacity_reset_every": 0},
}
