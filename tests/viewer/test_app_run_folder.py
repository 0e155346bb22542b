"""ViewerApp on a run folder (bundled mic demo scene): training cameras become clickable frustums."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from .conftest import MIC


def test_run_folder_shows_training_frustums_and_jumps(run_dir):
    from engine.data import load_dataset
    from viewer.app import ViewerApp, ViewerOptions, free_port
    from viewer.camera_convert import cameras_to_viser

    app = ViewerApp.open(run_dir, ViewerOptions(port=free_port(), max_side=32))
    try:
        cams = load_dataset(MIC).splits["train"].cameras
        assert app.scene.kind == "method" and app.scene.run_dir == run_dir
        assert app.frustums is not None and len(app.frustums.handles) == min(len(cams), 300)
        # the scene centre is where the training cameras look (the origin for NeRF-synthetic)
        assert np.linalg.norm(app.scene.center) < 0.3
        assert np.allclose(app.scene.up, [0, 0, 1], atol=0.2)
        assert app.camera_path.output_dir == run_dir
        # clicking frustum k (its on_click handler) moves the clicking client onto camera k
        k = 3
        cam_obj = _Recorder()
        client = SimpleNamespace(atomic=contextlib.nullcontext, camera=cam_obj)
        handle = app.frustums.handles[k]
        entries = handle._impl.click_cb           # what viser dispatches a click on this node to
        assert entries, "frustums must be clickable"
        for e in entries:
            e.callback(SimpleNamespace(client=client, target=handle))
        p = cameras_to_viser(cams, k)
        assert np.allclose(cam_obj.position, p["position"]) and np.allclose(cam_obj.wxyz, p["wxyz"])
        assert cam_obj.fov == pytest.approx(p["fov"])
        # the frustum itself sits at the camera pose
        assert np.allclose(handle.position, p["position"], atol=1e-5)
    finally:
        app.stop()


class _Recorder:
    fov = wxyz = position = None
