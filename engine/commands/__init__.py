"""Subcommands of the ``kernelight`` command.

Each module here defines ``register(subparsers)`` which adds one subcommand (its parser and a
``func(args) -> int`` default). Modules import only the standard library at module level, so
``kernelight --help`` stays fast; heavy imports happen inside the command function.
Modules are discovered automatically by :mod:`engine.cli`; a module whose name starts with an
underscore is a helper, not a command.
"""
