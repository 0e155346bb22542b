"""The Python API: load a trained model or a 3DGS file, render a camera, train from a config.

>>> import engine
>>> model = engine.load("outputs/mic/raygauss/2026-11-27_120000")      # doctest: +SKIP
>>> ds = engine.load_dataset("scenes/mic/mic_100")                      # doctest: +SKIP
>>> out = engine.render(model, ds.splits["test"].cameras[0])            # doctest: +SKIP
>>> out["rgb"].shape, out["alpha"].shape, out["depth"].shape            # doctest: +SKIP
(torch.Size([100, 100, 3]), torch.Size([100, 100]), torch.Size([100, 100]))
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError


def load(path, **options):
    """Load a run folder, a checkpoint (``.pt``) or a standard 3DGS ``.ply``.

    Returns a method object (e.g. ``RayGaussMethod``) with ``.render(cameras, index)``,
    ``.model`` and ``.num_primitives``. ``options`` override config fields (e.g. ``dt=0.005``).
    """
    from .commands._common import find_run_checkpoint
    from .config import load_scene
    from .io.checkpoint import load_checkpoint
    from .methods import get_method
    from .train.trainer import make_method_config

    path = Path(path)
    if path.suffix.lower() == ".ply":
        from .io.ply import read_gaussian_ply
        from .methods.raygauss.method import RayGaussMethod
        from .methods.raygauss.model import RayGaussModel

        ply = read_gaussian_ply(path)
        cfg = make_method_config(RayGaussMethod, options)
        m = RayGaussMethod(cfg, RayGaussModel.from_gaussian_ply(ply, cfg))
        m.notes.extend(f"{path.name}: {r}" for r in ply.repairs)
        return m
    run_dir, ckpt = find_run_checkpoint(path)
    data = load_checkpoint(ckpt)
    method_cls = get_method(data["method"])
    opts = {}
    if run_dir is not None and (run_dir / "config.toml").is_file():
        opts.update(load_scene(run_dir / "config.toml").method_options)
    opts.update(options)
    cfg = make_method_config(method_cls, opts)
    m = method_cls.from_state_dict(cfg, data["model"])
    m.run_dir = run_dir
    m.step = data.get("step")
    return m


def render(model, camera, index: int = 0, background=None) -> dict:
    """Render one camera: ``camera`` is a ``Cameras`` batch (``index`` picks the view).

    Returns dict(rgb (H,W,3), alpha (H,W), depth (H,W)) as float32 torch tensors (plus
    ``n_evals`` (H,W), Gaussian evaluations per ray). ``background`` (3,) composites rgb.
    """
    if background is not None:
        background = torch.as_tensor(background, dtype=torch.float32)
    return model.render(camera, index, background=background)


def train(config, **overrides) -> Path:
    """Train from a scene TOML path (or a dict with keys method, data, options, ...).

    Returns the run folder. ``overrides`` are method options (e.g. ``max_steps=200``).
    """
    from .config import load_scene
    from .train.trainer import TrainSettings
    from .train.trainer import train as _train

    if isinstance(config, (str, Path)):
        sc = load_scene(config)
        if not sc.method:
            raise ConfigError(f"{config}: [method] name is missing")
        from .methods import get_preset

        base = get_preset(sc.method, sc.preset) if sc.preset else {}
        settings = TrainSettings(method=sc.method, data=sc.data, scene_name=sc.name, data_format=sc.format,
                                 downscale=sc.downscale, background=sc.background,
                                 options={**base, **sc.method_options, **overrides})
    elif isinstance(config, dict):
        c = dict(config)
        opts = {**c.pop("options", {}), **overrides}
        settings = TrainSettings(options=opts, **c)
    else:
        raise ConfigError("engine.train(config): config must be a scene TOML path or a dict")
    return _train(settings)


def load_dataset(path, **kwargs):
    """Load a dataset folder (format auto-detected); see ``engine.data.load_dataset``."""
    from .data import load_dataset as _ld

    return _ld(path, **kwargs)
