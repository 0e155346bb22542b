"""End to end on a tiny synthetic set: kernelight train gvgen (checkpoints, resume, held-out objects
never trained on), engine.generate / kernelight generate (the .ply, bad input) and the viewer's
prompt box logic."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import synth  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


OPTS = {"text_encoder": "stub", "channels": 8, "batch_objects": 2, "ddim_steps": 4, "eval_every": 0,
        "eval_views": 1, "checkpoint_every": 2, "log_every": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    synth.install_stub_encoder()
    from engine.api import train   # (engine.train is the engine/train package once the trainer was imported)

    root = synth.make_set(tmp_path_factory.mktemp("set"), missing=("sphere-blue",))
    torch.set_num_threads(1)
    run = train({"method": "gvgen", "data": root, "output": tmp_path_factory.mktemp("runs"), "progress": False,
                        "quiet": True, "options": {**OPTS, "max_steps": 3}})
    return root, Path(run)


def test_dataset_reader_splits_objects(trained):
    from engine.data import load_dataset

    root, _ = trained
    ds = load_dataset(root)
    assert ds.format == "gvgen"
    tr, te = ds.splits["train"], ds.splits["test"]
    train_ids = [o["id"] for o in tr.cameras.gvgen["objects"]]
    assert train_ids == ["sphere-red", "box-red"]                   # box-blue held out, sphere-blue unfinished
    assert [o["id"] for o in te.cameras.gvgen["objects"]] == ["box-blue"]
    assert len(tr) == 4 and len(te) == 1
    assert tr.cameras.gvgen["view_object"].tolist() == [0, 0, 1, 1]
    assert ds.metadata["gvgen"]["missing"] == ["sphere-blue"]


def test_training_run_checkpoints_resumes_and_never_sees_heldout(trained):
    import json

    from engine.api import train
    from engine.io.checkpoint import load_checkpoint

    root, run = trained
    ck = sorted((run / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in ck] == ["step-000002.pt", "step-000003.pt"]
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"diffusion_loss", "attribute_loss", "render_loss"} <= set(recs[0])
    assert any("test_psnr" in r for r in recs)                       # held-out generation evaluated
    model = load_checkpoint(ck[-1])["model"]
    meta = model["meta"]
    assert meta["N"] == 8 and "blue box" not in " ".join(meta["train_captions"])
    assert meta["heldout_captions"] == ["a blue box"]
    assert set(meta["vocabulary"]) == {"a", "red", "sphere", "box", "in"}
    before = {k: v.clone() for k, v in model["stage1"].items()}
    train({"method": "gvgen", "data": root, "run_dir": run, "progress": False, "quiet": True,
                  "options": {**OPTS, "max_steps": 4}})
    after = load_checkpoint(sorted((run / "checkpoints").glob("step-*.pt"))[-1])
    assert after["step"] == 4
    assert any(not torch.equal(before[k], after["model"]["stage1"][k]) for k in before)


def test_generate_api_ply_and_render(trained, tmp_path):
    import engine
    from engine.io.ply import read_gaussian_ply

    _, run = trained
    g = engine.generate("a purple box", seed=1, model=run, out=tmp_path / "g.ply")
    assert g.unknown_words == ["purple"]
    assert g.grid.shape == (8, 8, 8, 14) and g.gdf.shape == (8, 8, 8)
    assert float(g.gdf.min()) >= 0 and float(g.gdf.max()) <= 0.15 + 1e-6
    again = engine.generate("a purple box", seed=1, model=run)
    assert torch.equal(again.grid, g.grid)                          # same seed, same object
    other = engine.generate("a purple box", seed=2, model=run)
    assert not torch.equal(other.grid, g.grid)
    ply = read_gaussian_ply(tmp_path / "g.ply")
    assert len(ply) == g.num_primitives
    m = engine.load(tmp_path / "g.ply")                             # a standard 3DGS file the engine reads back
    assert m.num_primitives == g.num_primitives
    # the compact generator file (how the shipped weights are made) generates the same object
    comp = engine.load(run).export("generator", tmp_path / "gen.pt")[0]
    assert comp.stat().st_size < (run / "checkpoints" / "step-000003.pt").stat().st_size / 2
    g16 = engine.generate("a purple box", seed=1, model=comp)
    assert g16.generator.run_dir is None
    assert torch.allclose(g16.grid, g.grid, atol=0.05) and torch.allclose(g16.gdf, g.gdf, atol=0.01)
    from engine.generate import turntable_cameras

    cams = turntable_cameras(g.bounds(), frames=2, size=16)
    out = engine.render(g, cams, 1, background=(1.0, 1.0, 1.0))
    assert out["rgb"].shape == (16, 16, 3)


def _cli(args):
    from engine.cli import main

    return main(args)


def test_generate_command_and_bad_input(trained, tmp_path, capsys):
    _, run = trained
    out = tmp_path / "t.ply"
    assert _cli(["generate", "a red sphere", "--model", str(run), "--out", str(out), "--seed", "3",
                 "--video", str(tmp_path / "t.gif"), "--frames", "2", "--size", "16"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and (tmp_path / "t.gif").is_file() and "note:" not in text
    assert _cli(["generate", "a shiny red sphere", "--model", str(run), "--out", str(out)]) == 0
    assert "'shiny'" in capsys.readouterr().out
    for bad, msg in ((["   "], "empty"), (["x" * 500], "characters long"), (["a red\x00box"], "control"),
                     (["a red box", "--grid-size", "16"], "makes 8^3"),
                     (["a red box", "--out", str(tmp_path / "x.txt")], "must end in .ply")):
        assert _cli(["generate", *bad, "--model", str(run)]) == 2, bad
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (bad, err)


def test_generate_refuses_a_run_of_another_method(tmp_path, capsys):
    from engine.io.checkpoint import save_checkpoint

    ck = tmp_path / "run" / "checkpoints" / "step-000001.pt"
    ck.parent.mkdir(parents=True)
    save_checkpoint(ck, {"model": {"grid_size": 8}}, method="gvolume", step=1)
    assert _cli(["generate", "a red box", "--model", str(tmp_path / "run")]) == 2
    assert "a gvolume run, not a gvgen generator" in capsys.readouterr().err
    assert _cli(["generate", "a red box", "--model", str(tmp_path / "nothing")]) == 2


def test_viewer_prompt_box_logic(trained):
    import engine
    from viewer.generate_panel import GeneratePanel
    from viewer.scene import MethodScene

    _, run = trained
    method = engine.load(run)
    scene = MethodScene(method, name="gen")
    refreshed = []
    panel = GeneratePanel(None, scene, on_change=lambda: refreshed.append(1))
    gen = panel.generate("a  red box ", seed=2)
    assert gen["caption"] == "a red box" and method.cfg.caption == "a red box" and method.cfg.gen_seed == 2
    assert refreshed == [1] and "a red box" in panel.status
    cam = engine.camera(eye=(2, -2, 1), target=(0, 0, 0), width=12, height=10)
    shown = scene.render(cam, torch.ones(3))["rgb"]                  # what the render panel draws now
    ref = method._render_grid(gen["grid"], cam, 0, torch.ones(3))["rgb"]
    assert torch.allclose(shown, ref)
    assert panel.generate("", seed=0) is None and "empty" in panel.status and refreshed == [1]
    panel.generate("a teal box", seed=0)
    assert "teal" in panel.status and panel.history[-1]["unknown_words"] == ["teal"]
    t = panel.start("a red sphere", 1)
    t.join(60)
    assert method.cfg.caption == "a red sphere"


def test_training_refuses_another_n_and_a_scene_that_is_not_a_set(trained, tmp_path):
    from engine.api import train
    from engine.errors import ConfigError

    root, _ = trained
    with pytest.raises(ConfigError, match="volumes are 8\\^3"):
        train({"method": "gvgen", "data": root, "output": tmp_path, "progress": False, "quiet": True,
               "options": {**OPTS, "grid_size": 16, "max_steps": 1}})
    scene = root / "objects" / "box-red"            # a Blender scene, not a training set
    with pytest.raises(ConfigError, match="trains on a GVGEN training set"):
        train({"method": "gvgen", "data": scene, "output": tmp_path, "progress": False, "quiet": True,
               "options": {**OPTS, "max_steps": 1}})
