"""The runnable examples in the docstrings of the public modules (the shared renderers, the
registry, the API entry point) are run, so they cannot rot."""
import doctest
import importlib

import pytest

MODULES = ["engine", "engine.methods", "engine.render.volume", "engine.render.gaussians", "engine.config",
           "shaders.rotations"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.attempted > 0, f"{name} has no examples"
    assert res.failed == 0, f"{name}: {res.failed} of {res.attempted} examples failed (run python -m doctest -v)"
