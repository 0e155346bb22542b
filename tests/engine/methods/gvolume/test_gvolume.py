"""GaussianVolume (GVGEN): the candidate-pool matching and strategy on hand-made volumes, the offset
loss, and a tiny N = 8 volume trained on the bundled mic through ``kernelight train gvolume``,
then exported (3DGS .ply reloaded by engine.load, GDF against brute force) and reloaded (another N
refused)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.methods.gvolume.config import GVolumeConfig
from engine.methods.gvolume.model import GaussianVolume
from engine.methods.gvolume.pool import CandidatePoolStrategy, nearest_free_anchors

REPO = Path(__file__).resolve().parents[4]
MIC = REPO / "scenes" / "mic" / "mic_100"


def _slot(n, i, j, k):
    return (i * n + j) * n + k


# ------------------------------------------------------------------------ the matching


def test_children_take_the_nearest_free_anchor_within_the_radius():
    n = 4
    free = torch.zeros(n ** 3, dtype=torch.bool)
    for ijk in [(1, 1, 1), (1, 1, 2), (3, 3, 3), (0, 0, 0)]:
        free[_slot(n, *ijk)] = True
    pos = torch.tensor([[1.2, 1.1, 1.3],     # nearest free: (1,1,1)
                        [1.1, 1.0, 1.4],     # wants (1,1,1) too, loses it to row 0: next nearest (1,1,2)
                        [1.0, 1.0, 1.0],     # (1,1,1), (1,1,2) taken; (0,0,0) is sqrt(3) > 1.5 away: none
                        [2.0, 2.5, 3.0],     # (3,3,3) at distance 1.118: taken
                        [0.5, 0.5, 5.0]])    # outside the grid, nothing within 1.5
    got = nearest_free_anchors(pos, free, n, 1.5).tolist()
    assert got == [_slot(n, 1, 1, 1), _slot(n, 1, 1, 2), -1, _slot(n, 3, 3, 3), -1]
    # a larger radius reaches (0,0,0) for row 2
    assert nearest_free_anchors(pos, free, n, 1.8).tolist()[2] == _slot(n, 0, 0, 0)
    # the pool itself is not modified
    assert int(free.sum()) == 4


def _volume(n=4):
    """Cell = 1: anchors at integer points of [0, n-1]^3."""
    vol = GaussianVolume(torch.tensor([[0.0] * 3, [float(n - 1)] * 3]), n, 0, init_scale_cells=0.1)
    return vol


def test_strategy_keeps_exactly_n3_slots_through_densify_prune_and_the_end():
    n = 4
    cfg = GVolumeConfig(grid_size=n, densify_grad_thr=1e-3, clone_scale_frac=0.05, prune_opacity=0.005,
                        densify_from=1, densify_until=10, densify_every=1, reactivate_opacity=1e-4)
    vol = _volume(n)
    A, B, C, D = _slot(n, 1, 1, 1), _slot(n, 2, 2, 2), _slot(n, 3, 0, 0), _slot(n, 0, 3, 3)
    for s in (A, B, C, D):
        vol.reset_rows(torch.tensor([s]), opacity=0.5)
        vol.active[s] = True
    vol.offset.data[A] = torch.tensor([0.4, 0.0, 0.0])      # A sits at (1.4, 1, 1): clone candidate (small)
    vol.log_scales.data[B] = math.log(0.5)                  # B is large: split candidate
    vol.opacity.data[C] = math.log(0.001 / 0.999)           # C is transparent: pruned
    vol.sh_dc.data[A] = 0.7
    opt = torch.optim.Adam([{"name": k, "params": [p]} for k, p in vol.param_dict().items()], lr=0.01)
    for p in vol.param_dict().values():
        p.grad = torch.ones_like(p)
    opt.step()
    st = CandidatePoolStrategy(cfg, extent=vol.extent, seed=0)
    st._reset(n ** 3, "cpu")
    st.grad_accum[[A, B, D]] = torch.tensor([5e-3, 4e-3, 1e-4])   # D below the threshold
    st.count[[A, B, D]] = 1.0
    before_c = vol.means()[C].clone()
    pa = vol.means()[A].detach().clone()                     # ~(1.4, 1, 1) after the Adam step
    pb = float(vol.log_scales[B, 0].detach())
    res = st.densify_and_prune(vol, opt)
    # the clone: A's child at A's position in the nearest free anchor, (1,1,1) is A's own: (2,1,1)
    child = _slot(n, 2, 1, 1)
    assert bool(vol.active[child]) and res["cloned"] == 1
    assert torch.allclose(vol.means()[child], pa) and torch.allclose(vol.means()[A], pa)
    assert torch.allclose(vol.offset[child], pa - torch.tensor([2.0, 1.0, 1.0]))
    assert float(vol.sh_dc[child, 0, 0]) == pytest.approx(float(vol.sh_dc[A, 0, 0].detach()))
    assert float(opt.state[vol.offset]["exp_avg"][child].abs().sum()) == 0     # fresh Adam moments
    assert float(opt.state[vol.offset]["exp_avg"][A].abs().sum()) > 0          # the parent keeps its own
    # the split: B's two children each within 1.5 cells of their anchor, scales / 1.6
    assert res["split"] == 1 and res["split_children"] == 2
    kids = [s for s in torch.nonzero(vol.active)[:, 0].tolist() if s not in (A, child, D)]
    assert len(kids) == 2
    for s in kids:
        assert float((vol.offset[s]).norm()) <= 1.5 + 1e-5
        assert float(vol.log_scales[s, 0]) == pytest.approx(pb - math.log(1.6), abs=1e-5)
    # the prune: C's anchor is back in the pool, its slot reset
    assert not bool(vol.active[C]) and res["pruned"] == 1
    assert float(vol.offset[C].abs().sum()) == 0 and not torch.equal(vol.means()[C], before_c)
    # slot count: always exactly n^3, active + pool
    assert vol.offset.shape[0] == n ** 3 and res["active"] + res["pool"] == n ** 3
    assert vol.num_active == 5 and int((~vol.active).sum()) == n ** 3 - 5
    # the end of densification: every free anchor re-activated at opacity 1e-4, offset 0
    free_before = torch.nonzero(~vol.active)[:, 0]
    out = st.step(vol, opt, step=9)
    assert out["reactivated"] == n ** 3 - 5 and vol.num_active == n ** 3
    assert torch.allclose(torch.sigmoid(vol.opacity[free_before]), torch.tensor(1e-4), rtol=1e-3)
    assert float(vol.offset[free_before].abs().sum()) == 0
    assert st.step(vol, opt, step=10) is None and vol.num_active == n ** 3        # and stays so


def test_a_child_with_no_free_anchor_in_range_is_dropped_and_a_lonely_split_parent_stays():
    n = 4
    cfg = GVolumeConfig(grid_size=n, densify_grad_thr=1e-3, clone_scale_frac=0.05)
    vol = _volume(n)
    vol.reset_rows(torch.arange(n ** 3), opacity=0.5)
    vol.active[:] = True                                   # no free anchor at all
    P = _slot(n, 1, 1, 1)
    vol.log_scales.data[P] = math.log(3.0)                 # a big Gaussian: children land far away
    st = CandidatePoolStrategy(cfg, extent=vol.extent, seed=0)
    st._reset(n ** 3, "cpu")
    st.grad_accum[[P, 0]] = 1.0
    st.count[[P, 0]] = 1.0
    keep = vol.means()[P].clone()
    res = st.densify_and_prune(vol, None)
    assert res["cloned"] == 0 and res["dropped"] >= 1 and vol.num_active == n ** 3
    # P's own anchor was the only free one; if no child took it, P stays as it was
    if res["split_children"] == 0:
        assert torch.equal(vol.means()[P], keep) and float(vol.log_scales[P, 0]) == pytest.approx(math.log(3.0))


@pytest.mark.parametrize("needs_both", [False, True])
def test_a_split_with_one_placed_child(needs_both):
    """Only the parent's own anchor is free: one child takes it, the other is dropped. By default the
    parent becomes that smaller child; with split_needs_both the split does not happen."""
    n = 4
    cfg = GVolumeConfig(grid_size=n, densify_grad_thr=1e-3, clone_scale_frac=0.001, split_needs_both=needs_both)
    vol = _volume(n)
    vol.reset_rows(torch.arange(n ** 3), opacity=0.5)
    vol.active[:] = True
    P = _slot(n, 1, 1, 1)
    vol.log_scales.data[P] = math.log(0.05)                # both children land next to P's anchor
    st = CandidatePoolStrategy(cfg, extent=vol.extent, seed=0)
    st._reset(n ** 3, "cpu")
    st.grad_accum[P], st.count[P] = 1.0, 1.0
    res = st.densify_and_prune(vol, None)
    assert vol.num_active == n ** 3 and res["dropped"] >= 1
    if needs_both:
        assert res["split"] == 0 and float(vol.log_scales[P, 0]) == pytest.approx(math.log(0.05))
        assert float(vol.offset[P].abs().sum()) == 0
    else:
        assert res["split"] == 1 and float(vol.log_scales[P, 0]) == pytest.approx(math.log(0.05 / 1.6), abs=1e-5)
        assert 0 < float(vol.offset[P].abs().sum()) < 0.3


def test_opacity_reset_caps_opacities_during_densification_only():
    n = 3
    cfg = GVolumeConfig(grid_size=n, densify_from=100, densify_until=20, densify_every=5, opacity_reset_every=5,
                        max_steps=30)
    vol = _volume(n)
    vol.reset_rows(torch.arange(n ** 3), opacity=0.9)
    vol.active[:] = True
    st = CandidatePoolStrategy(cfg, extent=vol.extent)
    res = st.step(vol, None, step=9)                            # 10 steps done: a reset, no densification
    assert res["opacity_reset"] and torch.allclose(torch.sigmoid(vol.opacity), torch.tensor(0.01), rtol=1e-4)
    assert st.step(vol, None, step=10) is None
    vol.opacity.data[:] = 2.0
    assert "reactivated" in st.step(vol, None, step=19)         # the end of densification: no more resets
    assert st.step(vol, None, step=24) is None and float(vol.opacity.min()) == 2.0


def test_create_from_a_dataset_box_and_init_choices():
    from engine import methods
    from engine.data import load_dataset
    from engine.methods.gvolume.method import GVolumeMethod

    ds = load_dataset(MIC, downscale=4)
    m = GVolumeMethod.create(methods.make_config("gvolume", {"grid_size": 4, "volume_box": "scene",
                                                             "init": "all"}), ds)
    assert m.num_primitives == 64 and torch.equal(m.bounds(), ds.scene_box.float())
    assert torch.allclose(torch.sigmoid(m.vol.opacity), torch.tensor(0.1), rtol=1e-4)
    g = m.vol.as_grid()
    assert g.shape == (4, 4, 4, 14) and torch.allclose(g[1, 2, 3, 10:13], m.vol.quats[(1 * 4 + 2) * 4 + 3, 1:])
    with pytest.raises(ConfigError, match="dataset has no points"):
        ds.points = None
        GVolumeMethod.create(methods.make_config("gvolume", {"grid_size": 4, "init": "points"}), ds)


def test_offset_loss_is_gvgens_formula():
    n = 32
    vol = GaussianVolume(torch.tensor([[-0.5] * 3, [0.5] * 3]), n, 0)    # GVGEN's unit cube
    vol.offset.data[0] = torch.tensor([0.1, -0.02, 0.0])
    want = (max(0.1 - 1.5 / 31, 0) + max(0.02 - 1.5 / 31, 0)) / (3 * n ** 3)
    assert float(vol.offset_loss(1.5)) == pytest.approx(want, rel=1e-5)


def test_config_refuses_bad_sizes():
    from engine import methods

    with pytest.raises(ConfigError, match="grid_size must be in"):
        methods.make_config("gvolume", {"grid_size": 1})
    with pytest.raises(ConfigError, match="sh_degree must be in"):
        methods.make_config("gvolume", {"sh_degree": 5})


# ------------------------------------------------------------------------ end to end (N = 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from engine.cli import main

    out = tmp_path_factory.mktemp("gv")
    assert main(["train", "gvolume", "--data", str(MIC), "--downscale", "4", "--grid-size", "8",
                 "--max-steps", "12", "--densify-from", "2", "--densify-every", "3", "--densify-until", "9",
                 "--densify-grad-thr", "1e-7", "--eval-every", "0", "--log-every", "1", "--checkpoint-every", "6",
                 "--output", str(out / "out"), "--no-progress"]) == 0
    return next((out / "out").glob("*/gvolume/*"))


def test_training_through_the_cli_ends_with_exactly_n3_gaussians(run):
    import engine

    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) for r in steps)
    dens = [r for r in steps if "cloned" in r]
    assert dens and any(r["cloned"] + r["split"] > 0 for r in dens)                  # the pool was used
    assert all(r["active"] + r["pool"] == 8 ** 3 for r in dens)
    end = [r for r in steps if "reactivated" in r]
    assert len(end) == 1 and end[0]["step"] == 9 and end[0]["active"] == 512 and end[0]["pool"] == 0
    assert 0 < dens[0]["active"] < 512                         # started from the hull, the rest pooled
    assert all(r["num_primitives"] == 512 for r in steps if r["step"] >= 9)
    m = engine.load(run)
    assert m.num_primitives == 512 and m.progress_label() == "gvolume 8^3: 512 active"
    side = m.bounds()[1] - m.bounds()[0]                      # default: a cube around the visual hull
    assert torch.allclose(side, side[0].expand(3)) and float(side[0]) < 3.0 - 0.1
    ds = engine.load_dataset(MIC, downscale=4)
    from engine.methods.base import check_render_output

    out = check_render_output(engine.render(m, ds.splits["test"].cameras, 0, background=(1.0, 1.0, 1.0)), 25, 25)
    assert float(out["alpha"].max()) > 0.1 and float(out["cost"].max()) > 0


def test_export_ply_reloads_and_renders_and_the_gdf_is_the_brute_force_one(run, tmp_path):
    import engine
    from engine.cli import main

    assert main(["export", str(run), "--format", "ply", "--out", str(tmp_path / "v.ply")]) == 0
    assert main(["export", str(run), "--format", "gdf", "--out", str(tmp_path / "gdf.npy")]) == 0
    m = engine.load(run)
    g = engine.load(tmp_path / "v.ply")                       # any standard 3DGS reader
    assert g.num_primitives == 512
    ds = engine.load_dataset(MIC, downscale=4)
    cams = ds.splits["test"].cameras
    a, b = m.render(cams, 1), g.render(cams, 1)
    assert float(b["alpha"].max()) > 0.1
    assert float((a["rgb"] - b["rgb"]).abs().max()) < 1e-3    # the same Gaussians, splatted alike
    gdf = np.load(tmp_path / "gdf.npy")
    assert gdf.shape == (8, 8, 8) and gdf.dtype == np.float32
    v = m.vol
    brute = torch.cdist(v.anchors.double(), v.means()[v.active].detach().double()).amin(1).reshape(8, 8, 8)
    assert np.allclose(gdf, brute.numpy(), atol=1e-5)
    # grid point (i, j, k) is slot (i N + j) N + k: check one by hand
    i, j, k = 2, 5, 7
    p = v.anchors[(i * 8 + j) * 8 + k]
    assert torch.allclose(p, v.box[0] + torch.tensor([i, j, k]) * v.cell)
    assert gdf[i, j, k] == pytest.approx(float((v.means()[v.active] - p).norm(dim=1).min()), abs=1e-5)


def test_a_checkpoint_with_another_n_is_refused(run):
    import engine

    ckpt = sorted((run / "checkpoints").glob("*.pt"))[-1]
    with pytest.raises(ConfigError, match=r"holds a 8\^3 volume .* grid_size is 16 .* grid_size=8"):
        engine.load(ckpt, grid_size=16)
    with pytest.raises(ConfigError, match=r"holds a 8\^3 volume"):
        engine.load(run, grid_size=32)
    # a state whose rows do not match its N
    from engine.methods.gvolume.method import GVolumeMethod

    st = engine.load(run).state_dict()
    st["params"]["offset"] = st["params"]["offset"][:-1]
    with pytest.raises(ConfigError, match="corrupt GaussianVolume checkpoint"):
        GVolumeMethod.from_state_dict(GVolumeConfig(grid_size=8), st)


def test_resume_continues_with_the_pool_state(run, tmp_path):
    import shutil

    from engine.cli import main

    r = tmp_path / "run"
    shutil.copytree(run, r)
    for p in (r / "checkpoints").glob("step-000012.pt"):
        p.unlink()                                            # resume from step 6: before the end
    assert main(["train", "--resume", str(r), "--max-steps", "10", "--no-progress"]) == 0
    recs = [json.loads(ln) for ln in (r / "metrics.jsonl").read_text().splitlines()]
    assert [x for x in recs if x.get("step") == 9 and "reactivated" in x]
    import engine

    assert engine.load(r).num_primitives == 512
