"""kernelight engine: the public Python API.

>>> import engine
>>> engine.__version__
'0.1.0'

``engine.load(path)``, ``engine.render(model, cameras, index)``, ``engine.train(config)`` and
``engine.load_dataset(path)`` are the entry points (see :mod:`engine.api`). Heavy dependencies
(torch, taichi, open3d) load lazily, so ``import engine`` is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "render", "train", "load_dataset"]


def __getattr__(name):
    if name in ("load", "render", "train", "load_dataset"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
