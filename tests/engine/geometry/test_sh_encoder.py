"""SH location encoder: features, SIREN init, and the worked example (fit a function on the globe)."""
import math

import pytest
import torch

from engine.geometry import sh
from engine.geometry.sh_encoder import SHLocationEncoder, lonlat_to_dirs


def test_lonlat_to_dirs_convention():
    ll = torch.tensor([[0.0, 0.0], [90.0, 0.0], [0.0, 90.0], [180.0, -45.0]], dtype=torch.float64)
    d = lonlat_to_dirs(ll)
    s = math.sqrt(0.5)
    expect = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-s, 0, -s]], dtype=torch.float64)
    assert torch.allclose(d, expect, atol=1e-15)
    with pytest.raises(ValueError, match="lonlat"):
        lonlat_to_dirs(torch.zeros(3, 3))


def test_features_are_real_sh():
    enc = SHLocationEncoder(l_max=5, hidden=8, layers=1).double()
    ll = torch.tensor([[12.0, 41.9], [-74.0, 40.7]], dtype=torch.float64)
    f = enc.features(ll)
    assert f.shape == (2, 36) and enc.num_features == 36
    assert torch.allclose(f, sh.sh_basis(lonlat_to_dirs(ll), 5, backend="torch"), atol=1e-14)
    assert enc(ll.float().double()).shape == (2, 1)


def test_siren_initialisation_bounds():
    torch.manual_seed(0)
    enc = SHLocationEncoder(l_max=3, hidden=32, layers=3, out_dim=2)
    first, second = enc.net[0].linear, enc.net[1].linear
    assert enc.net[0].w0 == 30.0
    assert first.weight.abs().max().item() <= 1.0 / 16 + 1e-7          # U(-1/n, 1/n), n = 16 features
    assert second.weight.abs().max().item() <= math.sqrt(6 / 32) / 30 + 1e-7
    with pytest.raises(ValueError, match="invalid"):
        SHLocationEncoder(l_max=3, layers=0)


@pytest.fixture
def one_thread():
    """Tiny MLP steps are faster on one thread (and far faster when the cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_worked_example_fits_a_function_on_the_globe(one_thread):
    """The module docstring's example, smaller: the loss drops by more than 50x."""
    torch.manual_seed(0)
    n = 1024
    lon = torch.rand(n) * 360 - 180
    lat = torch.rad2deg(torch.asin(torch.rand(n) * 2 - 1))       # uniform on the sphere
    lonlat = torch.stack([lon, lat], -1)
    lo, la = torch.deg2rad(lon), torch.deg2rad(lat)
    target = (torch.sin(2 * lo) * torch.cos(la) ** 2 + 0.5 * torch.sin(3 * la)).unsqueeze(-1)
    model = SHLocationEncoder(l_max=4, hidden=32, layers=2, out_dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    feats = model.features(lonlat)          # inputs are fixed: embed once, train the SIREN
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model.head(model.net(feats)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 50
    # generalises to unseen points (the target is smooth, degree 4 resolves it)
    test = torch.stack([torch.rand(256) * 360 - 180, torch.rand(256) * 160 - 80], -1)
    tl, ta = torch.deg2rad(test).unbind(-1)
    tt = (torch.sin(2 * tl) * torch.cos(ta) ** 2 + 0.5 * torch.sin(3 * ta)).unsqueeze(-1)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(test), tt).item() < 0.05 * tt.var().item()
