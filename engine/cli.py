"""The ``kernelight`` command line.

Subcommands live in :mod:`engine.commands` (one module each, discovered automatically).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import KernelightError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelight",
        description=(
            "kernelight: a 3D graphics and neural-rendering engine (Taichi kernels on CPU/CUDA, "
            "PyTorch for parameters). Run 'kernelight COMMAND --help' for the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kernelight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (KernelightError, FileNotFoundError) as exc:  # user errors: one clear line
        print(f"kernelight {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
