"""Camera-path panel: keyframes from the current view, preview, save ``camera_path.json``.

The file is nerfstudio-compatible (see :mod:`engine.camera_paths_json`) and is rendered with
``kernelight render RUN --camera-path camera_path.json``. It is written only inside the viewer's
output folder (the run folder, or the folder given to ``kernelight view --output``): the file-name
box accepts a plain ``*.json`` name, never a path.
"""
from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

import numpy as np

from engine.camera_paths_json import interpolate_keyframes, write_camera_path

from .camera_convert import c2w_to_pose, pose_to_c2w
from .frustums import set_client_view

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\.json$")


def safe_output_name(name: str) -> str:
    """Validate a file name typed in the UI: a plain ``name.json``, no folders, no dot-files."""
    name = (name or "").strip()
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"file name must look like camera_path.json (letters, digits, _ . -), got {name!r}")
    return name


class CameraPathPanel:
    """Keyframe list + preview + save, in a GUI folder "Camera path"."""

    def __init__(self, server, output_dir, frustum_scale: float = 0.1):
        self.server = server
        self.output_dir = Path(output_dir)
        self.keyframes: list[tuple[np.ndarray, float]] = []   # (c2w (4,4) OpenCV, fov degrees)
        self.last_saved: Path | None = None
        self._scale = frustum_scale
        self._nodes = []
        self._play_stop = threading.Event()
        gui = server.gui
        with gui.add_folder("Camera path", expand_by_default=False):
            self.add_btn = gui.add_button("Add keyframe (current view)")
            self.clear_btn = gui.add_button("Clear keyframes")
            self.info = gui.add_markdown("0 keyframes")
            self.loop = gui.add_checkbox("Loop", False)
            self.fps = gui.add_number("FPS", 30, min=1, max=120, step=1)
            self.seconds = gui.add_number("Seconds", 4.0, min=0.1, max=600.0, step=0.1)
            self.width = gui.add_number("Render width", 640, min=16, max=8192, step=1)
            self.height = gui.add_number("Render height", 480, min=16, max=8192, step=1)
            self.preview = gui.add_slider("Preview", min=0.0, max=1.0, step=0.001, initial_value=0.0)
            self.play_btn = gui.add_button("Play preview")
            self.name = gui.add_text("File name", "camera_path.json")
            self.save_btn = gui.add_button("Save camera_path.json")
            self.status = gui.add_markdown(f"saves into `{self.output_dir}`")
        self.add_btn.on_click(lambda e: self.add_from_client(e.client))
        self.clear_btn.on_click(lambda e: self.clear())
        self.preview.on_update(lambda e: e.client is not None and self.show_at(e.client, float(self.preview.value)))
        self.play_btn.on_click(lambda e: self.play(e.client))
        self.save_btn.on_click(lambda e: self._save_clicked())

    # -- keyframes
    def add_keyframe(self, c2w, fov_deg: float) -> None:
        c2w = np.asarray(c2w, dtype=np.float64)
        self.keyframes.append((c2w, float(fov_deg)))
        q, p = c2w_to_pose(c2w)
        h = self.server.scene.add_camera_frustum(f"/camera_path/key_{len(self.keyframes) - 1:03d}",
                                                 fov=math.radians(fov_deg), aspect=4 / 3, scale=self._scale,
                                                 thickness=self._scale * 0.03, color=(40, 160, 255),
                                                 wxyz=q, position=p)
        self._nodes.append(h)
        self._update_info()

    def add_from_client(self, client) -> None:
        if client is None:
            return
        cam = client.camera
        self.add_keyframe(pose_to_c2w(cam.wxyz, cam.position), math.degrees(cam.fov))

    def clear(self) -> None:
        self.keyframes.clear()
        for h in self._nodes:
            h.remove()
        self._nodes.clear()
        self._update_info()

    def _update_info(self) -> None:
        self.info.content = f"{len(self.keyframes)} keyframe(s)"

    # -- preview
    def pose_at(self, t: float):
        """Interpolated (c2w (4,4), fov degrees) at t in [0, 1] along the path."""
        if not self.keyframes:
            raise ValueError("no keyframes")
        c2w = np.stack([k[0] for k in self.keyframes])
        fov = np.array([k[1] for k in self.keyframes])
        n = 201
        mats, fovs = interpolate_keyframes(c2w, fov, n, loop=bool(self.loop.value))
        i = int(round(min(max(t, 0.0), 1.0) * (n - 1)))
        return mats[i].double().numpy(), float(fovs[i])

    def show_at(self, client, t: float) -> None:
        if not self.keyframes:
            return
        m, fov = self.pose_at(t)
        q, p = c2w_to_pose(m)
        set_client_view(client, q, p, math.radians(fov))

    def play(self, client, duration: float | None = None) -> None:
        """Animate the client's camera along the path in a background thread."""
        if client is None or not self.keyframes:
            return
        self._play_stop.set()
        stop = threading.Event()
        self._play_stop = stop
        total = float(duration if duration is not None else self.seconds.value)

        def run():
            t0 = time.monotonic()
            while not stop.is_set():
                t = (time.monotonic() - t0) / max(total, 1e-3)
                if t > 1:
                    break
                try:
                    self.show_at(client, t)
                except Exception:
                    break
                time.sleep(1 / 15)

        threading.Thread(target=run, daemon=True, name="kernelight-path-preview").start()

    # -- save
    def save(self, name: str = "camera_path.json") -> Path:
        if len(self.keyframes) < 1:
            raise ValueError("add at least one keyframe first")
        path = self.output_dir / safe_output_name(name)
        c2w = np.stack([k[0] for k in self.keyframes])
        fov = np.array([k[1] for k in self.keyframes])
        write_camera_path(path, c2w, fov, width=int(self.width.value), height=int(self.height.value),
                          fps=float(self.fps.value), seconds=float(self.seconds.value), loop=bool(self.loop.value))
        self.last_saved = path
        return path

    def _save_clicked(self) -> None:
        try:
            path = self.save(str(self.name.value))
        except (ValueError, OSError) as exc:
            self.status.content = f"**not saved:** {exc}"
            return
        self.status.content = f"saved `{path.name}` in `{self.output_dir}`"
