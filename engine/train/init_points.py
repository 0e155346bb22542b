"""Initial point sets for point-based methods (Gaussians): visual hull carving from masks.

For object-centric captures with per-pixel coverage (RGBA NeRF-synthetic images, DTU masks) the
visual hull is a far better starting point than points spread uniformly in the scene box: a grid
point is kept only if, in every training view where it projects inside the image, the pixel is
covered (alpha / mask). Each kept point gets the mean colour of the pixels it projects to — a
rough colour (no occlusion reasoning) that optimisation refines.
"""
from __future__ import annotations

import numpy as np
import torch


def split_coverage(split) -> torch.Tensor | None:
    """(N,H,W) float coverage in [0,1] from a split's alpha or masks, or None."""
    if getattr(split, "alpha", None) is not None:
        return split.alpha.float()
    if getattr(split, "masks", None) is not None:
        return split.masks.float()
    return None


@torch.no_grad()
def visual_hull_points(split, scene_box, n_points: int, resolution: int = 96, coverage_thr: float = 0.1,
                       seed: int = 0):
    """Sample ``n_points`` points (and colours) inside the visual hull of a split's masks.

    Args:
        split: a dataset split with ``cameras``, ``images`` and ``alpha`` or ``masks``.
        scene_box: (2,3) box to carve.
        n_points: number of points to return (sampled with jitter inside kept voxels).
        resolution: carving grid resolution per axis.
        coverage_thr: a pixel counts as empty when its coverage is below this.
    Returns:
        (points (P,3) float32 numpy, colours (P,3) float32 numpy) or None if the split has no
        coverage or the hull is empty.
    """
    cov = split_coverage(split)
    if cov is None:
        return None
    box = torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3)
    r = resolution
    axes = [torch.linspace(0, 1, r) * (box[1, i] - box[0, i]) + box[0, i] for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    keep = torch.ones(grid.shape[0], dtype=torch.bool)
    seen = torch.zeros(grid.shape[0], dtype=torch.int32)
    colour_sum = torch.zeros(grid.shape[0], 3)
    cams = split.cameras
    for i in range(len(cams)):
        uv, z = cams.project(grid, i)
        H, W = cov.shape[1:]
        u = uv[:, 0].floor().long()
        v = uv[:, 1].floor().long()
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        idx = torch.nonzero(inside).squeeze(1)
        c = cov[i, v[idx], u[idx]]
        keep[idx[c < coverage_thr]] = False
        seen[idx] += 1
        colour_sum[idx] += split.images[i, v[idx], u[idx]]
    keep &= seen >= max(1, len(cams) // 4)
    k = int(keep.sum())
    if k == 0:
        return None
    g = np.random.default_rng(seed)
    kept = grid[keep].numpy()
    cols = (colour_sum[keep] / seen[keep, None].float()).numpy()
    pick = g.integers(0, k, n_points)
    voxel = ((box[1] - box[0]) / (r - 1)).numpy()
    pts = kept[pick] + (g.random((n_points, 3)) - 0.5) * voxel
    return pts.astype(np.float32), cols[pick].astype(np.float32)
