"""Stage 1 pieces: the 3^3 convolution, the U-Net's shapes and conditioning, the DDPM schedule, the
GDF normalisation and DDIM sampling."""
import pytest
import torch

from engine.methods.gvgen.diffusion import (Schedule, ddim_sample, denormalize_gdf, diffusion_loss,
                                            normalize_gdf)
from engine.methods.gvgen.unet import Conv3d3, UNet3D, depth_to_space, space_to_depth


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6), (1, 2, 1, 3, 3)])
def test_conv3d3_matches_torch_conv3d_values_and_gradients(shape):
    torch.manual_seed(0)
    conv = Conv3d3(shape[1], 4).double()
    ref = torch.nn.Conv3d(shape[1], 4, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y, y_ref = conv(x), ref(x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, conv.weight))
    gx_ref, gw_ref = torch.autograd.grad((y_ref * g).sum(), (x, ref.weight))
    assert torch.allclose(gx, gx_ref, atol=1e-12) and torch.allclose(gw, gw_ref, atol=1e-12)
    small = Conv3d3(1, 2).double()
    torch.autograd.gradcheck(lambda a: small(a), (torch.randn(1, 1, 3, 2, 3, dtype=torch.float64, requires_grad=True),))


def test_space_to_depth_roundtrip():
    x = torch.arange(2 * 3 * 4 ** 3, dtype=torch.float32).reshape(2, 3, 4, 4, 4)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 24, 2, 2, 2)
    assert torch.equal(depth_to_space(y, 2), x)
    # one output voxel holds exactly its 2^3 block
    assert sorted(y[0, :8, 0, 0, 0].tolist()) == sorted(x[0, 0, :2, :2, :2].flatten().tolist())


@pytest.mark.parametrize("patch", [1, 2])
def test_unet_shapes_and_text_conditioning(patch):
    torch.manual_seed(0)
    net = UNet3D(1, 1, channels=4, mults=(1, 2), text_dim=12, patch=patch)
    n = 4 * patch
    x = torch.randn(2, 1, n, n, n)
    tok = torch.randn(2, 3, 12)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    t = torch.tensor([3, 900])
    y = net(x, torch.randn(2, 12), tok, mask, t)
    assert y.shape == x.shape
    # FiLM and attention outputs start at zero: perturb them so the text matters, then check it does
    for p in net.parameters():
        p.data += 0.05 * torch.randn_like(p)
    p1, p2 = torch.randn(2, 12), torch.randn(2, 12)
    assert not torch.allclose(net(x, p1, tok, mask, t), net(x, p2, tok, mask, t))
    # masked (padding) tokens are ignored
    tok2 = tok.clone()
    tok2[1, 1:] = 100.0
    tok3 = tok.clone()
    tok3[0, 1] = 100.0                          # a real token of caption 0
    a, b, c = net(x, p1, tok, mask, t), net(x, p1, tok2, mask, t), net(x, p1, tok3, mask, t)
    assert torch.allclose(a[1], b[1], atol=1e-5) and not torch.allclose(a[0], c[0])
    with pytest.raises(ValueError, match="not a multiple"):
        net(torch.randn(1, 1, 6, 6, 6) if patch == 2 else torch.randn(1, 1, 3, 3, 3), p1[:1], tok[:1], mask[:1],
            t[:1])


def test_schedule_is_ddpm_linear():
    s = Schedule()
    assert s.T == 1000
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert float(s.abar[0]) == pytest.approx(1 - 1e-4)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(s.abar, expected)
    assert float(s.abar[-1]) < 1e-4          # x_T is (almost) pure noise
    ts = s.timesteps(50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    x0, noise = torch.ones(2, 3), torch.zeros(2, 3)
    xt = s.q_sample(x0, torch.tensor([0, 999]), noise)
    assert torch.allclose(xt[:, 0], s.abar[[0, 999]].sqrt().float())


def test_gdf_normalisation():
    side = 2.0
    g = torch.tensor([0.0, 0.15, 0.3, 1.0, float("inf")])
    x = normalize_gdf(g, side, 0.15)            # clamp at 0.15 * side = 0.3
    assert torch.allclose(x, torch.tensor([-1.0, 0.0, 1.0, 1.0, 1.0]))
    assert torch.allclose(denormalize_gdf(x, side, 0.15), torch.tensor([0.0, 0.15, 0.3, 0.3, 0.3]))


def test_ddim_with_an_exact_x0_predictor_lands_on_it():
    """A model that always predicts the same clean sample c: DDIM's last step returns x0_hat = c, and
    every later x_t is sqrt(abar) c + sqrt(1 - abar) eps with the eps inferred at the first step
    (deterministic DDIM keeps the noise direction)."""
    s = Schedule()
    c = torch.rand(1, 1, 4, 4, 4) * 1.6 - 0.8
    seen = []

    def model(x, pooled, tokens, mask, t):
        seen.append((x.clone(), int(t[0])))
        return c.expand_as(x)

    cond = {"pooled": torch.zeros(1, 4), "tokens": torch.zeros(1, 1, 4), "mask": torch.ones(1, 1, dtype=torch.bool)}
    g = torch.Generator().manual_seed(3)
    out = ddim_sample(model, s, (1, 1, 4, 4, 4), cond, steps=10, generator=g)
    assert torch.allclose(out, c, atol=1e-6)
    x_T = torch.randn((1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(3))
    aT = float(s.abar[999])
    eps = (x_T - aT ** 0.5 * c) / (1 - aT) ** 0.5     # the noise the first step infers
    x5, t5 = seen[5]
    ab = float(s.abar[t5])
    assert torch.allclose(x5, ab ** 0.5 * c + (1 - ab) ** 0.5 * eps, atol=1e-5)
    # guidance mixes the conditional and unconditional predictions
    with pytest.raises(ValueError, match="unconditional"):
        ddim_sample(model, s, (1, 1, 4, 4, 4), cond, steps=2, guidance=2.0)


def test_diffusion_loss_is_zero_for_the_oracle_and_trains_down():
    s = Schedule()
    x0 = torch.rand(3, 1, 4, 4, 4) * 2 - 1
    cond = {"pooled": torch.zeros(3, 4), "tokens": torch.zeros(3, 1, 4), "mask": torch.ones(3, 1, dtype=torch.bool)}
    oracle = lambda x, p, tk, m, t: x0  # noqa: E731
    assert float(diffusion_loss(oracle, s, x0, cond, torch.Generator().manual_seed(0))) == 0.0
    torch.manual_seed(0)
    net = UNet3D(1, 1, channels=8, mults=(1, 2), text_dim=4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    first = None
    for _ in range(40):
        loss = diffusion_loss(net, s, x0, cond, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    assert float(diffusion_loss(net, s, x0, cond, torch.Generator().manual_seed(5))) < 0.5 * first
