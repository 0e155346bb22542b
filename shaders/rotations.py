"""Quaternion -> rotation matrix: the one implementation the kernels' torch sides, the densifier and
the camera readers share (torch only; no Taichi)."""
from __future__ import annotations

import torch


def quat_to_rotmat(quat: torch.Tensor) -> torch.Tensor:
    """Quaternions (..., 4) ``w, x, y, z`` (normalised here) -> rotation matrices (..., 3, 3).

    >>> import torch
    >>> quat_to_rotmat(torch.tensor([0.0, 0.0, 0.0, 2.0]))   # 180 degrees about z
    tensor([[-1.,  0.,  0.],
            [ 0., -1.,  0.],
            [ 0.,  0.,  1.]])
    """
    q = quat / quat.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))
