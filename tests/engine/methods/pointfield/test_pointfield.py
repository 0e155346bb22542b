"""The point field (GPF): visibility scores, log sampling, gradients through the whole chain,
growing/pruning with the optimizer's state, and the method's doors (train, resume, eval through the
trainer, export, engine.load / render) on a tiny synthetic RGBA scene (a coloured sphere seen by 12
cameras at 32x32, written as a NeRF-synthetic folder), plus the bad inputs of issue 15."""
from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine import methods
from engine.cameras import Cameras
from engine.errors import CheckpointError, KernelightError

FAST = {"rays_per_batch": 128, "carve_resolution": 40, "source_views": 4, "top_views": 2, "render_chunk": 4096,
        "eval_every": 0, "log_every": 1, "checkpoint_every": 2, "hidden": 16, "feature_dim": 8,
        "encoder_max_side": 32}


def _look_at(eye):
    eye = np.asarray(eye, float)
    f = -eye / np.linalg.norm(eye)                # OpenCV: +z forward, +y down
    up = np.array([0.0, 0.0, 1.0])
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(f, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, f, eye
    return c2w


def _write_sphere_scene(root: Path, n_train=12, n_test=3, size=32, radius=0.6) -> Path:
    """A NeRF-synthetic folder of a sphere coloured by its normal (RGBA PNGs, OpenGL poses)."""
    fov = 0.7
    f = 0.5 * size / math.tan(0.5 * fov)
    for split, n, off in (("train", n_train, 0.0), ("test", n_test, 0.37)):
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            a = 2 * math.pi * i / n + off
            eye = [4.0 * math.cos(a), 4.0 * math.sin(a), 1.2 * math.sin(3 * a + 0.5)]
            c2w = _look_at(eye)
            v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
            d = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)], -1) @ c2w[:3, :3].T
            d /= np.linalg.norm(d, axis=-1, keepdims=True)
            o = c2w[:3, 3]
            b = (d @ o)
            disc = b * b - (o @ o - radius ** 2)
            hit = disc > 0
            t = -b - np.sqrt(np.maximum(disc, 0))
            p = o + t[..., None] * d
            col = np.clip(0.5 + 0.5 * p / radius, 0, 1)
            rgba = np.zeros((size, size, 4), np.uint8)
            rgba[..., :3] = np.where(hit[..., None], np.round(col * 255), 0).astype(np.uint8)
            rgba[..., 3] = np.where(hit, 255, 0).astype(np.uint8)
            iio.imwrite(root / split / f"r_{i}.png", rgba)
            gl = c2w.copy()
            gl[:3, 1:3] *= -1                         # OpenCV -> OpenGL axes
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": gl.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return root


@pytest.fixture(scope="module")
def sphere(tmp_path_factory):
    return _write_sphere_scene(tmp_path_factory.mktemp("pf") / "sphere")


@pytest.fixture(scope="module")
def model(sphere):
    from engine.data import load_dataset

    ds = load_dataset(sphere)
    cfg = methods.make_config("pointfield", FAST)
    return methods.get_method("pointfield").create(cfg, ds), ds


# ------------------------------------------------------------------------------------ pieces
def test_visibility_front_point_visible_back_point_occluded():
    from engine.methods.pointfield.render import visibility
    from engine.methods.pointfield.scene import PointScene

    cam = Cameras(20.0, 20.0, 16.0, 16.0, 32, 32, torch.eye(4))     # at the origin, looking along +z
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.05, 0.0, 2.0], [0.0, 0.0, -1.0], [30.0, 0.0, 2.0]])
    cfg = methods.make_config("pointfield", {"splat_radius": 1.0})
    sc = PointScene("t", pts, None, torch.zeros(1, 32, 32, 3, dtype=torch.uint8), None, cam, 0.05, 1.2, 0.1, 10,
                    (1, 1, 1), 8)
    D = sc.splat(cam, cfg)
    ctx = {"cams": cam, "depth": D, "size": (32, 32)}
    _, vis = visibility(sc, ctx, pts)
    v = vis[0]
    assert v[0] == 1.0 and v[2] == 1.0                       # frontmost points: |z - D| = 0
    assert v[1] == pytest.approx(1 - (4.0 - 2.0) / 4.0)      # behind the first: 1 - |4 - 2| / 4
    assert v[3] == 0.0 and v[4] == 0.0                       # behind the camera / outside the image


def test_view_scores_prefer_the_source_camera_nearest_the_target_direction():
    from engine.methods.pointfield.render import view_scores

    # two source cameras seeing the point at the origin, 30 and 90 degrees from the target camera
    def cam_at(eye):
        return torch.as_tensor(_look_at(eye), dtype=torch.float32)

    tgt = torch.tensor([0.0, -4.0, 0.0])
    a30 = [4 * math.sin(math.pi / 6), -4 * math.cos(math.pi / 6), 0.0]
    src = Cameras(20.0, 20.0, 16.0, 16.0, 32, 32, torch.stack([cam_at(a30), cam_at([4.0, 0.0, 0.0])]))
    pts = torch.zeros(1, 3)
    vis = torch.tensor([[0.9], [1.0]])
    ctx = {"cams": src, "target": tgt}
    assert torch.equal(view_scores(ctx, pts, vis, 0.0), vis)                  # GPF: visibility alone
    assert torch.equal(view_scores({"cams": src, "target": None}, pts, vis, 8.0), vis)   # no target known
    s = view_scores(ctx, pts, vis, 8.0)
    cos30 = math.cos(math.pi / 6)
    assert s[0, 0].item() == pytest.approx(0.9 * ((1 + cos30) / 2) ** 8, rel=1e-5)
    assert s[1, 0].item() == pytest.approx(1.0 * 0.5 ** 8, rel=1e-5)          # 90 degrees: cos 0
    assert s[0, 0] > s[1, 0]                                                  # the nearer direction wins


def test_log_samples_symmetric_and_clamped():
    from engine.methods.pointfield.render import log_offsets, log_samples

    cfg = methods.make_config("pointfield", {"log_steps": 16, "log_unit": 1.0})

    class S:
        spacing, log_base, near, far = 0.01, 1.16, 2.0, 6.0

    off = log_offsets(cfg, S)
    assert off.shape == (33,) and off[16] == 0
    assert torch.allclose(off[17:], 0.01 * 1.16 ** torch.arange(16.0))
    assert torch.allclose(off[:16], -off[17:].flip(0))
    t = log_samples(cfg, S, torch.tensor([2.0, 4.0]))
    assert t[0].min() == 2.0 and bool((t[0, :16] == 2.0).all())     # clamped to near
    assert torch.allclose(t[1], 4.0 + off)


def test_second_depth_layer_is_the_surface_behind_the_first(model):
    """On the sphere's cloud the first layer is the near side and the second the far side, at least the
    samples' reach behind it; one layer gives no second map."""
    m, ds = model
    sc, cfg = m.scenes[0], m.cfg
    cam = ds.train.cameras[0:1]
    d1, d2 = sc.depth_layers(cam, cfg)
    reach = sc.reach(cfg)
    assert reach == pytest.approx(cfg.log_unit * sc.spacing * sc.log_base ** (cfg.log_steps - 1))
    both = torch.isfinite(d1) & torch.isfinite(d2)
    assert int(both.sum()) > 0.25 * int(torch.isfinite(d1).sum())   # near the silhouette the back is within reach
    assert bool((d2[both] > d1[both] + reach).all())
    # the centre pixel looks through the sphere's middle: 4 units away, diameter 1.2
    c = d1.shape[1] // 2
    assert float(d1[0, c, c]) == pytest.approx(4.0 - 0.6, abs=3 * sc.spacing)
    assert float(d2[0, c, c]) == pytest.approx(4.0 + 0.6, abs=3 * sc.spacing)
    one = methods.make_config("pointfield", dict(FAST, depth_layers=1))
    assert sc.depth_layers(cam, one)[1] is None
    assert torch.equal(sc.depth_layers(cam, one)[0], d1)


def test_second_layer_samples_merge_in_order(model):
    """Samples of both layers come in order of distance; rays without a second layer render exactly as
    with one layer; a second layer behind an opaque first one changes the colour little."""
    from engine.methods.pointfield.render import encode_views, ray_center_depth, render_rays

    m, ds = model
    sc, cfg = m.scenes[0], m.cfg
    cams = sc.cameras
    H, W = int(cams.height[0]), int(cams.width[0])
    o, d = cams.generate_rays(0)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    d1, d2 = sc.depth_layers(cams[0:1], cfg)
    pix = torch.arange(H * W)
    tc = ray_center_depth(d1[0], pix, d, cams.c2w[0])
    tc2 = ray_center_depth(d2[0], pix, d, cams.c2w[0])
    ctx = encode_views(m.nets.encoder, sc, cfg, sc.nearest_views(cams, 0, cfg.source_views, exclude=0))
    with torch.no_grad():
        one = render_rays(m.nets.agg, sc, cfg, ctx, o, d, tc, m.nets.log_s, torch.ones(3))
        two = render_rays(m.nets.agg, sc, cfg, ctx, o, d, tc, m.nets.log_s, torch.ones(3), t_center2=tc2)
        none = render_rays(m.nets.agg, sc, cfg, ctx, o, d, tc, m.nets.log_s, torch.ones(3),
                           t_center2=torch.full_like(tc2, float("inf")))
    S1 = 2 * cfg.log_steps + 1
    assert two["t"].shape == (H * W, 2 * S1) and bool((two["t"][:, 1:] >= two["t"][:, :-1]).all())
    assert torch.allclose(none["rgb"], one["rgb"], atol=1e-6) and torch.allclose(none["opacity"], one["opacity"])
    has2 = torch.isfinite(tc2) & torch.isfinite(tc)
    assert int(has2.sum()) > 10
    assert bool((two["cost"][has2] >= one["cost"][has2]).all()) and float(two["cost"][has2].sum()) > float(
        one["cost"][has2].sum())
    assert torch.equal(two["cost"][~has2], one["cost"][~has2])


def test_aggregator_gradcheck_float64():
    """The kernel is plain torch; float64 gradcheck w.r.t. sample position and neighbour features."""
    from engine.methods.pointfield.model import Aggregator

    torch.manual_seed(0)
    net = Aggregator(4, 8).double()
    M, K = 3, 4
    x = torch.randn(M, 3, dtype=torch.float64, requires_grad=True)
    nb = x.detach()[:, None] + 0.1 * torch.randn(M, K, 3, dtype=torch.float64)
    feat = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)      # 5 points' features
    loc = torch.tensor([[0, 1, 2, 0], [3, 0, 0, 0], [4, 2, 1, 0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    lc = torch.log(torch.rand(M, K, dtype=torch.float64))
    dirs = torch.nn.functional.normalize(torch.randn(M, 3, dtype=torch.float64), dim=-1)

    def f(x, feat):
        d2 = ((x[:, None] - nb) ** 2).sum(-1)
        sdf, rgb = net(x, dirs, nb, feat, loc, valid, lc, d2, 0.5, torch.zeros(3, dtype=torch.float64), 1.0, 0.3)
        return sdf, rgb

    assert torch.autograd.gradcheck(f, (x, feat), eps=1e-6, atol=1e-6)


def test_explicit_point_colour_in_the_kernel():
    """The neighbours' explicit SH colour (point_sh_degree) is blended by the given weights (or the
    attention's), evaluated at the view direction and added to the colour logit; zeros change
    nothing; float64 gradcheck w.r.t. the coefficients and the weights."""
    from engine.methods.pointfield.model import Aggregator, sh3

    torch.manual_seed(0)
    net = Aggregator(4, 8).double()
    M, K = 3, 4
    x = torch.randn(M, 3, dtype=torch.float64)
    nb = x[:, None] + 0.1 * torch.randn(M, K, 3, dtype=torch.float64)
    feat = torch.randn(5, 8, dtype=torch.float64)
    loc = torch.tensor([[0, 1, 2, 0], [3, 0, 0, 0], [4, 2, 1, 0]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    lc = torch.log(torch.rand(M, K, dtype=torch.float64))
    dirs = torch.nn.functional.normalize(torch.randn(M, 3, dtype=torch.float64), dim=-1)
    d2 = ((x[:, None] - nb) ** 2).sum(-1)
    args = (x, dirs, nb, feat, loc, valid, lc, d2, 0.5, torch.zeros(3, dtype=torch.float64), 1.0, 0.3)
    _, base = net(*args)
    _, same = net(*args, torch.zeros(M, K, 12, dtype=torch.float64))
    assert torch.equal(base, same)
    # degree 0, weights one-hot on neighbour 0: the logit moves by c * Y00 exactly
    c = torch.zeros(M, K, 3, dtype=torch.float64)
    c[:, 0] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    c[:, 1] = 7.0                                                   # weight 0: ignored
    onehot = torch.zeros(M, K, dtype=torch.float64)
    onehot[:, 0] = 1
    _, moved = net(*args, c, onehot)
    want = torch.sigmoid(torch.logit(base) + 0.28209479177387814 * c[:, 0])
    assert torch.allclose(moved, want, atol=1e-9)
    # degree 1 blended by the attention weights: view-dependent, and gradients reach the coefficients
    coef = torch.randn(M, K, 12, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(M, K, dtype=torch.float64).masked_fill(~valid, float("-inf")), 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: net(*args, a, b)[1], (coef, w), eps=1e-6, atol=1e-6)
    _, r1 = net(*args, coef.detach())
    args2 = args[:1] + (-dirs,) + args[2:]
    _, r2 = net(*args2, coef.detach())
    _, b2 = net(*args2)
    assert not torch.allclose(torch.logit(r1) - torch.logit(base), torch.logit(r2) - torch.logit(b2))
    assert sh3(dirs).shape == (M, 16)


def test_fill_depth_reaches_gaps_next_to_covered_pixels_only():
    from engine.methods.pointfield.scene import fill_depth

    inf = float("inf")
    d = torch.full((2, 5, 6), inf)
    d[0, 1, 1], d[0, 1, 2] = 2.0, 3.0
    one = fill_depth(d, 1)
    assert one[0, 1, 1] == 2.0 and one[0, 1, 2] == 3.0            # covered pixels keep their depth
    assert one[0, 0, 0] == 2.0 and one[0, 0, 3] == 3.0 and one[0, 2, 2] == 2.0   # the nearest of the 3x3
    assert torch.isinf(one[0, 3, 1]) and torch.isinf(one[0, 1, 4]) and torch.isinf(one[1]).all()
    two = fill_depth(d, 2)
    assert two[0, 3, 1] == 2.0 and two[0, 1, 4] == 3.0 and torch.isinf(two[0, 4, 5])
    assert torch.equal(fill_depth(d, 0), d)


def test_stacked_view_sampling_matches_per_view_grid_sample():
    """Encoder.sample_views (one grid_sample over views stacked with a zero row between them) reads
    exactly what Encoder.sample reads in the chosen view, edges and outside points included."""
    from engine.methods.pointfield.model import Encoder

    g = torch.Generator().manual_seed(1)
    H, W, S, U = 12, 17, 4, 300
    pyr = Encoder()(torch.rand(S, 3, H, W, generator=g))
    uv = torch.rand(S, U, 2, generator=g) * torch.tensor([W + 2.0, H + 2.0]) - 1.0     # some past the edges
    uv[0, 0] = torch.tensor([0.0, 0.0])
    uv[1, 1] = torch.tensor([W - 0.01, H - 0.01])
    every = Encoder.sample(pyr, uv, W, H)                                            # (S, U, C)
    views = torch.randint(0, S, (U,), generator=g)
    views[:2] = torch.tensor([0, 1])
    got = Encoder.sample_views(pyr, views, uv[views, torch.arange(U)], W, H)
    want = every[views, torch.arange(U)]
    assert got.shape == want.shape and float(want.abs().sum()) > 0
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_train_step_reaches_every_parameter(model):
    m, ds = model
    opt = m.make_optimizer()
    sp = ds.train
    loss, stats, _ = m.train_step(0, sp.images[0], sp.cameras, 0, ds.background)
    loss.backward()
    assert math.isfinite(float(loss)) and stats["samples_per_ray"] > 1
    groups = {g["name"]: g["params"] for g in opt.param_groups}
    for name in ("encoder", "kernel", "log_s", "point_feat_0", "point_conf_0", "point_sh_0"):
        g = [p.grad for p in groups[name] if p.grad is not None]
        assert g and any(float(t.abs().sum()) > 0 for t in g), f"no gradient reaches {name}"
    opt.zero_grad()


def test_grow_and_prune_keep_optimizer_in_step(model):
    m, ds = model
    opt = m.make_optimizer()
    sc = m.scenes[0]
    n0 = sc.num_points
    sp = ds.train
    loss, _, _ = m.train_step(0, sp.images[0], sp.cameras, 0, ds.background)
    loss.backward()
    opt.step()
    with torch.no_grad():
        sc.point_conf[:5] = -5.0                                   # confidence 0.007 < 0.1: pruned
    p = sc.points[10:13] + torch.tensor([sc.spacing * 2.5, 0.0, 0.0])
    m._grow_buf = [torch.cat([p, torch.zeros(3, 1)], 1)]
    m.cfg.grow_from, m.cfg.grow_every = 1, 1
    res = m.post_step(opt, 0)
    assert res == {"grown": 3, "pruned": 5}
    assert sc.num_points == n0 - 5 + 3 == sc.point_feat.shape[0] == sc.point_conf.shape[0] == sc.point_sh.shape[0]
    for par in (sc.point_feat, sc.point_sh):
        st = opt.state[par]
        assert st["exp_avg"].shape == par.shape
    assert {id(p) for g in opt.param_groups for p in g["params"]} >= {id(sc.point_feat), id(sc.point_sh)}
    assert torch.allclose(sc.points[-3:], p)
    assert bool((torch.sigmoid(sc.point_conf[-3:]) < 0.5 * 0.4 + 1e-3).all())   # 0.4 x the neighbours' (0.5)
    assert "+3 grown, -5 pruned" in m.progress_label()
    loss, _, _ = m.train_step(1, sp.images[1], sp.cameras, 1, ds.background)   # caches rebuilt, still trains
    loss.backward()
    opt.step()


def test_learned_positions_move_the_points_and_their_caches(sphere):
    """With lr_pos the points get a gradient, move, and every pos_every steps the grid and depth maps
    follow them; a checkpoint keeps the moved positions."""
    from engine.data import load_dataset

    ds = load_dataset(sphere)
    cfg = methods.make_config("pointfield", dict(FAST, lr_pos=0.05, pos_every=2, grow_every=0))
    m = methods.get_method("pointfield").create(cfg, ds)
    sc = m.scenes[0]
    p0 = sc.points.clone()
    opt = m.make_optimizer()
    assert "point_off_0" in {g["name"] for g in opt.param_groups}
    sp = ds.train
    for step in range(2):
        loss, _, _ = m.train_step(step, sp.images[step], sp.cameras, step, ds.background)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert float(sc.point_off.grad.abs().sum()) > 0
        opt.step()
        assert bool(torch.isfinite(sc.point_off).all())
        if step == 0:
            assert m.post_step(opt, step) is None
            st = m.state_dict()["scenes"][0]
            assert torch.allclose(st["points"], sc.positions().detach())   # saved moved, not only folded
            grid = sc.grid(cfg)
    res = m.post_step(opt, 1)
    assert res is not None and res["moved"] > 0
    moved = (sc.points - p0).norm(dim=1)
    assert float(moved.max()) > 0 and float(moved.max()) < 2 * 0.05 * 2 * sc.spacing * 1.01
    assert float(sc.point_off.abs().sum()) == 0
    assert sc.grid(cfg) is not grid                                   # caches rebuilt from the moved points


# ------------------------------------------------------------------------------------ doors
def test_train_resume_export_load_render(sphere, tmp_path, capsys):
    import engine
    from engine.cli import main
    from engine.io.ply import read_vertex_properties

    opts = sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in FAST.items()), [])
    assert main(["train", "pointfield", "--data", str(sphere), "--output", str(tmp_path), "--max-steps", "4",
                 "--no-progress", *opts]) == 0
    out = capsys.readouterr().out
    assert "points:" in out and "from mvs (visual hull carved by a plane sweep" in out and "tried dataset first" in out
    run = next((tmp_path / "sphere" / "pointfield").iterdir())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["final"] and recs[-1]["test_psnr"] > 8
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--no-progress"]) == 0
    assert (run / "checkpoints" / "step-000006.pt").is_file()
    m = engine.load(run)
    assert m.step == 6 and m.num_primitives > 100
    r = engine.render(m, m.scenes[0].cameras, 0)
    methods.base.check_render_output(r, 32, 32)
    assert float(r["alpha"].max()) > 0.5 and float(r["alpha"][0, 0]) < 0.5   # the sphere, not the corner
    assert main(["export", str(run), "--format", "ply", "--out", str(tmp_path / "pts.ply")]) == 0
    props = read_vertex_properties(tmp_path / "pts.ply")
    assert {"x", "red", "confidence", "f_0", f"f_{2 * FAST['feature_dim'] - 1}", "sh_0", "sh_11"} <= set(props)
    assert len(props["x"]) == m.num_primitives and np.isfinite(props["f_0"]).all()
    # zero-shot on a scene given at render time, and fine-tuning from the run
    m2 = engine.load(run, scene_data=str(sphere))
    assert m2.scenes[0].name == "sphere" and m2.render(m.scenes[0].cameras, 1)["rgb"].shape == (32, 32, 3)
    assert main(["eval", str(run), "--cameras", str(sphere), "--scene-data", str(sphere), "--max-views", "2",
                 "--out", str(tmp_path / "zs.json")]) == 0
    zs = json.loads((tmp_path / "zs.json").read_text())
    assert zs["num_views"] == 2 and zs["psnr"] > 8 and zs["options"]["scene_data"] == str(sphere)
    # kernelight eval RUN --data UNSEEN: a scene the run never saw (a smaller sphere, other cameras)
    unseen = _write_sphere_scene(tmp_path / "unseen", n_train=8, n_test=2, radius=0.45)
    assert main(["eval", str(run), "--data", str(unseen), "--out", str(tmp_path / "unseen.json")]) == 0
    ev = json.loads((tmp_path / "unseen.json").read_text())
    assert ev["num_views"] == 2 and ev["options"]["scene_data"] == str(unseen)
    assert ev["psnr"] > 8 and np.isfinite(ev["ssim"])
    assert main(["train", "pointfield", "--data", str(sphere), "--output", str(tmp_path / "ft"), "--max-steps", "1",
                 "--no-progress", "--init-from", str(run), *opts]) == 0
    assert "fine-tuning" in capsys.readouterr().out
    # across scenes: two datasets, one network (here the same folder twice: each scene its own points)
    assert main(["train", "pointfield", "--data", str(sphere), "--output", str(tmp_path / "x"), "--max-steps", "2",
                 "--no-progress", "--scenes", str(sphere), *opts]) == 0
    m3 = engine.load(next((tmp_path / "x" / "sphere" / "pointfield").iterdir()))
    assert len(m3.scenes) == 2 and m3.scenes[1].num_points == m3.scenes[0].num_points


# ------------------------------------------------------------------------------------ bad input
def test_eval_data_refused_for_a_method_without_unseen_scenes(tmp_path, sphere, capsys):
    """``eval --data`` on a run of a method that cannot render an unseen scene: one line, exit 2."""
    from engine.cli import main
    from engine.io.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "rg" / "checkpoints" / "step-000001.pt", {"model": {}}, method="raygauss", step=1)
    assert main(["eval", str(tmp_path / "rg"), "--data", str(sphere)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0] and "raygauss cannot render an unseen scene" in err[0]
    assert main(["eval", str(tmp_path / "rg"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "unseen scene with no training" in " ".join(capsys.readouterr().out.split())


def test_bad_point_clouds(sphere):
    from engine.data import load_dataset
    from engine.methods.pointfield.scene import PointFieldError, build_scene

    ds = load_dataset(sphere)
    cfg = methods.make_config("pointfield", FAST)
    for pts, msg in ((np.zeros((0, 3), np.float32), "empty"),
                     (np.full((10, 3), np.nan, np.float32), "NaN"),
                     (np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) + 500, "no point projects")):
        with pytest.raises(PointFieldError, match=msg):
            build_scene(ds, cfg, [], points=(pts, None))
    ply = sphere.parent / "nan.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
                   "end_header\nnan nan nan\nnan 0 0\n")
    with pytest.raises(KernelightError, match="NaN"):
        build_scene(ds, methods.make_config("pointfield", dict(FAST, points=str(ply))), [])


def test_dataset_without_points_or_masks(sphere, tmp_path):
    from engine.data import load_dataset
    from engine.methods.pointfield.scene import PointFieldError, build_scene

    ds = load_dataset(sphere)
    ds.train.alpha = None
    with pytest.raises(PointFieldError, match=r"no points from any source.*carve.*kernelight points"):
        build_scene(ds, methods.make_config("pointfield", FAST), [])


def test_checkpoint_from_before_the_view_angle_option_renders_with_gpf_score(model):
    m, ds = model
    cls = methods.get_method("pointfield")
    st = m.state_dict()
    assert st["view_angle_power"] == 8.0                            # the default is recorded
    again = cls.from_state_dict(methods.make_config("pointfield", FAST), st)
    assert again.cfg.view_angle_power == 8.0
    old = {k: v for k, v in st.items() if k not in ("view_angle_power", "depth_fill")}  # session 12's
    legacy = cls.from_state_dict(methods.make_config("pointfield", FAST), old)
    assert legacy.cfg.view_angle_power == 0.0 and legacy.cfg.depth_fill == 0
    assert any("predates" in n for n in legacy.notes)
    asked = cls.from_state_dict(methods.make_config("pointfield", dict(FAST, view_angle_power=4)), old)
    assert asked.cfg.view_angle_power == 4.0                        # an option given explicitly wins
    a = m.render(ds.splits["test"].cameras, 0)["rgb"]
    b = legacy.render(ds.splits["test"].cameras, 0)["rgb"]
    assert not torch.equal(a, b)                                    # the score changes what is rendered


def test_checkpoint_keeps_the_explicit_colour_and_reads_older_ones(model):
    """point_sh travels in the state; a checkpoint without it loads with zeros (renders as trained); a
    checkpoint of another SH degree keeps the bands both have."""
    m, ds = model
    cls = methods.get_method("pointfield")
    sc = m.scenes[0]
    with torch.no_grad():
        sc.point_sh.copy_(torch.randn_like(sc.point_sh))
    st = m.state_dict()
    again = cls.from_state_dict(methods.make_config("pointfield", FAST), st)
    assert torch.equal(again.scenes[0].point_sh, sc.point_sh)
    cams = ds.splits["test"].cameras
    assert torch.equal(again.render(cams, 0)["rgb"], m.render(cams, 0)["rgb"])
    old = dict(st, scenes=[{k: v for k, v in s.items() if k != "point_sh"} for s in st["scenes"]])
    legacy = cls.from_state_dict(methods.make_config("pointfield", FAST), old)
    assert legacy.scenes[0].point_sh.shape == sc.point_sh.shape and not legacy.scenes[0].point_sh.any()
    dc = cls.from_state_dict(methods.make_config("pointfield", dict(FAST, point_sh_degree=0)), st)
    assert torch.equal(dc.scenes[0].point_sh, sc.point_sh.view(-1, 3, 4)[:, :, 0])
    with torch.no_grad():
        sc.point_sh.zero_()


def test_checkpoint_of_another_method(tmp_path, model):
    from engine.io.checkpoint import save_checkpoint

    ck = tmp_path / "run" / "checkpoints" / "step-000001.pt"
    save_checkpoint(ck, {"model": {}}, method="raygauss", step=1)
    m, ds = model
    with pytest.raises(KernelightError, match="pointfield checkpoint|from method 'raygauss'"):
        methods.get_method("pointfield").create(methods.make_config("pointfield", dict(FAST, init_from=str(ck))), ds)
    with pytest.raises(CheckpointError, match="not a pointfield model state"):
        methods.get_method("pointfield").from_state_dict(methods.make_config("pointfield", {}), {"means": 1})


def test_dataset_points_filtered_by_the_hull(tmp_path):
    """A .ply beside the data is used (hull-filtered); a box-filling random cloud is replaced by the swept hull."""
    from engine.data import load_dataset
    from engine.geometry.points import PointCloud, write_points_ply
    from engine.methods.pointfield.scene import build_scene

    root = _write_sphere_scene(tmp_path / "s", n_train=8, n_test=1)
    rng = np.random.default_rng(0)
    cfg = methods.make_config("pointfield", FAST)
    d = rng.normal(size=(3000, 3))
    surf = (0.6 * d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    write_points_ply(root / "points3d.ply", PointCloud(np.concatenate([surf, surf[:100] * 3]), None, "t", "t"))
    notes = []
    sc = build_scene(load_dataset(root), cfg, notes)
    assert "points3d.ply" in notes[0] and "100 outside the visual hull" in notes[0] and sc.num_points == 3000
    box = rng.uniform(-1.3, 1.3, size=(20000, 3)).astype(np.float32)
    write_points_ply(root / "points3d.ply", PointCloud(box, None, "t", "t"))
    notes = []
    build_scene(load_dataset(root), cfg, notes)
    assert "box-filling" in notes[0] and "so the hull instead: " in notes[0] and "from mvs" in notes[0]
