"""The method contract: what the trainer, CLI, evaluator, exporter and viewer may ask of a representation.

A representation is one package under ``engine/methods/`` with

* a config dataclass deriving from :class:`MethodConfig`, every field declared with :func:`option`
  (default + one line of help; ``--help`` and the scene-TOML docs are generated from it), and
* a class deriving from :class:`Method` that implements the abstract members below,

plus one :class:`~engine.methods.MethodSpec` line in the registry (``engine/methods/__init__.py``).
Nothing else in the engine names a method: the trainer receives the class, the CLI, ``engine.load``,
the evaluator, the exporter and the viewer look it up in the registry and talk to it only through
this contract.

Rendering contract (:meth:`Method.render`): every method returns a dict with

==============  ============  =====================================================================
key             shape         meaning
==============  ============  =====================================================================
``rgb``         (H, W, 3)     colour, composited on ``background`` when one is given
``alpha``       (H, W)        accumulated opacity, 1 - final transmittance
``depth``       (H, W)        expected depth along the ray, normalised by ``alpha`` (0 where empty)
``depth_sum``   (H, W)        the un-normalised sum of weight x depth (``depth * alpha``)
``cost``        (H, W)        what the pixel cost: primitive or field evaluations along its ray
==============  ============  =====================================================================

and may add its own keys (``normal``, ``n_capped``, ...). :func:`check_render_output` checks this.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

# ------------------------------------------------------------------------------------------ config


def option(default, help: str, *, render: bool = False, choices: tuple | None = None):
    """A config field with its documentation (the one place a field is described).

    ``render=True`` marks a field that may also be overridden at render time (``kernelight render /
    eval / view``); ``choices`` lists the accepted values of a string field.
    """
    meta = {"help": help, "render": render}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class MethodConfig:
    """Fields every method shares: the training budget, seeding and bookkeeping intervals.

    The batch is method-specific (a whole image per step, or ``rays_per_batch`` random rays: see
    :attr:`Method.batch_mode`); the background is the dataset's (scene TOML ``background`` or
    ``--background``), not a method option.
    """

    max_steps: int = option(3000, "training steps")
    seed: int = option(0, "seed of every random choice (initialisation, ray/image order)")
    eval_every: int = option(500, "test PSNR on a few views every N steps (0 disables)")
    eval_views: int = option(8, "views used by the periodic test PSNR")
    checkpoint_every: int = option(1000, "write a checkpoint every N steps (and at the end / on Ctrl-C)")
    log_every: int = option(25, "append a metrics.jsonl record every N steps")
    time_budget_s: float = option(0.0, "stop after this much training time in seconds (0 = steps only)")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Field name -> its one-line documentation (from :func:`option`)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def render_fields(cls) -> list[str]:
        """Fields that ``render`` / ``eval`` / ``view`` accept as overrides."""
        return [f.name for f in fields(cls) if f.metadata.get("render")]

    @classmethod
    def from_options(cls, options: dict, method_name: str | None = None) -> "MethodConfig":
        """A config from defaults plus ``options`` (names with ``-`` or ``_``), values coerced to the
        field types; unknown names and wrong types are :class:`~engine.errors.ConfigError`."""
        from ..errors import ConfigError

        cfg = cls()
        by_name = {f.name: f for f in fields(cls)}
        label = method_name or cls.__name__
        for k, v in options.items():
            key = str(k).replace("-", "_")
            if key not in by_name:
                raise ConfigError(f"unknown option {k!r} for method {label}; valid options: "
                                  f"{', '.join(sorted(by_name))}")
            cur = getattr(cfg, key)
            try:
                if isinstance(cur, tuple):
                    v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
                    v = tuple(type(cur[0])(x) for x in v) if cur else v
                elif isinstance(cur, bool):
                    if isinstance(v, str):
                        if v.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                            raise ValueError(v)
                        v = v.strip().lower() in ("1", "true", "yes", "on")
                    else:
                        v = bool(v)
                elif isinstance(cur, int):
                    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                        raise ValueError(v)
                    v = int(v)
                elif isinstance(cur, float):
                    if isinstance(v, bool):
                        raise ValueError(v)
                    v = float(v)
                elif isinstance(cur, str):
                    if not isinstance(v, str):
                        raise ValueError(v)
            except (TypeError, ValueError):
                raise ConfigError(f"option {key}: expected {type(cur).__name__}, got {v!r}") from None
            choices = by_name[key].metadata.get("choices")
            if choices and v not in choices:
                raise ConfigError(f"option {key}: expected one of {', '.join(map(str, choices))}, got {v!r}")
            setattr(cfg, key, v)
        # the names set here rather than left at their defaults (a method can tell an option a run or a
        # user gave from a default that did not exist when an old checkpoint was written)
        cfg.given_options = frozenset(str(k).replace("-", "_") for k in options)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values no run can use (one line naming the option)."""
        from ..errors import ConfigError

        for name in ("max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_views", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"option {name} must be >= 0, got {getattr(self, name)}")
        if not self.time_budget_s >= 0:
            raise ConfigError(f"option time_budget_s must be >= 0, got {self.time_budget_s}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------------------------------ method


class Method:
    """Base class of every representation (see the module docstring).

    Class attributes a subclass sets:

    * ``name``: the registry name (``kernelight train NAME``);
    * ``config_cls``: its :class:`MethodConfig` subclass;
    * ``batch_mode``: ``"image"`` (one training image per step: :meth:`train_step`) or ``"rays"``
      (random rays across all training images: :meth:`train_step_rays`, ``cfg.rays_per_batch``);
    * ``masked_eval``: on data with masks (DTU) evaluate inside the mask only;
    * ``export_formats``: ``{format: one line}`` accepted by :meth:`export`;
    * ``devices``: where its model can live (``("cpu", "cuda")`` once every tensor it creates
      follows its parameters' device). A CPU-only method on a CUDA machine keeps its model on the CPU
      and its kernel inputs are copied to the GPU per call; ``--device cuda`` is refused for it.

    Instance attributes set by the base: ``cfg``, ``notes`` (lines the CLI prints), ``run_dir`` and
    ``step`` (set by ``engine.load``).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    batch_mode: ClassVar[str] = "image"
    masked_eval: ClassVar[bool] = False
    export_formats: ClassVar[dict[str, str]] = {}
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.notes: list[str] = []
        self.run_dir: Path | None = None
        self.step: int | None = None
        # where this process sits in a data-parallel run (engine.train.distributed.DistContext;
        # None = one process). The trainer sets it; see shard() and batch_mean().
        self.dist = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, cfg: MethodConfig, dataset) -> "Method":
        """A new, untrained model for ``dataset`` (an :class:`engine.data.Dataset`)."""
        raise NotImplementedError(f"{cls.__name__}.create")

    @classmethod
    def from_file(cls, path: Path, cfg: MethodConfig) -> "Method":
        """Load a file this method reads (see ``MethodSpec.reads``), e.g. a standard 3DGS ``.ply``."""
        from ..errors import ConfigError

        raise ConfigError(f"{path}: method {cls.name} does not read files")

    # ------------------------------------------------------------------ optimisation
    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over all trainable parameters (named param groups)."""
        raise NotImplementedError(f"{type(self).__name__}.make_optimizer")

    def update_learning_rates(self, optimizer: torch.optim.Optimizer, step: int, progress: float) -> dict:
        """Set this step's learning rates; ``progress`` in [0, 1] is the larger of step / max_steps and
        train time / time budget. Returns ``{group name: lr}``. Default: constant rates."""
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}

    def bind_training_data(self, dataset) -> None:
        """Called by the trainer once the method exists (made by :meth:`create` or loaded by
        :meth:`from_state_dict` when resuming) with the run's dataset, before the first step: keep
        what training needs from it beyond the images the trainer hands over (RayGauss: the
        training masks). Default: nothing."""

    def train_step(self, step: int, image: torch.Tensor, cameras, index: int, background) -> tuple:
        """``batch_mode == "image"``: render training view ``index`` and return
        ``(loss, stats, prediction (H, W, 3))``; ``stats`` has at least ``psnr``."""
        raise NotImplementedError(f"{type(self).__name__}.train_step")

    def train_step_rays(self, step: int, batch, background) -> tuple:
        """``batch_mode == "rays"``: render a :class:`engine.data.sampler.RayBatch`, return ``(loss, stats)``."""
        raise NotImplementedError(f"{type(self).__name__}.train_step_rays")

    # ------------------------------------------------------------------ device
    def to(self, device) -> "Method":
        """Move everything the method holds to ``device`` (the run's ``--device``, where Taichi runs,
        so kernels take tensors where they are) and return ``self``. Called before
        :meth:`make_optimizer`. Default: every ``nn.Module`` and tensor attribute, and those of
        plain attribute objects one level down (a densification strategy, an occupancy grid); a
        method holding tensors elsewhere overrides it."""
        device = torch.device(device)

        def move(obj, depth):
            for k, v in list(vars(obj).items()):
                if isinstance(v, torch.nn.Module):
                    v.to(device)
                elif torch.is_tensor(v):
                    if v.device != device:
                        setattr(obj, k, v.to(device))
                elif depth and hasattr(v, "__dict__") and not isinstance(v, (type, Method, MethodConfig, Path)) \
                        and type(v).__module__.startswith(("engine.", "shaders.")):
                    move(v, depth - 1)

        if all(p.device == device for p in self._tensors()):
            return self
        move(self, 1)
        return self

    def _tensors(self):
        for v in vars(self).values():
            if isinstance(v, torch.nn.Module):
                yield from v.parameters()
                yield from v.buffers()
            elif torch.is_tensor(v):
                yield v

    # ------------------------------------------------------------------ data-parallel training
    @classmethod
    def batch_option(cls) -> str | None:
        """The config option holding the step's global batch (``rays_per_batch`` for ``"rays"``
        methods, ``batch_images`` for ``"image"`` methods that declare it), or None (one image)."""
        opt = "rays_per_batch" if cls.batch_mode == "rays" else "batch_images"
        return opt if opt in cls.config_cls.field_names() else None

    @classmethod
    def global_batch(cls, cfg: MethodConfig) -> int:
        """Rays or images of one training step over *all* ranks. With ``W`` ranks each gets ``1/W``
        of it, so the world size must divide it and the training does not depend on ``W``: an
        ``"image"`` method gets its images one :meth:`train_step` call each (the trainer averages
        their losses), a ``"rays"`` method gets its share of the rays in :meth:`train_step_rays`."""
        opt = cls.batch_option()
        return int(getattr(cfg, opt)) if opt else 1

    def shard(self, n: int) -> slice:
        """This rank's part of ``n`` items drawn for the whole step (``slice(0, n)`` in one process).

        A method that draws its own randomness per ray or per point draws it for the global batch
        (``n`` = its share x world size) from a generator every rank holds identically, and keeps
        ``values[self.shard(n)]``: ranks then see different values, their generators stay in step,
        and one process with the whole batch draws exactly the same numbers."""
        return slice(0, n) if self.dist is None else self.dist.shard(n)

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else int(self.dist.world_size)

    def batch_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of per-element loss terms over the step's global batch, for terms whose element
        count differs between ranks (per-sample terms). The trainer *averages* gradients over ranks, so
        each rank returns ``sum(local) * W / global count``; their average is the global mean. In one
        process (or when every rank has the same count) this is ``values.mean()``. Every rank must
        call it the same number of times per step (it all-reduces the count). 0 when the global batch
        has no elements."""
        if self.dist is None or not self.dist.enabled:
            return values.mean() if values.numel() else values.sum()
        from ..train.distributed import all_reduce_sum

        n = all_reduce_sum(self.dist, torch.tensor([float(values.numel())]), "a loss normalisation")
        total = float(n[0])
        if total == 0:
            return values.sum()
        return values.sum() * (self.dist.world_size / total)

    def changed_structure(self, result: dict | None) -> bool:
        """Whether :meth:`post_step`'s ``result`` changed the model's structure (tensor shapes,
        meshes, the optimizer's parameters). In a data-parallel run the trainer then copies rank 0's
        model and optimizer state to every rank (``state_dict`` / ``from_state_dict``), so whatever
        post_step decided is decided once. Default: any non-empty result."""
        return bool(result)

    def after_backward(self) -> None:
        """Called between ``loss.backward()`` and the optimizer step (gradient statistics, masking)."""

    def post_step(self, optimizer: torch.optim.Optimizer, step: int) -> dict | None:
        """Called after the optimizer step: structural changes (densify, prune, extract). Returns a
        dict of what changed (logged to metrics.jsonl) or None."""
        return None

    # ------------------------------------------------------------------ inference
    def render(self, cameras, index: int, background=None) -> dict:
        """Render camera ``index`` of a :class:`engine.cameras.Cameras` batch without gradients; the
        keys and shapes of the module docstring."""
        raise NotImplementedError(f"{type(self).__name__}.render")

    @property
    def num_primitives(self) -> int:
        """Primitives the model is made of (Gaussians, shell faces, points, ...)."""
        raise NotImplementedError(f"{type(self).__name__}.num_primitives")

    def progress_label(self) -> str:
        """What the model is made of, for progress lines."""
        return f"{self.num_primitives} primitives"

    def bounds(self) -> torch.Tensor:
        """(2, 3) min / max corners of the content (the viewer frames it, orbits circle it)."""
        raise NotImplementedError(f"{type(self).__name__}.bounds")

    def points(self) -> torch.Tensor | None:
        """(N, 3) representative points of the content (Gaussian centres, ...) or None."""
        return None

    # ------------------------------------------------------------------ export
    def export(self, format: str, out: Path) -> list[Path]:
        """Write the model as ``format`` (one of ``export_formats``) to ``out`` (a file, or a folder
        for multi-file formats); returns the paths written."""
        from ..errors import ConfigError

        raise ConfigError(f"method {self.name} exports no format {format!r}"
                          + (f" (it exports: {', '.join(self.export_formats)})" if self.export_formats else ""))

    def default_export_path(self, format: str, run_dir: Path) -> Path:
        """Where ``kernelight export RUN --format F`` writes without ``--out``."""
        return Path(run_dir) / "export" / format

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to rebuild the model (tensors and plain values only: checkpoints load
        with ``weights_only=True``)."""
        raise NotImplementedError(f"{type(self).__name__}.state_dict")

    @classmethod
    def from_state_dict(cls, cfg: MethodConfig, state: dict) -> "Method":
        raise NotImplementedError(f"{cls.__name__}.from_state_dict")

    def __repr__(self) -> str:
        try:
            n = self.progress_label()
        except Exception:  # a half-built object
            n = "?"
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        step = f", step={self.step}" if self.step is not None else ""
        return f"<{type(self).__name__} {self.name!r}: {n}{step}{where}>"


RENDER_KEYS = ("rgb", "alpha", "depth", "depth_sum", "cost")


def check_render_output(out: dict, H: int | None = None, W: int | None = None) -> dict:
    """Check that ``out`` follows the rendering contract (raises AssertionError naming the key)."""
    for k in RENDER_KEYS:
        assert k in out, f"render output has no {k!r} (has {sorted(out)})"
    h, w = out["rgb"].shape[:2]
    assert out["rgb"].shape == (h, w, 3), f"rgb has shape {tuple(out['rgb'].shape)}"
    if H is not None:
        assert (h, w) == (H, W), f"rgb is {h}x{w}, expected {H}x{W}"
    for k in RENDER_KEYS[1:]:
        assert tuple(out[k].shape) == (h, w), f"{k} has shape {tuple(out[k].shape)}, expected {(h, w)}"
    return out


def finish_depth(alpha: torch.Tensor, depth_sum: torch.Tensor) -> dict[str, Any]:
    """``depth`` (normalised by alpha, 0 where alpha is ~0) and ``depth_sum`` from the weighted sum."""
    depth = torch.where(alpha > 1e-6, depth_sum / alpha.clamp_min(1e-6), torch.zeros_like(depth_sum))
    return {"depth": depth, "depth_sum": depth_sum}
