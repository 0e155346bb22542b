"""The kernelight command: help texts, info, and one-line errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_working_commands_only(capsys):
    parser = build_parser()
    text = parser.format_help()
    for cmd in ("info", "dataset", "train", "render", "eval", "export", "sh", "geodesic", "view"):
        assert cmd in text
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-steps" in out and "--preset" in out and "--resume" in out
    flat = " ".join(out.split())
    # method options are documented by their config comments; shared ones list each method's default
    assert "--shell-one-sample-max-len FLOAT one-sample rules only for band intervals" in flat
    assert "--t-stop FLOAT stop a ray when its transmittance falls below this (default: raygauss 0.003, shells 0.001)" \
        in flat


def test_info_json():
    r = subprocess.run([sys.executable, "-m", "engine.cli", "info", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout[r.stdout.index("{"):])
    import torch

    assert info["taichi_arch"] in ("cpu", "cuda") and info["torch"] == torch.__version__


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "raygauss"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["train", "nosuchmethod", "--data", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["train", "raygauss", "--data", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "raygauss", "--data", str(tmp_path), "--preset", "turbo"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["render", str(tmp_path)]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[scene]\n")
    assert main(["train", str(bad)]) == 2
    assert "needs a 'data' key" in capsys.readouterr().err


def test_view_command_registered_lazily():
    # engine must not import viewer at module level (layer rule); the command imports it inside run()
    src = (REPO / "engine" / "commands" / "view.py").read_text()
    top = [line for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert not any("viewer" in line for line in top)
