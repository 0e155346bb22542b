"""Issue 18: any checkpoint load failure is one clear line (never torch's weights_only=False advice);
--resume falls back past a truncated newest checkpoint."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from engine.errors import CheckpointError
from engine.io.checkpoint import load_checkpoint, load_latest_valid, save_checkpoint
from tests.conftest import REPO


def _ck(folder, step, method="raygauss"):
    return save_checkpoint(folder / f"step-{step:06d}.pt", {"model": {"w": torch.arange(300.0) + step}},
                           method=method, step=step)


def _assert_clean(exc, path):
    msg = str(exc)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "weights_only" not in msg and "trust" not in msg.lower()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind,expect", [
    ("random", "not a kernelight checkpoint (not a PyTorch zip archive)"),
    ("empty", "empty file (0 bytes)"),
    ("pickle", "not a kernelight checkpoint (not a PyTorch zip archive)"),
    ("evil", "holds Python objects other than tensors"),
    ("zip", "a zip archive without PyTorch data"),
    ("list", "not a kernelight checkpoint (a PyTorch file without"),
    ("text", "not a kernelight checkpoint"),
])
def test_bad_files_give_one_line(tmp_path, kind, expect):
    p = tmp_path / "x.pt"
    if kind == "random":
        p.write_bytes(os.urandom(4096))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "pickle":
        p.write_bytes(pickle.dumps({"format": "kernelight-checkpoint"}))
    elif kind == "evil":
        torch.save({"format": "kernelight-checkpoint", "x": _Evil()}, p)
    elif kind == "zip":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("hello.txt", "hi")
    elif kind == "list":
        torch.save([torch.zeros(2)], p)
    else:
        p.write_text("step = 5\n")
    with pytest.raises(CheckpointError, match=re.escape(expect)) as ei:
        load_checkpoint(p)
    _assert_clean(ei.value, p)


def test_truncations_and_flips(tmp_path):
    good = _ck(tmp_path, 1)
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    for cut in (1, 4, 100, len(data) // 2, len(data) - 30, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as ei:
            load_checkpoint(bad)
        _assert_clean(ei.value, bad)
        assert "truncated" in str(ei.value) or "not a kernelight" in str(ei.value)
    for pos in range(0, len(data), max(1, len(data) // 40)):   # single byte flips: load or one clean line
        b = bytearray(data)
        b[pos] ^= 0xFF
        bad.write_bytes(bytes(b))
        try:
            load_checkpoint(bad)
        except CheckpointError as exc:
            _assert_clean(exc, bad)


def test_resume_falls_back_past_truncated_newest(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    _ck(folder, 100)
    _ck(folder, 200)
    newest = _ck(folder, 300)
    newest.write_bytes(newest.read_bytes()[:-25])   # a crash while copying / a full disk
    with caplog.at_level("WARNING", logger="kernelight.checkpoint"):
        p, data = load_latest_valid(folder, method="raygauss")
    assert p.name == "step-000200.pt" and data["step"] == 200
    assert re.search(r"skipping unusable checkpoint .*step-000300\.pt: truncated or corrupt checkpoint", caplog.text)
    assert "resuming from step-000200.pt, the newest checkpoint that loads (skipped step-000300.pt)" in caplog.text
    # all damaged -> one clear error
    for q in folder.iterdir():
        q.write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints loads"):
        load_latest_valid(folder)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_latest_valid(tmp_path / "nothing")


def test_resume_other_method_is_an_error_not_a_fallback(tmp_path):
    _ck(tmp_path, 1, method="shells")
    with pytest.raises(CheckpointError, match="from method 'shells', not 'raygauss'"):
        load_latest_valid(tmp_path, method="raygauss")


@pytest.mark.parametrize("cmd", ["eval", "export"])
def test_cli_random_pt_exit_2(tmp_path, cmd):
    p = tmp_path / "random.pt"
    p.write_bytes(os.urandom(2048))
    r = subprocess.run([sys.executable, "-m", "engine.cli", cmd, str(p)], cwd=REPO, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "weights_only" not in r.stderr + r.stdout
    assert "not a kernelight checkpoint" in r.stderr and str(p) in r.stderr
