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


def test_bad_numbers_are_refused_before_any_folder_is_made(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "raygauss", "--data", str(REPO / "scenes" / "mic" / "mic_100"), "--max-steps", "-5",
                 "--output", str(out)]) == 2
    assert "option max_steps must be >= 1, got -5" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", "raygauss", "--data", str(REPO / "scenes" / "mic" / "mic_100"), "--background", "purple",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "background 'purple': expected white, black, gray or R,G,B" in err and "()" not in err
    assert not out.exists()


def test_unexpected_errors_are_one_line_unless_debug(monkeypatch, capsys):
    from engine.commands import info

    def boom(args):
        raise ZeroDivisionError("the divisor was zero")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("kernelight info: internal error: ZeroDivisionError: the divisor was zero; "
                           "rerun with --debug for the traceback")
    assert main(["info", "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("KERNELIGHT_DEBUG", "1")
    assert main(["info"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_render_and_eval_help_list_render_options_only(capsys):
    for cmd in ("render", "eval", "view"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "--dt" in out and "--render-mode" in out and "--shell-probe-step" in out
        assert "--lr-means-init" not in out and "--densify-every" not in out and "--hash-levels" not in out
        # the render-time options of all five methods (pointfield and gvgen added 11 in session 9)
        # plus the command's own: every training option in the help would be over 300 lines
        assert len(out.splitlines()) < 170, (cmd, len(out.splitlines()))
        assert "--lr-network" not in out and "--max-steps" not in out


def test_view_help_examples_parse():
    """Every `kernelight ...` example line in view --help / render --help parses."""
    import shlex

    parser = build_parser()
    for cmd in ("view", "render", "train"):
        sub = parser._subparsers._group_actions[0].choices[cmd]
        for line in (sub.epilog or "").splitlines():
            line = line.strip()
            if line.startswith("kernelight "):
                parser.parse_args(shlex.split(line)[1:])     # SystemExit(2) on a bad example


def test_python_api_is_discoverable():
    import pydoc

    import engine

    names = dir(engine)
    for n in ("load", "render", "camera", "train", "load_dataset", "methods", "Cameras", "look_at"):
        assert n in names
    text = pydoc.render_doc(engine)
    assert "engine.load(path)" in text and "engine.camera(" in text and "engine.render(model" in text
    cam = engine.camera(eye=(0, -4, 0), target=(0, 0, 0), up=(0, 0, 1), width=32, height=24, fov_deg=60)
    assert len(cam) == 1 and int(cam.width[0]) == 32 and int(cam.height[0]) == 24
    o, d = cam.generate_rays(0)
    import torch

    assert torch.allclose(d[12, 16], torch.tensor([0.0, 1.0, 0.0]), atol=0.05)   # the centre looks at the target
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="fov_deg"):
        engine.camera((0, 0, 0), (0, 0, 1), fov_deg=180)


def test_one_scene_toml_schema_for_every_command(tmp_path, capsys):
    """`kernelight dataset scene.toml` reads the same [scene] schema as `kernelight train scene.toml`
    (format / background / downscale included)."""
    assert main(["dataset", str(REPO / "scenes" / "mic.toml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] > 0
    sc = tmp_path / "mic_small.toml"
    sc.write_text(f'[scene]\ndata = "{REPO / "scenes" / "mic" / "mic_100"}"\ndownscale = 4\nbackground = "black"\n')
    assert main(["dataset", str(sc), "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["resolutions"] == ["25x25"] and small["background"] == [0.0, 0.0, 0.0]
    assert summary["resolutions"] == ["100x100"] and summary["background"] == [1.0, 1.0, 1.0]
    old = tmp_path / "old.toml"
    old.write_text('data = "somewhere"\n')            # the other schema a reader once accepted
    assert main(["dataset", str(old)]) == 2
    assert "missing [scene] table" in capsys.readouterr().err


def test_train_method_help_lists_that_methods_options_only(capsys):
    with pytest.raises(SystemExit):
        main(["train", "shells", "--help"])
    out = capsys.readouterr().out
    assert "--hash-levels" in out and "--eikonal-weight" in out and "--max-steps" in out and "--data" in out
    assert "--lr-means-init" not in out and "--guidance" not in out and "--densify-every" not in out
    from engine.commands import _common

    assert _common.HELP_METHOD is None     # reset as soon as that parser is built
    with pytest.raises(SystemExit):
        main(["train", "--help"])          # no method named: every method's options
    out = capsys.readouterr().out
    assert "--hash-levels" in out and "--lr-means-init" in out and "--guidance" in out
    # the filter is for help output only: parsing afterwards still knows every method's flags
    build_parser().parse_args(["train", "raygauss", "--lr-means-init", "1e-4", "--data", "x"])
