"""A short training run on a tiny synthetic scene lowers the loss; state, export and shell fine-tuning."""
import math

import pytest
import torch

from engine.cameras import Cameras
from engine.data.dataset import Dataset, Split
from engine.data.sampler import RaySampler
from engine.methods.base import check_render_output
from engine.methods.shells.config import ShellsConfig
from engine.methods.shells.method import ShellsMethod
from shaders import runtime

runtime.init()


def _sphere_dataset(n_views=6, size=16, radius=0.45):
    """Views of a sphere coloured by its normal on a white background (analytic, with alpha)."""
    c2ws = []
    for i in range(n_views):
        th = 2 * math.pi * i / n_views
        eye = torch.tensor([3 * math.cos(th), 3 * math.sin(th), 0.8])
        fwd = torch.nn.functional.normalize(-eye, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0])), dim=0)
        down = torch.linalg.cross(fwd, right)
        m = torch.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, eye
        c2ws.append(m)
    cams = Cameras(20.0, 20.0, size / 2, size / 2, size, size, torch.stack(c2ws))
    imgs, alphas = [], []
    for i in range(n_views):
        o, d = cams.generate_rays(i)
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - radius ** 2)
        hit = disc > 0
        t = -b - torch.sqrt(disc.clamp_min(0))
        n = torch.nn.functional.normalize(o + t[..., None] * d, dim=-1)
        col = torch.where(hit[..., None], 0.5 + 0.4 * n, torch.ones(3))
        imgs.append(col)
        alphas.append(hit.float())
    split = Split("train", cams, torch.stack(imgs), [], alpha=torch.stack(alphas))
    return Dataset("blender", None, {"train": split}, torch.tensor([[-1.0] * 3, [1.0] * 3]), torch.ones(3))


def _cfg(**kw):
    base = dict(hash_levels=4, hash_log2_size=12, hash_base_res=4, hash_max_res=32, sdf_hidden=32,
                color_hidden=32, view_sh_degree=1, march_steps=64, max_samples=24, rays_per_batch=96,
                occ_res=16, occ_warmup=10, occ_update_every=5, max_steps=30, lr_warmup=5,
                shell_grid_res=32, shell_target_faces=0, render_chunk=4096, shell_finetune_from=0,
                shell_probe_grid=48)
    base.update(kw)
    return ShellsConfig(**base)


def _train(m, ds, steps, start=0):
    opt = m.make_optimizer()
    smp = RaySampler(ds.train, m.cfg.rays_per_batch, seed=0)
    losses = []
    for step in range(start, start + steps):
        opt.zero_grad()
        loss, stats = m.train_step_rays(step, smp.sample(), ds.background)
        assert math.isfinite(stats["psnr"])
        loss.backward()
        m.after_backward()                             # as the trainer does
        m.update_learning_rates(opt, step)
        opt.step()
        m.post_step(opt, step)
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(scope="module")
def trained():
    ds = _sphere_dataset()
    cfg = _cfg()
    m = ShellsMethod.create(cfg, ds)
    losses = _train(m, ds, 30)
    return ds, m, losses


def test_short_training_lowers_loss(trained):
    _, m, losses = trained
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses
    assert m.occ.occ.float().mean() < 1.0          # the occupancy grid was updated and skips space


def test_state_roundtrip_and_render(trained):
    ds, m, _ = trained
    m2 = ShellsMethod.from_state_dict(m.cfg, m.state_dict())
    a = m.render(ds.train.cameras, 0, background=ds.background)
    b = m2.render(ds.train.cameras, 0, background=ds.background)
    for k in ("rgb", "alpha", "depth", "depth_sum", "normal", "cost"):
        torch.testing.assert_close(a[k], b[k])
    assert a["rgb"].shape == (16, 16, 3) and a["cost"].shape == (16, 16)
    check_render_output(a, 16, 16)
    # the table's shape is the checkpoint's, whatever the config says (test_normals.py covers the rest)
    m3 = ShellsMethod.from_state_dict(_cfg(hash_log2_size=10), m.state_dict())
    assert m3.cfg.hash_log2_size == m.cfg.hash_log2_size
    torch.testing.assert_close(m3.render(ds.train.cameras, 0, background=ds.background)["rgb"], a["rgb"])


def test_export_and_shell_finetune(trained, tmp_path):
    ds, m, _ = trained
    m2 = ShellsMethod.from_state_dict(m.cfg, m.state_dict())
    paths = m2.export("shells", tmp_path)
    assert [p.name for p in paths] == ["outer.ply", "inner.ply", "surface.ply"] and all(p.stat().st_size > 0 for p in paths)
    assert m2.active_mode == "shells" and m2.num_primitives > 0
    out = m2.render(ds.train.cameras, 1, background=ds.background)
    vol = m2.render(ds.train.cameras, 1, background=ds.background, mode="volume")
    assert out["cost"].mean() < vol["cost"].mean()
    # fine-tuning inside the band runs and keeps the loss finite; the state keeps the shells
    losses = _train(m2, ds, 3, start=30)
    assert all(math.isfinite(x) for x in losses)
    m3 = ShellsMethod.from_state_dict(m2.cfg, m2.state_dict())
    assert m3.shells is not None and m3.shells.face_counts() == m2.shells.face_counts()
    with pytest.raises(Exception, match="exports: shells"):
        m2.export("ply", tmp_path)


@pytest.mark.parametrize("params", ["auto", "color", "all"])
def test_finetune_trains_what_shell_finetune_params_says(trained, params):
    import dataclasses

    ds, m, _ = trained
    m2 = ShellsMethod.from_state_dict(dataclasses.replace(m.cfg, shell_finetune_params=params), m.state_dict())
    m2.extract_shells()
    before = {n: p.detach().clone() for n, p in m2.field.named_parameters()}
    grid_before = m2.renderer.probe_grid().f.clone()
    _train(m2, ds, 20, start=30)                        # step 40 refreshes what follows the field
    changed = {n for n, p in m2.field.named_parameters() if not torch.equal(p.detach(), before[n])}
    colour = {n for n in before if n.startswith("col_")}
    if params == "all":
        assert changed == set(before)
        assert not torch.equal(m2.renderer.probe.f, grid_before)   # the probe grid followed the field
    else:                                               # auto = color with the probe sampler
        assert changed == colour
        assert torch.equal(m2.renderer.probe.f, grid_before)
    with pytest.raises(Exception, match="shell_finetune_params"):
        ShellsMethod.from_state_dict(_cfg(shell_finetune_params="sdf"), m.state_dict()).finetune_colour_only
    # colour only: the geometry builds no graph (no table gradient computed to be discarded), and
    # every parameter requires grad again after the step
    smp = RaySampler(ds.train, m2.cfg.rays_per_batch, seed=1)
    m2.field.zero_grad(set_to_none=True)
    loss, _ = m2.train_step_rays(60, smp.sample(), ds.background)
    loss.backward()
    with_grad = {n for n, p in m2.field.named_parameters() if p.grad is not None}
    assert with_grad == (colour if params != "all" else set(before))
    assert all(p.requires_grad for p in m2.field.parameters())


def test_probe_grid_refresh_follows_the_field_near_the_band(trained):
    from engine.methods.shells.render import ProbeGrid

    _, m, _ = trained
    field = ShellsMethod.from_state_dict(m.cfg, m.state_dict()).field
    g = ProbeGrid(field, m.cfg)
    near = torch.zeros(g.f.numel(), dtype=torch.bool)
    near[g.refresh_index] = True
    assert 0 < near.sum() < near.numel()
    with torch.no_grad():
        field.sdf_l1.bias[0] += 0.01                    # shift the whole SDF by 0.01 a
    old = g.f.clone()
    g.refresh(field)
    diff = (g.f - old).reshape(-1)
    torch.testing.assert_close(diff[near], torch.full_like(diff[near], 0.01 * float(field.half_size)),
                               atol=1e-5, rtol=0)
    assert (diff[~near] == 0).all()                     # far from the band nothing is re-evaluated
    f_full, _ = field.sdf_and_log_s_grid(g.lo, g.lo + g.cell * (g.res - 1), g.res)
    torch.testing.assert_close(g.f.reshape(-1)[near], f_full.reshape(-1)[near])


def test_probe_grid_coarse_to_fine_matches_the_dense_grid_near_the_band(trained):
    """Only cells near the band are evaluated; there the grid equals the dense one exactly."""
    from engine.methods.shells.render import ProbeGrid

    _, m, _ = trained
    field = m.field
    r = m.cfg.shell_probe_grid
    dense = ProbeGrid(field, m.cfg, coarse=0)
    assert dense.evaluated == r ** 3

    def same_near(g):
        if not torch.equal(g.refresh_index, dense.refresh_index):
            return False
        i = dense.refresh_index
        return torch.equal(g.f.view(-1)[i], dense.f.view(-1)[i]) and torch.equal(g.log_s.view(-1)[i], dense.log_s.view(-1)[i])

    g = ProbeGrid(field, m.cfg, coarse=12)
    assert same_near(g)
    assert g.evaluated < 0.8 * r ** 3
    # the flood fill completes the near region from a single seed cell
    j = int(dense.refresh_index[dense.refresh_index.numel() // 2])
    ijk = torch.tensor([j // (r * r), (j // r) % r, j % r])
    c = torch.clamp(ijk * 11 // (r - 1), 0, 10)                 # its coarse cell
    seed = torch.zeros(11, 11, 11, dtype=torch.bool)
    seed[c[0], c[1], c[2]] = True
    one = ProbeGrid(field, m.cfg, coarse=12, _seed_cells=seed)
    assert same_near(one) and one.evaluated <= g.evaluated + 12 ** 3
    # without seeds nothing is evaluated, and the check above notices
    none = ProbeGrid(field, m.cfg, coarse=12, _seed_cells=torch.zeros(11, 11, 11, dtype=torch.bool))
    assert none.evaluated == 12 ** 3 and not same_near(none)


def test_extraction_on_the_band_grid_equals_the_dense_extraction():
    """A thin band (solid kernel) around the trained-from-scratch sphere prior with a bumpy hash
    residual: about half the nodes are evaluated, and the meshes are those of the dense grid."""
    from engine.methods.shells.extract import extract_shells

    m = ShellsMethod.create(_cfg(shell_grid_res=48), _sphere_dataset())
    with torch.no_grad():
        m.field.log_s.fill_(m.field.max_log_s)                  # half-width at its minimum clamp
        m.field.sdf_l1.weight[0].normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    sparse = extract_shells(m.field, m.cfg, coarse=12)
    dense = extract_shells(m.field, m.cfg, coarse=0)
    assert sparse.info["evaluated"] < 0.7 * 48 ** 3 and dense.info["evaluated"] == 48 ** 3
    for k in ("outer", "inner", "surface"):
        (va, fa), (vb, fb) = getattr(sparse, k), getattr(dense, k)
        assert va.shape[0] > 0 and torch.equal(va, vb) and torch.equal(fa, fb), k


def test_finetune_step_fraction_or_step():
    assert ShellsConfig().finetune_step == 7000                         # default: 7,000 + 1,000 steps
    assert ShellsConfig(max_steps=1600).finetune_step == 1400
    assert ShellsConfig(max_steps=300, shell_finetune_from=0.5).finetune_step == 150
    assert ShellsConfig(max_steps=300, shell_finetune_from=120).finetune_step == 120
    assert ShellsConfig(shell_finetune_from=0).finetune_step == 0


def test_training_extracts_shells_at_the_finetune_fraction():
    ds = _sphere_dataset()
    m = ShellsMethod.create(_cfg(max_steps=20, shell_finetune_from=0.75), ds)
    _train(m, ds, 14)
    assert m.shells is None and m.active_mode == "volume"
    _train(m, ds, 6, start=14)                      # after the 15th step (0-based 14) it extracts
    assert m.shells is not None and m.active_mode == "shells"


def test_partial_occupancy_refresh_schedule():
    """occ_refresh_fraction 0.25: refreshes re-evaluate part of the grid, and every 4th all of it;
    the grid still follows the field while training; 0 is refused by name."""
    from engine.errors import ConfigError

    ds = _sphere_dataset()
    m = ShellsMethod.create(_cfg(occ_refresh_fraction=0.25), ds)
    every = m.cfg.occ_update_every
    kinds = [m._refresh_cells(k * every) is None for k in range(1, 9)]
    assert kinds == [False, False, False, True] * 2                    # full on every 4th refresh
    _train(m, ds, 30)                               # refreshes after steps 10, 15, ..., 30
    assert 0.0 < float(m.occ.occ.float().mean()) < 0.5
    part = m._refresh_cells(every)                  # the occupied cells, their neighbours, some others
    assert part.dtype == torch.bool and bool(part[m.occ.occ].all()) and 0 < int(part.sum()) < part.numel()
    with pytest.raises(ConfigError, match="occ_refresh_fraction"):
        ShellsMethod.create(_cfg(occ_refresh_fraction=0.0), ds)


def test_volumetric_phase_decays_its_learning_rate_before_fine_tuning():
    from engine.methods.shells.method import lr_factor

    c = ShellsConfig(max_steps=1400, shell_finetune_from=1200, lr_warmup=10)
    assert lr_factor(0, c) == pytest.approx(0.1)                         # warm-up
    assert lr_factor(10, c) == pytest.approx(1.0)
    assert lr_factor(1199, c) == pytest.approx(0.1, abs=1e-4)            # decayed when the shells come
    # fine-tuning: the cosine over all of max_steps, from about 0.145 down to 0.1
    assert lr_factor(1200, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 1190 / 1390)))
    assert lr_factor(1399, c) == pytest.approx(0.1, abs=1e-4)
    v = ShellsConfig(max_steps=1400, shell_finetune_from=0, lr_warmup=10)   # volume only: one cosine
    assert lr_factor(700, v) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 690 / 1390)))


def _rays(ds, view=1):
    o, d = ds.train.cameras.generate_rays(view)
    return o.reshape(-1, 3), d.reshape(-1, 3)


@pytest.mark.parametrize("params,sampler", [("all", "probe"), ("color", "probe"), ("auto", "step")])
def test_band_finetuning_passes_crossing_opacity_gradients_to_the_geometry(trained, params, sampler):
    """Whole-field fine-tuning: the probe sampler's crossing samples get their opacity from the field
    (SDF network, hash grid, kernel size), not from the probe grid. With near misses switched off
    (tau 1) every opacity is a crossing's: its gradient reaches the geometry only without the
    grid shortcut (colour-only fine-tuning keeps the shortcut: no gradient). The step sampler
    (volume rendering in the band) trains everything (auto) with the field's own opacities."""
    import dataclasses

    ds, m, _ = trained
    cfg = dataclasses.replace(m.cfg, shell_finetune_params=params, shell_probe_tau=1.0, shell_probe_solid=0.0,
                              shell_finetune_solid=0.0,
                              shell_finetune_sampler=sampler)
    m2 = ShellsMethod.from_state_dict(cfg, m.state_dict())
    m2.extract_shells()
    o, d = _rays(ds)
    out = m2.render_rays(o, d, ds.background, train=True)
    assert (out["samples"] > 0).sum() > 20 and float(out["opacity"].max()) > 0.5
    m2.field.zero_grad(set_to_none=True)
    out["opacity"].sum().backward()
    f = m2.field
    grads = {"table": f.table.grad, "sdf_l1": f.sdf_l1.weight.grad, "log_s": f.log_s.grad}
    if sampler == "step":
        assert not m2.finetune_colour_only
        for n, g in grads.items():
            assert g is not None and float(g.abs().max()) > 0, n
        assert float(out["probes"].sum()) == 0 and float(out["samples"].mean()) > 1.0
    elif params == "all":
        for n, g in grads.items():
            assert g is not None and float(g.abs().max()) > 0, n
        # the field's descent opacity agrees with the grid's (trilinear values of the same field)
        with torch.no_grad():
            grid = m2.renderer.render_rays(o, d, f.view_encoding(d), ds.background)
        assert float((out["opacity"].detach() - grid["opacity"]).abs().mean()) < 0.02
        assert int(out["geo_evals"].sum()) >= 2 * int((out["samples"] > 0).sum())
    else:
        assert all(g is None or float(g.abs().max()) == 0 for g in grads.values())
        assert int(out["geo_evals"].sum()) == 0


@pytest.mark.parametrize("normals", ["analytic", "fd"])
@pytest.mark.parametrize("mode", ["volume", "shells", "shells-train"])
def test_reported_evaluations_equal_the_evaluations_made(trained, mode, normals, monkeypatch):
    """Honest accounting: every point the SDF network evaluates is counted -- per network sample
    (``cost``) one point with analytic normals, 4 finite-difference points with ``fd`` -- plus
    ``geo_evals`` (whole-field fine-tuning's descent points); the grid lookups (``probes``) are
    counted by the kernels (tests/shaders/test_band_probe.py checks the probe kernel's count against
    an instrumented twin)."""
    import dataclasses

    from engine.methods.shells.field import ShellField

    ds, m, _ = trained
    st = dict(m.state_dict(), normals=normals)
    # one sample per crossing (solid 0): whole-field fine-tuning then evaluates the crossings' descents
    m2 = ShellsMethod.from_state_dict(dataclasses.replace(m.cfg, shell_finetune_params="all", shell_probe_solid=0.0,
                                                          shell_finetune_solid=0.0), st)
    assert m2.field.cfg.normals == normals
    if mode != "volume":
        m2.extract_shells()
        m2.renderer.probe_grid()                        # built before counting (its build is timed apart)
    seen = []

    def counting(real):
        def fn(self, x):
            seen.append(x.shape[0])
            return real(self, x)
        return fn

    # every way the SDF network is evaluated: plain (finite differences, descents) and with the Jacobian
    monkeypatch.setattr(ShellField, "geometry", counting(ShellField.geometry))
    monkeypatch.setattr(ShellField, "geometry_analytic", counting(ShellField.geometry_analytic))
    o, d = _rays(ds, 2)
    train = mode == "shells-train"
    with torch.set_grad_enabled(train):
        out = m2.render_rays(o, d, ds.background, train=train, mode=mode.split("-")[0])
    per_sample = 1 if normals == "analytic" else 4
    assert sum(seen) == per_sample * int(out["cost"].sum()) + int(out["geo_evals"].sum()) > 0
    assert (out["geo_evals"].sum() > 0) == train
    assert out["probes"].shape == out["cost"].shape and float(out["probes"].sum()) > 0
    if mode == "volume":
        # one occupancy lookup per candidate position in the box (march_steps across the diagonal)
        assert float(out["probes"].max()) <= m2.cfg.march_steps + 1


def test_time_budget_drives_the_schedules(trained):
    """With a time budget the learning rates decay, and the shells are extracted, by the elapsed
    fraction of the budget (the trainer's progress) when that is ahead of the step count."""
    import dataclasses

    from engine.methods.shells.method import lr_factor

    _, m, _ = trained
    cfg = dataclasses.replace(m.cfg, time_budget_s=60.0, max_steps=1000, shell_finetune_from=0.5)
    m2 = ShellsMethod.from_state_dict(cfg, m.state_dict())
    opt = m2.make_optimizer()
    lrs = m2.update_learning_rates(opt, 10, progress=0.3)
    assert lrs["encoding"] == pytest.approx(cfg.lr_encoding * lr_factor(300, cfg))
    m2.post_step(opt, 10)
    assert m2.shells is None
    m2.update_learning_rates(opt, 11, progress=0.6)
    m2.post_step(opt, 11)
    assert m2.shells is not None                       # at half the budget, long before step 500
    m3 = ShellsMethod.from_state_dict(dataclasses.replace(cfg, time_budget_s=0.0), m.state_dict())
    opt3 = m3.make_optimizer()
    lrs = m3.update_learning_rates(opt3, 10, progress=0.6)       # steps only: the step count rules
    assert lrs["encoding"] == pytest.approx(cfg.lr_encoding * lr_factor(10, cfg))
    m3.post_step(opt3, 11)
    assert m3.shells is None


def test_finetuning_samples_with_its_own_probe_solid(trained):
    """Fine-tuning steps sample the band with shell_finetune_solid, renders with shell_probe_solid:
    at 0 every crossing is one sample, at 1 each crossing's opaque probe segments are."""
    import dataclasses

    ds, m, _ = trained
    cfg = dataclasses.replace(m.cfg, shell_probe_solid=1.0, shell_finetune_solid=0.0)
    m2 = ShellsMethod.from_state_dict(cfg, m.state_dict())
    m2.extract_shells()
    o, d = _rays(ds)
    with torch.no_grad():
        render = float(m2.render_rays(o, d, ds.background)["samples"].sum())
        train = float(m2.render_rays(o, d, ds.background, train=True)["samples"].sum())
        m2.cfg.shell_finetune_solid = 1.0
        train_at_1 = float(m2.render_rays(o, d, ds.background, train=True)["samples"].sum())
    assert 0 < train < 0.8 * render and train_at_1 == render
