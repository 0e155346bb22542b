"""Configuration of the Adaptive Shells method (``kernelight train shells --data DIR ...``).

Defaults: 7,000 volumetric steps of 1,024 rays, then the shells are extracted and 1,000 steps
fine-tune the colour network inside them, rendered with the probe sampler (one sample per descent
through the surface). On a 2-core CPU a 1,024-ray step costs about 1.7x a 256-ray one, so this
takes about the time of the earlier recipe (12,000 + 2,000 steps of 256 rays, about 25 minutes
for lego_200 or scan24_400 at full resolution) and sees 2.3x the rays: continuing one lego_200
field from step 2,000 for 900 s side by side, 1,024 rays reached 25.21 dB where 256 rays reached
24.71 (25 test views; ``tools/results/bench_shells_gap.json``). The new defaults have not been
trained end to end yet (README "Adaptive Shells"). The paper trains on a GPU with much larger
tables and batches. Every field can be set from the command line (``--max-steps
2000``) or a scene TOML's ``[method.options]``. Lengths
are in units of the half-size ``a`` of the (cubic) scene box unless they say otherwise, so the same
defaults fit DTU's unit sphere and NeRF-synthetic's box.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig, option


@dataclass
class ShellsConfig(MethodConfig):
    # ---- hash encoding (Instant-NGP style; shaders/hashgrid.py) ------------------------------
    hash_levels: int = option(12, 'hash-grid levels')
    hash_features: int = option(2, 'features per level')
    hash_log2_size: int = option(18, 'table size T = 2^this per level (2^18 beside 2^16, 17 minutes on lego_200 with analytic '
                                 'normals: 28.53 against 28.21 dB on all test views)')
    hash_base_res: int = option(16, 'coarsest level resolution')
    hash_max_res: int = option(512, 'finest level resolution (times the box)')
    # ---- networks ----------------------------------------------------------------------------
    sdf_hidden: int = option(64, 'one hidden layer (softplus) on [encoding, position]')
    geo_features: int = option(15, 'SDF network features passed to the colour network')
    color_hidden: int = option(64, 'two hidden layers (ReLU)')
    view_sh_degree: int = option(3, 'view-direction encoding (real SH)')
    init_radius: float = option(0.5, 'initial SDF: sphere of this radius (times a)')
    init_s: float = option(20.0, 'initial kernel size s (inverse width of the logistic), 1/a units')
    max_log_s: float = option(9.0, 'clamp of log s(x) (s <= e^9 ~ 8100 / a)')
    normals: str = option("analytic", 'SDF gradient: fd (tetrahedral finite differences, 4 field evaluations a sample) or '
                          'analytic (1 evaluation; the hash kernel returns the encoding\'s Jacobian); part of the model: a '
                          'checkpoint renders and resumes with the mode it was trained with',
                          choices=("fd", "analytic"))
    fd_step: float = option(2e-3, 'finite-difference step for normals (times a)')
    # ---- volumetric rendering ----------------------------------------------------------------
    march_steps: int = option(256, 'candidate samples across the box diagonal (step = diag / this)', render=True)
    max_samples: int = option(64, 'at most this many occupied samples per ray', render=True)
    march_group: int = option(8, 'samples evaluated per round; rays stop when transmittance < t_stop', render=True)
    t_stop: float = option(1e-3, 'early ray termination (volume and shell rendering)', render=True)
    occ_res: int = option(64, 'occupancy grid resolution')
    occ_update_every: int = option(16, 'refresh the occupancy grid every N steps')
    occ_refresh_fraction: float = option(0.125, 'partial refreshes: re-evaluate the occupied cells, their neighbours '
                                         'and this fraction of the rest, and every cell on every round(1 / this)-th '
                                         'refresh (1 = every cell every time; 0.125 made a lego_200 refresh at step 4,000 5.2x cheaper, 0.11 s against 0.60, '
                                         'and 1,000 steps rendered 25.27 dB against 25.21)')
    occ_warmup: int = option(30, 'every cell is occupied before this step')
    occ_eps: float = option(1e-3, 'cell occupied when |f| < cell radius + ln(4/eps)/s')
    cos_anneal_steps: int = option(500, 'NeuS cosine annealing (0 = off)')
    # ---- losses ------------------------------------------------------------------------------
    rgb_loss: str = option("l1", 'image loss: l1 (NeuS) or mse (squared error, what PSNR measures; 1,000 steps on lego_200: 24.96 dB against 25.21 with l1)', choices=("l1", "mse"))
    eikonal_weight: float = option(0.01, 'weight of the eikonal loss (|grad f| - 1)^2 (NeuS: 0.1; 0.01 rendered '
                                   'lego_200 1.0 dB sharper at equal time, tools/results/bench_shells_levers.json)')
    mask_weight: float = option(0.1, 'BCE of opacity vs mask / alpha where the data has them')
    kernel_reg_weight: float = option(0.1, 'mean(1 / (a s(x))): pushes s up (solid) unless colour needs it wide '
                                      '(1,000 steps on lego_200: 0.3 25.21 dB, 0.1 25.51, 0 25.47; '
                                      'tools/results/bench_shells_levers.json)')
    # ---- optimisation ------------------------------------------------------------------------
    max_steps: int = option(8000, MethodConfig.field_help()['max_steps'])
    rays_per_batch: int = option(1024, 'random rays (across all training images) per step')
    lr_encoding: float = option(1e-2, 'learning rate of the hash table')
    lr_network: float = option(2e-3, 'learning rate of the SDF and colour networks (1,000 steps on lego_200 '
                               'with kernel reg 0.1: 2e-3 25.51 dB, 5e-3 25.81, 1e-2 25.70; but on scan24_400 under a '
                               '17-minute budget 5e-3 kept the kernel size low and the samples per ray high: '
                               'README "Levers measured (session 11)")')
    lr_s: float = option(1e-2, 'learning rate of the global kernel size log s')
    lr_warmup: int = option(100, 'linear learning-rate warm-up steps')
    lr_final_frac: float = option(0.1, 'cosine decay to this fraction of the initial rates')
    # ---- shells (extraction, band rendering, fine-tuning) ------------------------------------
    shell_eps: float = option(0.01, 'band edge: logistic density below eps * peak, |f| = ln(4/eps)/s')
    shell_min_halfwidth: float = option(0.01, 'clamp of the band half-width (times a)')
    shell_max_halfwidth: float = option(0.25, 'clamp of the band half-width, upper (times a)')
    shell_grid_res: int = option(256, 'marching-cubes grid (the dilation margin is one cell of it)')
    shell_dilate_voxels: int = option(1, 'outer shell dilated / inner shell eroded by this many voxels')
    shell_target_faces: int = option(10000, 'decimation target per shell (0 = no decimation); session 17: 10,000 instead of 40,000 '
                                     'rendered the same PSNR (lego_200, 50 views) 10 % faster')
    shell_step: float = option(0.02, 'sample spacing inside the band (times a); 1 sample if shorter', render=True)
    shell_max_samples: int = option(32, 'per ray', render=True)
    shell_max_hits: int = option(12, 'ray/mesh crossings gathered per ray', render=True)
    shell_first_hits: int = option(4, 'crossings of a first BVH query; open rays get shell_max_hits (0 = one query)',
                                   render=True)
    shell_surface_samples: bool = option(False, '1-sample intervals sample where the ray crosses the surface mesh', render=True)
    shell_one_sample_crossings: bool = option(True, 'outer<->inner intervals: 1 sample on the surface, opacity from both ends', render=True)
    shell_one_sample_max_len: float = option(0.0, 'one-sample rules only for band intervals at most this long (times a; 0 = any length); longer ones (grazing rays, which can pass near the surface without crossing it) get a sample every shell_step', render=True)
    shell_probe_grid: int = option(256, 'probe sampler: SDF / kernel-size grid this fine, probed along band intervals (0 = off: the one-sample rules above place samples)', render=True)
    shell_probe_step: float = option(0.0075, 'probe spacing along band intervals (times a)', render=True)
    shell_probe_tau: float = option(0.01, "a sample on each probe segment whose opacity exceeds this (near misses, and crossings under shell_probe_solid)", render=True)
    shell_probe_solid: float = option(1.0, 'crossings less opaque than this get a sample per probe segment above shell_probe_tau '
                                      "(the field's opacity), the others one sample at the crossing (1: the sharpest; 0.999: the "
                                      'fast render, 4x the volumetric speed; 0: the fastest; README "Adaptive Shells")', render=True)
    shell_probe_cut: float = option(0.01, "stop a ray's samples once the grid's transmittance is below this (0 = off)",
                                    render=True)
    shell_probe_one_round: bool = option(True, "with the cut, a ray's samples are evaluated in one round, not one per band "
                                         'interval', render=True)
    shell_finetune_solid: float = option(0.995, 'shell_probe_solid while fine-tuning in the band: below 1, the colour network also learns '
                                         'one-sample crossings, which the faster renders (shell_probe_solid < 1) need; session 17, lego_200, '
                                         'all 200 views: fine-tuned at 0.99, the 0.99 render was 0.04 dB below the volumetric render, where a '
                                         'field fine-tuned at 1 rendered 0.43 dB below it; the render at 1 was +0.43 / +0.35 dB above it')
    shell_finetune_params: str = option("auto", 'what fine-tuning in the band trains: color (the colour network; the geometry stays as volume rendering left it), all (the whole field: with the probe sampler each crossing takes its opacity from the field at its descent\'s probe points, differentiable), or auto (color with the probe sampler, all with the other samplers)',
                                        choices=("auto", "color", "all"))
    shell_finetune_sampler: str = option("probe", 'how fine-tuning samples the band: probe (as the renderer does) or step (a sample every shell_finetune_step in every band interval and the field\'s own NeuS opacity: volume rendering restricted to the band, as in the paper; auto params then train all)',
                                         choices=("probe", "step"))
    shell_finetune_step: float = option(0.01, 'sample spacing of shell_finetune_sampler step (times a)')
    shell_finetune_from: float = option(0.875, 'extract the shells here and fine-tune inside them: a fraction of max_steps (< 1) or a step (>= 1); 0 = never (volumetric only)')
    render_mode: str = option("auto", 'auto (shells when extracted) | shells | volume', render=True,
                              choices=("auto", "shells", "volume"))
    # ---- bookkeeping -------------------------------------------------------------------------
    eval_views: int = option(4, MethodConfig.field_help()['eval_views'])
    render_chunk: int = option(65536, 'rays per chunk when rendering whole images (a lego_200 image at 40,000 rays: '
                               'chunks of 40,000 rendered the shells in 151 ms where chunks of 8,192 took 205 ms; '
                               'the images are the same)', render=True)

    @property
    def finetune_step(self) -> int:
        """The step after which the shells are extracted (0 = never): see ``shell_finetune_from``."""
        v = float(self.shell_finetune_from)
        if v <= 0:
            return 0
        return max(1, round(v * self.max_steps)) if v < 1 else int(round(v))

