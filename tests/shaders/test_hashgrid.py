"""Hash encoding: Taichi kernels vs the pure-torch reference (values and gradients), gradcheck.

Levels are chosen so that both index modes run: coarse levels fit the table densely, fine
levels use the spatial hash (with collisions, T small).
"""
import pytest
import torch

from shaders import runtime
from shaders.hashgrid import hash_encode, level_resolutions
from shaders.hashgrid_ref import corner_indices, hash_encode_reference

runtime.init()


@pytest.fixture(autouse=True, params=[True, False], ids=["level-major", "point-parallel"])
def kernel_layout(request, monkeypatch):
    """Every test runs with both table-gradient kernels (the CPU's level-major one and the GPU's
    point-parallel one), each against the pure-torch reference."""
    from shaders import hashgrid

    monkeypatch.setattr(hashgrid, "LEVEL_MAJOR", request.param)
    return request.param


def _setup(n=300, L=4, T=64, F=2, dtype=torch.float32, seed=0, res=(2, 3, 7, 16)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g, dtype=dtype) * 1.1 - 0.05   # a few points outside [0, 1]
    table = torch.randn(L, T, F, generator=g, dtype=dtype)
    return x, table, torch.tensor(res[:L], dtype=torch.int32)


def test_level_resolutions():
    r = level_resolutions(16, 16, 2048)
    assert r[0] == 16 and r[-1] == 2048 and all(a < b for a, b in zip(r, r[1:]))
    assert level_resolutions(1, 8, 8) == [8]
    with pytest.raises(ValueError):
        level_resolutions(4, 32, 16)


def test_index_modes():
    # 2^3 = 8 vertices fit in T=64 densely; (7+1)^3 = 512 do not -> hash
    v = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert corner_indices(v, 1, 64).tolist() == [1, 2, 4]
    h = corner_indices(v, 7, 64)
    assert h.tolist() == [1 % 64, 2654435761 % 2 ** 32 % 64, 805459861 % 64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(dtype):
    x, table, res = _setup(dtype=dtype)
    out = hash_encode(x, table, res)
    ref = hash_encode_reference(x, table, res)
    assert out.shape == (300, 8) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_exact_at_grid_vertices():
    # at a grid vertex of level 0 the encoding is exactly that vertex's table entry
    L, T, F = 1, 64, 3
    table = torch.randn(L, T, F, dtype=torch.float64)
    x = torch.tensor([[0.25, 0.5, 0.75], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out = hash_encode(x, table, [4])
    idx = corner_indices(torch.tensor([[1, 2, 3], [4, 4, 4]]), 4, T)
    torch.testing.assert_close(out, table[0, idx])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_reference(dtype):
    x, table, res = _setup(dtype=dtype, seed=1)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(300, 8, generator=g, dtype=dtype)
    x1, t1 = x.clone().requires_grad_(), table.clone().requires_grad_()
    (hash_encode(x1, t1, res) * w).sum().backward()
    x2, t2 = x.clone().requires_grad_(), table.clone().requires_grad_()
    (hash_encode_reference(x2, t2, res) * w).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(t1.grad, t2.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol, rtol=tol)
    # points outside the unit cube are clamped: zero gradient along the clamped axis
    out_mask = (x < 0) | (x > 1)
    assert out_mask.any() and (x1.grad[out_mask] == 0).all()
    assert (x1.grad[~out_mask].abs() > 0).float().mean() > 0.9


def test_only_table_gradient():
    x, table, res = _setup(n=50)
    t = table.clone().requires_grad_()
    hash_encode(x, t, res).sum().backward()
    # every point spreads weight 1 per level and feature: the table gradient sums to N per (l, f)
    torch.testing.assert_close(t.grad.sum(1), torch.full((4, 2), 50.0), atol=1e-3, rtol=0)


def test_table_gradient_buffer_is_reused_and_never_overwritten():
    """The backward's table gradient comes from a kept buffer (shaders.hashgrid._GRAD_POOL):
    several backward passes still accumulate exactly, the buffer is reused when autograd has
    consumed it, and a gradient a caller kept is never overwritten by a later backward."""
    from shaders import hashgrid

    x, table, res = _setup(n=200, seed=7)
    g = torch.Generator().manual_seed(8)
    w1, w2 = torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g)
    xa, xb = x[:100], x[100:]
    ref = []
    for xi, wi in ((xa, w1), (xb, w2)):
        tr = table.clone().requires_grad_()
        (hash_encode_reference(xi, tr, res) * wi).sum().backward()
        ref.append(tr.grad)
    t = table.clone().requires_grad_()
    (hash_encode(xa, t, res) * w1).sum().backward()
    key = (tuple(table.shape), table.dtype, table.device)
    ptr = hashgrid._GRAD_POOL[key].data_ptr()
    (hash_encode(xb, t, res) * w2).sum().backward()
    (hash_encode(xb, t, res) * w2).sum().backward()
    assert hashgrid._GRAD_POOL[key].data_ptr() == ptr            # reused, not reallocated
    assert t.grad.data_ptr() != ptr                               # .grad is autograd's own copy
    torch.testing.assert_close(t.grad, ref[0] + 2 * ref[1], atol=1e-4, rtol=1e-4)
    # kept gradients stay as they were
    ga, = torch.autograd.grad((hash_encode(xa, t, res) * w1).sum(), t)
    kept = ga.clone()
    gb, = torch.autograd.grad((hash_encode(xb, t, res) * w2).sum(), t)
    assert ga.data_ptr() != gb.data_ptr()
    torch.testing.assert_close(ga, kept, atol=0, rtol=0)
    torch.testing.assert_close(ga, ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gb, ref[1], atol=1e-4, rtol=1e-4)


def test_accumulate_grad_into_table_grad():
    """accumulate_grad=True: several calls of one step add exactly what autograd's path gives into
    table.grad (one kept buffer, no table gradient returned); after zero_grad(set_to_none=True) the
    next step starts from zero in the same buffer; gradients w.r.t. x are unchanged."""
    x, table, res = _setup(n=240, seed=11)
    g = torch.Generator().manual_seed(12)
    w = [torch.randn(80, 8, generator=g) for _ in range(3)]
    xs = [x[:80], x[80:160], x[160:]]
    tr = table.clone().requires_grad_()
    xr = [xi.clone().requires_grad_() for xi in xs]
    sum((hash_encode_reference(xi, tr, res) * wi).sum() for xi, wi in zip(xr, w)).backward()
    t = torch.nn.Parameter(table.clone())
    opt = torch.optim.SGD([t], lr=0.0)
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        assert t.grad is None
        xa = [xi.clone().requires_grad_() for xi in xs]
        loss = sum((hash_encode(xi, t, res, accumulate_grad=True) * wi).sum() for xi, wi in zip(xa, w))
        loss.backward()
        torch.testing.assert_close(t.grad, tr.grad, atol=1e-4, rtol=1e-4)
        for a, b in zip(xa, xr):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)
        if step == 0:
            ptr = t.grad.data_ptr()
        else:
            assert t.grad.data_ptr() == ptr         # the kept buffer, zeroed, not a new allocation
    # without zero_grad a second backward adds on top, as autograd would
    (hash_encode(xs[0], t, res, accumulate_grad=True) * w[0]).sum().backward()
    ref0 = table.clone().requires_grad_()
    (hash_encode_reference(xs[0], ref0, res) * w[0]).sum().backward()
    torch.testing.assert_close(t.grad, tr.grad + ref0.grad, atol=1e-4, rtol=1e-4)
    # a non-leaf table is refused (its gradient has nowhere to go)
    with pytest.raises(ValueError, match="leaf"):
        hash_encode(xs[0], t * 1.0, res, accumulate_grad=True)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    table = torch.randn(3, 32, 2, generator=g, dtype=torch.float64).requires_grad_()
    res = torch.tensor([2, 5, 9], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda a, b: hash_encode(a, b, res), (x, table), eps=1e-7,
                                    atol=1e-6)


def test_bad_inputs():
    x, table, res = _setup(n=4)
    with pytest.raises(ValueError, match="x must be"):
        hash_encode(x[:, :2], table, res)
    with pytest.raises(ValueError, match="share a dtype"):
        hash_encode(x.double(), table, res)
    with pytest.raises(ValueError, match="one per level"):
        hash_encode(x, table, res[:2])
    assert hash_encode(x[:0], table, res).shape == (0, 8)


def test_layout_choice(monkeypatch):
    """Auto picks the level-major kernels on the CPU only; the module flag forces either."""
    from shaders import hashgrid

    monkeypatch.setattr(hashgrid, "LEVEL_MAJOR", None)
    assert hashgrid._level_major("cpu") and not hashgrid._level_major("cuda")
    monkeypatch.setattr(hashgrid, "LEVEL_MAJOR", False)
    assert not hashgrid._level_major("cpu")


# ---------------------------------------------------------------- encoding with its Jacobian
from shaders.hashgrid import hash_encode_jacobian  # noqa: E402
from shaders.hashgrid_ref import hash_encode_jacobian_reference  # noqa: E402


def test_jacobian_reference_is_the_derivative_of_the_encoding():
    """The reference's written-out Jacobian equals autograd's derivative of the reference encoding
    (an independent check of the formula), inside the cube and with clamped coordinates."""
    x, table, res = _setup(n=40, dtype=torch.float64, seed=21)
    out, jac = hash_encode_jacobian_reference(x, table, res)
    torch.testing.assert_close(out, hash_encode_reference(x, table, res))
    xr = x.clone().requires_grad_()
    enc = hash_encode_reference(xr, table, res)
    auto = torch.stack([torch.autograd.grad(enc[:, j].sum(), xr, retain_graph=True)[0]
                        for j in range(enc.shape[1])], 1)            # (N, LF, 3)
    torch.testing.assert_close(jac, auto, atol=1e-12, rtol=1e-12)
    assert (jac.abs() > 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jacobian_matches_reference(dtype):
    """Values of both outputs and the table gradient of a loss on both (the kernel scatters
    w g_out + dw . g_jac), against the reference; accumulate_grad gives the same into .grad."""
    x, table, res = _setup(n=300, dtype=dtype, seed=22)
    g = torch.Generator().manual_seed(23)
    wo = torch.randn(300, 8, generator=g, dtype=dtype)
    wj = torch.randn(300, 8, 3, generator=g, dtype=dtype)
    t1 = table.clone().requires_grad_()
    out, jac = hash_encode_jacobian(x, t1, res)
    t2 = table.clone().requires_grad_()
    ro, rj = hash_encode_jacobian_reference(x, t2, res)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, ro, atol=tol, rtol=tol)
    torch.testing.assert_close(jac, rj, atol=tol * 10, rtol=tol)   # jac carries a factor res (<= 16)
    torch.testing.assert_close(out, hash_encode(x, table, res), atol=tol, rtol=tol)
    ((out * wo).sum() + (jac * wj).sum()).backward()
    ((ro * wo).sum() + (rj * wj).sum()).backward()
    torch.testing.assert_close(t1.grad, t2.grad, atol=tol * 10, rtol=tol)
    # only one output used: the other's gradient is zero
    t3 = table.clone().requires_grad_()
    (hash_encode_jacobian(x, t3, res)[1] * wj).sum().backward()
    t4 = table.clone().requires_grad_()
    (hash_encode_jacobian_reference(x, t4, res)[1] * wj).sum().backward()
    torch.testing.assert_close(t3.grad, t4.grad, atol=tol * 10, rtol=tol)
    # accumulate_grad: two calls add into .grad
    tp = torch.nn.Parameter(table.clone())
    for _ in range(2):
        o, j = hash_encode_jacobian(x, tp, res, accumulate_grad=True)
        ((o * wo).sum() + (j * wj).sum()).backward()
    torch.testing.assert_close(tp.grad, 2 * t2.grad, atol=tol * 20, rtol=tol)


def test_jacobian_gradcheck_float64():
    g = torch.Generator().manual_seed(24)
    x = torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05
    table = torch.randn(3, 32, 2, generator=g, dtype=torch.float64).requires_grad_()
    res = torch.tensor([2, 5, 9], dtype=torch.int32)
    wj = torch.randn(6, 6, 3, generator=g, dtype=torch.float64)

    def f(t):
        o, j = hash_encode_jacobian(x, t, res)
        return o * 0.5 + (j * wj).sum(-1)

    assert torch.autograd.gradcheck(f, (table,), eps=1e-7, atol=1e-6)


def test_jacobian_bad_inputs():
    x, table, res = _setup(n=4)
    with pytest.raises(ValueError, match="no gradient w.r.t. x"):
        hash_encode_jacobian(x.clone().requires_grad_(), table, res)
    with pytest.raises(ValueError, match="x must be"):
        hash_encode_jacobian(x[:, :2], table, res)
    with pytest.raises(ValueError, match="leaf"):
        hash_encode_jacobian(x, table.requires_grad_() * 1.0, res, accumulate_grad=True)
    o, j = hash_encode_jacobian(x[:0], table.detach(), res)
    assert o.shape == (0, 8) and j.shape == (0, 8, 3)
