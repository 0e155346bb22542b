"""Representations (one module or package each). A method module never imports another one.

``get_method(name)`` returns the method class registered under ``name``.
"""
from __future__ import annotations

import importlib

_REGISTRY = {
    "raygauss": "engine.methods.raygauss.method:RayGaussMethod",
}


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str):
    from ..errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    mod, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)
