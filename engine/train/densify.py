"""Densification and pruning of Gaussian sets as a strategy object (RayGauss rules).

The strategy owns its statistics (accumulated position-gradient norms) and edits a model's
parameters *and* the optimizer's Adam state consistently, so the trainer only calls::

    strategy.after_backward(model)           # every step, after loss.backward()
    stats = strategy.step(model, optimizer, step)   # every step, after optimizer.step()

Rules (REFERENCES.md, RayGauss): between ``densify_from`` and ``densify_until``, every
``densify_every`` steps, Gaussians whose mean accumulated position-gradient norm exceeds
``densify_grad_thr`` are cloned (max scale <= clone_scale_frac * scene extent; both copies get half
the density) or split in two (children sampled from the parent Gaussian, scales / 1.6, density / 2).
Gaussians with density <= ``prune_density`` are pruned at the same cadence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shaders.rotations import quat_to_rotmat as _quat_to_rot  # the one quaternion -> matrix


def replace_params(model: nn.Module, optimizer: torch.optim.Optimizer, names, fn):
    """Replace each named parameter p by fn(name, p, kind) and remap its Adam state alike.

    ``fn(name, tensor, kind)`` gets kind "param", "exp_avg" or "exp_avg_sq" and returns the new
    tensor (rows selected / appended). Param groups must hold one parameter each.
    """
    for group in optimizer.param_groups:
        old = group["params"][0]
        name = group.get("name")
        if name not in names:
            continue
        new = nn.Parameter(fn(name, old.detach(), "param").contiguous())
        state = optimizer.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = fn(name, state[key], key).contiguous()
            optimizer.state[new] = state
        group["params"][0] = new
        setattr(model, name, new)


@dataclass
class DensifyStats:
    cloned: int = 0
    split: int = 0
    pruned: int = 0


class RayGaussDensifier:
    """Clone / split / prune strategy for RayGauss models (see module docstring)."""

    param_names = ("means", "log_scales", "quats", "density", "sh", "sg_amp", "sg_axis", "sg_sharp")

    def __init__(self, cfg, scene_extent: float, seed: int = 0):
        self.cfg = cfg
        self.scene_extent = float(scene_extent)
        self.grad_accum = None
        self.count = None
        self.gen = torch.Generator().manual_seed(seed + 12345)

    def _reset(self, n, device):
        self.grad_accum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)

    def after_backward(self, model) -> None:
        g = model.means.grad
        if g is None:
            return
        n = g.shape[0]
        if self.grad_accum is None or self.grad_accum.shape[0] != n:
            self._reset(n, g.device)
        norm = g.detach().norm(dim=-1)
        seen = norm > 0
        self.grad_accum += norm
        self.count += seen.float()

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "count": self.count, "gen": self.gen.get_state()}

    def load_state_dict(self, st: dict) -> None:
        self.grad_accum, self.count = st.get("grad_accum"), st.get("count")
        if st.get("gen") is not None:
            self.gen.set_state(st["gen"])

    @torch.no_grad()
    def step(self, model, optimizer, step: int) -> DensifyStats | None:
        c = self.cfg
        if not (c.densify_from <= step <= c.densify_until) or step % c.densify_every != 0 or step == 0:
            return None
        stats = DensifyStats()
        n = model.num_gaussians
        if self.grad_accum is not None and self.grad_accum.shape[0] == n and n < c.max_gaussians:
            mean_grad = self.grad_accum / self.count.clamp_min(1)
            cand = mean_grad > c.densify_grad_thr
            budget = c.max_gaussians - n
            if int(cand.sum()) > budget:  # keep the strongest within the cap
                idx = torch.nonzero(cand).squeeze(1)
                top = mean_grad[idx].topk(budget).indices
                cand = torch.zeros_like(cand)
                cand[idx[top]] = True
            max_scale = torch.exp(model.log_scales).amax(-1)
            small = max_scale <= c.clone_scale_frac * self.scene_extent
            clone, split = cand & small, cand & ~small
            stats.cloned, stats.split = int(clone.sum()), int(split.sum())
            self._grow(model, optimizer, clone, split)
        # prune (after growth, on the new set)
        dens = model.response() if model.mode == "density" else model.density
        prune = dens <= c.prune_density if model.mode == "density" else torch.zeros_like(dens, dtype=torch.bool)
        if prune.all():
            prune[:] = False  # never prune everything; leave it to the loss
        stats.pruned = int(prune.sum())
        if stats.pruned:
            keep = ~prune
            replace_params(model, optimizer, self.param_names, lambda name, t, kind: t[keep])
        if c.morton_reorder and model.num_gaussians > 1:
            # keep neighbours in space neighbours in memory: clones/splits are appended at the
            # end, which scatters the kernels' per-ray reads (18% slower steps on lego)
            from shaders.bvh import morton_order

            perm = morton_order(model.means.detach())
            replace_params(model, optimizer, self.param_names, lambda name, t, kind: t[perm.to(t.device)])
        self._reset(model.num_gaussians, model.means.device)
        model.invalidate_bvh()
        return stats

    def _grow(self, model, optimizer, clone: torch.Tensor, split: torch.Tensor) -> None:
        if not (clone.any() or split.any()):
            return
        si = torch.nonzero(split).squeeze(1)
        ci = torch.nonzero(clone).squeeze(1)
        # children of split Gaussians: two samples from the parent Gaussian
        scales = torch.exp(model.log_scales[si])
        R = _quat_to_rot(model.quats[si])
        new_means = []
        for _ in range(2):
            z = torch.randn(si.shape[0], 3, generator=self.gen).to(scales) * scales
            new_means.append(model.means[si] + (R @ z[..., None])[..., 0])
        new_means = torch.cat(new_means)
        half = torch.ones(model.num_gaussians, device=model.means.device)
        half[ci] = 0.5
        half[si] = 0.5

        def fn(name, t, kind):
            if kind != "param":
                extra = torch.zeros((ci.shape[0] + 2 * si.shape[0],) + t.shape[1:], dtype=t.dtype, device=t.device)
                return torch.cat([t, extra])[_keep_mask(t.shape[0], si, extra.shape[0])]
            if name == "means":
                add = torch.cat([t[ci], new_means])
            elif name == "log_scales":
                add = torch.cat([t[ci], (t[si] - torch.log(torch.tensor(self.cfg.split_scale_div))).repeat(2, 1)])
            elif name == "density":
                t = t * half if model.mode == "density" else t
                add = torch.cat([t[ci], t[si].repeat(2)])
            else:
                rep = (2,) + (1,) * (t.dim() - 1)
                add = torch.cat([t[ci], t[si].repeat(*rep)])
            return torch.cat([t, add])[_keep_mask(t.shape[0], si, add.shape[0])]

        replace_params(model, optimizer, self.param_names, fn)


def _keep_mask(n_old: int, split_idx: torch.Tensor, n_add: int) -> torch.Tensor:
    """Drop split parents (their two children replace them)."""
    keep = torch.ones(n_old + n_add, dtype=torch.bool, device=split_idx.device)
    keep[split_idx] = False
    return keep
