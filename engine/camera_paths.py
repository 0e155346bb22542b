"""Camera paths for videos: look-at cameras and orbits (turntables) around a scene.

All cameras are OpenCV-axes camera-to-world matrices (x right, y down, z forward).
"""
from __future__ import annotations

import math

import torch

from .cameras import Cameras


def look_at(eye, target, up) -> torch.Tensor:
    """A (4,4) OpenCV camera-to-world matrix at ``eye`` looking at ``target`` with world ``up``."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    y = -(up - (up @ z) * z)
    if y.norm() < 1e-9:  # looking straight along up: pick any perpendicular
        y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        y = y - (y @ z) * z
    y = y / y.norm()
    x = torch.linalg.cross(y, z)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m.float()


def look_at_center(cameras: Cameras) -> torch.Tensor:
    """(3,) float64 point closest (least squares) to all cameras' optical axes — where they look.

    Falls back to the mean camera position when the axes are (nearly) parallel.
    """
    c2w = cameras.c2w.double()
    pos, d = c2w[:, :3, 3], c2w[:, :3, 2]
    A = torch.eye(3, dtype=torch.float64) * len(d) - d.T @ d
    b = (pos - (pos * d).sum(1, keepdim=True) * d).sum(0)
    try:
        return torch.linalg.solve(A, b)
    except RuntimeError:
        return pos.mean(0)


def estimate_up(cameras: Cameras) -> torch.Tensor:
    """World up vector: the normalised mean of the cameras' up axes (-y in OpenCV)."""
    up = -cameras.c2w[:, :3, 1].double().mean(0)
    return (up / up.norm().clamp_min(1e-12)).float()


def orbit(cameras: Cameras, n_frames: int = 60, center=None, radius: float | None = None,
          elevation_deg: float | None = None, width: int | None = None, height: int | None = None) -> Cameras:
    """A turntable of ``n_frames`` cameras around ``center`` (default: where the cameras look).

    Intrinsics come from camera 0 (rescaled to width/height if given); radius and elevation default
    to the mean of the given cameras.
    """
    up = estimate_up(cameras).double()
    pos = cameras.c2w[:, :3, 3].double()
    if center is None:
        center = look_at_center(cameras)
    center = torch.as_tensor(center, dtype=torch.float64)
    rel = pos - center
    if radius is None:
        radius = float(rel.norm(dim=1).mean())
    if elevation_deg is None:
        sin_el = ((rel / rel.norm(dim=1, keepdim=True)) @ up).mean().clamp(-0.99, 0.99)
        elevation_deg = math.degrees(math.asin(float(sin_el)))
    # basis of the horizontal plane
    a = rel[0] - (rel[0] @ up) * up
    if a.norm() < 1e-9:
        a = torch.tensor([1.0, 0, 0], dtype=torch.float64) - up[0] * up
    e1 = a / a.norm()
    e2 = torch.linalg.cross(up, e1)
    el = math.radians(elevation_deg)
    mats = []
    for i in range(n_frames):
        th = 2 * math.pi * i / n_frames
        dirv = math.cos(el) * (math.cos(th) * e1 + math.sin(th) * e2) + math.sin(el) * up
        mats.append(look_at(center + radius * dirv, center, up))
    c2w = torch.stack(mats)
    W0, H0 = int(cameras.width[0]), int(cameras.height[0])
    W, H = width or W0, height or H0
    sx, sy = W / W0, H / H0
    return Cameras(cameras.fx[0] * sx, cameras.fy[0] * sy, cameras.cx[0] * sx, cameras.cy[0] * sy, W, H, c2w)
