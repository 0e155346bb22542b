"""Input/output around heat geodesics: loading meshes and point clouds, isolines, coloured PLY.

- :func:`load_geometry`: PLY through :mod:`engine.io.ply` (the engine's one PLY module), OBJ/OFF/STL
  via trimesh (vertex order of the file kept, OBJ with ``maintain_order``; STL is a triangle soup
  so its vertices are merged), a PLY without faces, ``.xyz`` text (first three columns) or ``.npy``
  ``(n, 3)`` is a point cloud.
- :func:`isolines`: marching triangles on a per-vertex scalar field.
- :func:`write_colored_ply` / :func:`write_isolines_obj`: atomic writers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.atomic import atomic_write

__all__ = ["load_geometry", "isolines", "distance_colors", "write_colored_ply", "write_isolines_obj"]

MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl")


def load_geometry(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(V (n, 3) float64, F (m, 3) int64 or None for a point cloud)``."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    sfx = path.suffix.lower()
    try:
        if sfx == ".npy":
            P = np.load(path, allow_pickle=False)
            if P.ndim != 2 or P.shape[1] != 3:
                raise DataError(path, f"expected an (n, 3) array of points, got shape {P.shape}")
            return P.astype(np.float64), None
        if sfx == ".xyz":
            P = np.loadtxt(path, ndmin=2)
            if P.shape[1] < 3:
                raise DataError(path, f"expected at least 3 columns (x y z), got {P.shape[1]}")
            return P[:, :3].astype(np.float64), None
        if sfx == ".ply":
            from ..io.ply import read_ply_mesh

            return read_ply_mesh(path)
        if sfx not in MESH_SUFFIXES:
            raise DataError(path, f"unsupported format {sfx!r} (use {', '.join(MESH_SUFFIXES)}, .xyz or .npy)")
        import trimesh

        kw = dict(process=sfx == ".stl")
        if sfx == ".obj":
            kw["maintain_order"] = True
        geom = trimesh.load(str(path), force=None, **kw)
    except DataError:
        raise
    except Exception as exc:  # parser errors from numpy / trimesh
        raise DataError(path, f"cannot read: {exc}") from exc
    import trimesh

    if isinstance(geom, trimesh.Scene):
        geoms = list(geom.geometry.values())
        if len(geoms) != 1:
            raise DataError(path, f"holds {len(geoms)} objects; expected one mesh or point cloud")
        geom = geoms[0]
    V = np.asarray(geom.vertices, dtype=np.float64)
    F = np.asarray(getattr(geom, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    if len(V) == 0:
        raise DataError(path, "has no vertices")
    return V, (F if len(F) else None)


def isolines(V: np.ndarray, F: np.ndarray, values: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iso-contours of a per-vertex field on a triangle mesh (marching triangles).

    Returns ``(points (k, 3), segments (s, 2) indices into points, level_of_segment (s,))``.
    A crossing point is shared by the segments of the two faces around its edge, so segments
    chain into polylines. Faces touching a non-finite value are skipped.
    """
    V, F, values = np.asarray(V, float), np.asarray(F, np.int64), np.asarray(values, float)
    fin = np.isfinite(values[F]).all(axis=1)
    F = F[fin]
    pts, segs, seg_level = [], [], []
    base = 0
    for li, lev in enumerate(np.atleast_1d(levels)):
        s = values[F] - lev  # (m, 3)
        pos = s > 0
        cross_f = pos.any(axis=1) & ~pos.all(axis=1)
        Fc, sc, pc = F[cross_f], s[cross_f], pos[cross_f]
        if len(Fc) == 0:
            continue
        ends = []  # per face, two edge ids
        for c in range(3):
            a, b = (c + 1) % 3, (c + 2) % 3
            ends.append(pc[:, a] != pc[:, b])  # edge opposite corner c crosses
        ends = np.stack(ends, axis=1)  # (k, 3), exactly two True per face
        ea = np.minimum(Fc[:, [1, 2, 0]], Fc[:, [2, 0, 1]])
        eb = np.maximum(Fc[:, [1, 2, 0]], Fc[:, [2, 0, 1]])
        n = len(V)
        keys = ea * n + eb
        sel = keys[ends].reshape(-1, 2)  # row-major: the two crossing edges of each face
        uk, inv = np.unique(sel.ravel(), return_inverse=True)
        i, j = uk // n, uk % n
        si, sj = values[i] - lev, values[j] - lev
        w = si / (si - sj)
        pts.append(V[i] + w[:, None] * (V[j] - V[i]))
        segs.append(base + inv.reshape(-1, 2))
        seg_level.append(np.full(len(sel), li))
        base += len(uk)
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.concatenate(pts), np.concatenate(segs), np.concatenate(seg_level)


# a small perceptual colour ramp (dark blue -> teal -> yellow), piecewise linear
_RAMP = np.array([[0.15, 0.05, 0.45], [0.10, 0.35, 0.60], [0.10, 0.60, 0.55], [0.45, 0.80, 0.30], [0.98, 0.90, 0.15]])


def distance_colors(d: np.ndarray, n_bands: int = 0, band_width: float = 0.08) -> np.ndarray:
    """``(n, 3)`` uint8 colours for distances; ``+inf`` -> grey. With ``n_bands > 0`` a dark
    stripe marks each of the ``n_bands`` evenly spaced isoline values."""
    d = np.asarray(d, float)
    fin = np.isfinite(d)
    dmax = d[fin].max() if fin.any() else 1.0
    x = np.where(fin, d / (dmax if dmax > 0 else 1.0), 0.0)
    pos = x * (len(_RAMP) - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, len(_RAMP) - 2)
    f = (pos - i0)[:, None]
    rgb = _RAMP[i0] * (1 - f) + _RAMP[i0 + 1] * f
    if n_bands > 0:
        phase = x * (n_bands + 1)
        near = np.abs(phase - np.round(phase)) < band_width * 0.5 * (n_bands + 1) / max(n_bands, 1)
        near &= np.round(phase) >= 1
        rgb[near] *= 0.25
    rgb[~fin] = 0.6
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def write_colored_ply(path, V: np.ndarray, F: np.ndarray | None, colors: np.ndarray, distance: np.ndarray) -> Path:
    """Binary little-endian PLY: x y z (float32), red green blue (uchar), distance (float32;
    ``inf`` where unreachable), and faces if given. Written atomically by :func:`engine.io.ply.write_ply`."""
    from ..io.ply import write_ply

    V, colors = np.asarray(V), np.asarray(colors)
    vertex = {"x": V[:, 0].astype(np.float32), "y": V[:, 1].astype(np.float32), "z": V[:, 2].astype(np.float32),
              "red": colors[:, 0].astype(np.uint8), "green": colors[:, 1].astype(np.uint8),
              "blue": colors[:, 2].astype(np.uint8), "distance": np.asarray(distance, dtype=np.float32)}
    return write_ply(path, vertex, faces=None if F is None or len(F) == 0 else F)


def write_isolines_obj(path, points: np.ndarray, segments: np.ndarray, levels=None, seg_level=None) -> Path:
    """OBJ of line segments (``v`` and ``l`` records, one ``g`` group per level). Atomic."""
    lines = [f"# isolines: {len(points)} points, {len(segments)} segments"]
    lines += [f"v {p[0]:.9g} {p[1]:.9g} {p[2]:.9g}" for p in points]
    if seg_level is None:
        seg_level = np.zeros(len(segments), np.int64)
    for li in np.unique(seg_level):
        name = f"level_{li}" if levels is None else f"level_{li}_d{float(levels[li]):.6g}"
        lines.append(f"g {name}")
        lines += [f"l {a + 1} {b + 1}" for a, b in segments[seg_level == li]]
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return Path(path)
