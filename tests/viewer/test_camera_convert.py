"""viser camera <-> engine Cameras conversion."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viewer.camera_convert import c2w_to_pose, cameras_to_viser, pose_to_c2w, render_size, viser_to_cameras

viser_tf = pytest.importorskip("viser.transforms")


def _viser_look_at_wxyz(position, look_at, up):
    """Orientation computed by viser's own CameraHandle from position / look_at / up_direction."""
    from types import SimpleNamespace

    from viser._viser import CameraHandle

    client = SimpleNamespace(_websock_connection=SimpleNamespace(queue_message=lambda msg: None))
    cam = CameraHandle(client)
    cam._state.update_timestamp = 1.0
    cam._state.position = np.asarray(position, dtype=np.float64)
    cam._state.up_direction = np.asarray(up, dtype=np.float64)
    cam._state.look_at = np.asarray(look_at, dtype=np.float64)
    cam._update_wxyz()
    return np.array(cam.wxyz)


@pytest.mark.parametrize("position,target,up", [
    ((3.0, 2.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    ((-1.0, 0.5, -4.0), (0.2, -0.3, 0.1), (0.0, -1.0, 0.0)),
])
def test_point_in_front_projects_to_centre(position, target, up):
    wxyz = _viser_look_at_wxyz(position, target, up)
    cams = viser_to_cameras(wxyz, position, math.radians(60), 64, 48)
    uv, depth = cams.project(torch.tensor([target], dtype=torch.float32), 0)
    uv = uv.reshape(-1, 2)[0]
    assert abs(float(uv[0]) - 32.0) < 1e-3 and abs(float(uv[1]) - 24.0) < 1e-3
    assert float(depth.reshape(-1)[0]) == pytest.approx(np.linalg.norm(np.subtract(target, position)), rel=1e-5)
    # the world up direction points to smaller image rows (up on screen)
    above = np.asarray(target, float) + 0.1 * np.asarray(up, float)
    uv2 = cams.project(torch.from_numpy(above[None]).float(), 0)[0].reshape(-1, 2)[0]
    assert float(uv2[1]) < 24.0 - 0.1


def test_fov_sets_focal_length():
    cams = viser_to_cameras((1, 0, 0, 0), (0, 0, 0), math.radians(90), 200, 100)
    # vertical fov 90 deg: a point at 45 deg above the axis hits the top edge
    uv = cams.project(torch.tensor([[0.0, -1.0, 1.0]]), 0)[0].reshape(-1, 2)[0]
    assert float(uv[1]) == pytest.approx(0.0, abs=1e-4)
    assert float(cams.fx[0]) == pytest.approx(50.0) and float(cams.fy[0]) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="fov"):
        viser_to_cameras((1, 0, 0, 0), (0, 0, 0), 0.0, 10, 10)


def test_pose_roundtrip_and_viser_so3_agree():
    g = np.random.default_rng(0)
    for _ in range(20):
        q = g.normal(size=4)
        q /= np.linalg.norm(q)
        t = g.normal(size=3)
        m = pose_to_c2w(q, t)
        assert np.allclose(m[:3, :3], viser_tf.SO3(q).as_matrix(), atol=1e-9)
        q2, t2 = c2w_to_pose(m)
        assert np.allclose(pose_to_c2w(q2, t2), m, atol=1e-9)


def test_cameras_to_viser_inverts_viser_to_cameras():
    wxyz = _viser_look_at_wxyz((1.0, -2.0, 0.5), (0, 0, 0), (0, 0, 1))
    cams = viser_to_cameras(wxyz, (1.0, -2.0, 0.5), 0.8, 120, 90)
    p = cameras_to_viser(cams, 0)
    assert p["fov"] == pytest.approx(0.8, rel=1e-5)
    assert p["aspect"] == pytest.approx(120 / 90)
    assert np.allclose(pose_to_c2w(p["wxyz"], p["position"]), cams.c2w[0].double().numpy(), atol=1e-6)


def test_render_size_keeps_aspect():
    assert render_size(1000, 500, 128) == (128, 64)
    assert render_size(300, 600, 100) == (50, 100)
    assert render_size(1, 1, 1) == (1, 1)
