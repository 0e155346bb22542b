"""End-to-end RayGauss training on the bundled mic scene, tiny settings: loss goes down, the run
folder is complete, resume / Ctrl-C / NaN behave, and render / eval / export / engine.load work."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.methods.raygauss.method import RayGaussMethod
from engine.train.trainer import Trainer, TrainSettings, TrainingError

REPO = Path(__file__).resolve().parents[3]
MIC = REPO / "scenes" / "mic" / "mic_100"
TINY = {"init_points": 400, "eval_every": 0, "log_every": 1, "checkpoint_every": 5, "sh_degree": 1,
        "sg_lobes": 2, "sh_unlock_steps": [3], "sg_unlock_step": 4, "densify_from": 4, "densify_every": 4,
        "densify_until": 8, "dt": 0.01}


def _settings(tmp_path, **opts):
    return TrainSettings(method=RayGaussMethod, data=MIC, output=tmp_path / "out", scene_name="mic", downscale=4,
                         options={**TINY, **opts}, progress=False, quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rg")
    tr = Trainer(_settings(tmp, max_steps=10))
    run = tr.train()
    return run


def test_run_folder_complete(trained):
    assert (trained / "config.toml").is_file()
    cks = sorted((trained / "checkpoints").glob("step-*.pt"))
    assert [c.name for c in cks] == ["step-000005.pt", "step-000010.pt"]
    recs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps[:3] == [1, 2, 3] and recs[-1].get("final") and "test_psnr" in recs[-1]
    assert any("cloned" in r for r in recs)  # densification ran (step 4 / 8)


def test_loss_decreases(tmp_path):
    tr = Trainer(_settings(tmp_path, max_steps=40, checkpoint_every=0, densify_until=0))
    tr.train()
    recs = [json.loads(line) for line in (tr.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    first = np.mean([r["loss"] for r in recs[:5]])
    last = np.mean([r["loss"] for r in recs[-5:]])
    assert last < 0.8 * first, (first, last)


def test_resume_continues(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    s = _settings(tmp_path, max_steps=12)
    s.run_dir = run
    tr = Trainer(s)
    assert tr.step == 10 and "resumed" in tr.notes[0]
    tr.train()
    assert (run / "checkpoints" / "step-000012.pt").is_file()


def test_ctrl_c_saves_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(_settings(tmp_path, max_steps=50, checkpoint_every=0))
    orig = tr.method.train_step

    def boom(step, *a, **k):
        if step == 3:
            raise KeyboardInterrupt
        return orig(step, *a, **k)

    monkeypatch.setattr(tr.method, "train_step", boom)
    run = tr.train()
    assert (run / "checkpoints" / "step-000003.pt").is_file()


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(_settings(tmp_path, max_steps=50, checkpoint_every=2))
    orig = tr.method.train_step

    def nan_at_5(step, *a, **k):
        loss, stats, pred = orig(step, *a, **k)
        return (loss * float("nan") if step == 5 else loss), stats, pred

    monkeypatch.setattr(tr.method, "train_step", nan_at_5)
    with pytest.raises(TrainingError, match=r"at step 5.*step-000004\.pt"):
        tr.train()
    assert (tr.run_dir / "checkpoints" / "step-000004.pt").is_file()


def test_random_init_without_points(shared_data, tmp_path):
    # fox: no points and no alpha -> random init in the box, and the note says so
    s = TrainSettings(method=RayGaussMethod, data=shared_data / "real" / "fox_quarter", output=tmp_path,
                      downscale=8, options={**TINY, "max_steps": 1, "init_random_points": 300}, progress=False,
                      quiet=True)
    tr = Trainer(s)
    assert "no points" in tr.notes[0] and "random" in tr.notes[0] and tr.method.num_primitives == 300
    # lego has alpha: auto picks the visual hull; asking for dataset points is a clear error
    lego = shared_data / "nerf_synthetic" / "lego_100"
    tr = Trainer(TrainSettings(method=RayGaussMethod, data=lego, output=tmp_path, downscale=4,
                               options={**TINY, "max_steps": 1}, progress=False, quiet=True))
    assert "visual hull" in tr.notes[0]
    with pytest.raises(ConfigError, match="no points"):
        Trainer(TrainSettings(method=RayGaussMethod, data=lego, output=tmp_path, downscale=4,
                              options={**TINY, "max_steps": 1, "init": "points"}, progress=False, quiet=True))


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'max_stepz'"):
        Trainer(_settings(tmp_path, max_stepz=3))


def test_cli_render_eval_export_and_api(trained, tmp_path, monkeypatch):
    import engine
    from engine import api
    from engine.cli import main

    assert main(["render", str(trained), "--max-views", "2", "--depth", "--alpha", "--frames", "3",
                 "--video", "t.gif", "--out", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r" / "test").glob("*.png"))) == 6 and (tmp_path / "r" / "t.gif").is_file()
    assert main(["eval", str(trained), "--max-views", "3", "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    for key in ("psnr", "psnr_std", "ssim", "ssim_std", "lpips", "rays_per_sec", "fps", "num_gaussians"):
        assert key in ev
    assert ev["num_views"] == 3 and 5 < ev["psnr"] < 60 and ev["options"] == {}
    m0 = engine.load(trained)
    assert m0.cfg.dt != 0.02 and m0.cfg.t_stop != 0.05
    # method options override the run's config at render time (recorded); another method's are refused
    loaded = []
    real_load = api.load
    monkeypatch.setattr(api, "load", lambda path, **kw: loaded.append(real_load(path, **kw)) or loaded[-1])
    assert main(["eval", str(trained), "--max-views", "1", "--dt", "0.02", "--out", str(tmp_path / "e2.json")]) == 0
    assert main(["render", str(trained), "--max-views", "1", "--video", "none", "--t-stop", "0.05",
                 "--out", str(tmp_path / "r2")]) == 0
    assert [m.cfg.dt for m in loaded] == [0.02, m0.cfg.dt] and [m.cfg.t_stop for m in loaded][1] == 0.05
    assert json.loads((tmp_path / "e2.json").read_text())["options"] == {"dt": 0.02}
    monkeypatch.setattr(api, "load", real_load)
    assert main(["eval", str(trained), "--shell-step", "0.1", "--out", str(tmp_path / "e3.json")]) == 2
    assert not (tmp_path / "e3.json").exists()
    assert main(["export", str(trained), "--out", str(tmp_path / "g.ply")]) == 0
    m = engine.load(trained)
    ply_model = engine.load(tmp_path / "g.ply")
    assert ply_model.num_primitives == m.num_primitives and ply_model.model.mode == "opacity"
    ds = engine.load_dataset(MIC, downscale=4)
    out = engine.render(m, ds.splits["test"].cameras, 0, background=(1, 1, 1))
    assert out["rgb"].shape == (25, 25, 3) and out["alpha"].shape == (25, 25)
    assert torch.isfinite(out["depth"]).all()
    # the exported 3DGS file renders too
    out2 = engine.render(ply_model, ds.splits["test"].cameras, 0, background=(1, 1, 1))
    assert out2["rgb"].shape == (25, 25, 3)


def test_masked_data_fits_the_object_only_and_resume_keeps_it(shared_data, tmp_path):
    """On DTU (masks) RayGauss fits the photo inside the mask and the background outside it, as its
    evaluation does (masked_eval); a resumed run binds the masks again; --mask-background false
    fits whole photos."""
    from engine.train.trainer import eval_target

    dtu = shared_data / "dtu" / "scan24_400"
    opts = {**TINY, "max_steps": 1, "checkpoint_every": 1, "init_points": 200}
    tr = Trainer(TrainSettings(method=RayGaussMethod, data=dtu, output=tmp_path, downscale=8, options=opts,
                               progress=False, quiet=True))
    m, split = tr.method, tr.dataset.splits["train"]
    assert m.masked_eval and m.train_masks is not None and any("masks" in n for n in tr.notes)
    bg = torch.as_tensor(tr.background, dtype=torch.float32)
    img = split.images[2]
    loss, stats, pred = m.train_step(0, img, split.cameras, 2, bg)
    target = eval_target(m, split, 2, bg)
    assert not torch.equal(target, img)                      # the photo has a background to remove
    psnr = lambda a, b: float(-10 * torch.log10(((a.detach() - b) ** 2).mean()))
    assert stats["psnr"] == pytest.approx(psnr(pred, target), abs=1e-4)
    assert abs(stats["psnr"] - psnr(pred, img)) > 0.1
    run = tr.train()
    s = TrainSettings(method=RayGaussMethod, data=dtu, output=tmp_path, downscale=8,
                      options={**opts, "max_steps": 2}, progress=False, quiet=True, run_dir=run)
    assert Trainer(s).method.train_masks is not None
    off = Trainer(TrainSettings(method=RayGaussMethod, data=dtu, output=tmp_path, downscale=8,
                                options={**opts, "mask_background": False}, progress=False, quiet=True))
    assert not off.method.masked_eval and off.method.train_masks is None
    _, st_off, pred_off = off.method.train_step(0, img, split.cameras, 2, bg)
    assert st_off["psnr"] == pytest.approx(psnr(pred_off, img), abs=1e-4)
