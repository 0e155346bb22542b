"""Shell extraction on analytic SDFs: the shells land at the radii the kernel size implies."""
import math

import numpy as np
import pytest

from engine.geometry import mesh as meshlib
from engine.methods.shells.extract import band_halfwidth, extract_shells_from_grids

N = 72
LO, HI = [-1.0] * 3, [1.0] * 3


def _grid():
    ax = np.linspace(-1, 1, N)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)


def _sphere(R=0.5):
    return np.linalg.norm(_grid(), axis=-1) - R


def _torus(R=0.55, r=0.2):
    X = _grid()
    q = np.sqrt(X[..., 0] ** 2 + X[..., 1] ** 2) - R
    return np.sqrt(q ** 2 + X[..., 2] ** 2) - r


def _extract(f, s, **kw):
    opts = dict(eps=0.01, min_halfwidth=0.0, max_halfwidth=1.0, dilate_voxels=0)
    opts.update(kw)
    return extract_shells_from_grids(f, np.full_like(f, math.log(s)), LO, HI, **opts)


def test_halfwidth_formula_and_clamp():
    h = band_halfwidth(np.log([10.0, 100.0, 1e5]), 0.01, 0.001, 0.3)
    np.testing.assert_allclose(h, [0.3, math.log(400) / 100, 0.001])
    with pytest.raises(ValueError):
        band_halfwidth(np.zeros(2), 1.5, 0, 1)


@pytest.mark.parametrize("s", [60.0, 150.0])
def test_sphere_shells_at_expected_radii(s):
    sh = _extract(_sphere(), s)
    h = math.log(400) / s
    vox = 2 / (N - 1)
    for name, R in (("outer", 0.5 + h), ("inner", 0.5 - h), ("surface", 0.5)):
        v, f = getattr(sh, name)
        r = v.norm(dim=1).numpy()
        assert len(f) > 1000
        assert abs(r.mean() - R) < 0.02 * vox and np.abs(r - R).max() < 0.1 * vox, name
        # closed, outward oriented
        vv, ff = v.numpy(), f.numpy()
        n = np.cross(vv[ff[:, 1]] - vv[ff[:, 0]], vv[ff[:, 2]] - vv[ff[:, 0]])
        assert ((n * vv[ff].mean(1)).sum(1) > 0).all()


def test_torus_shells_at_expected_distance():
    s = 100.0
    sh = _extract(_torus(), s)
    h = math.log(400) / s
    vox = 2 / (N - 1)
    for name, off in (("outer", h), ("inner", -h)):
        v = getattr(sh, name)[0].numpy()
        q = np.sqrt(v[:, 0] ** 2 + v[:, 1] ** 2) - 0.55
        dist = np.sqrt(q ** 2 + v[:, 2] ** 2) - 0.2
        assert np.abs(dist - off).max() < 0.15 * vox, name


def test_band_thicker_than_object_has_no_inner_shell_and_dilation_grows_outer():
    sh = _extract(_sphere(0.1), 20.0, max_halfwidth=0.2)        # h = 0.2 > R
    assert sh.inner[1].shape[0] == 0
    base = _extract(_sphere(), 100.0)
    dil = _extract(_sphere(), 100.0, dilate_voxels=2)
    vox = 2 / (N - 1)
    grow = dil.outer[0].norm(dim=1).mean() - base.outer[0].norm(dim=1).mean()
    shrink = base.inner[0].norm(dim=1).mean() - dil.inner[0].norm(dim=1).mean()
    assert 1.5 * vox < grow < 2.5 * vox and 1.5 * vox < shrink < 2.5 * vox


def test_decimation_reaches_target_and_keeps_radius():
    pytest.importorskip("open3d")
    sh = _extract(_sphere(), 100.0, target_faces=2000)
    for name in ("outer", "inner"):
        v, f = getattr(sh, name)
        assert 1500 <= f.shape[0] <= 2000
    r = sh.outer[0].norm(dim=1).numpy()
    assert abs(r.mean() - (0.5 + math.log(400) / 100)) < 0.01


def test_marching_cubes_empty_and_errors(tmp_path):
    v, f = meshlib.marching_cubes(np.ones((4, 4, 4)), 0.0, LO, HI)
    assert v.shape == (0, 3) and f.shape == (0, 3)
    with pytest.raises(ValueError, match="3-D"):
        meshlib.marching_cubes(np.ones((4, 4)), 0.0, LO, HI)
    sh = _extract(_sphere(), 100.0)
    from engine.methods.shells.extract import write_shells
    paths = write_shells(sh, tmp_path / "exp")
    import trimesh
    m = trimesh.load(paths[0])
    assert [p.name for p in paths] == ["outer.ply", "inner.ply", "surface.ply"]
    assert len(m.faces) == sh.outer[1].shape[0] and m.is_watertight
