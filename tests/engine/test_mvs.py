"""Plane-sweep points (engine.geometry.mvs): on a textured square plate seen only from above, the
visual hull is a pyramid far above the plate; the sweep must bring the points down onto it, leave a
textureless plate on the hull (nothing to match), and count its cost evaluations."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cameras import Cameras
from engine.data.dataset import Dataset, Split
from engine.geometry.mvs import mvs_points
from engine.geometry.points import NoPoints, carved_points, points_from

SIZE, FOCAL, DIST = 48, 60.0, 2.0


def _look_at(pos):
    p = torch.tensor(pos, dtype=torch.float64)
    f = -p / p.norm()
    right = torch.linalg.cross(f, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(f, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, f, p
    return c2w


def _plate_dataset(textured: bool, masks: bool = True) -> Dataset:
    """A unit square plate in z = 0 seen by 21 cameras tilted at most 30 degrees from straight above."""
    poses = [_look_at((0.0, 1e-3, DIST))]
    for tilt, n in ((15, 8), (30, 12)):
        for k in range(n):
            a = 2 * math.pi * k / n
            t = math.radians(tilt)
            poses.append(_look_at((DIST * math.sin(t) * math.cos(a), DIST * math.sin(t) * math.sin(a),
                                   DIST * math.cos(t))))
    c2w = torch.stack(poses)
    n = len(poses)
    cams = Cameras(torch.full((n,), FOCAL), torch.full((n,), FOCAL), torch.full((n,), SIZE / 2),
                   torch.full((n,), SIZE / 2), SIZE, SIZE, c2w)
    imgs, alpha = [], []
    for i in range(n):
        o, d = cams.generate_rays(i)
        t = -o[..., 2] / d[..., 2]
        x, y = o[..., 0] + t * d[..., 0], o[..., 1] + t * d[..., 1]
        inside = (x.abs() < 0.5) & (y.abs() < 0.5)
        if textured:
            tex = torch.stack([0.5 + 0.22 * torch.sin(17 * x + 5 * y) + 0.2 * torch.sin(9 * y - 13 * x),
                               0.5 + 0.25 * torch.sin(11 * y + 3 * x) + 0.2 * torch.cos(19 * x - 7 * y),
                               0.5 + 0.2 * torch.sin(23 * x * y + 4 * x) + 0.25 * torch.cos(8 * y)], -1)
        else:
            tex = torch.tensor([0.7, 0.4, 0.2]).expand(SIZE, SIZE, 3)
        imgs.append(torch.where(inside[..., None], tex, torch.zeros(3)).float())
        alpha.append(inside.float())
    imgs, alpha = torch.stack(imgs), torch.stack(alpha)
    split = Split("train", cams, imgs, [Path(f"v{i}.png") for i in range(n)], alpha=alpha if masks else None)
    return Dataset(format="blender", root=Path("plate"), splits={"train": split},
                   scene_box=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), background=torch.zeros(3))


@pytest.fixture(scope="module")
def textured():
    return _plate_dataset(True)


def test_hull_is_far_above_the_plate(textured):
    """The premise: cameras within 30 degrees of the top leave a hull up to 0.5 / tan 30 = 0.87 high."""
    hull = carved_points(textured, resolution=48)
    z = np.abs(hull.points[:, 2])
    assert np.median(z) > 0.15 and z.max() > 0.5


def _depth_error(ds, points, vox):
    """|splatted depth - exact plate depth| (distance along the ray) over the pixels the plate covers
    in every view, and the fraction of them with no depth."""
    from engine.geometry.mvs import hull_depth

    sp = ds.train
    T = hull_depth(torch.as_tensor(points, dtype=torch.float32), sp.cameras, vox)
    errs, holes = [], 0
    for i in range(len(sp.cameras)):
        o, d = sp.cameras.generate_rays(i)
        truth = -o[..., 2] / d[..., 2]
        fg = sp.alpha[i] >= 0.5
        ok = fg & torch.isfinite(T[i])
        holes += int((fg & ~ok).sum())
        errs.append((T[i] - truth).abs()[ok])
    return torch.cat(errs), holes / float((sp.alpha >= 0.5).sum())


def test_sweep_carves_the_hull_down_to_a_textured_plate(textured):
    """The default fusion: hull voxels that enough views saw through are carved away, and what every
    camera sees of the rest is the plate (the hull's own depth is far above it in most pixels)."""
    hull = carved_points(textured, resolution=48)
    vox = hull.stats["voxel"]
    pc = mvs_points(textured, resolution=48, behind=24)
    assert pc.source == "mvs" and len(pc) > 100
    st = pc.stats
    assert st["carved_by_sweep"] > 0.2 * st["volume_voxels"] and st["surface"] == len(pc)
    assert st["carve_views"] == 2                 # 8 % of the 21 views, at least 2
    # asking more views to agree carves less
    assert mvs_points(textured, resolution=48, behind=24, carve_views=12).stats["carved_by_sweep"] < st["carved_by_sweep"]
    err, holes = _depth_error(textured, pc.points, vox)
    herr, hholes = _depth_error(textured, hull.points, vox)
    assert (herr < 2 * vox).float().mean() < 0.5
    assert (err < 2 * vox).float().mean() > 0.9, err.median()
    assert holes < 0.01 and hholes < 0.01
    # every point inside the plate's square (a voxel of slack) or below it: nothing above the plate stays
    assert (pc.points[:, 2] < 2 * vox).all()
    assert pc.colors is not None and pc.colors.std() > 0.05


def test_sweep_brings_the_fused_points_onto_a_textured_plate(textured):
    """``fusion="points"``: the swept depth maps back-projected and fused (session 21's fusion)."""
    hull = carved_points(textured, resolution=48)
    vox = hull.stats["voxel"]
    seen = []
    pc = mvs_points(textured, resolution=48, behind=24, fusion="points", progress=lambda i, n: seen.append((i, n)))
    assert pc.source == "mvs" and len(pc) > 100
    z = np.abs(pc.points[:, 2])
    assert np.median(z) < 1.0 * vox, (np.median(z), vox)
    assert np.mean(z < 2 * vox) > 0.85
    # inside the plate's square (a voxel of slack), and most swept pixels moved
    assert (np.abs(pc.points[:, :2]) < 0.5 + 2 * vox).all()
    st = pc.stats
    assert st["moved_pixels"] > 0.5 * st["swept_pixels"]
    # every cost evaluation counted: hypotheses x sources x pixels of the boxes around the plate
    assert st["cost_evaluations"] >= st["hypotheses"] * 4 * st["swept_pixels"]
    assert st["cost_evaluations"] < st["hypotheses"] * 4 * 21 * SIZE * SIZE
    assert st["cost_evaluations"] % (st["hypotheses"] * 4) == 0
    assert seen[-1] == (21, 21) and len(seen) == 21
    assert pc.colors is not None and pc.colors.std() > 0.05


def _sweep_first_view(ds, resolution=48):
    from engine.geometry.mvs import hull_depth, sweep_view

    hull = carved_points(ds, resolution=resolution)
    vox = hull.stats["voxel"]
    sp = ds.train
    fg = sp.alpha >= 0.5
    T = hull_depth(torch.as_tensor(hull.points), sp.cameras, vox)
    imgs = sp.images.permute(0, 3, 1, 2)
    offsets = torch.arange(-2.0, 24.0 + 1e-6, 0.5) * vox
    depth, moved, n = sweep_view(0, imgs, sp.cameras, T[0], fg[0], offsets)
    o, d = sp.cameras.generate_rays(0)
    truth = -o[..., 2] / d[..., 2]
    valid = fg[0] & torch.isfinite(T[0])
    return depth, moved, valid, T[0], truth, vox, n, len(offsets)


def test_sweep_view_moves_only_where_it_matches(textured):
    """One view, against the exact plate depth: most pixels move, and onto the plate."""
    depth, moved, valid, hull, truth, vox, n, K = _sweep_first_view(textured)
    assert moved.float().sum() > 0.6 * valid.float().sum()
    err = (depth - truth).abs()[moved]
    assert (err < 2 * vox).float().mean() > 0.9, err.median()
    assert torch.equal(depth[valid & ~moved], hull[valid & ~moved])
    ys, xs = valid.any(1).nonzero()[:, 0], valid.any(0).nonzero()[:, 0]
    box = (min(int(ys[-1]) + 3, SIZE) - max(int(ys[0]) - 2, 0)) * (min(int(xs[-1]) + 3, SIZE) - max(int(xs[0]) - 2, 0))
    assert n == K * 4 * box and box < SIZE * SIZE


def test_textureless_plate_keeps_the_hull():
    """Nothing to match: a one-colour object's visual hull is photo-consistent (every hull point
    projects inside every mask, onto the same colour), so the sweep must keep the hull (within the
    two voxels of slack in front), far above the plate. The uniqueness test looks 8 voxels either
    side of the best depth, so a pixel whose equally good depths span less than that (close to the
    plate's edge, where the hull meets it) can still move: 6 % of them here (it was 1 % with a 4-voxel
    window and a stricter ratio, which cost DTU scan24 about 0.8 dB, README)."""
    depth, moved, valid, hull, truth, vox, n, K = _sweep_first_view(_plate_dataset(False))
    near_hull = ((depth - hull).abs() <= 2 * vox + 1e-6)[valid]
    assert near_hull.float().mean() > 0.9
    assert ((hull - truth).abs()[valid] > 2 * vox).float().mean() > 0.5


def test_points_from_mvs_and_no_masks(textured):
    pc = points_from("mvs", dataset=textured, carve_resolution=40)
    assert pc.source == "mvs" and pc.stats["tried"] == ["mvs"]
    with pytest.raises(NoPoints, match="mvs: .*no alpha or masks"):
        points_from("mvs", dataset=_plate_dataset(True, masks=False), carve_resolution=40)


def test_command_mvs_on_the_bundled_scene(tmp_path, capsys):
    """``kernelight points DATASET --from mvs`` on the bundled mic scene: a PLY, the source printed,
    the points inside the scene box."""
    from engine.cli import main
    from engine.geometry.points import read_points

    mic = Path(__file__).resolve().parents[2] / "scenes" / "mic" / "mic_100"
    out = tmp_path / "m.ply"
    assert main(["points", str(mic), "--from", "mvs", "--carve-resolution", "32", "--downscale", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "source: mvs (visual hull carved by a plane sweep" in text
    pts = read_points(out).points
    assert len(pts) > 50 and np.isfinite(pts).all()
    from engine.data import load_dataset

    box = load_dataset(mic).scene_box.numpy()
    assert (pts >= box[0] - 1e-3).all() and (pts <= box[1] + 1e-3).all()
