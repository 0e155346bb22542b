"""Fixtures for the viewer tests: a tiny Gaussian model and a tiny mesh, made in code."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch


MIC = Path(__file__).resolve().parents[2] / "scenes" / "mic" / "mic_100"   # bundled demo scene


def make_tiny_gaussians(path, n: int = 300, seed: int = 0):
    """n Gaussians on a sphere shell of radius 0.5, coloured by their direction (3DGS .ply).

    Colours differ by side (x -> red, y -> green, z -> blue), so rotating the camera changes the
    image and a blank or wrong render is easy to tell apart.
    """
    from engine.io.ply import write_gaussian_ply

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    means = 0.5 * d
    log_scales = torch.full((n, 3), math.log(0.08))
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    opacity_logits = torch.full((n,), 3.0)
    rgb = 0.5 + 0.45 * d
    sh = ((rgb - 0.5) / 0.28209479177387814)[:, None, :]
    return write_gaussian_ply(path, means, log_scales, quats, opacity_logits, sh)


@pytest.fixture(scope="session")
def tiny_ply(tmp_path_factory):
    return make_tiny_gaussians(tmp_path_factory.mktemp("viewer") / "tiny.ply")


@pytest.fixture(scope="session")
def tiny_mesh(tmp_path_factory):
    import trimesh

    path = tmp_path_factory.mktemp("viewer_mesh") / "ball.obj"
    trimesh.creation.icosphere(subdivisions=3, radius=0.5).export(path)
    return path


def centre_and_border(img: np.ndarray, rect: dict, frac: float = 0.15):
    """Pixels of a centred box (side ``frac`` x canvas height) and of the canvas' left border strip."""
    x0, y0, w, h = (int(round(rect[k])) for k in ("x", "y", "w", "h"))
    cx, cy, r = x0 + w // 2, y0 + h // 2, max(int(frac * h / 2), 4)
    centre = img[cy - r:cy + r, cx - r:cx + r].reshape(-1, 3).astype(np.float64)
    border = img[y0 + h // 3: y0 + 2 * h // 3, x0 + 2: x0 + max(w // 12, 6)].reshape(-1, 3).astype(np.float64)
    return centre, border


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run folder with config.toml (scene = bundled mic) and a checkpoint of a tiny model."""
    from engine.io.checkpoint import save_checkpoint
    from engine.methods.raygauss.config import RayGaussConfig
    from engine.methods.raygauss.method import RayGaussMethod
    from engine.methods.raygauss.model import RayGaussModel
    from engine.train.trainer import TrainSettings, write_run_config

    if not MIC.is_dir():
        pytest.fail(f"bundled demo scene {MIC} is missing")
    from shaders import runtime

    runtime.init()
    d = tmp_path_factory.mktemp("run")
    cfg = RayGaussConfig(init_random_points=200, sg_lobes=0)
    model = RayGaussModel.random_in_box(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), cfg)
    m = RayGaussMethod(cfg, model)
    write_run_config(d, TrainSettings(method=RayGaussMethod, data=MIC, scene_name="mic"), cfg)
    save_checkpoint(d / "checkpoints" / "step-000001.pt", {"model": m.state_dict()}, method="raygauss", step=1)
    return d
