"""Exceptions of the engine. User-facing errors name the file or argument at fault."""
from __future__ import annotations


class KernelightError(ValueError):
    """Base class for errors caused by user input (a file, a flag, a config)."""


class DataError(KernelightError):
    """A dataset file is missing, unreadable or inconsistent. The message names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(KernelightError):
    """A config file or command-line option is invalid."""


class CheckpointError(KernelightError):
    """A checkpoint cannot be used (other method, other version, corrupt)."""
