"""Stage 2 pieces: decoding the attribute network's output, the attribute losses, and the grid ->
Gaussians conversion against the GaussianVolume it mirrors."""
import math

import pytest
import torch

from engine.methods.gvgen import attributes as attr


pytestmark = pytest.mark.usefixtures("one_thread")


def test_decode_ranges_and_neutral_output():
    n, cell = 4, 0.1
    raw = torch.zeros(1, 14, n, n, n)
    g = attr.decode(raw, cell, max_offset_cells=3.0, init_scale_cells=0.8)
    assert g.shape == (1, n, n, n, 14)
    assert torch.all(g[..., 0:3] == 0)                                        # offset 0
    assert torch.allclose(g[..., 6:9], torch.full_like(g[..., 6:9], math.log(0.08)))
    assert torch.allclose(g[..., 9:13], torch.tensor([1.0, 0, 0, 0]).expand_as(g[..., 9:13]))
    big = attr.decode(torch.full((1, 14, n, n, n), 50.0), cell)
    assert float(big[..., 0:3].abs().max()) <= 3.0 * cell + 1e-6             # bounded offsets
    assert torch.allclose(big[..., 9:13].norm(dim=-1), torch.ones(1, n, n, n))


def test_attribute_loss_parts_vanish_at_the_target_and_grow_away_from_it():
    torch.manual_seed(0)
    n, cell = 4, 0.1
    target = attr.decode(torch.randn(2, 14, n, n, n), cell)
    total, parts = attr.attribute_loss(target, target, cell)
    for k in ("offset", "colour", "scale", "rotation"):
        assert float(parts[k]) == pytest.approx(0.0, abs=1e-6), k
    q_flipped = target.clone()
    q_flipped[..., 9:13] *= -1                                                 # q and -q: the same rotation
    assert float(attr.attribute_loss(q_flipped, target, cell)[1]["rotation"]) == pytest.approx(0.0, abs=1e-6)
    worse = target.clone()
    worse[..., 0:3] += 0.05
    worse[..., 13] = -worse[..., 13]
    t2, p2 = attr.attribute_loss(worse, target, cell)
    assert float(p2["offset"]) == pytest.approx(0.5, rel=1e-4)                # 0.05 / cell 0.1
    assert float(p2["opacity"]) > float(parts["opacity"]) and float(t2) > float(total)
    # a transparent target slot's colour does not matter
    target[..., 13] = -30.0
    other = target.clone()
    other[..., 3:6] += 5
    assert float(attr.attribute_loss(other, target, cell)[1]["colour"]) < 1e-4    # weight sigmoid(-30)


def test_grid_to_gaussians_matches_the_gaussian_volume():
    """A fitted GaussianVolume's as_grid() tensor turns back into the same Gaussians it renders."""
    from engine.methods.gvolume.model import GaussianVolume

    torch.manual_seed(0)
    n = 5
    box = torch.tensor([[-0.5, -0.4, -0.6], [0.5, 0.6, 0.4]])
    vol = GaussianVolume(box, n)
    with torch.no_grad():
        vol.offset.data = 0.02 * torch.randn(n ** 3, 3)
        vol.sh_dc.data = torch.randn(n ** 3, 1, 3)
        vol.log_scales.data = torch.randn(n ** 3, 3) - 3
        vol.quats.data = torch.randn(n ** 3, 4)
        vol.opacity.data = torch.randn(n ** 3)
        vol.active[:] = torch.rand(n ** 3) > 0.3
    grid = vol.as_grid()
    g = attr.grid_to_gaussians(grid, box, min_opacity=0.0)
    ref = vol.active_tensors()
    act = vol.active
    assert torch.allclose(g["means"][act], ref["means"], atol=1e-6)
    assert torch.allclose(g["quats"][act], torch.nn.functional.normalize(ref["quats"], dim=-1), atol=1e-6)
    assert torch.allclose(g["log_scales"][act], ref["log_scales"])
    assert torch.allclose(torch.sigmoid(g["opacity_logits"][act]), ref["opacity"])
    assert torch.allclose(g["sh"][act], ref["sh"])
    # free slots hold opacity logit -10: left out above a threshold
    kept = attr.grid_to_gaussians(grid, box, min_opacity=0.005)
    assert kept["means"].shape[0] == int((torch.sigmoid(grid.reshape(-1, 14)[:, 13]) >= 0.005).sum())
    assert kept["means"].shape[0] <= int(act.sum())


def test_stage2_input_has_gdf_and_coordinates():
    x = torch.rand(2, 1, 4, 4, 4)
    inp = attr.stage2_input(x)
    assert inp.shape == (2, 4, 4, 4, 4)
    assert torch.equal(inp[:, :1], x)
    assert float(inp[0, 1, 0, 2, 3]) == -1.0 and float(inp[0, 1, 3, 0, 0]) == 1.0   # i axis
    assert float(inp[1, 3, 0, 0, 3]) == 1.0                                        # k axis
