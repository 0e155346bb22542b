"""Triangle-mesh helpers: marching cubes, morphological band operations, cleanup, decimation.

Meshes are ``(V, 3)`` float vertices and ``(F, 3)`` int faces (numpy). Heavy backends are imported
lazily: scikit-image (marching cubes), scipy (grey dilation/erosion), trimesh (cleanup, files) and
open3d (quadric decimation, through :func:`engine.geometry_backends.check_open3d`).
"""
from __future__ import annotations

import numpy as np


def marching_cubes(volume, level: float, lo, hi):
    """Iso-surface ``volume == level`` of a grid sampled at ``linspace(lo[i], hi[i], n_i)`` per axis.

    ``volume`` (nx, ny, nz), indexed ``[i, j, k]`` = x, y, z. Returns ``(V (n, 3) float64 world
    coordinates, F (m, 3) int64)``, faces oriented so that normals point towards increasing
    ``volume`` (outwards for an SDF). An empty mesh (no crossing) has zero rows.
    """
    from skimage import measure

    vol = np.asarray(volume, dtype=np.float32)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"marching_cubes: volume must be 3-D with every side >= 2, got {vol.shape}")
    if not (np.nanmin(vol) < level < np.nanmax(vol)):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    spacing = (hi - lo) / (np.array(vol.shape) - 1)
    v, f, _, _ = measure.marching_cubes(vol, level=float(level), spacing=tuple(spacing))
    v = v + lo
    f = f.astype(np.int64)
    if len(f):
        f = _orient_towards_increasing(vol, lo, spacing, v, f)
    return v, f


def _orient_towards_increasing(vol, lo, spacing, v, f):
    """Flip faces so their normals point to increasing field values (majority vote on a sample)."""
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    c = v[f].mean(1)
    sel = np.linspace(0, len(f) - 1, min(len(f), 512)).astype(int)
    step = float(np.min(spacing)) * 0.5
    nn = n[sel] / np.maximum(np.linalg.norm(n[sel], axis=1, keepdims=True), 1e-20)
    a = _trilinear(vol, lo, spacing, c[sel] + step * nn)
    b = _trilinear(vol, lo, spacing, c[sel] - step * nn)
    if np.sum(a > b) < np.sum(a < b):
        f = f[:, [0, 2, 1]]
    return f


def _trilinear(vol, lo, spacing, p):
    from scipy.ndimage import map_coordinates

    idx = ((p - lo) / spacing).T
    return map_coordinates(vol, idx, order=1, mode="nearest")


def ball_footprint(voxels: int) -> np.ndarray:
    """Boolean ball of radius ``voxels`` cells, shape ``(2 voxels + 1,) * 3``."""
    r = int(voxels)
    ax = np.arange(-r, r + 1)
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    return X ** 2 + Y ** 2 + Z ** 2 <= r * r + 1e-9


def dilate_field(volume, voxels: int):
    """Grow the region ``volume < level`` by ``voxels`` cells in every direction (min filter over a ball)."""
    from scipy.ndimage import grey_erosion

    if voxels <= 0:
        return np.asarray(volume)
    return grey_erosion(np.asarray(volume), footprint=ball_footprint(voxels), mode="nearest")


def erode_field(volume, voxels: int):
    """Shrink the region ``volume < level`` by ``voxels`` cells (max filter over a ball)."""
    from scipy.ndimage import grey_dilation

    if voxels <= 0:
        return np.asarray(volume)
    return grey_dilation(np.asarray(volume), footprint=ball_footprint(voxels), mode="nearest")


def clean_mesh(V, F, min_component_faces: int = 0):
    """Merge duplicate vertices, drop degenerate/duplicate faces and unused vertices (trimesh).

    ``min_component_faces > 0`` also drops connected components with fewer faces (floaters).
    """
    import trimesh

    if len(F) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    m = trimesh.Trimesh(np.asarray(V, dtype=np.float64), np.asarray(F, dtype=np.int64), process=True,
                        validate=True)
    if min_component_faces > 0 and len(m.faces):
        parts = m.split(only_watertight=False)
        keep = [p for p in parts if len(p.faces) >= min_component_faces]
        if keep and len(keep) < len(parts):
            m = trimesh.util.concatenate(keep)
    m.remove_unreferenced_vertices()
    return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64)


def decimate_mesh(V, F, target_faces: int):
    """Quadric decimation (open3d) to about ``target_faces`` faces; unchanged if already smaller."""
    if target_faces <= 0 or len(F) <= target_faces:
        return np.asarray(V), np.asarray(F, dtype=np.int64)
    from ..geometry_backends import check_open3d

    o3d = check_open3d()
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(V, dtype=np.float64)),
                                  o3d.utility.Vector3iVector(np.asarray(F, dtype=np.int32)))
    m = m.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    return np.asarray(m.vertices), np.asarray(m.triangles, dtype=np.int64)


def write_mesh(path, V, F) -> None:
    """Write a mesh (format from the suffix: .ply, .obj, ...) atomically via trimesh."""
    import trimesh

    from ..io.atomic import atomic_path

    m = trimesh.Trimesh(np.asarray(V, dtype=np.float64), np.asarray(F, dtype=np.int64), process=False)
    with atomic_path(path) as tmp:
        m.export(tmp)
