"""Renderers shared by methods (a method package never imports another one; both import these).

* :mod:`engine.render.volume` -- a volume renderer for any field given as a callable: occupancy
  grid, ray marching, front-to-back compositing with early termination (Adaptive Shells uses it).
* :mod:`engine.render.gaussians` -- raw Gaussian tensors + a camera -> an image, through the tile
  or the BVH ray caster (RayGauss and imported 3DGS files use it).

Both return the rendering contract of :mod:`engine.methods.base`: ``rgb``, ``alpha``, ``depth``
(normalised by alpha), ``depth_sum`` and ``cost``.

This package shares its name with the API function ``engine.render(model, cameras, index)``
(DESIGN.md names both): the package is callable and a call is that function,
:func:`engine.api.render`, so ``engine.render(...)`` keeps working once the package is imported.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, model, camera, index: int = 0, background=None) -> dict:
        from ..api import render

        return render(model, camera, index, background=background)


sys.modules[__name__].__class__ = _CallablePackage
