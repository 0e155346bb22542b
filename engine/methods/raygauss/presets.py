"""Named option presets for RayGauss (``kernelight train raygauss --preset NAME``).

``paper``: the paper's settings (RayGaussConfig defaults; 30k-step schedules scaled to max_steps).

``cpu``: for training at NeRF-synthetic 100-200 px on a few CPU cores within minutes. Measured
choices (tools/bench_raygauss_quality.py, lego_100 / mic_100 on 2 cores):
* ``dt = 0.01`` (4x the paper's 0.0025): at 100 px a pixel covers ~0.03 scene units at the object,
  so 0.01 still samples every Gaussian several times, at a quarter of the evaluations;
* visual-hull initialisation (``init = auto``) with ``init_scale_mult = 0.5``: starts at ~21 dB
  instead of ~7 dB (uniform random points) on mic;
* 4x the SH DC learning rate and SH/SG unlocks and densification compressed into the first
  ~1500 steps, since a CPU budget affords a few thousand steps, not 30k.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {
        "dt": 0.01,
        "init": "auto",
        "init_points": 20000,
        "init_scale_mult": 0.5,
        "lr_sh_dc": 0.01,
        "sh_unlock_steps": (300, 600),
        "sg_unlock_step": 900,
        "densify_from": 100,
        "densify_every": 100,
        "densify_until": 1500,
        "max_gaussians": 120000,
        "eval_every": 500,
    },
}
