"""Training cameras drawn as frustums; clicking one moves the clicking client's camera onto it."""
from __future__ import annotations

import numpy as np

from .camera_convert import cameras_to_viser


def set_client_view(client, wxyz, position, fov: float | None = None) -> None:
    """Move a client's camera to a pose (viser conventions); keeps the orbit distance."""
    with client.atomic():
        if fov is not None:
            client.camera.fov = float(fov)
        client.camera.wxyz = np.asarray(wxyz, dtype=np.float64)
        client.camera.position = np.asarray(position, dtype=np.float64)


class TrainingFrustums:
    """Adds ``/training_cameras/NNNN`` frustums (at most ``max_count``, evenly subsampled)."""

    def __init__(self, server, cameras, scale: float, max_count: int = 300, color=(255, 140, 0)):
        self.server = server
        self.handles = []
        self.poses = []
        n = len(cameras)
        idx = np.unique(np.linspace(0, n - 1, min(n, max_count)).round().astype(int)) if n else []
        for i in idx:
            p = cameras_to_viser(cameras, int(i))
            h = server.scene.add_camera_frustum(f"/training_cameras/{int(i):04d}", fov=p["fov"], aspect=p["aspect"],
                                                scale=scale, thickness=3.0, thickness_units="screen", color=color,
                                                wxyz=p["wxyz"], position=p["position"])
            self.poses.append(p)
            h.on_click(self._make_jump(p))
            self.handles.append(h)
        with server.gui.add_folder("Training cameras"):
            show = server.gui.add_checkbox("Show frustums", True)
            show.on_update(lambda _e: self.set_visible(bool(show.value)))
        self.show_checkbox = show

    @staticmethod
    def _make_jump(p):
        def jump(event) -> None:
            set_client_view(event.client, p["wxyz"], p["position"], p["fov"])
        return jump

    def set_visible(self, visible: bool) -> None:
        for h in self.handles:
            h.visible = visible
