"""Taichi SH closed forms (shaders/sh.py) against the torch reference, scipy-independent literals
(3DGS/gsplat constants) and finite differences."""
import math

import pytest
import torch

from shaders import sh

# gsplat / 3DGS constants, written out independently of the generated tables.
C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435]


def gsplat_basis_deg3(d):
    d = d / d.norm(dim=1, keepdim=True)
    x, y, z = d.unbind(1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack([
        torch.full_like(x, C0),
        -C1 * y, C1 * z, -C1 * x,
        C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy),
        C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
        C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy), C3[5] * z * (xx - yy),
        C3[6] * x * (xx - 3 * yy),
    ], 1)


@pytest.fixture(scope="module")
def dirs64():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(300, 3, generator=g, dtype=torch.float64)
    # include the poles and axis-aligned directions, and non-unit lengths
    extra = torch.tensor([[0, 0, 1], [0, 0, -1], [1, 0, 0], [0, -1, 0], [0, 0, 3.5]], dtype=torch.float64)
    return torch.cat([d * 2.7, extra])


def test_3dgs_convention_matches_gsplat_constants(dirs64):
    Y = sh.sh_basis(dirs64, 3, "3dgs")
    assert torch.allclose(Y, gsplat_basis_deg3(dirs64), atol=1e-14, rtol=0)
    # standard = 3dgs * (-1)^m
    ms = torch.tensor([m for l in range(4) for m in range(-l, l + 1)])
    Ys = sh.sh_basis(dirs64, 3, "standard")
    assert torch.allclose(Ys, Y * torch.where(ms % 2 == 0, 1.0, -1.0).double(), atol=1e-15, rtol=0)
    # degree 1 is sqrt(3/4pi) (y, z, x) in the standard convention
    d = dirs64 / dirs64.norm(dim=1, keepdim=True)
    assert torch.allclose(Ys[:, 1:4], math.sqrt(3 / (4 * math.pi)) * d[:, [1, 2, 0]], atol=1e-15)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("convention", sh.CONVENTIONS)
@pytest.mark.parametrize("l_max", [0, 1, 2, 3, 4, 8])
def test_basis_forward_matches_reference(dirs64, dtype, tol, convention, l_max):
    d = dirs64.to(dtype)
    Y = sh.sh_basis(d, l_max, convention)
    assert Y.dtype == dtype and Y.shape == (d.shape[0], (l_max + 1) ** 2)
    ref = sh.sh_basis_reference(dirs64, l_max, convention)
    assert (Y.double() - ref).abs().max().item() < tol * max(1.0, l_max)


@pytest.mark.parametrize("convention", sh.CONVENTIONS)
@pytest.mark.parametrize("l_max", [1, 3, 4])
def test_basis_backward_matches_reference(dirs64, convention, l_max):
    d1 = dirs64.clone().requires_grad_(True)
    d2 = dirs64.clone().requires_grad_(True)
    w = torch.randn(dirs64.shape[0], (l_max + 1) ** 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (sh.sh_basis(d1, l_max, convention) * w).sum().backward()
    (sh.sh_basis_reference(d2, l_max, convention) * w).sum().backward()
    assert torch.allclose(d1.grad, d2.grad, atol=1e-12, rtol=1e-10)
    # the gradient is tangential: no change along the direction itself
    assert (d1.grad * dirs64).sum(1).abs().max().item() < 1e-11


@pytest.mark.parametrize("convention", sh.CONVENTIONS)
def test_basis_gradcheck(convention):
    d = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sh.sh_basis(x, 4, convention), (d,))


@pytest.mark.parametrize("convention", sh.CONVENTIONS)
@pytest.mark.parametrize("l_max", [0, 2, 3, 4])
def test_eval_forward_backward_match_reference(dirs64, convention, l_max):
    g = torch.Generator().manual_seed(3)
    n = dirs64.shape[0]
    coeffs = torch.randn(n, 25, 3, dtype=torch.float64, generator=g)  # 3DGS-style storage, degree-4 capacity
    d1, c1 = dirs64.clone().requires_grad_(True), coeffs.clone().requires_grad_(True)
    d2, c2 = dirs64.clone().requires_grad_(True), coeffs.clone().requires_grad_(True)
    out = sh.sh_eval(d1, c1, l_max, convention)
    ref = sh.sh_eval_reference(d2, c2, l_max, convention)
    assert torch.allclose(out, ref, atol=1e-13)
    go = torch.randn(n, 3, dtype=torch.float64, generator=g)
    (out * go).sum().backward()
    (ref * go).sum().backward()
    ref_dgrad = d2.grad if d2.grad is not None else torch.zeros_like(dirs64)  # degree 0: constant
    assert torch.allclose(d1.grad, ref_dgrad, atol=1e-12)
    assert torch.allclose(c1.grad, c2.grad, atol=1e-14)
    k = (l_max + 1) ** 2
    assert (c1.grad[:, k:] == 0).all()  # inactive degrees get no gradient


def test_eval_float32_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    d = torch.randn(1000, 3, generator=g)
    c = torch.randn(1000, 16, 3, generator=g)
    out = sh.sh_eval(d, c, 3)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), sh.sh_eval_reference(d.double(), c.double(), 3), atol=1e-5)
    d64 = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    c64 = torch.randn(4, 16, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    for conv in sh.CONVENTIONS:
        assert torch.autograd.gradcheck(lambda a, b: sh.sh_eval(a, b, 3, conv), (d64, c64))


def test_closed_form_tables_are_exact_integers():
    # N_00 and the (2z^2 - x^2 - y^2)-type constants of degree 2 from the exact tables
    assert sh.norm_constant(0, 0) == pytest.approx(C0, abs=1e-16)
    assert sh.norm_constant(1, 1, "3dgs") == pytest.approx(-C1, abs=1e-16)
    par, h, dh = sh._tables(2, "standard")[2][0]
    # Y_20 = N (3z^2 - 1)/2  -> Horner in z^2: (1.5 N, -0.5 N), derivative 3 N z
    n20 = math.sqrt(5 / (4 * math.pi))
    assert par == 0 and h == pytest.approx((1.5 * n20, -0.5 * n20), abs=1e-16)
    assert dh == pytest.approx((3 * n20,), abs=1e-15)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="dirs"):
        sh.sh_basis(torch.zeros(5, 2), 2)
    with pytest.raises(ValueError, match="l_max"):
        sh.sh_basis(torch.zeros(5, 3), sh.MAX_KERNEL_DEGREE + 1)
    with pytest.raises(ValueError, match="convention"):
        sh.sh_basis(torch.ones(5, 3), 2, "gsplat")
    with pytest.raises(ValueError, match="coeffs"):
        sh.sh_eval(torch.ones(5, 3), torch.zeros(5, 4, 3), 2)
    with pytest.raises(ValueError, match="float32 or float64"):
        sh.sh_basis(torch.ones(5, 3, dtype=torch.int32), 1)


def test_empty_input():
    assert sh.sh_basis(torch.zeros(0, 3), 3).shape == (0, 16)
    assert sh.sh_eval(torch.zeros(0, 3), torch.zeros(0, 16, 3), 3).shape == (0, 3)
