"""kernelight engine: the public Python API.

>>> import engine
>>> engine.__version__
'0.1.0'
>>> engine.methods.available()
['gvgen', 'gvolume', 'pointfield', 'raygauss', 'shells']

Entry points (see :mod:`engine.api`):

* ``engine.load(path)`` -- a run folder, checkpoint or 3DGS ``.ply`` -> a method object;
* ``engine.camera(eye, target, up, width, height, fov_deg)`` -- a one-view ``Cameras``;
* ``engine.render(model, cameras, index)`` -- rgb / alpha / depth / depth_sum / cost;
* ``engine.train(config)`` -- train from a scene TOML (or dict) and return the run folder;
* ``engine.load_dataset(path)`` -- any supported dataset folder;
* ``engine.methods`` -- the registry: ``available()``, ``get(name)``, ``register(MethodSpec(...))``;
* ``engine.Cameras``, ``engine.look_at`` -- cameras of any size and pose.

Heavy dependencies (torch, taichi, open3d) load lazily, so ``import engine`` is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = ("load", "render", "camera", "train", "load_dataset")
__all__ = ["__version__", *_API, "generate", "methods", "Cameras", "look_at"]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "generate":   # text-to-3D (engine/generate.py; the module is callable: engine.generate(text))
        import importlib

        return importlib.import_module(".generate", __name__)
    if name == "methods":
        import importlib

        return importlib.import_module(".methods", __name__)
    if name == "Cameras":
        from .cameras import Cameras

        return Cameras
    if name == "look_at":
        from .camera_paths import look_at

        return look_at
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
