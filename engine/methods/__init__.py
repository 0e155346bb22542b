"""Representations (one module or package each). A method module never imports another one.

``get_method(name)`` returns the method class registered under ``name``.
"""
from __future__ import annotations

import importlib

_REGISTRY = {
    "raygauss": "engine.methods.raygauss.method:RayGaussMethod",
    "shells": "engine.methods.shells.method:ShellsMethod",
}


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str):
    from ..errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    mod, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


_PRESETS = {
    "raygauss": "engine.methods.raygauss.presets:PRESETS",
}


def get_preset(method: str, name: str) -> dict:
    """Option set ``name`` of ``method`` (see e.g. engine.methods.raygauss.presets)."""
    from ..errors import ConfigError

    if method not in _PRESETS:
        raise ConfigError(f"method {method!r} has no presets")
    mod, attr = _PRESETS[method].split(":")
    presets = getattr(importlib.import_module(mod), attr)
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r} for {method}; available: {', '.join(sorted(presets))}")
    return dict(presets[name])
