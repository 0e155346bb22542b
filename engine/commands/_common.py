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


def field_comments(cls) -> dict[str, str]:
    """The comment after each field of a config dataclass (and its ``#`` continuation lines), by name.

    The config modules document every field with a trailing comment; this turns them into ``--help``.
    """
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    last = None
    for line in lines:
        m = re.match(r"^\s+(\w+)\s*:\s*[^=#]+=[^#]*#\s?(.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
            continue
        c = re.match(r"^\s+#\s?(.*)$", line)
        if c and last is not None and not line.lstrip().startswith("# ----"):
            out[last] += " " + c.group(1).strip()
        else:
            last = None
    return out


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per field of every method config (default: not set), documented by
    the field's comment in the config module; a field several methods share lists each default."""
    import dataclasses

    fields: dict[str, list] = {}        # name -> [(method, field, note)], in order of first appearance
    for method in METHOD_CONFIGS:
        cls = config_class(method)
        notes = field_comments(cls)
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, []).append((method, f, notes.get(f.name, "")))
    groups = {m: parser.add_argument_group(f"{m} options (override the config / scene TOML)")
              for m in METHOD_CONFIGS}

    def show(v):
        return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)

    for name, entries in fields.items():
        method, f, note = entries[0]
        note = next((n for _, _, n in entries if n), "").replace("%", "%%")
        default = f.default
        if len(entries) == 1:
            shown = f"(default {show(default)})"
        else:
            shown = "(default: " + ", ".join(f"{m} {show(g.default)}" for m, g, _ in entries) + ")"
        text = f"{note} {shown}" if note else shown
        flag = "--" + name.replace("_", "-")
        group = groups[method]
        if isinstance(default, bool):
            group.add_argument(flag, dest=f"opt_{name}", type=_parse_bool, default=None, metavar="BOOL", help=text)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=f"opt_{name}", type=int, nargs="+", default=None, metavar="STEP",
                               help=text)
        else:
            group.add_argument(flag, dest=f"opt_{name}", type=type(default), default=None,
                               metavar=type(default).__name__.upper(), help=text)


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
