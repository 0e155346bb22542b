"""Helpers shared by the train/render/eval/export commands (not a command itself)."""
from __future__ import annotations

import argparse
from pathlib import Path

# method name -> "module:ConfigClass" (config modules import only dataclasses: cheap for --help)
METHOD_CONFIGS = {
    "raygauss": "engine.methods.raygauss.config:RayGaussConfig",
    "shells": "engine.methods.shells.config:ShellsConfig",
}


def config_class(method: str):
    import importlib

    mod, cls = METHOD_CONFIGS[method].split(":")
    return getattr(importlib.import_module(mod), cls)


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per field of every method config (default: not set)."""
    import dataclasses

    seen = set()
    for method in METHOD_CONFIGS:
        cls = config_class(method)
        group = parser.add_argument_group(f"{method} options (override the config / scene TOML)")
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = f.default
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                group.add_argument(flag, dest=f"opt_{f.name}", type=_parse_bool, default=None, metavar="BOOL",
                                   help=f"(default {default})")
            elif isinstance(default, tuple):
                group.add_argument(flag, dest=f"opt_{f.name}", type=int, nargs="+", default=None, metavar="STEP",
                                   help=f"(default {' '.join(map(str, default))})")
            else:
                group.add_argument(flag, dest=f"opt_{f.name}", type=type(default), default=None,
                                   metavar=type(default).__name__.upper(), help=f"(default {default})")


def collect_method_options(args) -> dict:
    return {k[4:]: (tuple(v) if isinstance(v, list) else v)
            for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def find_run_checkpoint(path: Path):
    """RUN folder | checkpoint .pt -> (run_dir or None, checkpoint path)."""
    from ..errors import ConfigError
    from ..io.checkpoint import latest_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        return run, path
    if path.is_dir():
        ck = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if ck is None:
            raise ConfigError(f"{path}: no checkpoints/step-*.pt found (is this a run folder?)")
        return path, ck
    raise ConfigError(f"{path}: not a run folder or a checkpoint file")
