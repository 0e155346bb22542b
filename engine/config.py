"""Scene configs (TOML) accepted by ``kernelight`` commands in place of flags.

A scene file looks like ``scenes/mic.toml``::

    [scene]
    name = "mic"              # used in the default output path outputs/<name>/<method>/...
    data = "mic/mic_100"      # dataset folder, relative to the TOML file (or absolute)
    format = "blender"        # optional; auto-detected otherwise
    background = "white"      # optional: white | black | "R,G,B" (0-1 floats)
    downscale = 1             # optional

    [method]
    name = "raygauss"
    preset = "cpu"            # optional named option set (applied before the options below)
    [method.options]          # any field of the method's config dataclass
    max_steps = 3000

Command-line flags given explicitly override the file.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SCENE_KEYS = {"name", "data", "format", "background", "downscale"}


@dataclass
class SceneConfig:
    path: Path | None
    name: str
    data: Path
    format: str | None = None
    background: tuple[float, float, float] | None = None
    downscale: int = 1
    method: str | None = None
    method_options: dict = field(default_factory=dict)
    preset: str | None = None


_NAMED_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5),
                      "grey": (0.5, 0.5, 0.5)}


def parse_background(value, default=None) -> tuple[float, float, float] | None:
    """The one background parser: ``'white' | 'black' | 'gray' | 'R,G,B' | [r, g, b] | None`` ->
    ``(r, g, b)`` floats in [0, 1] (``default`` for None). Values above 1 are read as 0-255.

    >>> parse_background("white"), parse_background("255,0,0"), parse_background(None, (0, 0, 0))
    ((1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    """
    if value is None:
        return None if default is None else tuple(float(c) for c in default)
    if hasattr(value, "tolist"):          # a tensor / array
        value = value.tolist()
    expected = "expected white, black, gray or R,G,B (three numbers in 0..1, or 0..255)"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _NAMED_BACKGROUNDS:
            return _NAMED_BACKGROUNDS[v]
        parts = v.split(",")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ConfigError(f"background {value!r}: {expected}")
    try:
        rgb = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"background {value!r}: {expected}") from None
    if len(rgb) != 3 or not all(math.isfinite(c) for c in rgb):
        raise ConfigError(f"background {value!r}: {expected}")
    if any(c > 1.0 for c in rgb):
        rgb = tuple(c / 255.0 for c in rgb)
    if not all(0.0 <= c <= 1.0 for c in rgb):
        raise ConfigError(f"background {value!r}: {expected}")
    return rgb


def load_scene(path) -> SceneConfig:
    """Read a scene TOML file; errors name the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: scene config not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    scene = raw.get("scene")
    if not isinstance(scene, dict):
        raise ConfigError(f"{path}: missing [scene] table")
    unknown = set(scene) - _SCENE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [scene]: {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(_SCENE_KEYS))})")
    if "data" not in scene:
        raise ConfigError(f"{path}: [scene] needs a 'data' key (the dataset folder)")
    if not isinstance(scene["data"], str) or not scene["data"].strip() or "\x00" in scene["data"]:
        raise ConfigError(f"{path}: [scene] data must be a folder path (a non-empty string), got {scene['data']!r}")
    for key in ("name", "format"):
        if key in scene and not isinstance(scene[key], str):
            raise ConfigError(f"{path}: [scene] {key} must be a string, got {scene[key]!r}")
    data = Path(scene["data"]).expanduser()
    if not data.is_absolute():
        data = (path.parent / data).resolve()
    method = raw.get("method", {}) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"{path}: [method] must be a table")
    for key in ("name", "preset"):
        if method.get(key) is not None and not isinstance(method[key], str):
            raise ConfigError(f"{path}: [method] {key} must be a string, got {method[key]!r}")
    options = method.get("options", {}) or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [method.options] must be a table")
    downscale = scene.get("downscale", 1)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise ConfigError(f"{path}: [scene] downscale must be a positive integer, got {downscale!r}")
    try:
        background = parse_background(scene.get("background"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: [scene] {exc}") from exc
    return SceneConfig(
        path=path,
        name=str(scene.get("name") or data.name),
        data=data,
        format=scene.get("format"),
        background=background,
        downscale=downscale,
        method=method.get("name"),
        method_options=dict(options),
        preset=method.get("preset"),
    )


def is_scene_file(path) -> bool:
    return str(path).lower().endswith(".toml")
