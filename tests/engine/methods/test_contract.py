"""The method contract's proof: a representation defined only in this file (a tiny MLP NeRF on the
shared volume renderer) is registered through the registry and then trained, evaluated, rendered,
exported and viewed through the same doors as the built-in methods, with no file outside this test
touched. Keep it: if a command starts naming a method, this test breaks."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import methods
from engine.methods.base import Method, MethodConfig, check_render_output, option
from engine.render.volume import render_rays

REPO = Path(__file__).resolve().parents[3]
MIC = REPO / "scenes" / "mic" / "mic_100"


@dataclass
class TinyNerfConfig(MethodConfig):
    max_steps: int = option(6, "training steps")
    eval_every: int = option(0, "test PSNR every N steps")
    checkpoint_every: int = option(3, "checkpoint every N steps")
    log_every: int = option(1, "metrics every N steps")
    rays_per_batch: int = option(64, "random rays per step")
    hidden: int = option(32, "hidden units of the MLP")
    lr: float = option(5e-3, "Adam learning rate")
    step: float = option(0.05, "ray-marching step (scene units)", render=True)


class TinyNerf(Method):
    """A NeRF in 40 lines: positional encoding -> MLP -> (density, rgb), composited by
    :func:`engine.render.volume.render_rays` inside the dataset's scene box."""

    name = "tinynerf"
    config_cls = TinyNerfConfig
    batch_mode = "rays"
    export_formats = {"npz": "the MLP weights and the box as a .npz"}

    def __init__(self, cfg, box, net=None):
        super().__init__(cfg)
        self.box = torch.as_tensor(box, dtype=torch.float32)
        torch.manual_seed(cfg.seed)
        self.net = net or torch.nn.Sequential(torch.nn.Linear(27, cfg.hidden), torch.nn.ReLU(),
                                              torch.nn.Linear(cfg.hidden, 4))

    @classmethod
    def create(cls, cfg, dataset):
        return cls(cfg, dataset.scene_box)

    def _field(self, x, dirs, delta, ray, col):
        u = (x - self.box[0]) / (self.box[1] - self.box[0]) * 2 - 1
        enc = torch.cat([u] + [f(2.0 ** k * u) for k in range(4) for f in (torch.sin, torch.cos)], -1)
        h = self.net(enc)
        sigma = torch.nn.functional.softplus(h[:, 0])
        return {"alpha": 1 - torch.exp(-sigma * delta), "rgb": torch.sigmoid(h[:, 1:])}

    def _render_rays(self, o, d, background):
        return render_rays(self._field, o, d, box=self.box, step=self.cfg.step, max_samples=256,
                           background=background)

    def make_optimizer(self):
        return torch.optim.Adam([{"name": "net", "params": list(self.net.parameters()), "lr": self.cfg.lr}])

    def train_step_rays(self, step, batch, background):
        out = self._render_rays(batch.origins, batch.directions, background)
        mse = ((out["rgb"] - batch.rgb) ** 2).mean()
        return mse, {"psnr": float(-10 * torch.log10(mse.detach().clamp_min(1e-10)))}

    @torch.no_grad()
    def render(self, cameras, index, background=None):
        o, d = cameras.generate_rays(index)
        H, W = o.shape[:2]
        out = self._render_rays(o.reshape(-1, 3), d.reshape(-1, 3), background)
        res = {k: out[k].reshape(H, W) for k in ("alpha", "depth", "depth_sum", "cost")}
        res["rgb"] = out["rgb"].reshape(H, W, 3)
        return res

    @property
    def num_primitives(self):
        return sum(p.numel() for p in self.net.parameters())

    def progress_label(self):
        return f"MLP {self.num_primitives} weights"

    def bounds(self):
        return self.box.clone()

    def export(self, format, out):
        if format != "npz":
            return super().export(format, out)
        out = Path(out).with_suffix(".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, box=self.box.numpy(), **{k.replace(".", "_"): v.numpy() for k, v in self.net.state_dict().items()})
        return [out]

    def state_dict(self):
        return {"net": {k: v.clone() for k, v in self.net.state_dict().items()}, "box": self.box.clone()}

    @classmethod
    def from_state_dict(cls, cfg, st):
        m = cls(cfg, st["box"])
        m.net.load_state_dict(st["net"])
        return m


@pytest.fixture
def registered():
    methods.register(methods.MethodSpec(name="tinynerf", method=TinyNerf, config=TinyNerfConfig,
                                        description="a tiny MLP NeRF defined in a test",
                                        presets={"fast": {"hidden": 16}}, export_formats=TinyNerf.export_formats))
    yield
    methods.unregister("tinynerf")


def test_a_method_defined_in_a_test_goes_through_every_door(registered, tmp_path, capsys):
    import engine
    from engine.cli import main
    from viewer.render_panel import RenderSettings, colorize
    from viewer.scene import open_source

    assert "tinynerf" in engine.methods.available()
    # train (the CLI builds its flags from the registry: --hidden, --step exist now)
    assert main(["train", "tinynerf", "--data", str(MIC), "--downscale", "4", "--output", str(tmp_path / "out"),
                 "--preset", "fast", "--lr", "0.01", "--no-progress"]) == 0
    run = next((tmp_path / "out").glob("*/tinynerf/*"))
    assert (run / "config.toml").is_file() and sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == \
        ["step-000003.pt", "step-000006.pt"]
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r][:6] == [1, 2, 3, 4, 5, 6]
    # resume continues from the newest checkpoint
    assert main(["train", "--resume", str(run), "--max-steps", "8", "--no-progress"]) == 0
    # load through the API: config from the run (preset + flag), state from the checkpoint
    m = engine.load(run)
    assert isinstance(m, TinyNerf) and m.step == 8 and m.cfg.hidden == 16 and m.cfg.lr == 0.01
    assert "tinynerf" in repr(m) and "MLP" in repr(m)
    ds = engine.load_dataset(MIC, downscale=4)
    out = check_render_output(engine.render(m, ds.splits["test"].cameras, 0), 25, 25)
    assert float(out["cost"].max()) > 0
    # eval, render (with a render-time override), export
    assert main(["eval", str(run), "--max-views", "2", "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["num_views"] == 2 and ev["num_primitives"] == m.num_primitives and 0 < ev["psnr"] < 60
    assert main(["render", str(run), "--max-views", "1", "--video", "none", "--step", "0.1",
                 "--out", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r" / "test").glob("*.png"))) == 1
    assert main(["export", str(run), "--format", "npz", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w.npz").is_file()
    assert main(["export", str(run), "--format", "ply"]) == 2          # not a format this method declares
    assert "exports npz, not --format ply" in capsys.readouterr().err
    # the viewer's render logic
    scene = open_source(run)
    assert scene.num_primitives == m.num_primitives and np.isfinite(scene.radius)
    from engine.camera_paths import look_at
    from engine.cameras import Cameras

    eye = scene.center + 3 * scene.radius * np.array([0.0, -1.0, 0.3])
    cam = Cameras(20.0, 20.0, 8.0, 8.0, 16, 16, look_at(eye, scene.center, scene.up)[None])
    frame = scene.render(cam, torch.zeros(3))
    for mode in ("RGB", "Depth", "Alpha", "Samples"):
        img = colorize(frame, RenderSettings(mode=mode))
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    # kernelight info lists it
    from engine.commands.info import collect

    assert collect()["methods"]["tinynerf"]["export_formats"] == ["npz"]


def test_registry_refuses_what_it_cannot_serve(registered):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="already registered"):
        methods.register(methods.MethodSpec(name="tinynerf", method=TinyNerf, config=TinyNerfConfig))
    with pytest.raises(ConfigError, match="unknown method 'nerfacto'.*raygauss.*shells.*tinynerf"):
        methods.get("nerfacto")
    with pytest.raises(ConfigError, match="unknown preset 'slow' for tinynerf; available: fast"):
        methods.get_preset("tinynerf", "slow")
    with pytest.raises(ConfigError, match="unknown option 'hiden'"):
        methods.make_config("tinynerf", {"hiden": 3})
    with pytest.raises(ConfigError, match="option hidden: expected int, got 'many'"):
        methods.make_config("tinynerf", {"hidden": "many"})
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        methods.make_config("tinynerf", {"max_steps": -5})
    assert methods.make_config("tinynerf", {"max-steps": "7"}).max_steps == 7


def test_every_config_field_is_documented():
    """--help is generated from option() docs: every field of every registered config has one."""
    import dataclasses

    for spec in methods.specs():
        for f in dataclasses.fields(spec.config_class()):
            assert f.metadata.get("help"), f"{spec.name}.{f.name} has no help text"


def test_files_are_read_by_the_method_the_registry_names(tmp_path):
    from engine.errors import ConfigError

    import engine

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ConfigError, match="no method reads .txt files"):
        engine.load(txt)
    mesh = tmp_path / "tri.ply"
    mesh.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                    "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    assert methods.reader_for(mesh) is None           # a mesh, not 3DGS: no method claims it
