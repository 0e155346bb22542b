"""The shared Gaussian renderer: path selection, the splatting path for 3DGS files, the export
conversion, and scale-aware defaults for imported files."""
import math

import pytest
import torch

import engine
from engine.cameras import Cameras
from engine.camera_paths import look_at
from engine.io.ply import write_gaussian_ply
from engine.methods.base import check_render_output
from engine.render.gaussians import density_to_opacity, render_gaussians


def _gaussians(n=60, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * scale
    quats = torch.randn(n, 4, generator=g)
    log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.08 * scale + 0.02 * scale)
    logits = torch.randn(n, generator=g) + 1.0
    sh = torch.randn(n, 4, 3, generator=g) * 0.4
    return means, quats, log_scales, logits, sh


def _camera(dist=2.5, W=40, H=30):
    c2w = look_at(torch.tensor([0.3, -dist, 0.6]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    return Cameras(36.0, 36.0, W / 2, H / 2, W, H, c2w[None])


def test_imported_3dgs_files_are_splatted_by_default(tmp_path):
    from shaders.splat import splat

    means, quats, log_scales, logits, sh = _gaussians()
    path = write_gaussian_ply(tmp_path / "g.ply", means, log_scales, quats / quats.norm(dim=-1, keepdim=True),
                              logits, sh)
    m = engine.load(path)
    assert m.model.render_mode() == "splat" and any("rendered by splat" in n for n in m.notes)
    cam = _camera()
    out = check_render_output(engine.render(m, cam, 0, background=torch.ones(3)), 30, 40)
    # the same as calling the kernel with the file's values and this view's SH colours
    from engine.render.gaussians import gaussian_colors

    rgb = gaussian_colors(m.model.means, m.model.sh, 1, cam.c2w[0, :3, 3])
    ref = splat(m.model.means, m.model.quats, m.model.log_scales, m.model.density, rgb, cam.c2w[0], 36.0, 36.0,
                20.0, 15.0, 40, 30, background=torch.ones(3))
    assert float((out["rgb"] - ref["rgb"]).abs().max()) < 1e-5
    assert torch.equal(out["cost"], ref["n_evals"]) and float(out["alpha"].max()) > 0.5
    # --render-mode raytrace: the ray caster's approximation of the same file (not the same image)
    rt = engine.load(path, render_mode="raytrace")
    assert rt.model.render_mode() == "raytrace"
    out_rt = check_render_output(engine.render(rt, cam, 0, background=torch.ones(3)), 30, 40)
    assert 0 < float((out_rt["rgb"] - out["rgb"]).abs().mean()) < 0.2


def test_splatting_a_density_model_equals_splatting_its_export(tmp_path):
    from engine.methods.raygauss.config import RayGaussConfig
    from engine.methods.raygauss.method import RayGaussMethod
    from engine.methods.raygauss.model import RayGaussModel

    means, quats, log_scales, _, sh = _gaussians(seed=1)
    density = torch.rand(means.shape[0], generator=torch.Generator().manual_seed(2)) * 30
    cfg = RayGaussConfig(sg_lobes=0, sh_degree=1, render_mode="splat")
    model = RayGaussModel(means, log_scales, quats, density, sh, scene_box=[[-1.0] * 3, [1.0] * 3], cfg=cfg)
    m = RayGaussMethod(cfg, model)
    cam = _camera()
    direct = m.render(cam, 0, background=torch.zeros(3))
    [ply] = m.export("ply", tmp_path / "e.ply")
    exported = engine.load(ply)
    via_file = exported.render(cam, 0, background=torch.zeros(3))
    assert float((direct["rgb"] - via_file["rgb"]).abs().max()) < 1e-4
    op = density_to_opacity(density, log_scales)
    s = density[0]
    assert math.isclose(float(op[0]), 1 - math.exp(-float(s) * math.sqrt(2 * math.pi) * float(log_scales[0].exp().min())),
                        rel_tol=1e-5)


def test_splat_path_refuses_distorted_cameras():
    from engine.errors import ConfigError

    means, quats, log_scales, logits, sh = _gaussians()
    cam = _camera()
    cam = Cameras(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, cam.c2w, torch.tensor([[0.1, 0, 0, 0]]))
    with pytest.raises(ConfigError, match="undistorted"):
        render_gaussians(means, quats, log_scales, torch.sigmoid(logits), sh, cam, mode="opacity", sh_degree=1,
                         path="splat")


def test_imported_files_get_a_ray_step_from_their_extent(tmp_path):
    for scale in (1.0, 400.0):
        means, quats, log_scales, logits, sh = _gaussians(n=200, scale=scale)
        path = write_gaussian_ply(tmp_path / f"s{scale:g}.ply", means, log_scales, quats, logits, sh)
        m = engine.load(path)
        q = torch.quantile(means.double(), torch.tensor([0.02, 0.98], dtype=torch.float64), dim=0)
        assert math.isclose(m.cfg.dt, 1e-3 * float((q[1] - q[0]).norm()) / 2, rel_tol=1e-4)
        assert engine.load(path, dt=0.5).cfg.dt == 0.5          # an explicit --dt wins
