"""Text-to-3D in the Python API: ``engine.generate("a red torus")`` -> a :class:`Generation`.

The generator is a trained ``gvgen`` run (``kernelight train gvgen --data SET``) or, by default, the
small one shipped inside the package (``engine/methods/gvgen/weights/primitives16.pt``, trained on
the primitives set; see the README for the commands that rebuilt and trained it).

>>> import engine
>>> gen = engine.generate("a red torus", seed=0)                     # doctest: +SKIP
>>> gen.unknown_words, gen.grid.shape                                # doctest: +SKIP
([], torch.Size([16, 16, 16, 14]))
>>> gen.write_ply("torus.ply")                                       # doctest: +SKIP
>>> out = engine.render(gen, engine.camera(eye=(2, -2, 1.2), target=(0, 0, 0)))   # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "methods" / "gvgen" / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "primitives16.pt"

__all__ = ["generate", "load_generator", "Generation", "turntable_cameras", "DEFAULT_WEIGHTS"]

_LOADED: dict = {}


def load_generator(model=None, **options):
    """A gvgen generator (:class:`engine.methods.gvgen.method.GVGenMethod`) from ``model`` (a gvgen run
    folder or checkpoint ``.pt``; None: the shipped one). ``options`` override its generation options
    (``ddim_steps``, ``guidance``, ``min_opacity``, ``grid_size`` to insist on an N). Loaded once per
    file and options."""
    from . import methods as registry
    from .api import find_run_checkpoint
    from .config import load_scene
    from .io.checkpoint import load_checkpoint

    if model is None:
        if not DEFAULT_WEIGHTS.is_file():
            raise ConfigError(f"no shipped generator at {DEFAULT_WEIGHTS} (this install lacks it); train one with "
                              f"'kernelight gvgen dataset --out SET' and 'kernelight train gvgen --data SET', then "
                              f"pass --model RUN")
        run_dir, ckpt = None, DEFAULT_WEIGHTS
    else:
        path = Path(model)
        if path.is_file() and path.suffix.lower() != ".pt":
            raise ConfigError(f"{path}: not a gvgen generator (expected a gvgen run folder or a checkpoint .pt)")
        run_dir, ckpt = find_run_checkpoint(path)
    key = (str(Path(ckpt).resolve()), Path(ckpt).stat().st_mtime_ns, tuple(sorted(options.items())))
    if key in _LOADED:
        return _LOADED[key]
    data = load_checkpoint(ckpt)
    if data.get("method") != "gvgen":
        raise ConfigError(f"{model if model is not None else ckpt}: a {data.get('method', 'unknown')} "
                          f"{'run' if run_dir else 'checkpoint'}, not a gvgen generator (train one with "
                          f"kernelight train gvgen --data SET)")
    opts = {}
    if run_dir is None:   # a compact generator file (kernelight export RUN --format generator) keeps its options
        opts.update((data["model"].get("meta") or {}).get("config") or {})
    if run_dir is not None and (run_dir / "config.toml").is_file():
        opts.update(load_scene(run_dir / "config.toml").method_options)
    opts.update(options)
    spec = registry.get("gvgen")
    cls = spec.method_class()
    cfg = cls.config_cls.from_options(opts, "gvgen")
    gen = cls.from_state_dict(cfg, data["model"])
    gen.run_dir = run_dir
    gen.step = data.get("step")
    gen.source = str(ckpt)
    if len(_LOADED) > 4:
        _LOADED.clear()
    _LOADED[key] = gen
    return gen


@dataclass
class Generation:
    """One generated object: ``grid (N, N, N, 14)`` (GaussianVolume attributes in ``as_grid()``
    order), ``gdf (N, N, N)`` (world units), the caption, the words of it no training caption had,
    the seed and the wall-clock seconds it took; renders like a model (``engine.render(gen, cam)``)."""

    caption: str
    grid: torch.Tensor
    gdf: torch.Tensor
    unknown_words: list
    seed: int
    seconds: float
    generator: object = field(repr=False)

    def gaussians(self) -> dict:
        """The Gaussians above the generator's ``min_opacity``: means, quats, log_scales, opacity_logits, sh."""
        return self.generator.gaussians(self._raw())

    @property
    def num_primitives(self) -> int:
        return int(self.gaussians()["means"].shape[0])

    def write_ply(self, path) -> Path:
        """A standard 3DGS ``.ply`` (``kernelight view`` and other 3DGS viewers open it); atomic."""
        return self.generator.write_ply(self._raw(), path)

    def render(self, cameras, index: int = 0, background=None) -> dict:
        """Splat view ``index`` of ``cameras`` (the rendering contract: rgb, alpha, depth, ...)."""
        with torch.no_grad():
            return self.generator._render_grid(self.grid, cameras, index, background)

    def bounds(self) -> torch.Tensor:
        return self.generator.bounds()

    def points(self) -> torch.Tensor:
        return self.gaussians()["means"]

    def _raw(self) -> dict:
        return {"grid": self.grid, "gdf": self.gdf, "caption": self.caption}


def generate(text, seed: int = 0, model=None, *, steps: int | None = None, guidance: float | None = None,
             grid_size: int | None = None, out=None, callback=None) -> Generation:
    """Generate a 3D object (GaussianVolume) from ``text`` (see the module docstring).

    Args:
        text: the caption ("a red torus"); an empty, over-long or non-text caption raises a
            user-facing error; words the training captions never had are generated anyway and
            listed in ``Generation.unknown_words``.
        seed: the noise seed (same seed, same object).
        model: a gvgen run folder / checkpoint (None: the shipped generator).
        steps: DDIM steps (default: the generator's ``ddim_steps``, 50).
        guidance: classifier-free guidance scale (default: the generator's, 1 = none).
        grid_size: refuse a generator of another N (None: whatever it makes).
        out: also write the 3DGS ``.ply`` there.
        callback: ``callback(step, total)`` after every DDIM step.
    """
    opts = {} if grid_size is None else {"grid_size": int(grid_size)}
    gen = load_generator(model, **opts)
    res = gen.generate(text, seed=int(seed), steps=steps, guidance=guidance, callback=callback)
    g = Generation(res["caption"], res["grid"], res["gdf"], list(res["unknown_words"]), int(res["seed"]),
                   float(res["seconds"]), gen)
    if out is not None:
        g.write_ply(out)
    return g


def turntable_cameras(box, frames: int = 60, size: int = 256, elevation_deg: float = 25.0, fov_deg: float = 40.0):
    """``frames`` cameras circling ``box (2, 3)`` (z up, as the training renders), far enough that the
    box's circumscribed sphere fits the view."""
    from .camera_paths import look_at
    from .cameras import Cameras

    box = torch.as_tensor(box, dtype=torch.float64).reshape(2, 3)
    centre = (box[0] + box[1]) / 2
    radius = float((box[1] - box[0]).norm() / 2)
    dist = radius * 0.9 / math.sin(math.radians(fov_deg) / 2)
    el = math.radians(elevation_deg)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    mats = []
    for i in range(int(frames)):
        th = 2 * math.pi * i / max(int(frames), 1) - math.pi / 2
        eye = centre + dist * torch.tensor([math.cos(el) * math.cos(th), math.cos(el) * math.sin(th), math.sin(el)],
                                           dtype=torch.float64)
        mats.append(look_at(eye, centre, up))
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras(f, f, size / 2, size / 2, size, size, torch.stack(mats).float())


class _CallableModule(type(math)):
    """``engine.generate`` is this module (Python binds a submodule to its package's attribute of the
    same name), so calling it calls :func:`generate`."""

    def __call__(self, *args, **kwargs) -> Generation:
        return generate(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
