"""Configuration of the RayGauss method (defaults from the paper and its code, REFERENCES.md).

Training budgets here are scaled for CPU training at low resolution; every field can be set from
the command line (``--max-steps 3000``) or a scene TOML's ``[method.options]``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RayGaussConfig:
    # ---- kernel (paper defaults) -------------------------------------------------------------
    dt: float = 0.0025                 # sample spacing along rays
    samples_per_slab: int = 8          # BUFFER_SIZE: samples per slab (slab length 8 * dt = 0.02)
    cap: int = 1024                    # max Gaussians collected per slab (overflow is counted)
    sigma_thr: float = 0.1             # density cut-off defining each Gaussian's ellipsoid
    t_stop: float = 0.003              # stop a ray when its transmittance falls below this
    # ---- representation ----------------------------------------------------------------------
    sh_degree: int = 2                 # max SH degree (3DGS sign convention)
    sg_lobes: int = 7                  # spherical-Gaussian lobes per Gaussian (0 disables)
    sh_unlock_steps: tuple = (1000, 2000)  # step at which SH degree 1, 2, (3) become active
    sg_unlock_step: int = 3000         # step at which SG lobes become active
    init_density: float = 10.0         # initial s of every Gaussian
    init_scale_mult: float = 1.0       # initial scale = this x RMS distance to the 3 nearest points
    init: str = "auto"                 # auto | visual_hull | points | random (auto: visual hull
                                       # when the images have alpha/masks, else dataset points, else random)
    init_points: int = 20000           # at most this many initial Gaussians (random subsample)
    init_random_points: int = 20000    # used when the dataset has no points
    # ---- optimisation ------------------------------------------------------------------------
    max_steps: int = 3000
    seed: int = 0
    lr_means_init: float = 3.4e-5      # times scene extent, decays to lr_means_final (original x 2, presets.py)
    lr_means_final: float = 2.0e-6
    lr_density_init: float = 0.5
    lr_density_final: float = 0.03
    lr_log_scale: float = 0.0115
    lr_quat: float = 2.2e-4
    lr_sh_dc: float = 1e-3             # all SH coefficients (original: DC 1e-3, higher orders 2.6e-4)
    lr_sg: float = 3e-3                # SG amplitude, axis, sharpness (original 3.6e-4, 3e-3, 0.045)
    ssim_weight: float = 0.2           # loss = (1 - w) L1 + w D-SSIM
    # ---- densification (strategy) --------------------------------------------------------------
    densify_from: int = 300
    densify_until: int = 2400
    densify_every: int = 300
    densify_grad_thr: float = 4e-5     # accumulated mean position-gradient norm
    clone_scale_frac: float = 0.01     # clone if max scale <= frac * scene extent, else split
    split_scale_div: float = 1.6
    prune_density: float = 0.1         # prune s <= this
    max_gaussians: int = 200000
    morton_reorder: bool = True        # after each densify step, store Gaussians in Morton order (faster kernels)
    # ---- bookkeeping -------------------------------------------------------------------------
    eval_every: int = 500              # test PSNR on a few views every N steps (0 disables)
    eval_views: int = 8
    checkpoint_every: int = 1000
    log_every: int = 25
    time_budget_s: float = 0.0         # stop after this much training time (0 = steps only)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


