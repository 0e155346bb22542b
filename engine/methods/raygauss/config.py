"""Configuration of the RayGauss method (defaults from the paper and its code, REFERENCES.md).

Training budgets here are scaled for CPU training at low resolution; every field can be set from
the command line (``--max-steps 3000``) or a scene TOML's ``[method.options]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig, option


@dataclass
class RayGaussConfig(MethodConfig):
    # ---- kernel (paper defaults) -------------------------------------------------------------
    dt: float = option(0.0025, 'sample spacing along rays', render=True)
    samples_per_slab: int = option(8, 'BUFFER_SIZE: samples per slab (slab length 8 * dt = 0.02)', render=True)
    cap: int = option(1024, 'max Gaussians collected per slab (overflow is counted)', render=True)
    sigma_thr: float = option(0.1, "density cut-off defining each Gaussian's ellipsoid", render=True)
    t_stop: float = option(0.003, 'stop a ray when its transmittance falls below this', render=True)
    render_mode: str = option("auto", "raytrace (the RayGauss ray caster) | splat (3DGS splatting, the way "
                              "standard 3DGS files were trained; density Gaussians get their export opacity) | "
                              "auto (splat for imported 3DGS files, raytrace otherwise)", render=True,
                              choices=("auto", "raytrace", "splat"))
    # ---- representation ----------------------------------------------------------------------
    sh_degree: int = option(2, 'max SH degree (3DGS sign convention)')
    sg_lobes: int = option(7, 'spherical-Gaussian lobes per Gaussian (0 disables)')
    sh_unlock_steps: tuple = option((1000, 2000), 'step at which SH degree 1, 2, (3) become active')
    sg_unlock_step: int = option(3000, 'step at which SG lobes become active')
    init_density: float = option(10.0, 'initial s of every Gaussian')
    init_scale_mult: float = option(1.0, 'initial scale = this x RMS distance to the 3 nearest points')
    init: str = option("auto", 'auto | visual_hull | points | random (auto: visual hull when the images have '
                       'alpha/masks, else dataset points, else random)',
                       choices=("auto", "visual_hull", "points", "random"))
    init_points: int = option(20000, 'at most this many initial Gaussians (random subsample)')
    init_random_points: int = option(20000, 'used when the dataset has no points')
    # ---- optimisation ------------------------------------------------------------------------
    lr_means_init: float = option(3.4e-5, 'initial position learning rate, times the scene box half-diagonal; '
                                  'exponential decay to lr_means_final (the original x 2: presets.py)')
    lr_means_final: float = option(2.0e-6, 'final position learning rate (times scene extent)')
    lr_density_init: float = option(0.5, 'initial density learning rate, exponential decay to lr_density_final')
    lr_density_final: float = option(0.03, 'final density learning rate')
    lr_log_scale: float = option(0.0115, 'log-scale learning rate (constant)')
    lr_quat: float = option(2.2e-4, 'quaternion learning rate (constant)')
    lr_sh_dc: float = option(1e-3, 'all SH coefficients (original: DC 1e-3, higher orders 2.6e-4)')
    lr_sg: float = option(3e-3, 'SG amplitude, axis, sharpness (original 3.6e-4, 3e-3, 0.045)')
    ssim_weight: float = option(0.2, 'loss = (1 - w) L1 + w D-SSIM')
    mask_background: bool = option(True, 'on data with masks (DTU): fit and evaluate the object only, the photo '
                                   'inside the mask and the background colour outside it, as shells and '
                                   'pointfield do (the Gaussians start inside the masks\' visual hull and cannot '
                                   'model the photo\'s background: fitting whole photos of scan24_400, the '
                                   'training PSNR fell from 11.8 to about 7.5 dB over 130 steps)')
    batch_images: int = option(1, 'training images per step, the loss their mean (data-parallel ranks split '
                               'them: the number of ranks must divide it)')
    # ---- densification (strategy) --------------------------------------------------------------
    densify_from: int = option(300, 'first densification step')
    densify_until: int = option(2400, 'last densification step')
    densify_every: int = option(300, 'densify every N steps')
    densify_grad_thr: float = option(4e-5, 'accumulated mean position-gradient norm')
    clone_scale_frac: float = option(0.01, 'clone if max scale <= frac * scene extent, else split')
    split_scale_div: float = option(1.6, 'split children get the parent scale divided by this')
    prune_density: float = option(0.1, 'prune s <= this')
    max_gaussians: int = option(200000, 'densification stops adding Gaussians beyond this count')
    morton_reorder: bool = option(True, 'after each densify step, store Gaussians in Morton order (faster kernels)')
    # ---- bookkeeping: max_steps, seed, eval/checkpoint/log intervals, time budget (MethodConfig) ----

    def validate(self) -> None:
        super().validate()
        if self.batch_images < 1:
            from ...errors import ConfigError

            raise ConfigError(f"option batch_images must be >= 1, got {self.batch_images}")
