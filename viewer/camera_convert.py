"""Conversions between viser's camera state and engine ``Cameras``.

viser (1.1.1) describes a client camera by ``wxyz`` and ``position`` with
``P_world = R(wxyz) p_camera + position``, where the camera frame follows **OpenCV** axes
(+z look direction, -y up, +x right), ``fov`` = vertical field of view in radians and
``image_width / image_height`` = the canvas size in CSS pixels. Our ``Cameras`` use OpenCV
camera-to-world matrices too, so ``c2w = [[R(wxyz), position], [0, 0, 0, 1]]``; the intrinsics
are ``fy = 0.5 H / tan(fov / 2)``, ``fx = fy`` (square pixels), principal point at the centre.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.cameras import Cameras, qvec_to_rotmat, rotmat_to_qvec


def pose_to_c2w(wxyz, position) -> np.ndarray:
    """viser ``wxyz`` (4,) and ``position`` (3,) -> (4,4) float64 OpenCV camera-to-world."""
    R = qvec_to_rotmat(torch.as_tensor(np.asarray(wxyz, dtype=np.float64))).numpy()
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = np.asarray(position, dtype=np.float64)
    return m


def c2w_to_pose(c2w) -> tuple[np.ndarray, np.ndarray]:
    """(4,4) or (3,4) OpenCV camera-to-world -> (viser ``wxyz`` (4,), ``position`` (3,))."""
    m = np.asarray(c2w, dtype=np.float64)
    q = rotmat_to_qvec(torch.from_numpy(m[:3, :3].copy())).numpy()
    return q, m[:3, 3].copy()


def render_size(image_width: int, image_height: int, max_side: int) -> tuple[int, int]:
    """Render size with the canvas aspect ratio and the longer side equal to ``max_side``."""
    iw, ih = max(int(image_width), 1), max(int(image_height), 1)
    s = float(max_side) / max(iw, ih)
    return max(1, int(round(iw * s))), max(1, int(round(ih * s)))


def viser_to_cameras(wxyz, position, fov_y: float, width: int, height: int) -> Cameras:
    """One engine camera (OpenCV) of size ``width x height`` matching a viser camera pose/fov."""
    if not (0 < float(fov_y) < math.pi):
        raise ValueError(f"vertical fov must be in (0, pi) radians, got {fov_y}")
    f = 0.5 * height / math.tan(float(fov_y) / 2)
    c2w = torch.from_numpy(pose_to_c2w(wxyz, position)).float()[None]
    return Cameras(f, f, width / 2, height / 2, int(width), int(height), c2w)


def cameras_to_viser(cameras: Cameras, index: int = 0) -> dict:
    """Pose and frustum parameters for viser from camera ``index``.

    Returns dict(wxyz (4,), position (3,), fov (vertical, radians), aspect (width / height)).
    """
    c2w = cameras.c2w[index].detach().double().cpu().numpy()
    wxyz, pos = c2w_to_pose(c2w)
    H = float(cameras.height[index])
    W = float(cameras.width[index])
    fov = 2 * math.atan(0.5 * H / float(cameras.fy[index]))
    return {"wxyz": wxyz, "position": pos, "fov": fov, "aspect": W / H}
