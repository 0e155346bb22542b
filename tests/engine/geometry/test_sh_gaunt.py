"""Gaunt coefficients and the FFT Gaunt tensor product."""
import itertools

import numpy as np
import pytest
import torch

from engine.geometry import sh
from engine.geometry.sh_gaunt import GauntProduct, gaunt_coefficients, gaunt_product, gaunt_product_direct


def test_gaunt_coefficients_match_sympy_real_gaunt():
    wigner = pytest.importorskip("sympy.physics.wigner")
    G = gaunt_coefficients(2, 2, 4).to_dense()
    assert G.shape == (9, 9, 25)
    for l1, l2, l3 in itertools.product(range(3), range(3), range(5)):
        for m1, m2, m3 in itertools.product(range(-l1, l1 + 1), range(-l2, l2 + 1), range(-l3, l3 + 1)):
            ref = float(wigner.real_gaunt(l1, l2, l3, m1, m2, m3))
            got = G[l1 * (l1 + 1) + m1, l2 * (l2 + 1) + m2, l3 * (l3 + 1) + m3].item()
            assert got == pytest.approx(ref, abs=1e-14), (l1, l2, l3, m1, m2, m3)


def test_gaunt_coefficients_match_brute_force_quadrature():
    L1, L2, L3 = 3, 2, 4
    q, w = sh.sphere_quadrature(L1 + L2 + L3)
    Y1, Y2, Y3 = (sh.sh_basis(q, L, backend="torch") for L in (L1, L2, L3))
    dense = torch.einsum("q,qa,qb,qc->abc", w, Y1, Y2, Y3)
    G = gaunt_coefficients(L1, L2, L3).to_dense()
    assert torch.allclose(G, dense, atol=1e-14)
    # the sparse tensor stores only the selection-rule survivors: far fewer than K1*K2*K3
    assert gaunt_coefficients(L1, L2, L3)._nnz() < 0.2 * G.numel()


@pytest.mark.parametrize("L1,L2,L_out", [(1, 1, None), (2, 3, None), (4, 4, None), (5, 2, 4), (3, 3, 2), (0, 3, None)])
@pytest.mark.parametrize("convention", sh.CONVENTIONS)
def test_fft_product_equals_direct_product(L1, L2, L_out, convention):
    g = torch.Generator().manual_seed(L1 * 10 + L2)
    a = torch.randn(4, sh.num_coeffs(L1), dtype=torch.float64, generator=g)
    b = torch.randn(4, sh.num_coeffs(L2), dtype=torch.float64, generator=g)
    direct = gaunt_product_direct(a, b, L_out, convention)
    fft = GauntProduct(L1, L2, L_out, convention)(a, b)
    assert fft.shape == direct.shape == (4, sh.num_coeffs(L1 + L2 if L_out is None else L_out))
    assert (fft - direct).abs().max().item() < 1e-13 * max(1.0, direct.abs().max().item())


@pytest.mark.parametrize("convention", sh.CONVENTIONS)
def test_product_is_pointwise_product_of_functions(convention):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(sh.num_coeffs(6), dtype=torch.float64, generator=g)
    b = torch.randn(sh.num_coeffs(5), dtype=torch.float64, generator=g)
    c = gaunt_product(a, b, convention=convention)
    d = torch.randn(300, 3, dtype=torch.float64, generator=g)
    expect = sh.eval_sh(a, d, convention) * sh.eval_sh(b, d, convention)
    assert torch.allclose(sh.eval_sh(c, d, convention), expect, atol=1e-12)


def test_truncated_product_is_projection_of_product():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, dtype=torch.float64, generator=g)
    b = torch.randn(16, dtype=torch.float64, generator=g)
    full = GauntProduct(3, 3)(a, b)
    assert torch.allclose(GauntProduct(3, 3, L_out=4)(a, b), full[: sh.num_coeffs(4)], atol=1e-14)


def test_larger_degree_and_batch_shapes():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, sh.num_coeffs(8), dtype=torch.float64, generator=g)
    b = torch.randn(2, 3, sh.num_coeffs(8), dtype=torch.float64, generator=g)
    prod = GauntProduct(8, 8)
    table = gaunt_coefficients(8, 8)
    out = prod(a, b)
    assert out.shape == (2, 3, sh.num_coeffs(16))
    assert (out - gaunt_product_direct(a, b, table=table)).abs().max().item() < 1e-12
    # float32 inputs give float32 outputs (computed in float64 inside)
    assert prod(a.float(), b.float()).dtype == torch.float32


def test_product_validates_inputs():
    with pytest.raises(ValueError, match="not a number of SH coefficients"):
        gaunt_product(torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="batch shapes"):
        gaunt_product(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="degrees"):
        GauntProduct(1, 1)(torch.zeros(9), torch.zeros(4))
    assert np.isfinite(gaunt_product(torch.ones(1), torch.ones(1)).numpy()).all()
