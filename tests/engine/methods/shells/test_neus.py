"""NeuS opacity with a local kernel size, and compositing, vs direct references."""
import math

import torch

from engine.methods.shells.field import composite, neus_alpha


def _naive_alpha(sdf, cos, delta, s, anneal):
    """NeuS as written in the paper/code: (Phi(s f_prev) - Phi(s f_next)) / Phi(s f_prev), clipped."""
    icos = -(torch.relu(-cos * 0.5 + 0.5) * (1 - anneal) + torch.relu(-cos) * anneal)
    f_next = sdf + icos * delta * 0.5
    f_prev = sdf - icos * delta * 0.5
    p, n = torch.sigmoid(f_prev * s), torch.sigmoid(f_next * s)
    return ((p - n) / p).clamp(0.0, 1.0)


def test_alpha_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    n = 2000
    sdf = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 0.4
    cos = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    delta = torch.rand(n, generator=g, dtype=torch.float64) * 0.05
    s = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 4 + 1)   # 2.7 .. 150, per point
    for anneal in (0.0, 0.3, 1.0):
        torch.testing.assert_close(neus_alpha(sdf, cos, delta, s, anneal), _naive_alpha(sdf, cos, delta, s, anneal),
                                   atol=1e-12, rtol=1e-9)


def test_alpha_is_stable_for_sharp_kernels():
    # deep inside (f << 0) with a huge s the naive form is 0/0; ours gives 1 - exp(s cos delta)
    sdf = torch.tensor([-1.0, 1.0, 0.0])
    a = neus_alpha(sdf, torch.tensor(-1.0), torch.tensor(0.01), torch.tensor(5000.0))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[0], torch.tensor(1 - math.exp(-50.0)))
    assert a[1] < 1e-6                       # far outside: transparent
    assert a[2] > 0.999999                   # an interval straddling the surface: opaque
    # facing away from the surface (cos > 0): no opacity
    assert neus_alpha(torch.tensor(0.0), torch.tensor(0.5), torch.tensor(0.1), torch.tensor(50.0)) == 0


def test_plane_transmittance_telescopes():
    # exact SDF of a plane hit head-on: f(t) = t_s - t, cos = -1. The NeuS transmittance before
    # interval i is exactly Phi(s f(t_i)) / Phi(s f(t_0)), whatever the (local) s.
    s = 37.0
    edges = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)
    mid = (edges[1:] + edges[:-1]) / 2
    delta = edges[1:] - edges[:-1]
    ts = 1.13
    alpha = neus_alpha(ts - mid, torch.tensor(-1.0, dtype=torch.float64), delta, torch.tensor(s, dtype=torch.float64))
    out = composite(alpha[None], torch.ones(1, 40, 3, dtype=torch.float64), mid[None])
    trans = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - alpha]), 0)
    ref = torch.sigmoid(s * (ts - edges)) / torch.sigmoid(s * (ts - edges[0]))
    torch.testing.assert_close(trans, ref, atol=1e-9, rtol=1e-7)
    # unbiased: the weight peaks in the interval that contains the surface
    i = int(out["weights"][0].argmax())
    assert edges[i] <= ts <= edges[i + 1]
    torch.testing.assert_close(out["opacity"][0], 1 - ref[-1], atol=1e-8, rtol=0)


def test_composite_reference():
    g = torch.Generator().manual_seed(1)
    R, S = 5, 7
    alpha = torch.rand(R, S, generator=g, dtype=torch.float64)
    rgb = torch.rand(R, S, 3, generator=g, dtype=torch.float64)
    t = torch.sort(torch.rand(R, S, generator=g, dtype=torch.float64), 1).values
    valid = torch.rand(R, S, generator=g) > 0.3
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    out = composite(alpha, rgb, t, valid, bg)
    for r in range(R):
        T, C, D, W = 1.0, torch.zeros(3, dtype=torch.float64), 0.0, 0.0
        for k in range(S):
            if not valid[r, k]:
                continue
            w = T * alpha[r, k]
            C = C + w * rgb[r, k]
            D += w * t[r, k]
            W += w
            T *= 1 - alpha[r, k]
        torch.testing.assert_close(out["rgb"][r], C + (1 - W) * bg, atol=1e-8, rtol=0)
        torch.testing.assert_close(out["opacity"][r], torch.as_tensor(W, dtype=torch.float64), atol=1e-8, rtol=0)
        torch.testing.assert_close(out["depth"][r], (D / W).detach().clone(), atol=1e-8, rtol=0)


def test_alpha_gradients_finite():
    sdf = torch.linspace(-0.2, 0.2, 21, dtype=torch.float64, requires_grad=True)
    log_s = torch.full((21,), math.log(40.0), dtype=torch.float64, requires_grad=True)
    cos = torch.full((21,), -0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: neus_alpha(a, c, torch.tensor(0.02, dtype=torch.float64),
                                                               torch.exp(b)), (sdf, log_s, cos))


def test_field_starts_as_sphere_with_unit_gradient():
    from engine.methods.shells.config import ShellsConfig
    from engine.methods.shells.field import ShellField

    cfg = ShellsConfig(hash_levels=4, hash_log2_size=12, hash_max_res=64, init_radius=0.5, init_s=20.0)
    box = torch.tensor([[-1.0, -2.0, -1.0], [3.0, 2.0, 1.0]])           # cubic: centre (1,0,0), a = 2
    f = ShellField(box, cfg)
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    x = u * (0.3 + 1.5 * torch.rand(64, 1, generator=g)) + torch.tensor([1.0, 0.0, 0.0])
    sdf, grad, log_s, feat = f.geometry_fd(x)
    r = (x - torch.tensor([1.0, 0.0, 0.0])).norm(dim=-1)
    torch.testing.assert_close(sdf, r - 1.0, atol=1e-4, rtol=0)
    # the tetrahedral difference of the analytic SDF (float64), and the true normal within O(h / r)
    k = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    h = cfg.fd_step * 2.0
    xd = x.double()[:, None] + h * k[None] - torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    ref = (xd.norm(dim=-1)[..., None] * k[None]).sum(1) / (4 * h)
    torch.testing.assert_close(grad.double(), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(grad, (x - torch.tensor([1.0, 0.0, 0.0])) / r[:, None], atol=4 * h / 0.3, rtol=0)
    torch.testing.assert_close(torch.exp(log_s), torch.full((64,), 10.0))   # init_s / a
    assert feat.shape == (64, cfg.geo_features)
    # the band half-width follows the kernel: ln(4/eps)/s, clamped
    h = f.kernel_halfwidth(log_s, 0.01, 0.0, 10.0)
    torch.testing.assert_close(h, torch.full((64,), math.log(400) / 10.0))


def test_descent_alpha_telescopes_and_gradcheck():
    """The differentiable crossing opacity of whole-field fine-tuning (field.descent_alpha): with a
    constant kernel size the segments' opacities telescope to the NeuS opacity of the whole descent,
    it matches the probe kernel's segment product, and its gradients pass gradcheck in float64."""
    from engine.methods.shells.field import descent_alpha

    s = 30.0
    # two descents: a plane crossing (f linear, 5 points) and a short one (2 points)
    f = torch.tensor([0.2, 0.1, 0.0, -0.1, -0.2, 0.05, -0.03], dtype=torch.float64)
    ls = torch.full_like(f, math.log(s))
    owner = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    last = torch.tensor([False, False, False, False, True, False, True])
    a = descent_alpha(f, ls, owner, last, 2)
    want = [1 - torch.sigmoid(torch.tensor(s * fb)) / torch.sigmoid(torch.tensor(s * fa))
            for fa, fb in ((0.2, -0.2), (0.05, -0.03))]
    torch.testing.assert_close(a, torch.stack(want).to(a))
    # a varying kernel size: the product of the segments' opacities, each with s at its start
    ls2 = torch.log(torch.tensor([10.0, 40.0, 25.0, 60.0, 5.0, 30.0, 30.0], dtype=torch.float64))
    seg = [1 - torch.sigmoid(ls2[i].exp() * f[i + 1]) / torch.sigmoid(ls2[i].exp() * f[i]) for i in range(4)]
    torch.testing.assert_close(descent_alpha(f, ls2, owner, last, 2)[0], 1 - torch.prod(1 - torch.stack(seg)))
    fg = f.clone().requires_grad_(True)
    lg = ls2.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: descent_alpha(x, y, owner, last, 2), (fg, lg))
