"""Rotation of SH coefficients (real Wigner-D by the Ivanic-Ruedenberg recurrence)."""
import math

import pytest
import torch

from engine.geometry import sh
from engine.geometry.sh_rotation import rotate_coeffs, sh_rotation_matrix, wigner_d_real


def random_rotation(seed: int, n: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*(() if n is None else (n,)), 3, 3, dtype=torch.float64, generator=g)
    Q, Rr = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(Rr, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(Q)
    return Q * torch.where(det < 0, -1.0, 1.0).to(Q.dtype)[..., None, None]


def smooth_function(d: torch.Tensor) -> torch.Tensor:
    """A smooth, not band-limited function (fast-decaying spectrum), two channels."""
    a = torch.tensor([0.3, -0.8, 0.5], dtype=d.dtype)
    return torch.stack([torch.exp(d @ a), torch.cos(2.0 * d[..., 0]) * d[..., 2]], -1)


@pytest.mark.parametrize("convention", sh.CONVENTIONS)
def test_rotating_coefficients_equals_projecting_rotated_function(convention):
    R = random_rotation(0)
    L = 10
    q, w = sh.sphere_quadrature(90)  # exact far beyond the spectrum that matters (1e-16 tails)
    c = sh.project_samples(q, smooth_function(q), L, weights=w, convention=convention)
    rotated = smooth_function(q @ R)  # f'(d) = f(R^T d), rows: (R^T d)^T = d^T R
    c_rot = sh.project_samples(q, rotated, L, weights=w, convention=convention)
    assert torch.allclose(rotate_coeffs(c, R, convention), c_rot, atol=1e-12)
    assert not torch.allclose(c, c_rot, atol=1e-3)


def test_rotated_expansion_evaluates_at_rotated_directions():
    g = torch.Generator().manual_seed(1)
    L = 12
    c = torch.randn(sh.num_coeffs(L), dtype=torch.float64, generator=g)
    R = random_rotation(2)
    d = torch.randn(100, 3, dtype=torch.float64, generator=g)
    assert torch.allclose(sh.eval_sh(rotate_coeffs(c, R), d), sh.eval_sh(c, d @ R), atol=1e-12)


def test_degree1_block_and_known_rotation():
    # 90 degrees about +z: x -> y. Y_1 = (y, z, x) so a function = x becomes = y.
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c = torch.zeros(4, dtype=torch.float64)
    c[3] = 1.0  # x
    out = rotate_coeffs(c, Rz)
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-15)
    assert torch.equal(wigner_d_real(torch.eye(3, dtype=torch.float64), 0)[0], torch.ones(1, 1, dtype=torch.float64))


def test_orthogonality_composition_and_high_degree():
    R1, R2 = random_rotation(3), random_rotation(4)
    L = 30
    D1, D2 = sh_rotation_matrix(R1, L), sh_rotation_matrix(R2, L)
    eye = torch.eye(sh.num_coeffs(L), dtype=torch.float64)
    assert (D1 @ D1.T - eye).abs().max().item() < 1e-11          # stable at degree 30
    assert (sh_rotation_matrix(R1 @ R2, L) - D1 @ D2).abs().max().item() < 1e-11
    assert (sh_rotation_matrix(R1.T, L) - D1.T).abs().max().item() < 1e-11


def test_batched_rotations_and_channel_layout():
    Rb = random_rotation(5, n=3)
    g = torch.Generator().manual_seed(6)
    c = torch.randn(3, 16, 2, dtype=torch.float64, generator=g)    # (B, K, C)
    out = rotate_coeffs(c, Rb)
    for i in range(3):
        assert torch.allclose(out[i], rotate_coeffs(c[i], Rb[i]), atol=1e-14)
    # one rotation applied to a (K, C) array == per-channel (K,) rotation
    single = rotate_coeffs(c[0], Rb[0])
    assert torch.allclose(single[:, 1], rotate_coeffs(c[0, :, 1], Rb[0]), atol=1e-14)


def test_differentiable_wrt_rotation():
    g = torch.Generator().manual_seed(7)
    c = torch.randn(9, dtype=torch.float64, generator=g)
    axis = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)

    def rot(angle):
        k = axis / axis.norm()
        K = torch.zeros(3, 3, dtype=torch.float64)
        K[0, 1], K[0, 2], K[1, 2] = -k[2], k[1], -k[0]
        K = K - K.T
        return torch.linalg.matrix_exp(angle * K)

    angle = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: rotate_coeffs(c, rot(a)), (angle,))


def test_rejects_non_rotations():
    with pytest.raises(ValueError, match="rotation"):
        rotate_coeffs(torch.zeros(4), torch.diag(torch.tensor([1.0, 1.0, -1.0])))
    with pytest.raises(ValueError, match="rotation"):
        rotate_coeffs(torch.zeros(4), 2 * torch.eye(3))
    with pytest.raises(ValueError, match="shape"):
        rotate_coeffs(torch.zeros(4), torch.eye(2))
    assert math.isclose(float(rotate_coeffs(torch.ones(1), torch.eye(3))[0]), 1.0)
