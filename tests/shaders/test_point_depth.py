"""Point z-buffer splatting: the Taichi kernel (shaders.point_depth) against its torch twin
(shaders.point_depth_ref), plus the cases a point field meets: occlusion (nearest wins), own pixel
of a zero-radius point, points behind the camera / NaN / outside the image, the radius cap."""
import torch

from shaders import runtime
from shaders.point_depth import splat_depth
from shaders.point_depth_ref import splat_depth_reference

runtime.init()


def test_matches_reference_random():
    g = torch.Generator().manual_seed(0)
    V, N, H, W = 3, 400, 23, 31
    uv = torch.rand(V, N, 2, generator=g) * torch.tensor([W + 8.0, H + 8.0]) - 4.0   # some outside
    z = torch.rand(V, N, generator=g) * 5 - 0.5                                       # some behind
    rad = torch.rand(V, N, generator=g) * 3.0
    rad[0, :50] = 0.0
    z[1, :20] = float("nan")
    uv[2, :20, 0] = float("inf")
    a = splat_depth(uv, z, rad, H, W, max_radius=2.5)
    b = splat_depth_reference(uv, z, rad, H, W, max_radius=2.5)
    assert a.shape == (V, H, W)
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    assert torch.equal(a, b)
    assert torch.isfinite(a).any() and torch.isinf(a).any()     # neither trivially full nor empty


def test_nearest_point_wins_and_own_pixel():
    uv = torch.tensor([[[5.5, 5.5], [5.5, 5.5], [2.2, 7.9]]])
    z = torch.tensor([[3.0, 2.0, 4.0]])
    rad = torch.tensor([[1.0, 0.0, 0.0]])
    d = splat_depth(uv, z, rad, 10, 10)
    assert d[0, 5, 5] == 2.0                        # the nearer point, at its own pixel
    assert d[0, 5, 4] == 3.0 and d[0, 4, 5] == 3.0  # the radius-1 disk reaches the 4-neighbours
    assert torch.isinf(d[0, 4, 4])                  # centre distance sqrt(2) > 1
    assert d[0, 7, 2] == 4.0                        # a zero radius still writes its own pixel
    assert int(torch.isfinite(d).sum()) == 6


def test_bad_points_never_write():
    uv = torch.tensor([[[float("nan"), 1.0], [1.0, 1.0], [1e35, 1.0], [3.0, 3.0]]])
    z = torch.tensor([[1.0, -1.0, 1.0, float("inf")]])
    d = splat_depth(uv, z, 2.0, 6, 6)
    assert torch.isinf(d).all()
    # the radius is capped: a huge disk covers at most max_radius around the point
    d = splat_depth(torch.tensor([[[3.5, 3.5]]]), torch.tensor([[1.0]]), 1e6, 50, 50, max_radius=2.0)
    assert int(torch.isfinite(d).sum()) == int(splat_depth_reference(
        torch.tensor([[[3.5, 3.5]]]), torch.tensor([[1.0]]), 2.0, 50, 50).isfinite().sum()) == 13


def test_empty_inputs():
    assert torch.isinf(splat_depth(torch.zeros(2, 0, 2), torch.zeros(2, 0), 1.0, 4, 5)).all()
    assert splat_depth(torch.zeros(0, 3, 2), torch.zeros(0, 3), 1.0, 4, 5).shape == (0, 4, 5)
