"""Issue 18: --resume falls back past a truncated newest checkpoint (trainer -> load_latest_valid)."""
from __future__ import annotations

import pytest

from engine.errors import CheckpointError
from engine.methods.raygauss.method import RayGaussMethod
from engine.train.trainer import Trainer, TrainSettings
from tests.conftest import REPO

TINY = {"init_points": 100, "eval_every": 0, "log_every": 1, "checkpoint_every": 2, "sh_degree": 0, "sg_lobes": 0,
        "densify_until": 0, "dt": 0.02}


def _tiny_scene(root):
    """Two 8x8 views with the mic scene's first two cameras (decoding 400 mic images would dominate)."""
    import json

    from PIL import Image

    meta = json.loads((REPO / "scenes" / "mic" / "mic_100" / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:2]
    (root / "train").mkdir(parents=True)
    for fr in meta["frames"]:
        Image.new("RGBA", (8, 8), (200, 100, 50, 255)).save(root / (fr["file_path"] + ".png"))
    (root / "transforms_train.json").write_text(json.dumps(meta))
    return root


def _settings(tmp_path, **opts):
    data = tmp_path / "scene"
    if not data.exists():
        _tiny_scene(data)
    return TrainSettings(method=RayGaussMethod, data=data, output=tmp_path / "out", scene_name="tiny",
                         options={**TINY, **opts}, progress=False, quiet=True)


@pytest.mark.timeout(300)
def test_resume_skips_truncated_newest_checkpoint(tmp_path, caplog):
    tr0 = Trainer(_settings(tmp_path, max_steps=4))   # checkpoints without training steps: fast
    for step in (2, 4):
        tr0.step = step
        tr0.save()
    run = tr0.run_dir
    newest = run / "checkpoints" / "step-000004.pt"
    newest.write_bytes(newest.read_bytes()[:-40])   # a crash or a full disk while copying
    s = _settings(tmp_path, max_steps=6)
    s.run_dir = run
    with caplog.at_level("WARNING", logger="kernelight.checkpoint"):
        tr = Trainer(s)
    assert tr.step == 2 and "step-000002.pt" in tr.notes[0]
    assert "step-000004.pt: truncated or corrupt checkpoint" in caplog.text
    for p in (run / "checkpoints").glob("step-*.pt"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints loads"):
        Trainer(s)
