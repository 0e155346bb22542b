"""kernelight shaders: Taichi kernels only, each with a pure-torch reference of the same math.

This package never imports ``engine`` or ``viewer``. Every kernel entry point goes through
:mod:`shaders.runtime`, which initialises Taichi exactly once and serialises calls that come
from other threads.
"""
from .runtime import init, arch_name, torch_device, runtime_lock, call, contiguous  # noqa: F401
