"""Geodesic tool: click on a mesh to add heat-method sources; distance as vertex colours + isolines.

The mesh is drawn by the browser (a GLB with per-vertex colours). A click gives a world ray
(viser's ``on_click``); :func:`ray_mesh_hit` intersects it with the triangles (Moller-Trumbore,
vectorised) and the nearest vertex of the hit triangle becomes a source. Distances come from the
engine's heat-method solver (``engine.geometry.geodesic.MeshHeatSolver``, prefactored once per
mesh, run on the Taichi thread); isolines by marching triangles (``engine.geometry.geodesic_io``).
"""
from __future__ import annotations

import threading

import numpy as np

NEUTRAL = np.array([200, 200, 200], dtype=np.uint8)


def make_solver(V: np.ndarray, F: np.ndarray):
    """The engine's prefactored heat-method solver (intrinsic-Delaunay "robust" variant, which
    stays correct on meshes with obtuse triangles); ``compute_distance(sources) -> (V,)``."""
    from engine.geometry.geodesic import MeshHeatSolver

    return MeshHeatSolver(V, F, robust=True)


def compute_distance(solver, sources) -> np.ndarray:
    """Distance (V,) to the nearest source (vertices in source-less components get +inf)."""
    d = solver.compute_distance([int(s) for s in sources])
    return np.asarray(d, dtype=np.float64)


def ray_mesh_hit(origin, direction, V: np.ndarray, F: np.ndarray):
    """First intersection of a ray with a triangle mesh.

    Returns ``(face index, t, barycentric (3,))`` or ``None`` when the ray misses.
    """
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    d = d / max(np.linalg.norm(d), 1e-300)
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    e1, e2 = b - a, c - a
    p = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - a
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ d) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9)
    if not hit.any():
        return None
    idx = np.flatnonzero(hit)
    k = idx[np.argmin(t[idx])]
    return int(k), float(t[k]), np.array([1 - u[k] - v[k], u[k], v[k]])


def isolines(V: np.ndarray, F: np.ndarray, values: np.ndarray, spacing: float, max_lines: int = 200):
    """Segments (S, 2, 3) where ``values`` (per vertex, linear on faces) crosses k * spacing, k >= 1.

    Uses :func:`engine.geometry.geodesic_io.isolines` (marching triangles; non-finite values skipped).
    """
    from engine.geometry.geodesic_io import isolines as _iso

    if not spacing > 0:
        raise ValueError(f"isoline spacing must be > 0, got {spacing}")
    fin = np.isfinite(values)
    if not fin.any():
        return np.zeros((0, 2, 3))
    levels = np.arange(spacing, float(values[fin].max()), spacing)[:max_lines]
    if len(levels) == 0:
        return np.zeros((0, 2, 3))
    pts, segs, _ = _iso(V, F, values, levels)
    return pts[segs] if len(segs) else np.zeros((0, 2, 3))


def distance_colors(dist: np.ndarray, spacing: float | None = None) -> np.ndarray:
    """Per-vertex uint8 colours: turbo map of distance / max, darkened in thin bands at isolines."""
    from engine.io.images import colormap

    d = np.asarray(dist, dtype=np.float64)
    fin = np.isfinite(d)
    dmax = float(d[fin].max()) if fin.any() else 1.0
    col = colormap(d[None, :], 0.0, max(dmax, 1e-12))[0]
    if spacing:
        with np.errstate(invalid="ignore"):
            frac = np.abs(d / spacing - np.round(d / spacing))
        col = col * np.where(fin & (frac < 0.06), 0.35, 1.0)[:, None]
    col[~fin] = 0.55                     # unreachable (no source in that component): grey
    return (np.clip(col, 0, 1) * 255 + 0.5).astype(np.uint8)


class GeodesicTool:
    """GUI folder "Geodesics" + the clickable mesh. ``sources`` holds the source vertex ids."""

    def __init__(self, server, vertices, faces, name: str = "/mesh", taichi=None):
        import trimesh

        from engine.kernels import queue as default_queue

        self.taichi = taichi or default_queue()
        self.server = server
        self.V = np.ascontiguousarray(vertices, dtype=np.float64)
        self.F = np.ascontiguousarray(faces, dtype=np.int64)
        self.name = name
        self.sources: list[int] = []
        self.distance: np.ndarray | None = None
        self.colors = np.tile(NEUTRAL, (len(self.V), 1))
        self._solver = None
        self._lock = threading.RLock()          # clicks and slider updates come from viser threads
        self._trimesh = trimesh
        edges = self.V[self.F[:, [1, 2, 0]]] - self.V[self.F]
        self.mean_edge = float(np.linalg.norm(edges, axis=-1).mean())
        extent = float(np.linalg.norm(self.V.max(0) - self.V.min(0)))
        gui = server.gui
        with gui.add_folder("Geodesics"):
            self.info = gui.add_markdown("click on the mesh to add a source")
            self.add_mode = gui.add_checkbox("Click adds a source", True)
            self.spacing = gui.add_slider("Isoline spacing", min=extent / 200, max=extent / 4,
                                          step=extent / 1000, initial_value=extent / 30)
            self.clear_btn = gui.add_button("Clear sources")
        self.spacing.on_update(lambda _e: self._redraw())
        self.clear_btn.on_click(lambda _e: self.clear())
        self._add_mesh()

    def _add_mesh(self) -> None:
        mesh = self._trimesh.Trimesh(self.V, self.F, vertex_colors=np.concatenate(
            [self.colors, np.full((len(self.V), 1), 255, np.uint8)], 1), process=False)
        self.handle = self.server.scene.add_mesh_trimesh(self.name, mesh)
        self.handle.on_click(self._clicked)

    def _clicked(self, event) -> None:
        if not self.add_mode.value:
            return
        hit = ray_mesh_hit(event.ray_origin, event.ray_direction, self.V, self.F)
        if hit is None:
            return
        face, _t, bary = hit
        self.add_source(int(self.F[face, int(np.argmax(bary))]))

    def add_source(self, vertex: int) -> None:
        if not 0 <= vertex < len(self.V):
            raise IndexError(f"vertex {vertex} out of range (mesh has {len(self.V)})")
        with self._lock:
            if vertex not in self.sources:
                self.sources.append(vertex)
            self.distance = self.taichi.call(self._compute, list(self.sources), timeout=300.0)
        self._redraw()

    def _compute(self, sources) -> np.ndarray:
        """On the Taichi thread: build the solver once, then solve for ``sources``."""
        if self._solver is None:
            self._solver = make_solver(self.V, self.F)
        return compute_distance(self._solver, sources)

    def clear(self) -> None:
        with self._lock:
            self.sources.clear()
            self.distance = None
        self._redraw()

    def _redraw(self) -> None:
        with self._lock:
            self._redraw_locked()

    def _redraw_locked(self) -> None:
        spacing = float(self.spacing.value)
        if self.distance is None:
            self.colors = np.tile(NEUTRAL, (len(self.V), 1))
            self.server.scene.remove_by_name(self.name + "_isolines")
            self.info.content = "click on the mesh to add a source"
        else:
            self.colors = distance_colors(self.distance, spacing)
            segs = isolines(self.V, self.F, self.distance, spacing)
            if len(segs):
                self.server.scene.add_line_segments(self.name + "_isolines", segs.astype(np.float32),
                                                    colors=(20, 20, 20), thickness=2.0, thickness_units="screen")
            fin = self.distance[np.isfinite(self.distance)]
            self.info.content = (f"{len(self.sources)} source(s) · max distance {fin.max() if fin.size else 0:.4g} · "
                                 f"{len(segs)} isoline segments")
        self.handle.remove()
        self._add_mesh()
