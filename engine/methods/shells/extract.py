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

The grid is evaluated with the network only near the band (:func:`band_grids`: a coarse grid,
then the fine nodes of the coarse cells that can reach the band); elsewhere only the sign of the
fields matters. At 256^3 this halves extraction time (lego_200: 6.0 s against 11.8 s dense) and
gives the same meshes.

For a sphere ``f = |x| - R`` with constant ``s`` (and no dilation) the shells are the spheres of
radius ``R + h`` and ``R - h`` (``tests/engine/methods/shells/test_extract.py``). Where the band
is thicker than the object the inner shell is simply absent.
"""
from __future__ import annotations

import itertools
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


def grid_axes(field, res: int) -> list:
    """The node coordinates along x, y, z of the ``res^3`` grid over the field's cubic box, exactly as
    :meth:`~.field.ShellField.sdf_and_log_s_grid` places them."""
    a = float(field.half_size)
    lo, hi = field.center - a, field.center + a
    return [torch.linspace(float(lo[i]), float(hi[i]), res, device=field.center.device) for i in range(3)]


def grid_points(axes, flat_index: torch.Tensor) -> torch.Tensor:
    """World positions (N, 3) of the grid nodes with flat indices ``i * res^2 + j * res + k``."""
    r = axes[0].numel()
    j = flat_index
    return torch.stack([axes[0][j // (r * r)], axes[1][(j // r) % r], axes[2][j % r]], -1)


@torch.no_grad()
def band_grids(field, res: int, *, eps: float, min_halfwidth: float, max_halfwidth: float, margin: float,
               coarse: int = 64, seed_cells=None):
    """The SDF and log kernel size of ``field`` on the ``res^3`` grid over its cubic box (nodes as in
    :meth:`~.field.ShellField.sdf_and_log_s_grid`), evaluated with the network only near the band.

    A node is *near* when ``|f| - h < margin`` (``h``: the band half-width from its kernel size,
    :func:`band_halfwidth`; world units). A ``coarse``-node grid is evaluated first. Fine nodes are
    evaluated in the coarse cells with a corner near the band within half the cell diagonal (all
    cells that can hold a near node if the SDF is 1-Lipschitz), then, as long as evaluated near
    nodes lie on a face of their cell, in the cell across that face (26-connected), and in the cell
    of any node that looks near by the coarse grid's trilinear values alone: a flood fill, so a
    near region is complete once one of its cells is seeded. The remaining nodes keep the coarse
    grid's trilinear values, which are at least ``margin`` outside the band. ``coarse < 2`` (or
    more than half of ``res``) evaluates every node.

    Returns ``f``, ``log_s`` (res, res, res) float32, ``near`` (res, res, res) bool and the number of
    network evaluations. ``seed_cells`` ((coarse-1)^3 bool) replaces the seeds (tests).
    """
    import torch.nn.functional as Fn

    a = float(field.half_size)
    lo, hi = field.center - a, field.center + a
    r, rc = int(res), int(coarse)
    dev = field.center.device

    def excess(f, ls):       # how far outside the band (negative: inside)
        return f.abs() - band_halfwidth(ls, eps, min_halfwidth, max_halfwidth)

    if rc < 2 or 2 * rc > r:
        f, ls = field.sdf_and_log_s_grid(lo, hi, r)
        return f, ls, excess(f, ls) < margin, r ** 3
    axes = grid_axes(field, r)
    fc, lc = field.sdf_and_log_s_grid(lo, hi, rc)
    f = Fn.interpolate(fc[None, None], size=(r, r, r), mode="trilinear", align_corners=True)[0, 0].contiguous()
    ls = Fn.interpolate(lc[None, None], size=(r, r, r), mode="trilinear", align_corners=True)[0, 0].contiguous()
    if seed_cells is None:
        m = -Fn.max_pool3d(-excess(fc, lc)[None, None], kernel_size=2, stride=1)[0, 0]
        seed_cells = m < margin + 0.5 * math.sqrt(3.0) * (2.0 * a / (rc - 1))
    # coarse cell of each fine index along an axis, and whether the index is its cell's first / last
    ci = torch.clamp(torch.arange(r, device=dev) * (rc - 1) // (r - 1), 0, rc - 2)
    low_face = torch.ones(r, dtype=torch.bool, device=dev)
    low_face[1:] = ci[1:] != ci[:-1]
    high_face = torch.ones(r, dtype=torch.bool, device=dev)
    high_face[:-1] = ci[1:] != ci[:-1]
    active = torch.zeros(rc - 1, rc - 1, rc - 1, dtype=torch.bool, device=dev)
    done = torch.zeros(r, r, r, dtype=torch.bool, device=dev)
    fv, lv = f.view(-1), ls.view(-1)
    todo, n_eval = seed_cells.clone(), rc ** 3
    while todo.any():
        active |= todo
        want = active[ci][:, ci][:, :, ci] & ~done
        idx = want.view(-1).nonzero(as_tuple=True)[0]
        for s in range(0, idx.numel(), 65536):
            j = idx[s:s + 65536]
            fj, lj, _ = field.geometry(grid_points(axes, j))
            fv[j] = fj.to(fv)
            lv[j] = lj.to(lv)
        n_eval += idx.numel()
        done |= want
        near = excess(f, ls) < margin
        todo = torch.zeros_like(active)
        nz = (near & ~done).nonzero(as_tuple=True)
        todo[ci[nz[0]], ci[nz[1]], ci[nz[2]]] = True
        nz = (near & done).nonzero(as_tuple=True)
        for off in itertools.product((-1, 0, 1), repeat=3):
            keep = torch.ones(nz[0].numel(), dtype=torch.bool, device=dev)
            for ax, o in enumerate(off):
                if o:
                    keep &= (low_face if o < 0 else high_face)[nz[ax]]
            if keep.any():
                c = torch.stack([ci[nz[ax][keep]] + o for ax, o in enumerate(off)], -1)
                c = c[((c >= 0) & (c <= rc - 2)).all(-1)]
                todo[c[:, 0], c[:, 1], c[:, 2]] = True
        todo &= ~active
    return f, ls, excess(f, ls) < margin, n_eval


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
    ``max_halfwidth`` (fractions of the box half-size ``a``) replacing the config's ``shell_*``;
    ``coarse``: the coarse grid of :func:`band_grids` (0 = evaluate the whole grid).
    """
    a = float(field.half_size)
    res = int(overrides.get("grid_res", cfg.shell_grid_res))
    lo = (field.center - a).tolist()
    hi = (field.center + a).tolist()
    band = dict(eps=float(overrides.get("eps", cfg.shell_eps)),
                min_halfwidth=float(overrides.get("min_halfwidth", cfg.shell_min_halfwidth)) * a,
                max_halfwidth=float(overrides.get("max_halfwidth", cfg.shell_max_halfwidth)) * a)
    dilate = int(overrides.get("dilate_voxels", cfg.shell_dilate_voxels))
    # exact values wherever marching cubes or the dilation can look: within (dilation + 2) cell
    # diagonals of the band; elsewhere only the sign matters, and the coarse values are far from 0
    margin = math.sqrt(3.0) * (max(dilate, 0) + 2) * 2.0 * a / (res - 1)
    f, ls, _, n_eval = band_grids(field, res, margin=margin, coarse=int(overrides.get("coarse", 64)), **band)
    shells = extract_shells_from_grids(f, ls, lo, hi, dilate_voxels=dilate,
                                       target_faces=int(overrides.get("target_faces", cfg.shell_target_faces)), **band)
    shells.info["evaluated"] = int(n_eval)
    return shells


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
