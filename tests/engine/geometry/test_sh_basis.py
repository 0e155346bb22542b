"""Real SH basis: scipy/sphericart agreement, orthonormality, conventions, backends, gradients."""
import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from engine.geometry import sh


def scipy_real_sh(dirs: np.ndarray, l_max: int) -> np.ndarray:
    """Real SH from scipy's complex sph_harm_y(l, m, theta, phi) (standard real form)."""
    d = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    theta = np.arctan2(np.hypot(d[:, 0], d[:, 1]), d[:, 2])  # accurate near the poles (arccos is not)
    phi = np.arctan2(d[:, 1], d[:, 0])
    out = np.zeros((len(d), (l_max + 1) ** 2))
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), theta, phi)
            if m == 0:
                v = y.real
            elif m > 0:
                v = math.sqrt(2) * (-1) ** m * y.real
            else:
                v = math.sqrt(2) * (-1) ** m * y.imag
            out[:, l * (l + 1) + m] = v
    return out


@pytest.fixture(scope="module")
def dirs():
    g = np.random.default_rng(0)
    d = g.normal(size=(400, 3))
    d = np.concatenate([d, [[0, 0, 1], [0, 0, -1], [1e-9, 0, 1], [0.6, 0.8, 0]]])
    return d


def test_recurrence_matches_scipy_to_degree_30(dirs):
    Y = sh.sh_basis(torch.as_tensor(dirs), 30, backend="torch").numpy()
    ref = scipy_real_sh(dirs, 30)
    assert np.abs(Y - ref).max() < 1e-12


def test_auto_backend_matches_scipy_low_degree(dirs):
    for L in (0, 1, 2, 3, 4):
        Y = sh.sh_basis(torch.as_tensor(dirs), L).numpy()
        assert np.abs(Y - scipy_real_sh(dirs, L)).max() < 1e-13


def test_matches_sphericart(dirs):
    sphericart = pytest.importorskip("sphericart")
    for L in (3, 8, 15):
        ref = sphericart.SphericalHarmonics(L).compute(np.ascontiguousarray(dirs))
        assert np.abs(sh.sh_basis(torch.as_tensor(dirs), L).numpy() - ref).max() < 1e-12
        assert np.abs(sh.sh_basis(torch.as_tensor(dirs), L, backend="torch").numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("backend", ["torch", "taichi"])
def test_orthonormal_by_quadrature(backend):
    L = 12 if backend == "torch" else 8
    q, w = sh.sphere_quadrature(2 * L)
    Y = sh.sh_basis(q, L, backend=backend)
    G = Y.T @ (Y * w[:, None])
    assert torch.allclose(G, torch.eye(G.shape[0], dtype=G.dtype), atol=1e-12)
    assert w.sum().item() == pytest.approx(4 * math.pi, abs=1e-12)


def test_high_degree_stays_orthonormal():
    L = 50
    q, w = sh.sphere_quadrature(2 * L)
    Y = sh.sh_basis(q, L, backend="torch")
    top = Y[:, 45 * 45:]  # degrees 45..50 against every function
    G = top.T @ (Y * w[:, None])
    assert (G - torch.eye(Y.shape[1], dtype=G.dtype)[45 * 45:]).abs().max().item() < 1e-11


def test_convert_coeffs_proves_conventions(dirs):
    g = torch.Generator().manual_seed(0)
    d = torch.as_tensor(dirs)
    for L in (3, 6):
        c_std = torch.randn((L + 1) ** 2, 3, dtype=torch.float64, generator=g)
        c_gs = sh.convert_coeffs(c_std, "standard", "3dgs")
        a = sh.eval_sh(c_std, d, "standard")
        b = sh.eval_sh(c_gs, d, "3dgs")
        assert torch.allclose(a, b, atol=1e-13)
        assert not torch.allclose(c_std, c_gs)  # the conversion is not the identity
        assert torch.equal(sh.convert_coeffs(c_gs, "3dgs", "standard"), c_std)
        # the 3dgs layout (N, K, 3) converts along dim -2 by default
        batch = c_std.expand(5, -1, -1)
        assert torch.equal(sh.convert_coeffs(batch, "standard", "3dgs")[2], c_gs)
        assert torch.equal(sh.convert_coeffs(c_std[:, 0], "standard", "3dgs"), c_gs[:, 0])


def test_3dgs_degree1_signs():
    d = torch.tensor([[0.3, -0.5, 0.81]], dtype=torch.float64)
    d = d / d.norm()
    Y = sh.sh_basis(d, 1, "3dgs", backend="torch")[0]
    C1 = 0.4886025119029199
    assert torch.allclose(Y[1:], torch.stack([-C1 * d[0, 1], C1 * d[0, 2], -C1 * d[0, 0]]), atol=1e-15)


def test_backends_agree_values_and_gradients(dirs):
    d = torch.as_tensor(dirs[:50]) * 3.0
    for conv in sh.CONVENTIONS:
        a = d.clone().requires_grad_(True)
        b = d.clone().requires_grad_(True)
        w = torch.randn(50, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ya = sh.sh_basis(a, 4, conv, backend="taichi")
        yb = sh.sh_basis(b, 4, conv, backend="torch")
        assert torch.allclose(ya, yb, atol=1e-14)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_recurrence_gradcheck_and_batch_shape():
    d = torch.randn(2, 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert sh.sh_basis(d, 7).shape == (2, 1, 64)
    assert torch.autograd.gradcheck(lambda x: sh.sh_basis(x, 6, "3dgs", backend="torch"), (d,))
    assert torch.autograd.gradgradcheck(lambda x: sh.sh_basis(x, 2, backend="torch"), (d[:1],))


def test_float32_recurrence_is_accurate():
    d = torch.randn(1000, 3, generator=torch.Generator().manual_seed(3))
    y32 = sh.sh_basis(d, 10, backend="torch")
    y64 = sh.sh_basis(d.double(), 10, backend="torch")
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max().item() < 5e-5


def test_indexing_helpers():
    assert sh.num_coeffs(3) == 16
    assert sh.sh_index(2, -1) == 5
    assert sh.degree_of(49) == 6
    with pytest.raises(ValueError, match="not a number of SH coefficients"):
        sh.degree_of(10, "x")
    ls, ms = sh.lm_arrays(2)
    assert list(ls) == [0, 1, 1, 1, 2, 2, 2, 2, 2] and list(ms) == [0, -1, 0, 1, -2, -1, 0, 1, 2]
    with pytest.raises(Exception, match="convention"):
        sh.sh_basis(torch.ones(1, 3), 2, "scipy")
    with pytest.raises(Exception, match="backend"):
        sh.sh_basis(torch.ones(1, 3), 2, backend="cuda")


def test_project_samples_exact_with_quadrature():
    g = torch.Generator().manual_seed(4)
    L = 6
    c = torch.randn((L + 1) ** 2, 2, dtype=torch.float64, generator=g)
    q, w = sh.sphere_quadrature(2 * L)
    f = sh.eval_sh(c, q)
    assert torch.allclose(sh.project_samples(q, f, L, weights=w), c, atol=1e-12)
    # Monte Carlo default weights: unbiased, converges at 1/sqrt(M)
    d = torch.randn(200_000, 3, dtype=torch.float64, generator=g)
    est = sh.project_samples(d, sh.eval_sh(c[:4, 0], d), 1)
    assert torch.allclose(est, c[:4, 0], atol=0.05)
