"""Stage 2 of GVGEN: (GDF, caption) -> every Gaussian attribute of the volume in one pass.

The network (:class:`~.unet.UNet3D` without a timestep) reads the normalised GDF plus the grid
coordinates (3 channels in [-1, 1], so the translation-equivariant convolutions know where a voxel
lies in the box) and writes 14 raw channels per grid point, decoded by :func:`decode`:

=============  ========  ======================================================================
attribute      channels  decoding (``cell`` = grid spacing)
=============  ========  ======================================================================
offset         3         ``max_offset_cells * cell * tanh(raw)`` (world units, bounded as in the volume)
SH DC colour   3         raw (3DGS convention: rgb = 0.28209 dc + 0.5)
log-scale      3         ``raw + log(init_scale_cells * cell)``
rotation       4         ``normalise(raw + (1, 0, 0, 0))`` wxyz (GVGEN predicts 3 angles; the
                         data format stores quaternions, so we predict those)
opacity        1         raw logit
=============  ========  ======================================================================

:func:`attribute_loss` compares with a fitted volume's ``as_grid()`` tensor: binary cross-entropy
of the opacities over every slot, and opacity-weighted L1 / quaternion terms on the other
attributes (a transparent Gaussian's colour or shape does not matter). The rendering loss
(0.2 L1 + 0.8 D-SSIM, GVGEN's) is computed by the method through
:func:`engine.render.gaussians.render_gaussians` (``path="splat"``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SH_C0 = 0.28209479177387814
CHANNELS = 14
# as_grid() channel slices (GVGEN order)
OFFSET, DC, LOGSCALE, QUAT, OPACITY = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 13), slice(13, 14)


def grid_coords(n: int, device=None) -> torch.Tensor:
    """(3, n, n, n) grid coordinates in [-1, 1] (axis order i, j, k as the volume's slots)."""
    ax = torch.linspace(-1.0, 1.0, n, device=device)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), 0)


def stage2_input(gdf_norm: torch.Tensor) -> torch.Tensor:
    """(B, 1, n, n, n) normalised GDF -> (B, 4, n, n, n) network input (GDF + coordinates)."""
    B, _, n = gdf_norm.shape[:3]
    return torch.cat([gdf_norm, grid_coords(n, gdf_norm.device)[None].expand(B, -1, -1, -1, -1)], 1)


def decode(raw: torch.Tensor, cell: float, max_offset_cells: float = 3.0, init_scale_cells: float = 0.8) -> torch.Tensor:
    """Raw network output (B, 14, n, n, n) -> (B, n, n, n, 14) attributes in ``as_grid()`` order
    (offset world units, DC, log-scale, unit quaternion wxyz, opacity logit)."""
    x = raw.permute(0, 2, 3, 4, 1)
    off = max_offset_cells * cell * torch.tanh(x[..., OFFSET])
    dc = x[..., DC]
    ls = x[..., LOGSCALE] + math.log(init_scale_cells * cell)
    q = F.normalize(x[..., QUAT] + torch.tensor([1.0, 0, 0, 0], device=x.device), dim=-1)
    return torch.cat([off, dc, ls, q, x[..., OPACITY]], -1)


def attribute_loss(pred: torch.Tensor, target: torch.Tensor, cell: float) -> tuple[torch.Tensor, dict]:
    """Losses between predicted and fitted volumes (both (B, n, n, n, 14), ``as_grid()`` order);
    returns ``(total, {name: value})``. Offsets are compared in cells, colours as rgb."""
    w = torch.sigmoid(target[..., 13])                                     # target opacity
    wsum = w.sum().clamp_min(1e-6)
    opa = F.binary_cross_entropy_with_logits(pred[..., 13], w)
    off = ((pred[..., OFFSET] - target[..., OFFSET]).abs().mean(-1) / cell * w).sum() / wsum
    col = ((pred[..., DC] - target[..., DC]).abs().mean(-1) * SH_C0 * w).sum() / wsum
    tgt_ls = target[..., LOGSCALE]
    scl = ((pred[..., LOGSCALE] - tgt_ls).abs().mean(-1) * w).sum() / wsum
    rot = ((1.0 - (pred[..., QUAT] * F.normalize(target[..., QUAT], dim=-1)).sum(-1).abs()) * w).sum() / wsum
    parts = {"opacity": opa, "offset": off, "colour": col, "scale": scl, "rotation": rot}
    total = opa + off + 4.0 * col + 0.5 * scl + 0.5 * rot
    return total, parts


def grid_to_gaussians(grid: torch.Tensor, box: torch.Tensor, min_opacity: float = 0.0) -> dict:
    """One volume (n, n, n, 14) in ``as_grid()`` order -> Gaussian tensors (means, quats,
    log_scales, opacity logits, sh (M, 1, 3)) of the slots whose opacity is at least ``min_opacity``
    (all of them for 0); differentiable."""
    n = grid.shape[0]
    g = grid.reshape(-1, grid.shape[-1])
    box = box.to(grid)
    ax = [torch.linspace(float(box[0, a]), float(box[1, a]), n, device=grid.device) for a in range(3)]
    anchors = torch.stack(torch.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
    if min_opacity > 0:
        keep = torch.sigmoid(g[:, 13].detach()) >= min_opacity
        g, anchors = g[keep], anchors[keep]
    return {"means": anchors + g[:, OFFSET], "quats": F.normalize(g[:, QUAT], dim=-1), "log_scales": g[:, LOGSCALE],
            "opacity_logits": g[:, 13], "sh": g[:, None, DC]}
