"""Point-cloud sources (engine.geometry.points) and ``kernelight points``: dataset points, depth
fusion of a run (an analytic sphere and a RayGauss run folder on the bundled mic scene), carving
from the mic scene's alpha, the PLY written, and the one-line errors when a source gives nothing."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.geometry.points import (NoPoints, PointCloud, carved_points, cap_points, dataset_points, depth_points,
                                    points_from, read_points, write_points_ply)

MIC = Path(__file__).resolve().parents[2] / "scenes" / "mic" / "mic_100"


@pytest.fixture(scope="module")
def mic():
    if not MIC.is_dir():
        pytest.fail(f"bundled demo scene {MIC} is missing")
    from engine.data import load_dataset

    return load_dataset(MIC)


@pytest.fixture(scope="module")
def mic25(mic):
    """The mic scene with every 4th training view (carving costs per view)."""
    tr = mic.train
    sel = list(range(0, len(tr), 4))
    small = dataclasses.replace(tr, cameras=tr.cameras[sel], images=tr.images[sel],
                                image_paths=[tr.image_paths[i] for i in sel], alpha=tr.alpha[sel])
    return dataclasses.replace(mic, splits={**mic.splits, "train": small})


class SphereModel:
    """A 'method' whose render is an opaque sphere (centre c, radius R) of one colour: exact depth."""

    def __init__(self, centre=(0.1, -0.2, 0.05), radius=0.5, color=(0.8, 0.3, 0.1), alpha=1.0):
        self.c = torch.tensor(centre)
        self.R = radius
        self.color = torch.tensor(color)
        self.alpha = alpha

    def render(self, cameras, i, background=None):
        o, d = cameras.generate_rays(i)
        oc = o - self.c
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - self.R ** 2)
        hit = disc > 0
        t = -b - torch.sqrt(disc.clamp_min(0))
        alpha = hit.float() * self.alpha
        depth = torch.where(hit, t, torch.zeros_like(t))
        rgb = alpha[..., None] * self.color
        return {"rgb": rgb, "alpha": alpha, "depth": depth, "depth_sum": depth * alpha, "cost": hit.float()}


def _radii(pc: PointCloud, centre=(0.1, -0.2, 0.05)):
    return np.linalg.norm(pc.points - np.asarray(centre, np.float32), axis=1)


# ------------------------------------------------------------------------------------ dataset
def test_dataset_points_from_the_dataset(mic):
    pc = dataset_points(mic)
    assert pc.source == "dataset" and "points3d.ply" in pc.detail
    assert len(pc) == int(mic.points.shape[0]) and pc.colors is not None and pc.colors.shape == (len(pc), 3)


def test_dataset_points_from_a_ply_beside_and_bad_files(tmp_path):
    ds = SimpleNamespace(points=None, point_colors=None, format="colmap", root=tmp_path)
    with pytest.raises(NoPoints, match="has no points"):
        dataset_points(ds)
    pts = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    pts[:5] = np.nan
    write_points_ply(tmp_path / "points3D.ply", PointCloud(pts, None, "x", "x"))
    pc = dataset_points(ds)
    assert len(pc) == 45 and pc.stats["non_finite"] == 5 and pc.detail.endswith("points3D.ply")
    write_points_ply(tmp_path / "points3D.ply", PointCloud(np.full((4, 3), np.nan, np.float32), None, "x", "x"))
    with pytest.raises(NoPoints, match="all 4 points have NaN"):
        dataset_points(ds)


# ------------------------------------------------------------------------------------ depth
def test_depth_fusion_recovers_a_sphere(mic):
    cams = mic.train.cameras
    pc = depth_points(SphereModel(), cams, views=12, voxel=0.01)
    r = _radii(pc)
    assert pc.source == "run" and pc.stats["views"] == 12 and pc.stats["back_projected"] > pc.stats["after_voxel"]
    assert len(pc) > 500 and np.abs(r - 0.5).max() < 0.01          # on the sphere, within a voxel
    assert np.allclose(pc.colors, [0.8, 0.3, 0.1], atol=0.01)      # rgb / alpha: the surface colour
    # half-transparent pixels are below the threshold: nothing to fuse, one clear line
    with pytest.raises(NoPoints, match="no pixel of the 3 rendered views has alpha > 0.5"):
        depth_points(SphereModel(alpha=0.4), cams, views=3)
    with pytest.raises(NoPoints, match="no pixel"):
        depth_points(SphereModel(centre=(0, 0, 100.0)), cams, views=3)   # behind / outside every view


def test_depth_fusion_removes_outliers(mic):
    class Noisy(SphereModel):
        def render(self, cameras, i, background=None):
            out = super().render(cameras, i)
            d = out["depth"].clone()
            d[::17, ::13] *= 3.0                       # a sprinkle of far-off depths
            out["depth"] = d
            return out
    pc = depth_points(Noisy(), mic.train.cameras, views=8, voxel=0.01, nb_neighbors=12, std_ratio=1.5)
    assert pc.stats["after_outliers"] < pc.stats["after_voxel"]
    assert np.mean(np.abs(_radii(pc) - 0.5) < 0.02) > 0.97


# ------------------------------------------------------------------------------------ carving
def test_carving_mic_stays_inside_unseen_silhouettes(mic25):
    mic = mic25
    assert len(mic.train) == 25
    pc = carved_points(mic, resolution=48)
    assert pc.source == "carve" and len(pc) > 200
    box = mic.scene_box.numpy()
    assert (pc.points >= box[0]).all() and (pc.points <= box[1]).all()
    # carved from the train views only: the test views' alpha must agree (held-out check)
    test = mic.split("test")
    pts = torch.from_numpy(pc.points)
    hits = []
    for i in range(0, len(test), 5):
        uv, z = test.cameras.project(pts, i)
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        ok = (z > 0) & (u >= 0) & (u < test.width) & (v >= 0) & (v < test.height)
        hits.append(test.alpha[i, v[ok], u[ok]] > 0.05)
    assert float(torch.cat(hits).float().mean()) > 0.95
    assert pc.stats["inside_hull"] > pc.stats["surface"] == len(pc)   # the surface: a subset of the hull
    assert pc.colors.min() >= 0 and pc.colors.max() <= 1 and pc.colors.std() > 0.01


def test_carving_errors(mic25):
    mic = mic25
    tr = mic.train
    no_cov = dataclasses.replace(mic, splits={"train": dataclasses.replace(tr, alpha=None, masks=None)})
    with pytest.raises(NoPoints, match="no alpha or masks"):
        carved_points(no_cov)
    empty = dataclasses.replace(mic, splits={"train": dataclasses.replace(tr, alpha=torch.zeros_like(tr.alpha))})
    with pytest.raises(NoPoints, match="carving removed every voxel"):
        carved_points(empty, resolution=16)
    far = dataclasses.replace(mic, scene_box=torch.tensor([[50.0, 50, 50], [51, 51, 51]]))
    with pytest.raises(NoPoints, match="no voxel of the scene box projects"):
        carved_points(far, resolution=16)


def test_points_from_auto_and_fallbacks(mic, mic25):
    pc = points_from("auto", dataset=mic, max_points=1000)
    assert pc.source == "dataset" and len(pc) == 1000 and pc.stats["before_cap"] == 100000
    nopts = dataclasses.replace(mic25, points=None, point_colors=None, root=Path("/nonexistent/mic"))
    pc = points_from("auto", dataset=nopts, carve_resolution=32)
    assert pc.source == "carve" and pc.stats["tried"] == ["dataset", "carve"]
    bare = dataclasses.replace(nopts, splits={"train": dataclasses.replace(mic25.train, alpha=None)})
    with pytest.raises(NoPoints, match="dataset: .*has no points.*carve: .*no alpha or masks"):
        points_from("auto", dataset=bare)
    v = points_from("dataset", dataset=mic, voxel=0.2)               # --voxel on dataset points too
    assert 1000 < len(v) < 100000 and v.stats["before_voxel"] == 100000 and "voxel 0.2" in v.detail
    occupied = np.unique(np.floor(v.points / 0.2).astype(np.int64), axis=0)
    assert len(occupied) >= 0.5 * len(v)                              # about one point per voxel (grids offset)
    a = cap_points(pc, 10, seed=1)
    assert len(a) == 10 and np.array_equal(a.points, cap_points(pc, 10, seed=1).points)


# ------------------------------------------------------------------------------------ command
def _ply_header(path):
    raw = Path(path).read_bytes()
    return raw[: raw.index(b"end_header")].decode()


def test_command_dataset_and_carve(tmp_path, capsys):
    out = tmp_path / "p.ply"
    assert main(["points", str(MIC), "--out", str(out), "--max-points", "2000"]) == 0
    text = capsys.readouterr().out
    assert "source: dataset" in text and "2000 points" in text
    h = _ply_header(out)
    for prop in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue"):
        assert f"property {prop}" in h
    assert len(read_points(out)) == 2000
    out2 = tmp_path / "c.ply"
    assert main(["points", str(MIC), "--from", "carve", "--carve-resolution", "32", "--out", str(out2)]) == 0
    assert "source: carve" in capsys.readouterr().out and len(read_points(out2)) > 50
    assert main(["points", str(MIC), "--from", "run", "--out", str(out2)]) == 2
    assert "needs a run folder" in capsys.readouterr().err
    assert main(["points", str(MIC), "--max-points", "0", "--out", str(out2)]) == 2


@pytest.fixture(scope="module")
def sphere_run(tmp_path_factory):
    """A run folder (config.toml naming the bundled mic scene + a checkpoint) whose RayGauss model is
    a dense, opaque shell of Gaussians on a sphere of radius 0.5."""
    from engine.io.checkpoint import save_checkpoint
    from engine.methods.raygauss.config import RayGaussConfig
    from engine.methods.raygauss.method import RayGaussMethod
    from engine.methods.raygauss.model import RayGaussModel
    from engine.train.trainer import TrainSettings, write_run_config
    from shaders import runtime

    runtime.init()
    d = tmp_path_factory.mktemp("sphere_run")
    g = np.random.default_rng(0)
    s = g.normal(size=(3000, 3))
    s = 0.5 * s / np.linalg.norm(s, axis=1, keepdims=True) + np.array([0.1, -0.2, 0.05])
    cfg = RayGaussConfig(sg_lobes=0, sh_degree=0, init_density=300.0, init_scale_mult=0.7)
    model = RayGaussModel.from_points(s.astype(np.float32), None, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), cfg)
    m = RayGaussMethod(cfg, model)
    write_run_config(d, TrainSettings(method=RayGaussMethod, data=MIC, scene_name="mic"), cfg)
    save_checkpoint(d / "checkpoints" / "step-000001.pt", {"model": m.state_dict()}, method="raygauss", step=1)
    return d


def test_command_run_depth_fusion(sphere_run, tmp_path, capsys):
    out = tmp_path / "run.ply"
    assert main(["points", str(sphere_run), "--from", "run", "--views", "6", "--voxel", "0.01", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "source: run (depth of" in text and "6 views" in text
    pc = read_points(out)
    r = _radii(pc)
    assert len(pc) > 300
    # these opaque Gaussians (sd ~0.025) stop the rays on their outer tails, ~2 sd before the
    # centres: the fused surface is the shell's outside, not random points of the box
    assert 0.5 < float(np.median(r)) < 0.57 and np.mean(np.abs(r - 0.53) < 0.06) > 0.95
    # the same run, auto: the dataset has points (mic's points3d.ply), so those win
    assert main(["points", str(sphere_run), "--max-points", "100", "--out", str(out)]) == 0
    assert "source: dataset" in capsys.readouterr().out


def test_auto_falls_back_to_the_run_last(mic25):
    """auto tries the dataset's points, then carving, and only then a run's depth (loaded lazily)."""
    loaded = []

    def lazy():
        loaded.append(1)
        return SphereModel()
    bare = dataclasses.replace(mic25, points=None, point_colors=None, root=Path("/nonexistent/mic"),
                               splits={"train": dataclasses.replace(mic25.train, alpha=None)})
    pc = points_from("auto", dataset=bare, method=lazy, cameras=mic25.train.cameras, views=3)
    assert pc.source == "run" and pc.stats["tried"] == ["dataset", "carve", "run"] and loaded == [1]
    pc = points_from("auto", dataset=mic25, method=lazy, cameras=mic25.train.cameras)
    assert pc.source == "dataset" and loaded == [1]                  # the run was never loaded


# ------------------------------------------------------------------------------------ shared data
def test_colmap_points3d_of_a_real_capture(shared_data):
    """COLMAP sparse/0/points3D.bin (real/beer, 4,414 points) is the dataset source."""
    from engine.data import load_dataset
    from tests.conftest import require

    root = require(shared_data / "real" / "beer" / "sparse" / "0" / "points3D.bin").parents[2]
    ds = load_dataset(root, downscale=8)
    pc = points_from("auto", dataset=ds)
    assert pc.source == "dataset" and pc.detail.startswith("COLMAP points3D") and len(pc) == 4414
    assert pc.colors is not None and pc.colors.std() > 0.02


def test_carving_from_dtu_masks(shared_data):
    """DTU scan24: no points, masks instead of alpha -> auto falls back to carving the masks."""
    from engine.data import load_dataset
    from tests.conftest import require

    root = require(shared_data / "dtu" / "scan24_400" / "cameras_sphere.npz").parent
    ds = load_dataset(root, downscale=4)
    assert ds.points is None and ds.train.masks is not None
    pc = points_from("auto", dataset=ds, carve_resolution=40)
    assert pc.source == "carve" and pc.stats["tried"] == ["dataset", "carve"] and len(pc) > 100
    box = ds.scene_box.numpy()
    assert (pc.points >= box[0]).all() and (pc.points <= box[1]).all()
