"""Training: the trainer (:mod:`engine.train.trainer`), densification, metrics, initial points and
data parallelism (:mod:`engine.train.distributed`).

This package shares its name with the API function ``engine.train(config, **overrides)``: once a
submodule such as ``engine.train.trainer`` is imported, Python binds ``engine.train`` to this
package, so the package is callable and a call is :func:`engine.api.train` (as ``engine.render``).
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, config, **overrides):
        from ..api import train

        return train(config, **overrides)


sys.modules[__name__].__class__ = _CallablePackage
