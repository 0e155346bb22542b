"""Configuration of the point-field method (GPF, ICLR 2024; defaults from REFERENCES.md).

Lengths that depend on the scene are given in units of the point spacing ``h`` (the median distance
from a point to its nearest neighbour, measured when the model is created): neighbour radius,
log-sampling unit, splat radius, growing distance. GPF's DTU point clouds are about 1 mm apart in
DTU's millimetre units and its log offsets are ``1.2^k`` mm, so one spacing per unit reproduces its
DTU setting on any scene scale.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig, option


@dataclass
class PointFieldConfig(MethodConfig):
    # ---- points --------------------------------------------------------------------------------
    points: str = option("auto", "where the points come from: auto (the dataset's points, else the visual hull "
                         "carved further by a plane sweep, mvs, else plain carving), dataset, carve (the visual "
                         "hull of the masks/alpha), mvs, or a .ply path (e.g. from 'kernelight points RUN')")
    carve_resolution: int = option(192, "voxels along the scene box's longest side when carving (the point "
                                   "spacing, and with it the kernel's scale: 192 beat 128, 224 and 256 on lego_100)")
    hull_filter: bool = option(True, "drop dataset points outside the visual hull when the images have alpha/masks "
                               "(a random initialisation like mic's points3d.ply becomes a hull shell)")
    max_points: int = option(150000, "at most this many initial points (seeded random subset)")
    # ---- visibility-aware features (GPF) ---------------------------------------------------------
    source_views: int = option(10, "candidate source views per target view (the nearest cameras)", render=True)
    top_views: int = option(3, "views kept per point, by visibility score", render=True)
    view_angle_power: float = option(8.0, "source view score: visibility x ((1 + cos a) / 2)^P, a = the "
                                     "target-point-source angle (0 = GPF)", render=True)
    vis_temperature: float = option(0.9, "softmax temperature of the view blending (weights softmax(score / T) x score)")
    encoder_max_side: int = option(200, "source images are encoded at most this many pixels on their long side")
    feature_dim: int = option(32, "per-point colour feature and geometry feature width (each)")
    splat_radius: float = option(1.0, "disk radius of a point in the depth maps, in point spacings")
    depth_fill: int = option(1, "fill depth-map gaps from the 3x3 neighbours, N times "
                             "(0: background)", render=True)
    depth_layers: int = option(2, "depth layers sampled: 1 = the nearest point's (GPF), 2 = also the next "
                               "surface beyond its samples", render=True)
    point_sh_degree: int = option(1, "per-point explicit colour: SH coefficients of this degree (-1 = none), "
                                  "blended over the neighbours (point_sh_sigma) and added to the colour logit")
    # ---- sampling and aggregation ----------------------------------------------------------------
    k_neighbors: int = option(8, "K nearest points aggregated at each sample")
    radius: float = option(4.0, "neighbour search radius, in point spacings (Point-NeRF: 4 voxels)")
    log_base: float = option(0.0, "log-sampling base (0 = auto: 1.16 for NeRF-synthetic / blender data, else 1.2)",
                             render=True)
    log_steps: int = option(16, "log samples per side (+ centre)", render=True)
    log_unit: float = option(1.0, "first log offset, in point spacings",
                             render=True)
    hidden: int = option(32, "hidden width of the aggregation kernel and heads")
    sdf_shell: float = option(0.3, "SDF prior: distance to the nearest point minus this (in radii), the "
                              "network adds to it")
    init_s: float = option(10.0, "initial NeuS inverse kernel size s (SDF in neighbour radii)")
    # ---- training ------------------------------------------------------------------------------
    rays_per_batch: int = option(1024, "random rays of the step's training image")
    lr: float = option(2e-3, "Adam learning rate of the encoder and the networks (GPF: 5e-4 for long GPU runs; "
                       "2e-3 reached 21.0 dB at step 93 on lego_100 where 5e-4 had 18.7 at step 105)")
    lr_final_frac: float = option(0.1, "learning rates decay exponentially to this fraction of their start "
                                  "over the run (steps or time budget, whichever ends first)")
    lr_points: float = option(2e-3, "learning rate of the per-point feature residuals and confidences")
    lr_s: float = option(2e-3, "learning rate of log s")
    point_sh_sigma: float = option(0.5, "the explicit colour blends the neighbours with weights conf x exp(-(d / "
                                   "sigma)^2), sigma in point spacings (0 = the attention weights)")
    lr_pos: float = option(0.01, "learning rate of the point positions, in point spacings (0 = fixed points, "
                           "as Point-NeRF and GPF); the caches follow every pos_every steps")
    pos_every: int = option(100, "with lr_pos: move the points and rebuild their grid and depth maps every N steps")
    lr_color: float = option(3e-2, "learning rate of the per-point explicit colour (point_sh_degree)")
    mask_weight: float = option(0.1, "BCE of the opacity against alpha/masks where the data has them")
    sparsity_weight: float = option(2e-3, "Point-NeRF confidence sparsity loss weight")
    # ---- growing and pruning (Point-NeRF) --------------------------------------------------------
    grow_every: int = option(500, "grow and prune every N steps (0 disables both)")
    grow_from: int = option(500, "first growing/pruning step")
    grow_until: int = option(100000, "last growing/pruning step")
    grow_opacity: float = option(0.7, "grow where a training ray's max sample opacity exceeds this ...")
    grow_dist: float = option(1.0, "... and its nearest point is farther than this many spacings")
    grow_max: int = option(20000, "at most this many new points per growing step")
    prune_conf: float = option(0.1, "prune points whose confidence is below this")
    max_total_points: int = option(300000, "growing stops beyond this many points")
    # ---- across scenes -------------------------------------------------------------------------
    scenes: str = option("", "more datasets trained together with --data, comma-separated (one network; each "
                         "scene its own points and images), e.g. --scenes ../data/A,../data/B")
    init_from: str = option("", "a pointfield run (folder or .pt) whose encoder and networks start this run "
                            "(fine-tuning on a new scene)")
    scene_data: str = option("", "a dataset whose images and points replace the "
                             "trained scene's (zero-shot render)", render=True)
    # ---- rendering -----------------------------------------------------------------------------
    render_chunk: int = option(8192, "rays per chunk when rendering an image", render=True)

    @property
    def scene_list(self) -> list[str]:
        return [p.strip() for p in str(self.scenes).split(",") if p.strip()]

    def validate(self) -> None:
        super().validate()
        from ...errors import ConfigError

        for name in ("source_views", "top_views", "k_neighbors", "log_steps", "hidden", "feature_dim",
                     "rays_per_batch", "render_chunk", "encoder_max_side", "carve_resolution", "max_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name} must be >= 1, got {getattr(self, name)}")
        if self.top_views > self.source_views:
            raise ConfigError(f"option top_views ({self.top_views}) must be <= source_views ({self.source_views})")
        if self.k_neighbors > 32:
            raise ConfigError(f"option k_neighbors must be <= 32, got {self.k_neighbors}")
        for name in ("radius", "log_unit", "splat_radius", "vis_temperature", "init_s", "lr", "grow_dist",
                     "lr_final_frac"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0, got {getattr(self, name)}")
        if not -1 <= self.point_sh_degree <= 3:
            raise ConfigError(f"option point_sh_degree must be -1..3, got {self.point_sh_degree}")
        if self.depth_layers not in (1, 2):
            raise ConfigError(f"option depth_layers must be 1 or 2, got {self.depth_layers}")
        if self.depth_fill < 0:
            raise ConfigError(f"option depth_fill must be >= 0, got {self.depth_fill}")
        if self.log_base != 0 and not self.log_base > 1:
            raise ConfigError(f"option log_base must be > 1 (or 0 = auto), got {self.log_base}")
