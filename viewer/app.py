"""The viewer application: a viser server with the render panel and the tools.

>>> from viewer.app import ViewerApp, ViewerOptions          # doctest: +SKIP
>>> app = ViewerApp.open("outputs/mic/raygauss/<stamp>", ViewerOptions(port=7007))
>>> print(app.url); app.serve_forever()
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .render_panel import RenderPanel, RenderSettings

LOCALHOST = "127.0.0.1"


@dataclass
class ViewerOptions:
    host: str = LOCALHOST
    port: int = 7007
    max_side: int = 512            # full-resolution render size (longer side, pixels)
    target_fps: float = 10.0       # frame rate the adaptive resolution aims at while moving
    up: str | None = None          # world up: None/auto, '+z', '-y', ...
    sh_data: str | None = None     # folder of env maps for the SH tool (e.g. ../shared/data/sh)
    output_dir: str | None = None  # where camera_path.json is saved (default: run folder or cwd)
    background: tuple = (0.0, 0.0, 0.0)
    label: str = "kernelight"
    verbose: bool = False


def free_port(host: str = LOCALHOST) -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_available(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ViewerApp:
    """Owns the viser server, the render panel (Gaussian scenes) and the tools.

    Attributes: ``server``, ``scene`` (MethodScene or MeshScene), ``render_panel`` (or None),
    ``frustums``, ``geodesic`` (mesh only), ``sh_tool``, ``camera_path`` (Gaussian scenes only).
    """

    def __init__(self, scene, options: ViewerOptions | None = None):
        import viser

        from engine.errors import ConfigError

        from engine.kernels import queue as default_queue

        from .viser_threads import install as install_viser_thread_safety

        self.options = opts = options or ViewerOptions()
        self.scene = scene
        self.taichi = default_queue()
        if not port_available(opts.host, opts.port):
            raise ConfigError(f"--port {opts.port}: already in use on {opts.host}; pick another (or --port 0 for any)")
        install_viser_thread_safety()  # render threads push frames; see viewer/viser_threads.py
        self.server = viser.ViserServer(host=opts.host, port=opts.port, label=opts.label, verbose=opts.verbose)
        srv = self.server
        srv.gui.configure_theme(control_width="medium", show_share_button=False)
        up = np.asarray(scene.up, dtype=np.float64)
        srv.scene.set_up_direction(tuple(up))
        pos, look, _ = _default_camera(scene)
        srv.initial_camera.position = tuple(pos)
        srv.initial_camera.look_at = tuple(look)
        srv.initial_camera.up_direction = tuple(up)
        self.render_panel = self.frustums = self.geodesic = self.camera_path = self.generate_panel = None
        with srv.gui.add_folder("Scene"):
            self.scene_md = srv.gui.add_markdown(self._scene_text())
        if scene.kind == "method":
            settings = RenderSettings(max_side=opts.max_side, target_fps=opts.target_fps,
                                      background=tuple(opts.background))
            self.render_panel = RenderPanel(srv, scene, settings, taichi=self.taichi)
            if getattr(scene.method, "name", "") == "gvgen":   # text-to-3D prompt box
                from .generate_panel import GeneratePanel

                self.generate_panel = GeneratePanel(srv, scene, on_change=self.render_panel.refresh)
            if scene.train_cameras is not None and len(scene.train_cameras) > 0:
                from .frustums import TrainingFrustums

                self.frustums = TrainingFrustums(srv, scene.train_cameras, scale=0.08 * scene.radius)
            from .camera_path_panel import CameraPathPanel

            out_dir = opts.output_dir or (scene.run_dir if scene.run_dir is not None else Path.cwd())
            self.camera_path = CameraPathPanel(srv, out_dir, frustum_scale=0.08 * scene.radius)
        else:
            from .geodesic_tool import GeodesicTool

            self.geodesic = GeodesicTool(srv, scene.vertices, scene.faces, taichi=self.taichi)
        from .sh_tool import SHTool

        # the SH spheres sit in a row below the scene, starting at its left
        from .scene import view_side

        side = view_side(up)                         # the default camera sits on this side
        right = np.cross(up, side)                   # screen-right in the default view
        r = 0.25 * scene.radius
        anchor = np.asarray(scene.center) - 1.6 * scene.radius * up - 3.75 * r * right
        self.sh_tool = SHTool(srv, opts.sh_data, anchor=anchor, radius=r, taichi=self.taichi, row_axis=right)

    @classmethod
    def open(cls, path, options: ViewerOptions | None = None, **load_options) -> "ViewerApp":
        """Open PATH (run folder, checkpoint, 3DGS .ply or mesh) and start serving it."""
        from .scene import open_source

        options = options or ViewerOptions()
        return cls(open_source(path, up=options.up, **load_options), options)

    def _scene_text(self) -> str:
        s = self.scene
        if s.kind == "method":
            txt = f"**{s.name}** · {s.num_primitives:,} Gaussians"
            if s.train_cameras is not None:
                txt += f" · {len(s.train_cameras)} training cameras"
        else:
            txt = f"**{s.name}** · mesh, {len(s.vertices):,} vertices, {len(s.faces):,} faces"
        return txt

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.options.host
        shown = LOCALHOST if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.port}"

    def pump(self, seconds: float) -> None:
        """Run queued Taichi jobs (renders, tool computations) for ``seconds`` (main thread only)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.taichi.run_pending(timeout=min(left, 0.05))

    def serve_forever(self, seconds: float | None = None) -> None:
        """Run the Taichi queue until Ctrl-C (or for ``seconds``), then stop the server."""
        try:
            if seconds is not None:
                self.pump(seconds)
            else:
                while True:
                    self.pump(3600.0)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self.render_panel is not None:
            self.render_panel.close()
        self.server.stop()


def _default_camera(scene):
    from .scene import default_camera

    return default_camera(scene)
