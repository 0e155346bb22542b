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
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an unexpected error (also KERNELIGHT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    return parser


def _build_parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; for ``kernelight train METHOD --help`` one whose help lists that method's options only
    (it is built for the help output alone: ``--help`` exits while parsing)."""
    from .commands import _common

    if len(argv) >= 2 and argv[0] == "train" and ("-h" in argv or "--help" in argv):
        from .methods import available

        names = [a for a in argv[1:] if a in available()]
        if names:
            _common.HELP_METHOD = names[0]
    try:
        return build_parser()
    finally:
        _common.HELP_METHOD = None


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Exit codes: 0 done, 2 a user error (one line naming the input), 1 an
    internal error (one line; ``--debug`` or ``KERNELIGHT_DEBUG=1`` shows the traceback), 130 Ctrl-C."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("KERNELIGHT_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    parser = _build_parser_for(argv)
    args = parser.parse_args(argv)
    args.argv = argv   # the command as given (kernelight train --nproc re-runs it under torchrun)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (KernelightError, FileNotFoundError) as exc:  # user errors: one clear line
        if debug:
            import traceback

            traceback.print_exc()
        print(f"kernelight {args.command}: error: {exc}", file=sys.stderr)
        if _is_console_entry():
            _exit_now_if_process_group_broken(exc)
        return 2
    except Exception as exc:  # the last net: a bug of ours, never a traceback by default
        if debug:
            import traceback

            traceback.print_exc()
        what = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        print(f"kernelight {args.command}: internal error: {what}; rerun with --debug for the traceback",
              file=sys.stderr)
        return 1


def _is_console_entry() -> bool:
    """Whether this process was started as the command (``kernelight`` or ``python -m engine.cli``),
    not a caller of :func:`main` inside a longer-lived process such as a test."""
    return bool(getattr(sys, "_kernelight_cli", False))


def _exit_now_if_process_group_broken(exc) -> None:
    """A rank that lost its peers exits at once (status 2) after its one-line message: tearing the
    broken gloo/NCCL process group down at interpreter exit aborts the process (SIGABRT,
    'terminate called without an active exception'), which would hide the message's exit code."""
    from .train.distributed import DistributedError

    if isinstance(exc, DistributedError):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)


def _exit_now_if_distributed(code: int) -> None:
    """A rank of a multi-process run (``WORLD_SIZE`` > 1) leaves without the interpreter's teardown
    once its command is done and its output flushed: everything it writes is written (atomically)
    by then, and tearing the gloo process group's threads down at interpreter exit aborted a rank
    now and then (SIGABRT, 'terminate called without an active exception': two fresh-clone CI runs
    of session 16, a different two-rank test each time, after both ranks had finished; not
    reproduced outside CI). Cost: Taichi's offline kernel cache is not written by such a process."""
    import os

    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def console_main() -> int:
    """The ``kernelight`` console script."""
    sys._kernelight_cli = True
    code = main()
    _exit_now_if_distributed(code)
    return code


if __name__ == "__main__":
    sys._kernelight_cli = True
    _code = main()
    _exit_now_if_distributed(_code)
    sys.exit(_code)
