"""Per-Gaussian view-dependent colour from SH coefficients (3DGS sign convention).

TEMPORARY home: to be replaced by the shared SH evaluation of engine.geometry.sh / shaders.sh.
"""
from __future__ import annotations

import torch

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_to_rgb_3dgs(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """rgb (N,3) = sum_k sh[:, k, :] Y_k(dirs) + 0.5 with the 3DGS basis up to ``degree`` <= 3."""
    x, y, z = dirs.unbind(-1)
    out = _C0 * sh[:, 0]
    if degree >= 1:
        out = out - _C1 * y[:, None] * sh[:, 1] + _C1 * z[:, None] * sh[:, 2] - _C1 * x[:, None] * sh[:, 3]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        basis2 = (_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy))
        for i, b in enumerate(basis2):
            out = out + b[:, None] * sh[:, 4 + i]
    if degree >= 3:
        basis3 = (
            _C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy),
        )
        for i, b in enumerate(basis3):
            out = out + b[:, None] * sh[:, 9 + i]
    return out + 0.5
