"""Crash-safe runs: SIGKILL then --resume, a checkpoint write that fails halfway, NaN parameters."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.io.checkpoint import load_checkpoint
from engine.methods.raygauss.method import RayGaussMethod
from engine.train.trainer import Trainer, TrainingError, TrainSettings

REPO = Path(__file__).resolve().parents[3]
MIC = REPO / "scenes" / "mic" / "mic_100"
TINY = {"init_points": 300, "eval_every": 0, "log_every": 1, "checkpoint_every": 2, "sh_degree": 1,
        "sg_lobes": 2, "sh_unlock_steps": [2], "sg_unlock_step": 1000, "densify_from": 1000, "dt": 0.02}


def _settings(tmp_path, hooks=(), **opts):
    return TrainSettings(method=RayGaussMethod, data=MIC, output=tmp_path / "out", scene_name="mic", downscale=4,
                         options={**TINY, **opts}, progress=False, quiet=True, hooks=list(hooks))


class _Inject:
    """A training hook that writes NaN into one parameter before step ``at``."""

    def __init__(self, at: int, name: str):
        self.at, self.name = at, name

    def on_start(self, tr):
        pass

    def before_step(self, tr):
        if tr.step == self.at:
            with torch.no_grad():
                getattr(tr.method.model, self.name).data[0] = float("nan")

    def after_step(self, tr, loss, stats):
        pass

    def on_end(self, tr):
        pass


@pytest.mark.parametrize("name,why", [("means", r"non-finite \(NaN/Inf in means\)"),
                                      ("sg_amp", r"non-finite \(NaN/Inf in sg_amp\)")])
def test_nan_parameters_stop_with_the_step_named(tmp_path, name, why):
    # sg_amp: the lobes are not unlocked yet, so the loss stays finite: only the parameter check sees it
    tr = Trainer(_settings(tmp_path, hooks=[_Inject(3, name)], max_steps=8))
    with pytest.raises(TrainingError, match=why + r".* at step 3.*Last good checkpoint: .*step-000002\.pt"):
        tr.train()
    assert load_checkpoint(tr.run_dir / "checkpoints" / "step-000002.pt")["step"] == 2
    assert not (tr.run_dir / "checkpoints" / "step-000004.pt").exists()


def test_finite_check_fast_path_and_its_fallback(tmp_path):
    """The parameter check sums first (any NaN/Inf makes the sum non-finite) and confirms element by
    element only then: huge finite values whose sum overflows pass, one Inf or NaN is caught."""
    tr = Trainer(_settings(tmp_path, max_steps=1))
    big = [torch.full((4,), 3e38), torch.zeros(2)]            # the float32 sum overflows to inf
    tr._check_finite(big)
    for bad in (float("inf"), float("-inf"), float("nan")):
        p = torch.zeros(5)
        p[2] = bad
        with pytest.raises(TrainingError, match="non-finite"):
            tr._check_finite([torch.ones(3), p])
    tr._check_finite([])


def test_a_checkpoint_write_failing_halfway_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    import engine.io.checkpoint as ck
    from engine.cli import main

    real_save = ck.torch.save
    calls = []

    def disk_full(obj, f, *a, **k):
        calls.append(int(obj["step"]))
        if obj["step"] == 4:
            import io

            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            with open(f, "wb") as fh:                       # half the bytes reach the disk, then ENOSPC
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", disk_full)
    out = tmp_path / "out"
    args = ["train", "raygauss", "--data", str(MIC), "--downscale", "4", "--output", str(out), "--no-progress",
            "--max-steps", "6"] + [f"--{k.replace('_', '-')}={' '.join(map(str, v)) if isinstance(v, list) else v}"
                                    for k, v in TINY.items() if k != "sh_unlock_steps"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not write checkpoint" in err[0] and "at step 4 (No space left on device)" in err[0]
    assert "step-000002.pt" in err[0] and "--resume" in err[0]
    run = next(out.glob("mic_100/raygauss/*"))
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["step-000002.pt"], files                  # no half-written file, no temp file left
    assert load_checkpoint(run / "checkpoints" / "step-000002.pt")["step"] == 2
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert load_checkpoint(run / "checkpoints" / "step-000006.pt")["step"] == 6


@pytest.mark.timeout(300)
def test_sigkill_then_resume_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "sh_unlock_steps"]
    cmd = [sys.executable, "-m", "engine.cli", "train", "raygauss", "--data", str(MIC), "--downscale", "4",
           "--output", str(out), "--no-progress", "--max-steps", "400", *opts]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            cks = list(out.glob("mic_100/raygauss/*/checkpoints/step-*.pt"))
            if len(cks) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the training process wrote no checkpoints in 240 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    run = next(out.glob("mic_100/raygauss/*"))
    kept = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt"))
    newest = kept[-1]
    logged = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert max(logged) - newest < TINY["checkpoint_every"] + 2      # lost: at most the steps since the checkpoint
    tr = Trainer(TrainSettings(method=RayGaussMethod, data=MIC, output=out, downscale=4,
                               options={**TINY, "max_steps": newest + 4}, run_dir=run, progress=False, quiet=True))
    assert tr.step == newest                                         # resumed from the newest checkpoint
    tr.train()
    assert load_checkpoint(run / "checkpoints" / f"step-{newest + 4:06d}.pt")["step"] == newest + 4
