"""The engine's door to the Taichi runtime for callers above it (the viewer): initialise it, its
lock, and the queue that runs kernel work on the Taichi thread.

The viewer never imports :mod:`shaders` (DESIGN.md: ``viewer -> engine -> shaders``); it uses these.
"""
from __future__ import annotations


def init() -> str:
    """Initialise Taichi once (arch from ``KERNELIGHT_ARCH``, default auto); returns the arch name."""
    from shaders import runtime

    return runtime.init()


def lock():
    """The lock every kernel call holds (viewer renders never interleave with a training step)."""
    from shaders import runtime

    return runtime.runtime_lock


def queue():
    """The process's :class:`shaders.thread_queue.TaichiQueue`: jobs from viewer threads run on the
    thread that initialised Taichi (its LLVM backend compiles kernels on that thread only)."""
    from shaders.thread_queue import default_queue

    return default_queue()

