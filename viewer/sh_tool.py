"""Spherical-harmonics tool: basis functions Y_lm on a sphere, env-map reconstruction and irradiance.

Three spheres (icosphere vertices coloured per vertex, directions in the world frame with the
env map's +Z up, standard real SH convention of :mod:`engine.geometry.sh`):

* "basis": ``Y_lm(d)`` for the chosen (l, m), red > 0, blue < 0, radius ``|Y_lm| / max|Y_lm|``
  (the classic lobe plot) when "Lobes" is on;
* "environment": the loaded lat-long map sampled at the vertex directions (nearest pixel);
* "degree L": its SH reconstruction truncated at degree L (L slider);
* "irradiance": ``E(n) = sum A_l L_lm Y_lm(n)`` (clamped-cosine convolution), divided by pi so a
  white Lambertian sphere under the map shows that colour.

Env maps come from the SH data folder the viewer was given (its ``*.npy`` lat-long maps, listed
by name only) or from a file uploaded through the browser; nothing else on disk is listed or read.
"""
from __future__ import annotations

import math
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

MAX_DEGREE = 16
UPLOAD_SUFFIXES = (".npy", ".hdr", ".png", ".jpg", ".jpeg")


def sphere(subdivisions: int = 4):
    """Unit icosphere: vertices (V,3) float64 (also the directions), faces (F,3)."""
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    return np.asarray(s.vertices, dtype=np.float64), np.asarray(s.faces, dtype=np.int64)


def basis_values(dirs: np.ndarray, l: int, m: int) -> np.ndarray:
    """Y_lm at unit directions (V,3), standard real convention."""
    from engine.geometry.sh import sh_basis, sh_index

    if not (0 <= l and -l <= m <= l):
        raise ValueError(f"need 0 <= l and -l <= m <= l, got l={l}, m={m}")
    Y = sh_basis(torch.as_tensor(dirs, dtype=torch.float64), l, "standard", backend="auto")
    return Y[:, sh_index(l, m)].double().numpy()


def signed_colors(values: np.ndarray) -> np.ndarray:
    """Diverging colours: red for positive, blue for negative, white at zero (uint8 (V,3))."""
    v = values / max(float(np.abs(values).max()), 1e-12)
    pos = np.clip(v, 0, 1)[:, None]
    neg = np.clip(-v, 0, 1)[:, None]
    white = np.ones((len(v), 3))
    col = white - pos * np.array([0.0, 0.8, 0.8]) - neg * np.array([0.8, 0.8, 0.0])
    return (np.clip(col, 0, 1) * 255 + 0.5).astype(np.uint8)


def sample_latlong(img: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Nearest-pixel lookup of a Z-up lat-long map (Blender convention) at directions (V,3)."""
    H, W = img.shape[:2]
    d = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    row = np.clip((theta / np.pi * H).astype(int), 0, H - 1)
    col = np.floor((np.pi - phi) / (2 * np.pi) * W).astype(int) % W
    return img[row, col]


def tonemap(rgb: np.ndarray, white: float) -> np.ndarray:
    """Linear radiance -> uint8 sRGB-ish display colours (scale by ``white``, gamma 2.2)."""
    x = np.clip(np.asarray(rgb, dtype=np.float64) / max(white, 1e-12), 0, 1) ** (1 / 2.2)
    return (x * 255 + 0.5).astype(np.uint8)


class EnvmapSH:
    """An env map projected once to ``MAX_DEGREE``; truncations and irradiance on demand."""

    def __init__(self, image: np.ndarray, name: str, l_max: int = MAX_DEGREE):
        from engine.geometry.sh import EnvmapProjector

        self.image = np.asarray(image, dtype=np.float32)
        self.name = name
        H, W = self.image.shape[:2]
        self.l_max = int(min(l_max, (W - 1) // 2))
        self.coeffs = EnvmapProjector(H, W, self.l_max).project(self.image)  # (K, 3) float64
        self.white = float(np.percentile(self.image.mean(-1), 99))

    def reconstruction(self, dirs: np.ndarray, L: int) -> np.ndarray:
        from engine.geometry.sh import eval_sh, num_coeffs

        L = int(min(max(L, 0), self.l_max))
        c = torch.as_tensor(self.coeffs)[: num_coeffs(L)]
        return eval_sh(c, torch.as_tensor(dirs, dtype=torch.float64)).numpy()

    def irradiance(self, dirs: np.ndarray, L: int = 2) -> np.ndarray:
        """E(n) / pi at normals (V,3) from the degree-L truncation (L >= 2 is the usual SH9)."""
        from engine.geometry.sh import eval_sh, irradiance_coeffs

        L = int(min(max(L, 0), self.l_max))
        E = irradiance_coeffs(torch.as_tensor(self.coeffs), l_max=L)
        return eval_sh(E, torch.as_tensor(dirs, dtype=torch.float64)).numpy() / math.pi


class SHTool:
    """GUI folder "Spherical harmonics" and its spheres under ``/sh_tool`` (hidden until enabled)."""

    def __init__(self, server, sh_data_dir=None, anchor=(0.0, 0.0, 0.0), radius: float = 0.3, taichi=None,
                 row_axis=(1.0, 0.0, 0.0)):
        from engine.kernels import queue as default_queue

        self.row_axis = np.asarray(row_axis, dtype=np.float64) / max(np.linalg.norm(row_axis), 1e-12)
        self.taichi = taichi or default_queue()
        self.server = server
        self.anchor = np.asarray(anchor, dtype=np.float64)
        self.radius = float(radius)
        self.dirs, self.faces = sphere(4)
        self.env: EnvmapSH | None = None
        self.sh_data_dir = Path(sh_data_dir) if sh_data_dir else None
        self.available = self._list_envmaps()
        self.handles: dict[str, object] = {}
        self._lock = threading.RLock()      # GUI callbacks arrive on several viser threads
        self.last_colors: dict[str, np.ndarray] = {}
        gui = server.gui
        with gui.add_folder("Spherical harmonics", expand_by_default=False):
            self.enabled = gui.add_checkbox("Show SH spheres", False)
            self.l = gui.add_slider("l", min=0, max=8, step=1, initial_value=2)
            self.m = gui.add_slider("m", min=-8, max=8, step=1, initial_value=0)
            self.lobes = gui.add_checkbox("Lobes (radius |Y|)", True)
            names = ["(none)"] + sorted(self.available)
            self.env_choice = gui.add_dropdown("Environment map", names, initial_value=names[0])
            self.upload = gui.add_upload_button("Upload env map (.npy/.hdr/.png/.jpg)")
            self.L = gui.add_slider("Degree L", min=0, max=MAX_DEGREE, step=1, initial_value=2)
            self.status = gui.add_markdown("")
        self.enabled.on_update(lambda _e: self.redraw())
        for h in (self.l, self.m, self.lobes, self.L):
            h.on_update(lambda _e: self.redraw())
        self.env_choice.on_update(lambda _e: self._choose_env())
        self.upload.on_upload(lambda e: self._uploaded(e))

    # -- env maps
    def _list_envmaps(self) -> dict[str, Path]:
        if self.sh_data_dir is None or not self.sh_data_dir.is_dir():
            return {}
        found = {}
        for p in sorted(self.sh_data_dir.rglob("*.npy")):
            if p.is_file() and p.resolve().is_relative_to(self.sh_data_dir.resolve()):
                found[p.stem] = p
        return found

    def load_envmap_file(self, path, name: str | None = None) -> None:
        from engine.geometry.sh import load_envmap

        img = load_envmap(path)
        self.env = self.taichi.call(EnvmapSH, img, name or Path(path).stem, timeout=300.0)
        self.L.max = self.env.l_max
        self.status.content = f"env map **{self.env.name}** {img.shape[1]}×{img.shape[0]}, projected to degree {self.env.l_max}"
        self.redraw()

    def _choose_env(self) -> None:
        name = str(self.env_choice.value)
        if name not in self.available:
            self.env = None
            self.redraw()
            return
        try:
            self.load_envmap_file(self.available[name], name)
        except Exception as exc:
            self.status.content = f"**cannot load {name}:** {exc}"

    def _uploaded(self, event) -> None:
        f = self.upload.value
        suffix = Path(f.name).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            self.status.content = f"**unsupported upload** {suffix!r}: use {', '.join(UPLOAD_SUFFIXES)}"
            return
        with tempfile.TemporaryDirectory(prefix="kernelight-env-") as tmp:
            p = Path(tmp) / f"upload{suffix}"
            p.write_bytes(f.content)
            try:
                self.load_envmap_file(p, Path(f.name).stem)
            except Exception as exc:
                self.status.content = f"**cannot load upload:** {exc}"

    # -- drawing
    def _mesh(self, key: str, slot: int, colors: np.ndarray, radii=None, label: str = "") -> None:
        """Sphere number ``slot`` of the row (spaced 2.5 radii along ``row_axis`` from ``anchor``)."""
        import trimesh

        V = self.dirs * (self.radius if radii is None else self.radius * radii[:, None])
        rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
        mesh = trimesh.Trimesh(V, self.faces, vertex_colors=rgba, process=False)
        self.last_colors[key] = colors
        pos = self.anchor + self.row_axis * (2.5 * self.radius * slot)
        self.handles[key] = self.server.scene.add_mesh_trimesh(f"/sh_tool/{key}", mesh, position=pos)
        self.server.scene.add_label(f"/sh_tool/{key}_label", label or key, position=pos,
                                    font_screen_scale=0.8)

    def redraw(self) -> None:
        with self._lock:
            self._redraw_locked()

    def _redraw_locked(self) -> None:
        if not self.enabled.value:
            self.server.scene.remove_by_name("/sh_tool")
            self.handles.clear()
            return
        l = int(self.l.value)
        m = int(min(max(int(self.m.value), -l), l))
        Y = self.taichi.call(basis_values, self.dirs, l, m, timeout=120.0)
        radii = np.abs(Y) / max(float(np.abs(Y).max()), 1e-12) if self.lobes.value else None
        self._mesh("basis", 0, signed_colors(Y), radii, f"Y({l},{m})")
        if self.env is not None:
            L = int(self.L.value)
            env = self.env
            rec = self.taichi.call(env.reconstruction, self.dirs, L, timeout=120.0)
            irr = self.taichi.call(env.irradiance, self.dirs, L, timeout=120.0)
            self._mesh("environment", 1, tonemap(sample_latlong(env.image, self.dirs), env.white), label=env.name)
            self._mesh("reconstruction", 2, tonemap(rec, env.white), label=f"degree {L}")
            self._mesh("irradiance", 3, tonemap(irr, env.white), label=f"irradiance (L={L})")
        else:
            for k in ("environment", "reconstruction", "irradiance"):
                self.server.scene.remove_by_name(f"/sh_tool/{k}")
                self.server.scene.remove_by_name(f"/sh_tool/{k}_label")
                self.handles.pop(k, None)
        self.status.content = (f"Y<sub>{l},{m}</sub>" + (f" · {self.env.name}, L = {int(self.L.value)}" if self.env else ""))
