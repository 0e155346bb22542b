"""The GaussianVolume (GVGEN): N^3 Gaussian slots, one anchored at each point of a regular grid.

Slot ``(i, j, k)`` (row ``(i N + j) N + k``) has the anchor ``box_lo + (i, j, k) * cell`` with
``cell = (box_hi - box_lo) / (N - 1)``, and the attributes (pre-activation, ``nn.Parameter``):

* ``offset`` (S, 3): the Gaussian's centre is ``anchor + offset`` (world units; clamped to
  ``max_offset_cells`` cells per axis after every step, and pulled towards 1.5 cells by the offset loss);
* ``sh_dc`` (S, 1, 3) and ``sh_rest`` (S, K - 1, 3): colour as SH coefficients (``sh`` joins them),
  3DGS sign convention (rgb = SH . Y(d) + 0.5), K = (deg + 1)^2;
* ``log_scales`` (S, 3), ``quats`` (S, 4) wxyz (normalised on use), ``opacity`` (S,) logit;

plus the buffer ``active`` (S,) bool: a free slot (its anchor in the candidate pool) holds no
Gaussian and is left out of rendering, export and the distance field.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...render import gaussians as grender

SH_C0 = 0.28209479177387814
PARAMS = ("offset", "sh_dc", "sh_rest", "log_scales", "quats", "opacity")


def grid_points(box: torch.Tensor, n: int) -> torch.Tensor:
    """(n^3, 3) grid points of ``box (2, 3)`` in slot order (index ``(i n + j) n + k``)."""
    axes = [torch.linspace(float(box[0, a]), float(box[1, a]), n) for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


class GaussianVolume(nn.Module):
    def __init__(self, box, grid_size: int, sh_degree: int = 0, *, init_scale_cells: float = 0.8,
                 params: dict | None = None, active: torch.Tensor | None = None):
        super().__init__()
        n = int(grid_size)
        self.grid_size = n
        S = n ** 3
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float32).reshape(2, 3).clone())
        self.register_buffer("anchors", grid_points(self.box, n))
        self.init_scale_cells = float(init_scale_cells)
        K = (int(sh_degree) + 1) ** 2
        if params is None:
            params = {"offset": torch.zeros(S, 3), "sh_dc": torch.zeros(S, 1, 3), "sh_rest": torch.zeros(S, K - 1, 3),
                      "log_scales": torch.full((S, 3), self.init_log_scale()),
                      "quats": torch.tensor([1.0, 0, 0, 0]).repeat(S, 1),
                      "opacity": torch.full((S,), -10.0)}
        for k, v in params.items():
            v = torch.as_tensor(v, dtype=torch.float32)
            if v.shape[0] != S:
                raise ValueError(f"{k} has {v.shape[0]} rows, a {n}^3 volume has {S}")
            setattr(self, k, nn.Parameter(v.detach().clone().contiguous()))
        self.register_buffer("active", torch.zeros(S, dtype=torch.bool) if active is None
                             else torch.as_tensor(active, dtype=torch.bool).clone())
        self.active_sh_degree = 0
        self._gcache = None

    # ------------------------------------------------------------------ geometry
    @property
    def num_slots(self) -> int:
        return self.grid_size ** 3

    @property
    def num_active(self) -> int:
        return int(self.active.sum())

    @property
    def max_sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh_rest.shape[1] + 1))) - 1

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.sh_dc, self.sh_rest], 1)

    @property
    def cell(self) -> torch.Tensor:
        return (self.box[1] - self.box[0]) / (self.grid_size - 1)

    @property
    def extent(self) -> float:
        """Half-diagonal of the volume's box."""
        return float((self.box[1] - self.box[0]).norm() / 2)

    def init_log_scale(self) -> float:
        return math.log(float(self.cell.mean()) * self.init_scale_cells)

    def means(self) -> torch.Tensor:
        return self.anchors + self.offset

    def to_grid(self, pos: torch.Tensor) -> torch.Tensor:
        """World positions -> grid coordinates (anchor (i, j, k) at (i, j, k))."""
        return (pos - self.box[0]) / self.cell

    def param_dict(self) -> dict:
        return {k: getattr(self, k) for k in PARAMS}

    @torch.no_grad()
    def reset_rows(self, rows: torch.Tensor, opacity: float | None = None) -> None:
        """Rows back to a neutral Gaussian on their anchor: offset 0, grey, initial isotropic scale,
        identity rotation; opacity ``opacity`` (None: effectively zero, for free slots)."""
        if rows.numel() == 0:
            return
        self.offset.data[rows] = 0
        self.sh_dc.data[rows] = 0
        self.sh_rest.data[rows] = 0
        self.log_scales.data[rows] = self.init_log_scale()
        self.quats.data[rows] = torch.tensor([1.0, 0, 0, 0], device=self.quats.device)
        self.opacity.data[rows] = -10.0 if opacity is None else math.log(opacity / (1 - opacity))

    @torch.no_grad()
    def clamp_offsets(self, max_cells: float) -> None:
        lim = (self.cell * max_cells).to(self.offset)
        self.offset.data.copy_(torch.maximum(torch.minimum(self.offset.data, lim), -lim))

    def offset_loss(self, free_cells: float) -> torch.Tensor:
        """GVGEN's offset loss without the weight: ``mean(relu(|offset| - free_cells / (N-1)))`` with
        offsets in units of the volume's side (per axis; GVGEN's volume is the unit cube), over all
        N^3 slots."""
        side = (self.box[1] - self.box[0]).to(self.offset)
        return F.relu(self.offset.abs() / side - free_cells / (self.grid_size - 1)).mean()

    # ------------------------------------------------------------------ the distance field
    @torch.no_grad()
    def gdf(self) -> torch.Tensor:
        """Gaussian Distance Field (N, N, N): per grid point, the distance (world units) to the
        nearest active Gaussian centre (inf when none is active)."""
        n = self.grid_size
        centres = self.means()[self.active].detach().cpu().double().numpy()
        if len(centres) == 0:
            return torch.full((n, n, n), float("inf"))
        from scipy.spatial import cKDTree

        d, _ = cKDTree(centres).query(self.anchors.cpu().double().numpy(), k=1)
        return torch.from_numpy(np.asarray(d, np.float32)).reshape(n, n, n)

    @torch.no_grad()
    def as_grid(self) -> torch.Tensor:
        """The volume as an (N, N, N, 14 + 3 (K - 1)) tensor in GVGEN's channel order: offset 3, SH DC 3,
        log-scale 3, quaternion 4 (normalised), opacity logit 1, then the higher SH coefficients;
        free slots hold zeros with opacity logit -10. Entry (i, j, k) is slot (i N + j) N + k."""
        n = self.grid_size
        x = torch.cat([self.offset, self.sh_dc[:, 0], self.log_scales, F.normalize(self.quats, dim=-1),
                       self.opacity[:, None], self.sh_rest.reshape(self.num_slots, -1)], 1).detach().clone()
        x[~self.active] = 0
        x[~self.active, 13] = -10.0
        return x.reshape(n, n, n, -1)

    # ------------------------------------------------------------------ rendering
    def active_tensors(self) -> dict:
        idx = torch.nonzero(self.active)[:, 0]
        return {"means": self.means()[idx], "quats": self.quats[idx], "log_scales": self.log_scales[idx],
                "opacity": torch.sigmoid(self.opacity[idx]), "sh": self.sh[idx]}

    def render_camera(self, cameras, index: int, background=None) -> dict:
        """3DGS splatting of the active Gaussians (:func:`engine.render.gaussians.render_gaussians`,
        ``path="splat"``, differentiable)."""
        g = self.active_tensors()
        return grender.render_gaussians(g["means"], g["quats"], g["log_scales"], g["opacity"], g["sh"], cameras,
                                        index, mode="opacity", sh_degree=min(self.active_sh_degree,
                                                                             self.max_sh_degree),
                                        background=background, path="splat")

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export_ply(self, path):
        """The active Gaussians as a standard 3DGS ``.ply``."""
        from ...io.ply import write_gaussian_ply

        idx = torch.nonzero(self.active)[:, 0]
        return write_gaussian_ply(path, self.means()[idx], self.log_scales[idx],
                                  F.normalize(self.quats[idx], dim=-1), self.opacity[idx], self.sh[idx])
