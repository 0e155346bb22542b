"""kernelight engine: the public Python API.

>>> import engine
>>> engine.__version__
'0.1.0'

Heavy submodules (torch, taichi, open3d) are imported lazily, so ``import engine`` is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
