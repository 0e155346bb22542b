"""Lat-long environment maps: conventions, exact solid angles, projection/reconstruction round trips."""
import math

import numpy as np
import pytest
import torch

from engine.errors import DataError
from engine.geometry import sh
from tests.conftest import require
from tests.engine.io.test_hdr import assert_rgbe_close, write_rgbe

MAPS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")


@pytest.fixture(scope="module")
def projectors():
    """128x256 projectors shared by the eight maps (the solver object pays for its tables once)."""
    return {deg: sh.EnvmapProjector(128, 256, deg) for deg in (2, 12, 48)}


def test_latlong_convention_matches_data_readme():
    d = sh.latlong_directions(128, 256)
    assert d.shape == (128, 256, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(128, 256, dtype=torch.float64))
    assert d[0, :, 2].min() > 0.999          # row 0 near the zenith (+Z)
    assert d[-1, :, 2].max() < -0.999
    mid = d[64, 128]                          # centre column faces +X
    assert mid[0] > 0.99
    assert d[64, 64][1] > 0.99                # u = 0.25 faces +Y
    assert d[64, 192][1] < -0.99              # u = 0.75 faces -Y
    assert d[64, 0][0] < -0.99 and d[64, 255][0] < -0.99
    # exact formula of note 7: theta = pi v, phi = pi - 2 pi u
    r, c = 37, 201
    th, ph = math.pi * (r + 0.5) / 128, math.pi - 2 * math.pi * (c + 0.5) / 256
    assert torch.allclose(d[r, c], torch.tensor([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph),
                                                 math.cos(th)], dtype=torch.float64))
    # y-up: (x, y, z) -> (x, z, -y); row 0 faces +Y
    dy = sh.latlong_directions(128, 256, up="y")
    assert torch.allclose(dy, torch.stack([d[..., 0], d[..., 2], -d[..., 1]], -1))


def test_solid_angles_exact():
    w = sh.latlong_solid_angles(128, 256)
    assert w.sum().item() == pytest.approx(4 * math.pi, rel=1e-13)
    r = 10
    expect = (2 * math.pi / 256) * (math.cos(math.pi * r / 128) - math.cos(math.pi * (r + 1) / 128))
    assert w[r, 3].item() == pytest.approx(expect, rel=1e-14)
    # integrating cos^2(theta) over the map converges to 4 pi / 3 at O(1/H^2), not exact
    z = sh.latlong_directions(128, 256)[..., 2]
    assert (w * z**2).sum().item() == pytest.approx(4 * math.pi / 3, rel=1e-4)


@pytest.mark.parametrize("up", ["z", "y"])
@pytest.mark.parametrize("convention", sh.CONVENTIONS)
def test_bandlimited_map_round_trips_exactly(up, convention):
    g = torch.Generator().manual_seed(0)
    L = 10
    c = torch.randn((L + 1) ** 2, 3, dtype=torch.float64, generator=g)
    img = sh.reconstruct_envmap(c, 48, 96, up=up, convention=convention)
    # reconstruction == direct evaluation of the basis at the pixel directions
    direct = sh.eval_sh(c, sh.latlong_directions(48, 96, up=up), convention)
    assert torch.allclose(img, direct, atol=1e-12)
    proj = sh.EnvmapProjector(48, 96, L, up=up, convention=convention)
    assert torch.allclose(proj.project(img, method="lstsq"), c, atol=1e-11)
    # plain quadrature is accurate to the midpoint-rule error O(1/H^2)
    assert (proj.project(img) - c).abs().max().item() < 2e-2 * c.abs().max().item()
    assert not torch.allclose(proj.project(img), c, atol=1e-8)


@pytest.mark.parametrize("name", MAPS)
def test_blender_hdr_maps_round_trip_at_high_degree(shared_data, projectors, name):
    img = sh.load_envmap(require(shared_data / "sh" / "blender_world_cc0" / f"{name}.npy"))
    assert img.shape == (128, 256, 3) and img.dtype == np.float32 and img.min() >= 0
    proj = projectors[48]
    c = proj.project(img, method="lstsq")
    recon = proj.reconstruct(c)
    scale = c.abs().max().item()
    assert (proj.project(recon, method="lstsq") - c).abs().max().item() < 1e-12 * scale
    # quadrature and least squares agree to the O(1/H^2) quadrature error
    assert (proj.project(img) - c).abs().max().item() < 2e-3 * scale
    # DC term = mean radiance * sqrt(4 pi) (with exact solid angles)
    w = sh.latlong_solid_angles(128, 256).numpy()[:, :, None]
    dc = (img * w).sum((0, 1)) / math.sqrt(4 * math.pi)
    assert np.allclose(proj.project(img)[0].numpy(), dc, rtol=1e-10)
    # weighted L2 error of the best degree-L approximation is non-increasing in L
    errs = []
    for deg, p in sorted(projectors.items()):
        r = p.reconstruct(p.project(img, method="lstsq")).numpy()
        errs.append(float((w * (r - img) ** 2).sum()))
    assert all(a >= b - 1e-9 * errs[0] for a, b in zip(errs, errs[1:]))
    assert errs[-1] < errs[0]


def test_projector_validates():
    with pytest.raises(Exception, match="wider"):
        sh.EnvmapProjector(16, 16, 8)
    with pytest.raises(Exception, match="up"):
        sh.EnvmapProjector(16, 32, 2, up="x")
    p = sh.EnvmapProjector(16, 32, 2)
    with pytest.raises(ValueError, match="image"):
        p.project(np.zeros((16, 31, 3)))
    with pytest.raises(Exception, match="method"):
        p.project(np.zeros((16, 32, 3)), method="fft")
    with pytest.raises(ValueError, match="l_max"):
        p.reconstruct(torch.zeros(16, 3))
    # lower-degree coefficients are accepted and zero-padded
    assert p.reconstruct(torch.ones(4)).shape == (16, 32)


def test_load_envmap_formats(tmp_path):
    import imageio.v3 as iio

    g = np.random.default_rng(0)
    hdr = (g.random((8, 16, 3)) * 4).astype(np.float32)
    np.save(tmp_path / "m.npy", hdr)
    assert np.array_equal(sh.load_envmap(tmp_path / "m.npy"), hdr)
    write_rgbe(tmp_path / "m.hdr", hdr)  # a real Radiance RGBE file (RLE scanlines)
    back = sh.load_envmap(tmp_path / "m.hdr")
    assert_rgbe_close(back, hdr)  # RGBE: 8-bit mantissa, shared exponent
    (tmp_path / "bad.hdr").write_bytes(b"not a radiance file\n")
    with pytest.raises(DataError, match=r"bad\.hdr.*not a Radiance"):
        sh.load_envmap(tmp_path / "bad.hdr")
    ldr = (g.random((8, 16, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "m.png", ldr)
    lin = sh.load_envmap(tmp_path / "m.png")
    x = ldr / 255.0
    assert np.allclose(lin, np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4), atol=1e-6)
    (tmp_path / "m.exr").write_bytes(b"not really")
    with pytest.raises(DataError, match=r"m\.exr.*unsupported"):
        sh.load_envmap(tmp_path / "m.exr")
    with pytest.raises(DataError, match="no such file"):
        sh.load_envmap(tmp_path / "missing.npy")
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 2)))
    with pytest.raises(DataError, match=r"bad\.npy.*shape"):
        sh.load_envmap(tmp_path / "bad.npy")
    nan = hdr.copy()
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match="NaN"):
        sh.load_envmap(tmp_path / "nan.npy")
