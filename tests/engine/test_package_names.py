"""``engine.train`` and ``engine.render`` name both an API function and a subpackage: after the
subpackage is imported, the name must still call the API function."""
import importlib

import engine
import engine.api as api


def test_train_and_render_stay_callable_after_their_packages_load(monkeypatch):
    importlib.import_module("engine.train.trainer")
    importlib.import_module("engine.render.volume")
    calls = []
    monkeypatch.setattr(api, "train", lambda config, **o: calls.append(("train", config, o)) or "run")
    monkeypatch.setattr(api, "render", lambda m, c, i=0, background=None: calls.append(("render", m, c, i)) or {})
    assert engine.train("scene.toml", max_steps=3) == "run"
    assert engine.render("model", "cams", 2) == {}
    assert calls == [("train", "scene.toml", {"max_steps": 3}), ("render", "model", "cams", 2)]
