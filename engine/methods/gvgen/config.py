"""Configuration of the GVGEN text-to-3D method (stage 1 GDF diffusion + stage 2 attribute network).

Defaults are sized for CPU training on the primitives set built by ``kernelight gvgen dataset``
(N = 16); every field can be set from the command line (``--batch-objects 8``) or a scene TOML.
Fields marked as render options (``caption``, ``gen_seed``, ``ddim_steps``, ``guidance``,
``min_opacity``) may also be given to ``kernelight render / eval / view``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import MethodConfig, option


@dataclass
class GVGenConfig(MethodConfig):
    max_steps: int = option(4000, "training steps (each: a batch of volumes for both stages + one rendered view)")
    eval_every: int = option(1000, "held-out generation PSNR on a few test views every N steps (0 disables)")
    eval_views: int = option(4, "test views (of held-out objects) generated and compared by the periodic eval")
    # ---- the volumes --------------------------------------------------------------------------------
    grid_size: int = option(0, "N of the GaussianVolumes (0: the dataset's); a model generates N^3 volumes only")
    gdf_clamp: float = option(0.15, "the GDF is clamped to [0, this x box side] and mapped to [-1, 1] (GVGEN: 0.15 "
                              "of its unit box)")
    max_offset_cells: float = option(3.0, "predicted offsets are bounded to this many cells (as the fitted volumes)")
    init_scale_cells: float = option(0.8, "log-scale outputs are relative to log(this x cell)")
    # ---- networks ------------------------------------------------------------------------------------
    channels: int = option(32, "U-Net width at the top level (both stages; GVGEN: 224)")
    channel_mults: tuple = option((1, 2), "width multipliers per level (GVGEN: 1 2 4 4)")
    blocks: int = option(1, "residual blocks per level (GVGEN: 2)")
    patch: int = option(0, "space-to-depth stem: the U-Net runs at N / patch (0: auto, N / 8: its top level is "
                        "8^3 for N = 16 and 32)")
    text_encoder: str = option("minilm", "text encoder of engine.methods.gvgen.text (all-MiniLM-L6-v2, offline)")
    # ---- training ------------------------------------------------------------------------------------
    batch_objects: int = option(8, "volumes per step for both stages (the rendered view's object is one of them)")
    lr: float = option(5e-4, "Adam learning rate of both networks (cosine decay to 10 % over the run)")
    warmup_steps: int = option(100, "linear learning-rate warm-up")
    diffusion_weight: float = option(1.0, "weight of the stage-1 DDPM loss (x0 parameterisation, MSE)")
    attribute_weight: float = option(1.0, "weight of the stage-2 attribute losses against the fitted volumes")
    render_weight: float = option(1.0, "weight of the stage-2 rendering loss ((1 - w) L1 + w D-SSIM)")
    render_every: int = option(2, "add the rendering loss every N steps (1: every step, as GVGEN; each costs about "
                               "as much as both U-Nets' step on a CPU, and the attribute losses already supervise "
                               "every slot)")
    ssim_weight: float = option(0.8, "D-SSIM share of the rendering loss (GVGEN: 0.8 D-SSIM + 0.2 L1)")
    cond_dropout: float = option(0.1, "probability of training stage 1 with the empty caption (enables guidance)")
    gdf_noise: float = option(0.05, "std of the noise added to the normalised GDF stage 2 reads in training "
                              "(robustness to sampled GDFs)")
    init_from: str = option("", "warm-start both networks from this gvgen run / checkpoint (same N and sizes)")
    # ---- generation (also render options) ----------------------------------------------------------
    caption: str = option("", "render / eval / export: the caption to generate (default: each test view's own "
                          "caption, else the first held-out caption)", render=True)
    gen_seed: int = option(0, "seed of the generation's noise", render=True)
    ddim_steps: int = option(50, "DDIM sampling steps (of T = 1000)", render=True)
    guidance: float = option(1.0, "classifier-free guidance scale of stage 1 (1: none, GVGEN's default; > 1 runs "
                             "the network twice per step. On the primitives set 3 helped a half-trained model "
                             "(held-out top-1 6/14 -> 11/14 at step 1,250) but cost the trained one 1.4 dB)",
                             render=True)
    min_opacity: float = option(0.005, "Gaussians below this opacity are left out of renders and exports",
                                render=True)

    def validate(self) -> None:
        super().validate()
        from ...errors import ConfigError

        if self.grid_size and not 4 <= self.grid_size <= 128:
            raise ConfigError(f"option grid_size must be 0 (the dataset's) or in [4, 128], got {self.grid_size}")
        if self.patch not in (0, 1, 2, 4, 8):
            raise ConfigError(f"option patch must be 0 (auto), 1, 2, 4 or 8, got {self.patch}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ConfigError(f"option channel_mults must be positive integers, got {self.channel_mults}")
        for name in ("channels", "blocks", "batch_objects", "ddim_steps", "render_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name} must be >= 1, got {getattr(self, name)}")
        if self.ddim_steps > 1000:
            raise ConfigError(f"option ddim_steps must be <= 1000 (T), got {self.ddim_steps}")
        for name in ("cond_dropout", "ssim_weight", "min_opacity"):
            if not 0 <= getattr(self, name) < 1 + (name == "ssim_weight"):
                raise ConfigError(f"option {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("lr", "gdf_clamp", "max_offset_cells", "init_scale_cells"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name} must be > 0, got {getattr(self, name)}")
        for name in ("diffusion_weight", "attribute_weight", "render_weight", "gdf_noise", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"option {name} must be >= 0, got {getattr(self, name)}")
        if self.guidance < 0:
            raise ConfigError(f"option guidance must be >= 0, got {self.guidance}")

    def resolved_patch(self, n: int) -> int:
        return self.patch or max(1, n // 8)


PRESETS = {
    # the shipped generator (engine/methods/gvgen/weights/primitives16.pt) was trained with these
    "cpu": {"channels": 32, "channel_mults": (1, 2), "blocks": 1, "batch_objects": 8},
}
