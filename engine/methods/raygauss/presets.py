"""Named option presets for RayGauss (``kernelight train raygauss --preset NAME``).

``paper``: the paper's settings (RayGaussConfig defaults; 30k-step schedules scaled to max_steps).

``cpu``: for training at NeRF-synthetic 100-200 px on a few CPU cores within minutes. Measured
choices (tools/bench_raygauss_quality.py, lego_100 / mic_100 on 2 cores):
* ``dt = 0.01`` (4x the paper's 0.0025): at 100 px a pixel covers ~0.03 scene units at the object,
  so 0.01 still samples every Gaussian several times, at a quarter of the evaluations;
* visual-hull initialisation (``init = auto``) with ``init_scale_mult = 0.5``: starts at ~21 dB
  instead of ~7 dB (uniform random points) on mic;
* 4x the SH DC learning rate and SH/SG unlocks and densification compressed into the first
  ~1500 steps, since a CPU budget affords a few thousand steps, not 30k;
* at most 30,000 Gaussians: fewer Gaussians buy more steps in the same minutes. lego_100, 15
  minutes, 200 test views: a 120k cap gave 2,279 steps, 33.58 dB, 76 ms per image; 60k gave
  2,917 steps, 34.35 dB, 65 ms; 30k gave 3,804 steps, 33.98 dB, 41 ms. Raise it
  (``kernelight train raygauss --max-gaussians N``, or ``[method.options]``) for bigger images
  or scenes.
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
        "max_gaussians": 30000,
        "eval_every": 500,
    },
}
