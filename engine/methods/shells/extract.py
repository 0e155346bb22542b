"""Shell extraction: the inner and outer meshes that bound the band where the field has density.

From the SDF ``f`` and the kernel size ``s`` sampled on a grid over the cubic scene box:

1. half-width ``h(x) = clamp(ln(4/eps) / s(x), h_min a, h_max a)``: the logistic density of NeuS
   falls below ``eps`` of its peak at ``|f| = ln(4/eps) / s``;
2. outer field ``f - h`` (its negative region = everything with ``f < h``), dilated by
   ``dilate_voxels`` cells (a min filter); inner field ``f + h`` (negative where ``f < -h``), eroded
   by the same amount (a max filter) -- the margin absorbs grid and decimation error;
3. marching cubes at 0 for both, and for ``f`` itself (the surface), on grids padded with one ring
   of positive values so every mesh is closed;
4. cleanup (trimesh: merged vertices, no degenerate faces) and quadric decimation (open3d) to
   ``target_faces`` per mesh.

For a sphere ``f = |x| - R`` with constant ``s`` (and no dilation) the shells are the spheres of
radius ``R + h`` and ``R - h`` (``tests/engine/methods/shells/test_extract.py``). Where the band
is thicker than the object the inner shell is simply absent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...geometry import mesh as meshlib


@dataclass
class Shells:
    """Outer / inner shell and surface meshes: each ``(V (n,3) float32, F (m,3) int64)`` torch tensors."""

    outer: tuple
    inner: tuple
    surface: tuple
    info: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"outer": [t.clone() for t in self.outer], "inner": [t.clone() for t in self.inner],
                "surface": [t.clone() for t in self.surface], "info": dict(self.info)}

    @classmethod
    def from_state_dict(cls, st: dict) -> "Shells":
        return cls(tuple(st["outer"]), tuple(st["inner"]), tuple(st["surface"]), dict(st.get("info", {})))

    def face_counts(self) -> dict:
        return {"outer": int(self.outer[1].shape[0]), "inner": int(self.inner[1].shape[0]),
                "surface": int(self.surface[1].shape[0])}


def band_halfwidth(log_s, eps: float, lo: float, hi: float):
    """``clamp(ln(4/eps) exp(-log_s), lo, hi)`` (numpy or torch, world units)."""
    if not 0 < eps < 1:
        raise ValueError(f"shell_eps must be in (0, 1), got {eps}")
    c = math.log(4.0 / eps)
    if torch.is_tensor(log_s):
        return torch.clamp(c * torch.exp(-log_s), lo, hi)
    return np.clip(c * np.exp(-np.asarray(log_s)), lo, hi)


def _pad(vol: np.ndarray, lo, hi):
    """Pad a grid with one ring of a positive value (closes the meshes at the box boundary)."""
    n = np.array(vol.shape)
    sp = (np.asarray(hi) - np.asarray(lo)) / (n - 1)
    big = float(max(np.abs(vol).max(), 1.0))
    return np.pad(vol, 1, constant_values=big), np.asarray(lo) - sp, np.asarray(hi) + sp


def _mesh(vol, lo, hi, target_faces: int):
    pv, plo, phi = _pad(vol, lo, hi)
    v, f = meshlib.marching_cubes(pv, 0.0, plo, phi)
    v, f = meshlib.clean_mesh(v, f)
    v, f = meshlib.decimate_mesh(v, f, target_faces)
    return torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(f, dtype=torch.int64)


def extract_shells_from_grids(sdf, log_s, lo, hi, *, eps: float, min_halfwidth: float,
                              max_halfwidth: float, dilate_voxels: int = 1, target_faces: int = 0) -> Shells:
    """Shells from SDF and log-kernel-size grids ``(n, n, n)`` sampled on ``linspace(lo, hi, n)``.

    ``min_halfwidth`` / ``max_halfwidth`` are in world units. See the module docstring.
    """
    f = np.asarray(sdf.cpu() if torch.is_tensor(sdf) else sdf, dtype=np.float32)
    ls = np.asarray(log_s.cpu() if torch.is_tensor(log_s) else log_s, dtype=np.float32)
    if f.shape != ls.shape or f.ndim != 3:
        raise ValueError(f"sdf and log_s grids must be the same 3-D shape, got {f.shape} and {ls.shape}")
    h = band_halfwidth(ls, eps, min_halfwidth, max_halfwidth).astype(np.float32)
    outer = meshlib.dilate_field(f - h, dilate_voxels)
    inner = meshlib.erode_field(f + h, dilate_voxels)
    shells = Shells(_mesh(outer, lo, hi, target_faces), _mesh(inner, lo, hi, target_faces),
                    _mesh(f, lo, hi, target_faces))
    near = np.abs(f) < h
    shells.info = {"grid_res": int(f.shape[0]), "eps": float(eps), "dilate_voxels": int(dilate_voxels),
                   "halfwidth_mean_near_surface": float(h[near].mean()) if near.any() else float("nan"),
                   **{f"faces_{k}": v for k, v in shells.face_counts().items()}}
    return shells


def extract_shells(field, cfg, **overrides) -> Shells:
    """Sample a trained :class:`~.field.ShellField` on a grid and extract its shells.

    ``overrides``: ``grid_res``, ``eps``, ``dilate_voxels``, ``target_faces``, ``min_halfwidth``,
    ``max_halfwidth`` (fractions of the box half-size ``a``) replacing the config's ``shell_*``.
    """
    a = float(field.half_size)
    res = int(overrides.get("grid_res", cfg.shell_grid_res))
    lo = (field.center - a).tolist()
    hi = (field.center + a).tolist()
    f, ls = field.sdf_and_log_s_grid(lo, hi, res)
    return extract_shells_from_grids(
        f, ls, lo, hi, eps=float(overrides.get("eps", cfg.shell_eps)),
        min_halfwidth=float(overrides.get("min_halfwidth", cfg.shell_min_halfwidth)) * a,
        max_halfwidth=float(overrides.get("max_halfwidth", cfg.shell_max_halfwidth)) * a,
        dilate_voxels=int(overrides.get("dilate_voxels", cfg.shell_dilate_voxels)),
        target_faces=int(overrides.get("target_faces", cfg.shell_target_faces)))


def write_shells(shells: Shells, out_dir: Path) -> list[Path]:
    """Write ``outer.ply``, ``inner.ply`` and ``surface.ply`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for name in ("outer", "inner", "surface"):
        v, f = getattr(shells, name)
        p = out_dir / f"{name}.ply"
        meshlib.write_mesh(p, v.numpy(), f.numpy())
        paths.append(p)
    return paths
