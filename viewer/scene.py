"""What the viewer shows: a renderable scene (any method's run folder or checkpoint, or a file a
registered method reads, such as a 3DGS .ply) or a mesh.

:func:`open_source` decides from the path: a folder or ``.pt`` is a run/checkpoint, a file some
method reads (``engine.methods.reader_for``: a ``.ply`` with 3DGS properties) is loaded by that
method, a ``.ply`` with faces or an ``.obj/.off/.stl/.glb/.gltf`` is a mesh.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from engine.errors import ConfigError, DataError

MESH_SUFFIXES = (".obj", ".off", ".stl", ".glb", ".gltf", ".ply")


class MethodScene:
    """A loaded method object (see ``engine.load``) made renderable from viewer threads.

    Attributes: ``method``, ``name``, ``train_cameras`` (Cameras or None), ``run_dir``,
    ``center`` (3,), ``radius`` (float), ``up`` (3,) world up, ``notes``.
    """

    kind = "method"

    def __init__(self, method, name: str = "scene", train_cameras=None, up=None):
        self.method = method
        self.name = name
        self.train_cameras = train_cameras
        self.run_dir = method.run_dir
        self.notes = list(method.notes)
        self.center, self.radius = self._extent()
        if up is None:
            up = self._default_up()
        self.up = np.asarray(up, dtype=np.float64) / max(np.linalg.norm(up), 1e-12)

    def _extent(self):
        with torch.no_grad():
            if self.train_cameras is not None and len(self.train_cameras) > 0:
                # the point the training cameras look at; radius half their mean distance to it
                from engine.camera_paths import look_at_center

                center = look_at_center(self.train_cameras)
                pos = self.train_cameras.c2w[:, :3, 3].double()
                radius = float((pos - center).norm(dim=1).mean()) / 2
                return center.cpu().numpy(), max(radius, 1e-3)
            pts = self.method.points()
            if pts is not None and pts.shape[0] > 0:
                pts = pts.detach().cpu()
                if pts.shape[0] > 20000:
                    pts = pts[torch.linspace(0, pts.shape[0] - 1, 20000).long()]
                lo, hi = torch.quantile(pts.float(), 0.02, 0), torch.quantile(pts.float(), 0.98, 0)
            else:
                lo, hi = self.method.bounds().detach().cpu().float()
            return ((lo + hi) / 2).double().numpy(), max(float((hi - lo).norm()) / 2, 1e-3)

    def _default_up(self):
        if self.train_cameras is not None and len(self.train_cameras) > 0:
            from engine.camera_paths import estimate_up

            return estimate_up(self.train_cameras).double().numpy()
        return np.array([0.0, 0.0, 1.0])

    @property
    def num_primitives(self) -> int:
        return int(self.method.num_primitives)

    def render(self, cameras, background) -> dict:
        """Render camera 0 of ``cameras`` under the kernel lock (thread safe): the rendering
        contract's keys (rgb, alpha, depth, depth_sum, cost) plus ``normal`` where the method has it,
        on the CPU whatever the model's device (:func:`engine.api.render` moves the cameras there)."""
        from engine.api import render
        from engine.kernels import lock

        with lock(), torch.no_grad():
            out = render(self.method, cameras, 0, background=background)
            return {k: v.detach().cpu().clone() for k, v in out.items() if torch.is_tensor(v)}


class MeshScene:
    """A triangle mesh shown by the browser (no server-side rendering); used by the geodesic tool."""

    kind = "mesh"

    def __init__(self, vertices, faces, name: str = "mesh", up=None):
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self.name = name
        self.train_cameras = None
        self.run_dir = None
        self.notes = []
        lo, hi = self.vertices.min(0), self.vertices.max(0)
        self.center = (lo + hi) / 2
        self.radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
        self.up = np.asarray(up if up is not None else (0.0, 1.0, 0.0), dtype=np.float64)


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares a non-empty face element (bad headers: a DataError naming the file)."""
    from engine.io.ply import read_ply_header

    return read_ply_header(path).face_count() > 0


def load_mesh(path) -> MeshScene:
    import trimesh

    path = Path(path)
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:
        raise DataError(path, f"cannot read mesh: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError(path, "no triangles found")
    return MeshScene(np.asarray(mesh.vertices), np.asarray(mesh.faces), name=path.stem)


def _train_cameras_of(method):
    run_dir = method.run_dir
    if run_dir is None or not (Path(run_dir) / "config.toml").is_file():
        return None, None
    from engine.config import load_scene
    from engine.data import load_dataset

    try:
        sc = load_scene(Path(run_dir) / "config.toml")
        ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format)
    except Exception as exc:  # the dataset moved: still view the model
        return None, f"training cameras unavailable ({exc})"
    split = ds.splits.get("train")
    return (split.cameras if split is not None else None), None


def parse_up(up: str | None):
    """'auto' | '+z' | '-z' | '+y' | '-y' | '+x' | '-x' -> vector or None (auto)."""
    if up is None or up == "auto":
        return None
    table = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
    if up not in table:
        raise ConfigError(f"--up must be auto or one of {', '.join(table)}, got {up!r}")
    return np.array(table[up], dtype=np.float64)


def open_source(path, up: str | None = None, **options):
    """Open what ``kernelight view PATH`` shows. ``options`` go to ``engine.load`` (e.g. dt=0.01)."""
    import engine
    from engine import methods

    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    upv = parse_up(up)
    suffix = path.suffix.lower()
    reader = methods.reader_for(path) if path.is_file() else None
    if path.is_file() and reader is None and suffix == ".ply" and not _ply_has_faces(path):
        raise DataError(path, "PLY has neither 3DGS properties (f_dc_0, opacity, ...) nor faces; "
                        "kernelight view shows 3DGS files and meshes")
    if path.is_file() and reader is None and suffix in MESH_SUFFIXES:
        m = load_mesh(path)
        if upv is not None:
            m.up = upv
        return m
    if path.is_file() and suffix not in (".ply", ".pt"):
        raise DataError(path, f"unsupported file type {suffix!r}: expected a run folder, a checkpoint .pt, "
                        f"a 3DGS .ply or a mesh ({', '.join(MESH_SUFFIXES)})")
    method = engine.load(path, **options)
    cams, note = _train_cameras_of(method)
    scene = MethodScene(method, name=path.stem if path.is_file() else path.name, train_cameras=cams, up=upv)
    if note:
        scene.notes.append(note)
    return scene


def view_side(up) -> np.ndarray:
    """Unit horizontal direction (perpendicular to ``up``) on which the default camera sits."""
    up = np.asarray(up, dtype=np.float64)
    side = np.cross(up, [1.0, 0.0, 0.0])
    if np.linalg.norm(side) < 0.3:
        side = np.cross(up, [0.0, 1.0, 0.0])
    return side / np.linalg.norm(side)


def default_camera(scene, fov_deg: float = 50.0):
    """(position, look_at, up) for a first view that frames the scene."""
    up = scene.up
    side = view_side(up)
    d = 0.8 * side + 0.45 * up
    d /= np.linalg.norm(d)
    dist = scene.radius / math.tan(math.radians(fov_deg) / 2) * 1.1
    return scene.center + dist * d, scene.center, up
