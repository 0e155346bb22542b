"""Rotation of real SH coefficients (Wigner-D matrices for real SH, any degree).

Semantics: rotating a function ``f`` on the sphere by ``R`` gives ``f'(d) = f(R^T d)``; its
coefficients are ``c' = D(R) c`` with ``D`` block-diagonal, one ``(2l+1, 2l+1)`` block per degree.

The blocks come from the Ivanic-Ruedenberg recurrence (J. Phys. Chem. 1996, with the 1998
corrections): ``D^1`` is ``R`` permuted to the ``(y, z, x)`` order of the degree-1 functions and
``D^l`` is built from ``D^1`` and ``D^{l-1}`` with three-term combinations that only involve
rotation-matrix entries (no Euler angles, no gimbal lock, stable to high degree). Batched over
leading dimensions of ``R`` and differentiable w.r.t. ``R`` (plain torch ops).
"""
from __future__ import annotations

import math

import torch

from .sh import _sh_axis, check_convention, convention_signs, degree_of, num_coeffs

_PERM = [1, 2, 0]  # degree-1 real SH are (y, z, x) for m = -1, 0, 1


def _check_rotation(R) -> torch.Tensor:
    R = torch.as_tensor(R)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must have shape (..., 3, 3), got {tuple(R.shape)}")
    if not R.is_floating_point():
        R = R.to(torch.float64)
    with torch.no_grad():
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        err = (R @ R.transpose(-1, -2) - eye).abs().amax().item() if R.numel() else 0.0
        det = torch.linalg.det(R) if R.numel() else torch.ones(1)
        tol = 1e-4 if R.dtype == torch.float32 else 1e-8
        if err > tol or (det < 0).any():
            raise ValueError(f"rotation is not a proper rotation matrix (|R R^T - I| = {err:.2e}, det < 0: "
                             f"{bool((det < 0).any())})")
    return R


def wigner_d_real(R, l_max: int, convention: str = "standard") -> list[torch.Tensor]:
    """Per-degree rotation blocks ``[D^0 (...,1,1), D^1 (...,3,3), ..., D^L]`` for real SH.

    Row/column index ``m + l``. ``convention`` selects the SH basis (3dgs = standard with
    ``(-1)^m`` signs, so ``D^3dgs = S D S``).
    """
    check_convention(convention)
    R = _check_rotation(R)
    batch = R.shape[:-2]
    one = torch.ones(*batch, 1, 1, dtype=R.dtype, device=R.device)
    blocks = [one]
    if l_max >= 1:
        R1 = R[..., _PERM, :][..., :, _PERM]
        blocks.append(R1)

        def r1(i, j):
            return R1[..., i + 1, j + 1].unsqueeze(-1)

        for l in range(2, l_max + 1):
            Dp = blocks[l - 1]  # (..., 2l-1, 2l-1)

            def P(i, a):
                """Row vector over b = -l..l of the P function, for prev row a (|a| <= l-1)."""
                if abs(a) > l - 1:
                    return None
                row = Dp[..., a + l - 1, :]  # b' = -(l-1)..(l-1)
                left = r1(i, 1) * row[..., :1] + r1(i, -1) * row[..., -1:]     # b = -l
                right = r1(i, 1) * row[..., -1:] - r1(i, -1) * row[..., :1]    # b = +l
                return torch.cat([left, r1(i, 0) * row, right], dim=-1)

            n = torch.arange(-l, l + 1, dtype=R.dtype, device=R.device)
            den = torch.where(n.abs() < l, (l + n) * (l - n), torch.full_like(n, 2.0 * l * (2 * l - 1)))
            rows = []
            for m in range(-l, l + 1):
                am = abs(m)
                d0 = 1.0 if m == 0 else 0.0
                u = torch.sqrt((l + m) * (l - m) / den)
                v = 0.5 * torch.sqrt((1.0 + d0) * (l + am - 1) * (l + am) / den) * (1.0 - 2.0 * d0)
                w = -0.5 * torch.sqrt((l - am - 1) * (l - am) / den) * (1.0 - d0)
                acc = torch.zeros(*batch, 2 * l + 1, dtype=R.dtype, device=R.device)
                if am < l:
                    acc = acc + u * P(0, m)
                if m == 0:
                    V = P(1, 1) + P(-1, -1)
                elif m > 0:
                    d1 = 1.0 if m == 1 else 0.0
                    V = P(1, m - 1) * math.sqrt(1.0 + d1)
                    if d1 == 0.0:
                        V = V - P(-1, -m + 1)
                else:
                    d1 = 1.0 if m == -1 else 0.0
                    V = P(-1, -m - 1) * math.sqrt(1.0 + d1)
                    if d1 == 0.0:
                        V = V + P(1, m + 1)
                acc = acc + v * V
                if m != 0 and am < l - 1:
                    if m > 0:
                        W = P(1, m + 1) + P(-1, -m - 1)
                    else:
                        W = P(1, m - 1) - P(-1, -m + 1)
                    acc = acc + w * W
                rows.append(acc)
            blocks.append(torch.stack(rows, dim=-2))
    if convention == "3dgs":
        out = []
        for l, B in enumerate(blocks):
            s = convention_signs(l, "standard", "3dgs", R.dtype)[l * l:].to(R.device)
            out.append(B * s[:, None] * s[None, :])
        blocks = out
    return blocks


def sh_rotation_matrix(R, l_max: int, convention: str = "standard") -> torch.Tensor:
    """Dense block-diagonal ``(..., K, K)`` matrix ``D(R)`` with ``c' = D c`` (see module doc)."""
    blocks = wigner_d_real(R, l_max, convention)
    batch = blocks[0].shape[:-2]
    K = num_coeffs(l_max)
    D = blocks[0].new_zeros(*batch, K, K)
    for l, B in enumerate(blocks):
        D[..., l * l:(l + 1) ** 2, l * l:(l + 1) ** 2] = B
    return D


def rotate_coeffs(coeffs, R, convention: str = "standard", dim: int | None = None) -> torch.Tensor:
    """Coefficients of the rotated function ``f'(d) = f(R^T d)``.

    Args:
        coeffs: ``(K,)`` or ``(..., K, C)`` (SH axis ``dim``, default 0 for 1-D else -2).
        R: ``(3, 3)`` rotation (applied to all) or a batch ``(B, 3, 3)`` matching a leading batch
            axis of ``coeffs`` of size B (``coeffs (B, K, C)``).
        convention: SH convention of ``coeffs``.
    """
    c = torch.as_tensor(coeffs)
    ax = _sh_axis(c, dim)
    l_max = degree_of(c.shape[ax], "rotate_coeffs coeffs")
    R = torch.as_tensor(R)
    R = R.to(c.dtype) if c.is_floating_point() else R
    blocks = wigner_d_real(R, l_max, convention)
    cm = c.movedim(ax, -1)  # (..., K)
    parts = []
    for l, B in enumerate(blocks):
        seg = cm[..., l * l:(l + 1) ** 2]
        if B.ndim == 2:
            parts.append(seg @ B.transpose(-1, -2))
        else:  # batched rotations (B, n, n) against coefficients (B, ..., n)
            if seg.shape[0] != B.shape[0] or B.ndim != 3:
                raise ValueError(f"batched rotations {tuple(R.shape)} need coeffs with a leading axis of "
                                 f"size {R.shape[0]}, got {tuple(c.shape)}")
            flat = seg.reshape(seg.shape[0], -1, seg.shape[-1])
            parts.append((flat @ B.transpose(-1, -2)).reshape(seg.shape))
    return torch.cat(parts, dim=-1).movedim(-1, ax)
