"""Stage 1 of GVGEN: DDPM over the Gaussian Distance Field, DDIM sampling (REFERENCES.md "GVGEN").

* The GDF (per grid point, the distance to the nearest Gaussian centre) is clamped to
  ``[0, gdf_clamp * box side]`` and mapped linearly to ``[-1, 1]`` (:func:`normalize_gdf`); GVGEN
  clamps at 0.15 in its unit cube, so ``gdf_clamp = 0.15`` of the grid box's side is the same rule
  for any box.
* Forward process: T = 1000 steps, betas linear from 1e-4 to 0.02,
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
* The network predicts ``x_0`` directly (GVGEN's parameterisation); the loss is the mean squared
  error to the clean GDF.
* DDIM (Song et al. 2021, eta = 0 deterministic by default) on an evenly spaced subsequence of the
  T steps: ``eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)``,
  ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps + s z``.
  Classifier-free guidance (``guidance > 1`` extrapolates from the unconditional to the conditional
  prediction of x_0; stage 1 trains with 10 % empty captions): GVGEN's default is none, the
  method's default is 3 (measured: held-out retrieval 43 -> 79 % on the primitives set).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

T_DEFAULT = 1000


def normalize_gdf(gdf: torch.Tensor, side: float, clamp: float = 0.15) -> torch.Tensor:
    """World-unit distances -> [-1, 1]: ``2 * min(max(gdf, 0), clamp * side) / (clamp * side) - 1``
    (inf, for a volume with no active Gaussian, maps to 1)."""
    c = clamp * float(side)
    return 2.0 * torch.nan_to_num(gdf, posinf=c).clamp(0.0, c) / c - 1.0


def denormalize_gdf(x: torch.Tensor, side: float, clamp: float = 0.15) -> torch.Tensor:
    """[-1, 1] -> world-unit distances in [0, clamp * side] (the inverse of :func:`normalize_gdf`)."""
    return (x.clamp(-1.0, 1.0) + 1.0) * 0.5 * clamp * float(side)


class Schedule:
    """The linear-beta DDPM schedule (``T`` steps, betas ``beta_start..beta_end``)."""

    def __init__(self, T: int = T_DEFAULT, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.T = int(T)
        self.betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        self.abar = torch.cumprod(1.0 - self.betas, 0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean ``x0 (B, ...)`` at integer steps ``t (B,)``."""
        ab = self.abar.to(x0.device)[t].float().reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM subsequence: ``steps`` evenly spaced steps from T - 1 down to 0."""
        steps = max(1, min(int(steps), self.T))
        return torch.linspace(self.T - 1, 0, steps).round().long().tolist()


def diffusion_loss(model, schedule: Schedule, x0: torch.Tensor, cond: dict, generator=None) -> torch.Tensor:
    """x0-parameterised DDPM loss: ``mean (model(x_t, t, text) - x0)^2`` with ``t`` uniform in
    [0, T) and Gaussian ``eps``, both drawn from ``generator``."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    xt = schedule.q_sample(x0, t, noise)
    pred = model(xt, cond["pooled"], cond["tokens"], cond.get("mask"), t)
    return F.mse_loss(pred, x0)


@torch.no_grad()
def ddim_sample(model, schedule: Schedule, shape, cond: dict, *, steps: int = 50, eta: float = 0.0,
                guidance: float = 1.0, uncond: dict | None = None, generator=None, callback=None) -> torch.Tensor:
    """Sample ``shape (B, 1, N, N, N)`` in [-1, 1] with DDIM (see the module docstring).

    ``cond``: ``pooled (B, E)``, ``tokens (B, L, E)``, ``mask (B, L)``; ``uncond`` the same for the
    empty caption (needed when ``guidance != 1``). ``callback(i, n)`` after each step (progress).
    """
    dev = cond["pooled"].device
    x = torch.randn(tuple(shape), generator=generator).to(dev)
    ts = schedule.timesteps(steps)
    abar = schedule.abar
    for i, t in enumerate(ts):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=dev)
        x0 = model(x, cond["pooled"], cond["tokens"], cond.get("mask"), tt)
        if guidance != 1.0:
            if uncond is None:
                raise ValueError("classifier-free guidance needs the unconditional embedding (uncond)")
            x0u = model(x, uncond["pooled"], uncond["tokens"], uncond.get("mask"), tt)
            x0 = x0u + guidance * (x0 - x0u)
        x0 = x0.clamp(-1.0, 1.0)
        a_t = float(abar[t])
        a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = (x - a_t ** 0.5 * x0) / max(1.0 - a_t, 1e-12) ** 0.5
        sigma = eta * (max(1 - a_prev, 0.0) / max(1 - a_t, 1e-12) * max(1 - a_t / a_prev, 0.0)) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1.0 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator).to(x)
        if callback is not None:
            callback(i + 1, len(ts))
    return x
