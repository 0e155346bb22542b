"""The Python API: load a trained model or a file, make a camera, render it, train from a config.

>>> import engine
>>> model = engine.load("outputs/mic/raygauss/2026-11-27_120000")      # doctest: +SKIP
>>> ds = engine.load_dataset("scenes/mic/mic_100")                      # doctest: +SKIP
>>> out = engine.render(model, ds.splits["test"].cameras, 0)            # doctest: +SKIP
>>> cam = engine.camera(eye=(0, -4, 1), target=(0, 0, 0), up=(0, 0, 1), width=200, height=200)
>>> out = engine.render(model, cam)                                     # doctest: +SKIP
>>> sorted(out)                                                         # doctest: +SKIP
['alpha', 'cost', 'depth', 'depth_sum', 'rgb', ...]
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["load", "render", "camera", "train", "load_dataset", "find_run_checkpoint"]


def find_run_checkpoint(path):
    """RUN folder | checkpoint .pt -> (run folder or None, checkpoint path)."""
    from .io.checkpoint import latest_valid_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        return run, path
    if path.is_dir():
        # the newest checkpoint that loads: a damaged newer one is skipped with a warning naming it
        ck = latest_valid_checkpoint(path / "checkpoints") or latest_valid_checkpoint(path)
        if ck is None:
            raise ConfigError(f"{path}: no checkpoints/step-*.pt found (is this a run folder?)")
        return path, ck
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    raise ConfigError(f"{path}: not a run folder, a checkpoint .pt or a file a method reads")


def load(path, device: str | None = None, **options):
    """Load a run folder, a checkpoint (``.pt``) or a file a registered method reads (a standard 3DGS
    ``.ply``).

    Returns the method object (a :class:`engine.methods.base.Method`): ``.render(cameras, index)``,
    ``.num_primitives``, ``.export(format, out)``, ``.cfg``, ``.run_dir``, ``.step``, ``.device``.
    ``device``: ``auto`` (CUDA when torch sees a GPU) | ``cpu`` | ``cuda``: where the model lives and
    Taichi runs (as ``kernelight train --device``; a combination that cannot run is a one-line
    ConfigError). None (default): the model stays on the CPU where the checkpoint loads, Taichi is
    not started. ``options`` override config fields (e.g. ``dt=0.005``).
    """
    m = _load(path, **options)
    if device is None:
        m.device = torch.device("cpu")
        return m
    m.device, note = place_method(type(m), device)
    if note:
        m.notes.append(note)
    return m.to(m.device)


def place_method(cls, requested: str | None = "auto"):
    """``(torch device, note or None)`` for a model of method class ``cls`` on ``requested``
    (``auto`` | ``cpu`` | ``cuda``): the device is checked against the Taichi arch and Taichi is
    started; a method that cannot hold its model there is refused for an explicit device, and kept
    on the CPU (with a note) for ``auto``."""
    from .train.distributed import resolve_device

    req = (requested or "auto").strip().lower()
    dev = resolve_device(req, start=True)
    devices = getattr(cls, "devices", ("cpu",))
    if dev.type in devices:
        return dev, None
    if req != "auto":
        raise ConfigError(f"--device {req}: method {cls.name} keeps its model on {' or '.join(devices)} (its "
                          f"{dev.type} placement is not done yet); use --device auto")
    return torch.device("cpu"), (f"method {cls.name} keeps its model on the CPU; the kernels run on {dev.type} "
                                 f"and their inputs are copied per call")


def model_device(model) -> torch.device:
    """Where a loaded model's tensors live (``model.device`` when set, else its first tensor's)."""
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    for t in model._tensors() if hasattr(model, "_tensors") else ():
        return t.device
    return torch.device("cpu")


def _load(path, **options):
    from . import methods as registry
    from .config import load_scene
    from .io.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix.lower() != ".pt":
        spec = registry.reader_for(path)
        if spec is None:
            if path.suffix.lower() == ".ply":
                from .io.ply import read_ply_header

                header = read_ply_header(path)        # a damaged header: its DataError names the line
                raise ConfigError(f"{path}: a PLY without 3DGS properties (f_dc_0, opacity, ...): "
                                  f"{'a mesh' if header.face_count() else 'points'}, which no method renders "
                                  f"(kernelight view shows meshes)")
            raise ConfigError(f"{path}: no method reads {path.suffix or 'this'} files "
                              f"(expected a run folder, a checkpoint .pt or a 3DGS .ply)")
        cls = spec.method_class()
        return cls.from_file(path, cls.config_cls.from_options(options, spec.name))
    run_dir, ckpt = find_run_checkpoint(path)
    data = load_checkpoint(ckpt)
    spec = registry.get(data["method"])
    opts = {}
    if run_dir is not None and (run_dir / "config.toml").is_file():
        opts.update(load_scene(run_dir / "config.toml").method_options)
    opts.update(options)
    cls = spec.method_class()
    m = cls.from_state_dict(cls.config_cls.from_options(opts, spec.name), data["model"])
    m.run_dir = run_dir
    m.step = data.get("step")
    return m


def camera(eye, target, up=(0.0, 0.0, 1.0), width: int = 400, height: int = 300, fov_deg: float = 50.0):
    """A one-view :class:`engine.cameras.Cameras` at ``eye`` looking at ``target`` (OpenCV axes),
    horizontal field of view ``fov_deg``, pixel centres at +0.5."""
    from .camera_paths import look_at
    from .cameras import Cameras

    if width < 1 or height < 1:
        raise ConfigError(f"camera: width and height must be >= 1, got {width}x{height}")
    if not 0 < fov_deg < 180:
        raise ConfigError(f"camera: fov_deg must be in (0, 180), got {fov_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return Cameras(f, f, width / 2, height / 2, width, height, look_at(eye, target, up)[None])


def render(model, camera, index: int = 0, background=None) -> dict:
    """Render view ``index`` of a :class:`~engine.cameras.Cameras` batch (e.g. from :func:`camera`).

    Returns float32 tensors: ``rgb (H,W,3)``, ``alpha (H,W)`` accumulated opacity, ``depth (H,W)``
    expected depth normalised by alpha, ``depth_sum (H,W)`` the un-normalised one, ``cost (H,W)``
    evaluations per ray (Gaussians or field samples), plus method-specific extras (RayGauss:
    ``n_capped``, slabs whose Gaussians overflowed the collect cap; shells: ``normal``).
    ``background`` (3,) composites rgb (default: black). The cameras and background go to the
    model's device (:func:`model_device`) and so do the outputs (``.cpu()`` them for files/numpy).
    """
    dev = model_device(model)
    if background is not None:
        background = torch.as_tensor(background, dtype=torch.float32).to(dev)
    if camera.c2w.device != dev:
        camera = camera.to(dev)
    return model.render(camera, index, background=background)


def train(config, **overrides) -> Path:
    """Train from a scene TOML path (or a dict with keys method, data, options, ...).

    Returns the run folder. ``overrides`` are method options (e.g. ``max_steps=200``), plus
    ``device="auto"|"cpu"|"cuda"`` (where the model, data and optimizer state live; default: the
    scene TOML's ``[run] device``, else auto).
    """
    from . import methods as registry
    from .config import load_scene
    from .train.trainer import TrainSettings
    from .train.trainer import train as _train

    device = overrides.pop("device", None)
    if isinstance(config, (str, Path)):
        sc = load_scene(config)
        if not sc.method:
            raise ConfigError(f"{config}: [method] name is missing")
        spec = registry.get(sc.method)
        base = spec.preset(sc.preset) if sc.preset else {}
        settings = TrainSettings(method=spec.method_class(), data=sc.data, scene_name=sc.name, data_format=sc.format,
                                 downscale=sc.downscale, background=sc.background,
                                 options={**base, **sc.method_options, **overrides},
                                 device=device or _run_table(config).get("device") or "auto")
    elif isinstance(config, dict):
        c = dict(config)
        opts = {**c.pop("options", {}), **overrides}
        method = c.pop("method", None)
        if isinstance(method, str):
            method = registry.get_method(method)
        if device is not None:
            c["device"] = device
        settings = TrainSettings(method=method, options=opts, **c)
    else:
        raise ConfigError("engine.train(config): config must be a scene TOML path or a dict")
    return _train(settings)


def _run_table(path) -> dict:
    from .commands.train import _scene_run_table

    return _scene_run_table(path)


def load_dataset(path, **kwargs):
    """Load a dataset folder (format auto-detected); see :func:`engine.data.load_dataset`."""
    from .data import load_dataset as _ld

    return _ld(path, **kwargs)
