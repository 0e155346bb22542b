"""Configuration of the Adaptive Shells method (``kernelight train shells --data DIR ...``).

Defaults are the recipe measured on a 2-core CPU at the datasets' full resolution (lego_200,
scan24_400: about 25 minutes; README "Adaptive Shells"): 12,000 volumetric steps of 256 rays, then
the shells are extracted and 2,000 steps fine-tune the colour network inside them, rendered with
the probe sampler (one sample per descent through the surface). The paper trains on a GPU with
much larger tables and batches. Every field can be set from the command line (``--max-steps
2000``) or a scene TOML's ``[method.options]``. Lengths
are in units of the half-size ``a`` of the (cubic) scene box unless they say otherwise, so the same
defaults fit DTU's unit sphere and NeRF-synthetic's box.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class ShellsConfig:
    # ---- hash encoding (Instant-NGP style; shaders/hashgrid.py) ------------------------------
    hash_levels: int = 12
    hash_features: int = 2             # features per level
    hash_log2_size: int = 16           # table size T = 2^this per level
    hash_base_res: int = 16
    hash_max_res: int = 512
    # ---- networks ----------------------------------------------------------------------------
    sdf_hidden: int = 64               # one hidden layer (softplus) on [encoding, position]
    geo_features: int = 15             # SDF network features passed to the colour network
    color_hidden: int = 64             # two hidden layers (ReLU)
    view_sh_degree: int = 3            # view-direction encoding (real SH)
    init_radius: float = 0.5           # initial SDF: sphere of this radius (times a)
    init_s: float = 20.0               # initial kernel size s (inverse width of the logistic), 1/a units
    max_log_s: float = 9.0             # clamp of log s(x) (s <= e^9 ~ 8100 / a)
    fd_step: float = 2e-3              # finite-difference step for normals (times a)
    # ---- volumetric rendering ----------------------------------------------------------------
    march_steps: int = 256             # candidate samples across the box diagonal (step = diag / this)
    max_samples: int = 64              # at most this many occupied samples per ray
    march_group: int = 8               # samples evaluated per round; rays stop when transmittance < t_stop
    t_stop: float = 1e-3               # early ray termination (volume and shell rendering)
    occ_res: int = 64                  # occupancy grid resolution
    occ_update_every: int = 16
    occ_warmup: int = 30               # every cell is occupied before this step
    occ_eps: float = 1e-3              # cell occupied when |f| < cell radius + ln(4/eps)/s
    cos_anneal_steps: int = 500        # NeuS cosine annealing (0 = off)
    # ---- losses ------------------------------------------------------------------------------
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1           # BCE of opacity vs mask / alpha where the data has them
    kernel_reg_weight: float = 0.3     # mean(1 / (a s(x))): pushes s up (solid) unless colour needs it wide
    # ---- optimisation ------------------------------------------------------------------------
    max_steps: int = 14000
    seed: int = 0
    rays_per_batch: int = 256
    lr_encoding: float = 1e-2
    lr_network: float = 2e-3
    lr_s: float = 1e-2
    lr_warmup: int = 100
    lr_final_frac: float = 0.1         # cosine decay to this fraction of the initial rates
    # ---- shells (extraction, band rendering, fine-tuning) ------------------------------------
    shell_eps: float = 0.01            # band edge: logistic density below eps * peak, |f| = ln(4/eps)/s
    shell_min_halfwidth: float = 0.01  # clamp of the band half-width (times a)
    shell_max_halfwidth: float = 0.25
    shell_grid_res: int = 256          # marching-cubes grid (the dilation margin is one cell of it)
    shell_dilate_voxels: int = 1       # outer shell dilated / inner shell eroded by this many voxels
    shell_target_faces: int = 40000    # decimation target per shell (0 = no decimation)
    shell_step: float = 0.02           # sample spacing inside the band (times a); 1 sample if shorter
    shell_max_samples: int = 32        # per ray
    shell_max_hits: int = 12           # ray/mesh crossings gathered per ray
    shell_surface_samples: bool = False  # 1-sample intervals sample where the ray crosses the surface mesh
    shell_one_sample_crossings: bool = True  # outer<->inner intervals: 1 sample on the surface, opacity from both ends
    shell_one_sample_max_len: float = 0.0  # one-sample rules only for band intervals at most this long (times
                                           # a; 0 = any length); longer ones (grazing rays, which can pass
                                           # near the surface without crossing it) get a sample every shell_step
    shell_probe_grid: int = 256        # probe sampler: SDF / kernel-size grid this fine, probed along band
                                       # intervals (0 = off: the one-sample rules above place samples)
    shell_probe_step: float = 0.0075   # probe spacing along band intervals (times a)
    shell_probe_tau: float = 0.003     # near misses: a sample where a probe segment's opacity exceeds this
    shell_probe_solid: float = 0.0     # translucent crossings (opacity under this) get a sample per opaque probe segment, like near misses (0 = one sample per crossing; 0.8: +0.05-0.08 dB for 3-15 % more samples)
    shell_finetune_params: str = "auto"  # what fine-tuning in the band trains: color (the colour network; the
                                       # geometry stays as volume rendering left it), all, or auto (color with
                                       # the probe sampler, all with the one-sample rules)
    shell_finetune_from: float = 0.857143  # extract the shells here and fine-tune inside them: a fraction of
                                           # max_steps (< 1) or a step (>= 1); 0 = never (volumetric only)
    render_mode: str = "auto"          # auto (shells when extracted) | shells | volume
    # ---- bookkeeping -------------------------------------------------------------------------
    eval_every: int = 500
    eval_views: int = 4
    checkpoint_every: int = 1000
    log_every: int = 25
    time_budget_s: float = 0.0
    render_chunk: int = 8192           # rays per chunk when rendering whole images

    @property
    def finetune_step(self) -> int:
        """The step after which the shells are extracted (0 = never): see ``shell_finetune_from``."""
        v = float(self.shell_finetune_from)
        if v <= 0:
            return 0
        return max(1, round(v * self.max_steps)) if v < 1 else int(round(v))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
