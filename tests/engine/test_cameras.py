"""Cameras: convention round-trips, projection vs ray generation, distortion, downscaling."""
from __future__ import annotations

import math

import pytest
import torch

from engine.cameras import (Cameras, c2w_to_colmap, c2w_to_llff, colmap_to_c2w, distort, downscaled_size,
                            llff_to_c2w, opencv_to_opengl_c2w, opengl_to_opencv_c2w, qvec_to_rotmat,
                            rotmat_to_qvec, undistort)

FOX_DIST = [0.0578421, -0.0805099, -0.000980296, 0.00015575, 0.0]


def random_c2w(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=dtype)
    c2w = torch.eye(4, dtype=dtype).repeat(n, 1, 1)
    c2w[:, :3, :3] = qvec_to_rotmat(q)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=dtype) * 3
    return c2w


def look_at(center, target, up=(0.0, 0.0, 1.0)):
    """OpenCV c2w looking from center to target (independent construction for the tests)."""
    c, t, u = (torch.tensor(v, dtype=torch.float64) for v in (center, target, up))
    z = (t - c) / (t - c).norm()
    x = torch.linalg.cross(z, u)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, c
    return m


def test_rotation_quaternion_roundtrip_including_180_degree_turns():
    R = random_c2w(64)[:, :3, :3]
    extra = torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64)) for d in
                         ([1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1])])
    R = torch.cat([R, extra])
    q = rotmat_to_qvec(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(qvec_to_rotmat(q), R, atol=1e-12)
    # Known value: 90 degrees about z.
    qz = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=torch.float64)
    expect = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(qvec_to_rotmat(qz), expect, atol=1e-12)


def test_opengl_roundtrip_and_axis_meaning():
    c2w = random_c2w(10)
    assert torch.allclose(opencv_to_opengl_c2w(opengl_to_opencv_c2w(c2w)), c2w)
    # An OpenGL camera at the origin with identity rotation looks down -z, with +y up:
    cv = opengl_to_opencv_c2w(torch.eye(4))
    assert torch.allclose(cv[:3, 2], torch.tensor([0.0, 0, -1]))   # forward = world -z
    assert torch.allclose(cv[:3, 1], torch.tensor([0.0, -1, 0]))   # down = world -y
    cams = Cameras.from_opengl_c2w(c2w, 50, 50, 32, 24, 64, 48)
    assert torch.allclose(cams.to_opengl_c2w().double(), c2w, atol=1e-6)


def test_colmap_roundtrip_and_definition():
    c2w = random_c2w(20, seed=1)
    q, t = c2w_to_colmap(c2w)
    assert torch.allclose(colmap_to_c2w(q, t), c2w, atol=1e-12)
    # Definition: X_cam = R(q) X_world + t, and the camera centre maps to 0.
    X = torch.randn(20, 3, dtype=torch.float64)
    Xc = (qvec_to_rotmat(q) @ X[..., None]).squeeze(-1) + t
    w2c = torch.linalg.inv(c2w)
    assert torch.allclose(Xc, (w2c[:, :3, :3] @ X[..., None]).squeeze(-1) + w2c[:, :3, 3], atol=1e-12)
    cams = Cameras.from_colmap(q, t, 100, 100, 50, 50, 100, 100)
    q2, t2 = cams.to_colmap()
    assert torch.allclose(q2, q, atol=1e-5) and torch.allclose(t2, t, atol=1e-4)


def test_llff_roundtrip_and_column_order():
    c2w = random_c2w(5, seed=2)
    poses = c2w_to_llff(c2w, 480, 640, 500.0)
    assert poses.shape == (5, 3, 5)
    assert torch.allclose(llff_to_c2w(poses), c2w, atol=1e-12)
    # LLFF columns are (down, right, backward) = (+y, +x, -z) of OpenCV.
    assert torch.allclose(poses[:, :, 0], c2w[:, :3, 1]) and torch.allclose(poses[:, :, 2], -c2w[:, :3, 2])
    cams = Cameras.from_llff(poses)
    assert cams.width.tolist() == [640] * 5 and cams.height.tolist() == [480] * 5
    assert torch.allclose(cams.cx, torch.full((5,), 320.0)) and torch.allclose(cams.fx, torch.full((5,), 500.0))
    assert torch.allclose(cams.to_llff(), poses, atol=1e-5)


@pytest.mark.parametrize("dist", [None, FOX_DIST, [-0.25, 0.08, 0.001, -0.002, -0.01]])
def test_projected_point_lands_on_pixel_whose_ray_passes_through_it(dist):
    c2w = torch.stack([look_at((3, -4, 2), (0, 0, 0)), look_at((-2, 1, 5), (0.3, 0, 0))])
    cams = Cameras(300.0, 310.0, [160.3, 158.0], [120.7, 121.0], 320, 240, c2w, dist)
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(200, 3, generator=g, dtype=torch.float64) - 0.5
    for i in range(2):
        uv, z = cams.project(pts, i)
        assert (z > 0).all()
        assert ((uv >= 0) & (uv < torch.tensor([320.0, 240.0], dtype=torch.float64))).all()
        o, d = cams.pixel_rays(torch.full((200,), i), uv.float())
        # distance from each point to its ray
        v = pts.float() - o
        perp = v - (v * d).sum(-1, keepdim=True) * d
        assert perp.norm(dim=-1).max() < 2e-5 * z.max()
        # The grid from generate_rays: the ray of the pixel containing the point passes within
        # half a pixel (in angle) of it.
        O, D = cams.generate_rays(i)
        px = uv.floor().long()
        dd = D[px[:, 1], px[:, 0]]
        ang = torch.acos(((v / v.norm(dim=-1, keepdim=True)) * dd).sum(-1).clamp(-1, 1))
        assert ang.max() < 0.8 / 300.0 * 1.2
        assert torch.allclose(O, cams.centers()[i].expand_as(O))


def test_known_projection_values():
    # Camera at origin looking along +z (OpenCV identity): X = (x, y, z) -> u = fx x/z + cx.
    cams = Cameras(100.0, 200.0, 50.0, 40.0, 100, 80, torch.eye(4))
    uv, z = cams.project(torch.tensor([[0.5, -0.2, 2.0], [0.0, 0.0, 1.0]]), 0)
    assert torch.allclose(uv, torch.tensor([[75.0, 20.0], [50.0, 40.0]]))
    assert torch.allclose(z, torch.tensor([2.0, 1.0]))
    O, D = cams.generate_rays(0)
    assert D.shape == (80, 100, 3) and torch.allclose(D.norm(dim=-1), torch.ones(80, 100))
    # pixel (49, 39) has its centre at (49.5, 39.5): direction (-0.5/100, -0.5/200, 1) normalised.
    expect = torch.tensor([-0.005, -0.0025, 1.0])
    assert torch.allclose(D[39, 49], expect / expect.norm(), atol=1e-7)


def test_undistort_inverts_distort_and_matches_closed_form():
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(5000, generator=g, dtype=torch.float64) - 0.5) * 1.2
    y = (torch.rand(5000, generator=g, dtype=torch.float64) - 0.5) * 1.6
    for d in (FOX_DIST, [-0.3, 0.1, 0.002, -0.001, -0.02], [0.1, 0, 0, 0, 0]):
        dist = torch.tensor(d, dtype=torch.float64)
        xd, yd = distort(x, y, dist)
        xu, yu = undistort(xd, yd, dist)
        assert torch.allclose(xu, x, atol=1e-12) and torch.allclose(yu, y, atol=1e-12)
    # Closed form for a pure k1 model on the axis: xd = x (1 + k1 x^2).
    xd, yd = distort(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                     torch.tensor([0.1, 0, 0, 0, 0], dtype=torch.float64))
    assert float(xd) == pytest.approx(0.5 * (1 + 0.1 * 0.25)) and float(yd) == 0.0
    # Tangential terms, OpenCV's formula written out by hand at (0.3, -0.2).
    k1, k2, p1, p2, k3 = 0.1, 0.01, 0.001, 0.002, 0.003
    r2 = 0.09 + 0.04
    rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    ex = 0.3 * rad + 2 * p1 * 0.3 * -0.2 + p2 * (r2 + 2 * 0.09)
    ey = -0.2 * rad + p1 * (r2 + 2 * 0.04) + 2 * p2 * 0.3 * -0.2
    xd, yd = distort(torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.2, dtype=torch.float64),
                     torch.tensor([k1, k2, p1, p2, k3], dtype=torch.float64))
    assert float(xd) == pytest.approx(ex, abs=1e-15) and float(yd) == pytest.approx(ey, abs=1e-15)


def test_downscale_keeps_projection_consistent():
    c2w = random_c2w(3, seed=5)
    c2w[:, :3, 3] = 0
    cams = Cameras(400.0, 410.0, 201.0, 149.0, 400, 300, c2w, FOX_DIST)
    small = cams.downscaled(4)
    assert small.width.tolist() == [100] * 3 and small.height.tolist() == [75] * 3
    assert torch.allclose(small.fx, cams.fx / 4) and torch.allclose(small.cx, cams.cx / 4)
    pts = (c2w[:, :3, 2] * 3).float()  # a point in front of each camera
    uv, _ = cams.project(pts)
    uv_s, _ = small.project(pts)
    assert torch.allclose(uv_s, uv / 4, atol=1e-4)
    # Pixel centres: the centre of small pixel (0, 0) is (0.5, 0.5) = the centre of the 4x4 block
    # (2.0, 2.0) in the full image, so their rays coincide.
    o1, d1 = small.pixel_rays(torch.tensor([0]), torch.tensor([[0.5, 0.5]]))
    o2, d2 = cams.pixel_rays(torch.tensor([0]), torch.tensor([[2.0, 2.0]]))
    assert torch.allclose(d1, d2, atol=1e-6)
    # Odd sizes round like the image resize does.
    assert downscaled_size(270, 0.25) == 68 and downscaled_size(3, 0.5) == 2 and downscaled_size(1, 0.1) == 1
    odd = Cameras(100.0, 100.0, 135.0, 240.0, 270, 480, torch.eye(4)).downscaled(4)
    assert int(odd.width) == 68 and float(odd.cx) == pytest.approx(135.0 * 68 / 270)
    with pytest.raises(ValueError):
        cams.downscaled(0)


def test_container_protocol_and_validation():
    cams = Cameras(torch.arange(1, 6).float(), 10.0, 5.0, 5.0, 10, 10, random_c2w(5))
    assert len(cams) == 5 and cams.dist is None
    one = cams[2]
    assert len(one) == 1 and float(one.fx) == 3.0
    assert len(cams[-1]) == 1 and float(cams[-1].fx) == 5.0
    sub = cams[1:4]
    assert sub.fx.tolist() == [2.0, 3.0, 4.0]
    assert cams[torch.tensor([0, 4])].fx.tolist() == [1.0, 5.0]
    assert cams.K().shape == (5, 3, 3) and float(cams.K()[3, 0, 0]) == 4.0
    assert torch.allclose(cams.centers(), cams.c2w[:, :3, 3])
    assert torch.allclose(cams.w2c() @ cams.c2w, torch.eye(4).expand(5, 4, 4), atol=1e-5)
    assert cams.to("cpu").c2w.device.type == "cpu"
    both = Cameras.cat([cams, Cameras(1.0, 1.0, 1.0, 1.0, 2, 2, torch.eye(4), FOX_DIST)])
    assert len(both) == 6 and both.dist is not None and (both.dist[:5] == 0).all()
    with pytest.raises(IndexError):
        cams[5]
    with pytest.raises(ValueError, match="fx has 3 values for 5 cameras"):
        Cameras(torch.ones(3), 1.0, 1.0, 1.0, 2, 2, random_c2w(5))
