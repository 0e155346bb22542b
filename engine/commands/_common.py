"""Helpers shared by the train/render/eval/export commands (not a command itself)."""
from __future__ import annotations

import argparse


# set by ``engine.cli.main`` for ``kernelight train METHOD --help``: the help then lists that method's options only
HELP_METHOD: str | None = None


def add_method_options(parser: argparse.ArgumentParser, render_only: bool = False) -> None:
    """One ``--field-name`` flag per field of every registered method's config (default: not set),
    its help the field's :func:`~engine.methods.base.option` documentation; a field several methods
    share lists each default. ``render_only``: only the fields marked ``render=True`` (the options
    ``render`` / ``eval`` / ``view`` accept). With :data:`HELP_METHOD` set (help output only), the
    flags of that one method."""
    import dataclasses

    from ..methods import specs

    fields: dict[str, list] = {}        # name -> [(method, field)], in order of first appearance
    for spec in specs():
        if HELP_METHOD is not None and spec.name != HELP_METHOD:
            continue
        cls = spec.config_class()
        for f in dataclasses.fields(cls):
            if render_only and not f.metadata.get("render"):
                continue
            fields.setdefault(f.name, []).append((spec.name, f))
    used = {m for entries in fields.values() for m, _ in entries}
    kind = "render-time overrides" if render_only else "override the config / scene TOML"
    groups = {spec.name: parser.add_argument_group(f"{spec.name} options ({kind})")
              for spec in specs() if spec.name in used}

    def show(v):
        return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)

    for name, entries in fields.items():
        method, f = entries[0]
        note = next((g.metadata.get("help", "") for _, g in entries if g.metadata.get("help")), "").replace("%", "%%")
        default = f.default
        if len(entries) == 1:
            shown = f"(default {show(default)})"
        else:
            shown = "(default: " + ", ".join(f"{m} {show(g.default)}" for m, g in entries) + ")"
        text = f"{note} {shown}" if note else shown
        flag = "--" + name.replace("_", "-")
        group = groups[method]
        choices = None
        if all(g.metadata.get("choices") for _, g in entries):   # a string field: the union of the choices
            choices = tuple(dict.fromkeys(c for _, g in entries for c in g.metadata["choices"]))
        if isinstance(default, bool):
            group.add_argument(flag, dest=f"opt_{name}", type=_parse_bool, default=None, metavar="BOOL", help=text)
        elif isinstance(default, tuple):
            group.add_argument(flag, dest=f"opt_{name}", type=type(default[0]) if default else int, nargs="+",
                               default=None, metavar="N", help=text)
        else:
            group.add_argument(flag, dest=f"opt_{name}", type=type(default), default=None, choices=choices,
                               metavar="|".join(choices) if choices else type(default).__name__.upper(), help=text)


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

