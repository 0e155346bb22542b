"""kernelight sh project: outputs, coefficient files, errors."""
import json

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.geometry import sh
from tests.conftest import require


def test_sh_project_writes_outputs(shared_data, tmp_path, capsys):
    src = require(shared_data / "sh" / "blender_world_cc0" / "studio.npy")
    out = tmp_path / "out"
    rc = main(["sh", "project", str(src), "--degree", "6", "--out", str(out), "--coeffs", str(tmp_path / "c.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SH coefficients" in printed and "relative L2 error" in printed
    img = sh.load_envmap(src)
    c = np.load(out / "coeffs.npy")
    assert c.shape == (49, 3)
    assert np.allclose(c, sh.project_envmap(img, 6).numpy(), atol=1e-12)
    recon = np.load(out / "reconstruction.npy")
    assert recon.shape == img.shape and recon.dtype == np.float32
    assert np.allclose(recon, sh.reconstruct_envmap(torch.as_tensor(c), 128, 256).numpy(), atol=1e-5)
    irr = np.load(out / "irradiance.npy")
    normals = sh.latlong_directions(128, 256)
    assert np.allclose(irr, sh.irradiance_sh9(torch.as_tensor(c[:9]), normals).numpy(), rtol=1e-5, atol=1e-5)
    for name in ("reconstruction.png", "irradiance.png"):
        import imageio.v3 as iio

        png = iio.imread(out / name)
        assert png.shape == (128, 256, 3) and png.dtype == np.uint8 and png.std() > 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["degree"] == 6 and doc["lm"][5] == [2, -1] and np.allclose(doc["coefficients"], c)
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temp files


def test_sh_project_y_up_and_3dgs(tmp_path, capsys):
    g = np.random.default_rng(0)
    img = (g.random((16, 32, 3)) + 0.1).astype(np.float32)
    np.save(tmp_path / "env.npy", img)
    rc = main(["sh", "project", str(tmp_path / "env.npy"), "-L", "3", "--up", "y", "--convention", "3dgs",
               "--out", str(tmp_path / "o"), "--coeffs", str(tmp_path / "c.npy")])
    assert rc == 0
    c = np.load(tmp_path / "c.npy")
    expect = sh.convert_coeffs(sh.project_envmap(img, 3, up="y"), "standard", "3dgs").numpy()
    assert np.allclose(c, expect, atol=1e-12)


@pytest.mark.parametrize("fname,argv,msg", [
    ("env.exr", ["--degree", "3"], "unsupported environment map format"),
    ("env.npy", ["--degree", "-1"], "--degree"),
    ("env.npy", ["--degree", "3", "--coeffs", "x.txt"], "--coeffs"),
    ("missing.npy", ["--degree", "3"], "no such file"),
])
def test_sh_project_errors(tmp_path, capsys, fname, argv, msg):
    (tmp_path / "env.exr").write_bytes(b"x")
    np.save(tmp_path / "env.npy", np.ones((8, 16, 3), np.float32))
    rc = main(["sh", "project", str(tmp_path / fname), *argv, "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1  # one clear line
    assert not (tmp_path / "o").exists()


def test_sh_project_degree_too_high_for_map(tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.ones((8, 16, 3), np.float32))
    assert main(["sh", "project", str(tmp_path / "small.npy"), "--degree", "8", "--out", str(tmp_path)]) == 2
    assert "too high" in capsys.readouterr().err
