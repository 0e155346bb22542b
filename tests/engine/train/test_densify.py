"""RayGaussDensifier: clone / split / prune, the Morton reorder, and the Adam state following
each Gaussian through all of them."""
import math

import torch

from engine.methods.raygauss.config import RayGaussConfig
from engine.methods.raygauss.model import RayGaussModel
from engine.train.densify import RayGaussDensifier
from shaders.bvh import morton_order


def _model(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g)
    log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.05 + 0.002)
    quats = torch.randn(n, 4, generator=g)
    density = torch.rand(n, generator=g) * 5 + 0.2
    density[:10] = 0.05                                            # under prune_density
    sh = torch.randn(n, 4, 3, generator=g)
    cfg = RayGaussConfig(sh_degree=1, sg_lobes=2, densify_from=1, densify_every=1, densify_until=10,
                         densify_grad_thr=1e-3, clone_scale_frac=0.01, max_gaussians=10_000)
    return RayGaussModel(means, log_scales, quats, density, sh, scene_box=[[0, 0, 0], [1, 1, 1]], cfg=cfg), cfg


def test_densify_step_keeps_adam_state_with_its_gaussian_and_orders_by_morton():
    model, cfg = _model()
    groups = [{"params": [getattr(model, n)], "name": n} for n in RayGaussDensifier.param_names]
    opt = torch.optim.Adam(groups, lr=1e-3)
    # Adam state tagged with the parameter it belongs to: exp_avg = 2 p, exp_avg_sq = p^2 + 1
    for grp in opt.param_groups:
        p = grp["params"][0]
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": 2 * p.detach().clone(),
                        "exp_avg_sq": p.detach() ** 2 + 1}
    dens = RayGaussDensifier(cfg, scene_extent=math.sqrt(3), seed=0)
    n0 = model.num_gaussians
    grad = torch.zeros(n0, 3)
    grad[20:60, 0] = 1.0                                           # 40 candidates
    model.means.grad = grad
    dens.after_backward(model)
    old_means = model.means.detach().clone()
    st = dens.step(model, opt, 1)
    assert st.cloned + st.split == 40 and st.pruned >= 10
    assert model.num_gaussians == n0 + st.cloned + st.split - st.pruned
    # Morton order after the step
    assert torch.equal(morton_order(model.means.detach()), torch.arange(model.num_gaussians))
    # every surviving original Gaussian kept its own state; new ones start from zero
    for grp in opt.param_groups:
        p = grp["params"][0]
        assert p is getattr(model, grp["name"])
        s = opt.state[p]
        is_old = (s["exp_avg_sq"] != 0).reshape(p.shape[0], -1).any(1)
        a, v = s["exp_avg"][is_old], p.detach()[is_old]
        if grp["name"] == "density":      # a cloned parent keeps its state, its density is halved
            assert bool((torch.isclose(a, 2 * v) | torch.isclose(a, 4 * v)).all())
            assert int(torch.isclose(a, 4 * v).sum()) == st.cloned
        else:
            assert torch.allclose(a, 2 * v)
            assert torch.allclose(s["exp_avg_sq"][is_old], v ** 2 + 1)
        assert bool((s["exp_avg"][~is_old] == 0).all())
        if grp["name"] == "means":
            # the old rows are old means (not split parents, which were replaced by children)
            same = (p.detach()[is_old][:, None, :] == old_means[None]).all(-1).any(1)
            assert bool(same.all())
            assert int((~is_old).sum()) == st.cloned + 2 * st.split


def test_reorder_can_be_switched_off():
    model, cfg = _model(seed=1)
    cfg.morton_reorder = False
    groups = [{"params": [getattr(model, n)], "name": n} for n in RayGaussDensifier.param_names]
    opt = torch.optim.Adam(groups, lr=1e-3)
    dens = RayGaussDensifier(cfg, scene_extent=math.sqrt(3), seed=0)
    kept = model.means.detach()[10:].clone()                        # the first 10 get pruned
    model.means.grad = torch.zeros(model.num_gaussians, 3)
    dens.after_backward(model)
    st = dens.step(model, opt, 1)
    assert st.cloned + st.split == 0 and st.pruned == 10
    assert torch.equal(model.means.detach(), kept)
