"""Geodesic and SH tool computations (no browser)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from viewer.camera_path_panel import safe_output_name
from viewer.geodesic_tool import compute_distance, distance_colors, isolines, make_solver, ray_mesh_hit
from viewer.sh_tool import EnvmapSH, basis_values, sample_latlong, signed_colors, sphere


def grid(n=21, size=2.0):
    """Flat n x n grid in the z=0 plane, [-size/2, size/2]^2, two triangles per cell."""
    xs = np.linspace(-size / 2, size / 2, n)
    X, Y = np.meshgrid(xs, xs, indexing="xy")
    V = np.stack([X.ravel(), Y.ravel(), np.zeros(n * n)], 1)
    F = []
    for j in range(n - 1):
        for i in range(n - 1):
            a = j * n + i
            F += [(a, a + 1, a + n + 1), (a, a + n + 1, a + n)]
    return V, np.array(F)


def test_ray_mesh_hit_finds_nearest_triangle():
    V, F = grid()
    hit = ray_mesh_hit((0.31, -0.27, 5.0), (0, 0, -1), V, F)
    assert hit is not None
    f, t, bary = hit
    assert t == pytest.approx(5.0)
    p = (bary[:, None] * V[F[f]]).sum(0)
    assert np.allclose(p, (0.31, -0.27, 0.0), atol=1e-9)
    assert ray_mesh_hit((0.31, -0.27, 5.0), (0, 0, 1), V, F) is None          # pointing away
    assert ray_mesh_hit((5.0, 5.0, 5.0), (0, 0, -1), V, F) is None            # outside the grid
    # two stacked planes: the nearer one wins
    V2 = np.concatenate([V, V + [0, 0, 1.0]])
    F2 = np.concatenate([F, F + len(V)])
    f2, t2, _ = ray_mesh_hit((0.1, 0.1, 5.0), (0, 0, -1), V2, F2)
    assert t2 == pytest.approx(4.0) and f2 >= len(F)


def test_isolines_of_a_linear_field_are_straight_lines():
    V, F = grid(11)
    vals = V[:, 0] + 1.0            # 0..2 along x
    segs = isolines(V, F, vals, spacing=0.5)
    assert len(segs) > 0
    xs = segs[..., 0].ravel() + 1.0
    assert np.allclose(np.sort(np.unique(np.round(xs, 9))), [0.5, 1.0, 1.5])
    with pytest.raises(ValueError):
        isolines(V, F, vals, 0.0)


def test_heat_geodesic_on_a_plane_is_euclidean():
    V, F = grid(31)
    centre = int(np.argmin(np.linalg.norm(V, axis=1)))
    d = compute_distance(make_solver(V, F), [centre])
    exact = np.linalg.norm(V - V[centre], axis=1)
    inner = exact < 0.8
    assert np.abs(d[inner] - exact[inner]).max() < 0.06
    d2 = compute_distance(make_solver(V, F), [0, len(V) - 1])          # two sources: min of both
    assert d2[0] == pytest.approx(0, abs=1e-6) and d2[-1] == pytest.approx(0, abs=1e-6)
    assert d2[centre] == pytest.approx(math.sqrt(2), rel=0.06)
    cols = distance_colors(d, spacing=0.2)
    assert cols.shape == (len(V), 3) and cols.dtype == np.uint8
    assert len(np.unique(cols, axis=0)) > 20                           # a real colour ramp


def test_sh_basis_on_sphere_matches_closed_forms():
    dirs, faces = sphere(2)
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1)
    assert np.allclose(basis_values(dirs, 0, 0), 0.5 / math.sqrt(math.pi))
    assert np.allclose(basis_values(dirs, 1, 0), math.sqrt(3 / (4 * math.pi)) * dirs[:, 2], atol=1e-6)
    assert np.allclose(basis_values(dirs, 1, 1), math.sqrt(3 / (4 * math.pi)) * dirs[:, 0], atol=1e-6)
    y20 = math.sqrt(5 / (16 * math.pi)) * (3 * dirs[:, 2] ** 2 - 1)
    assert np.allclose(basis_values(dirs, 2, 0), y20, atol=1e-6)
    c = signed_colors(basis_values(dirs, 1, 0))
    top, bottom = np.argmax(dirs[:, 2]), np.argmin(dirs[:, 2])
    assert c[top, 0] > c[top, 2] and c[bottom, 2] > c[bottom, 0]      # red up, blue down
    with pytest.raises(ValueError):
        basis_values(dirs, 1, 2)


def test_envmap_reconstruction_and_irradiance():
    H, W = 32, 64
    theta = np.pi * (np.arange(H) + 0.5) / H
    img = np.zeros((H, W, 3), np.float32)
    img[:] = (1.0 + np.cos(theta))[:, None, None]                   # 1 + z: exactly degree 1
    env = EnvmapSH(img, "test", l_max=6)
    dirs, _ = sphere(2)
    rec1 = env.reconstruction(dirs, 1)
    assert np.allclose(rec1, (1 + dirs[:, 2])[:, None], atol=2e-3)
    rec0 = env.reconstruction(dirs, 0)
    assert np.allclose(rec0, 1.0, atol=2e-3)
    # irradiance / pi of L(w) = 1 + z is 1 + (2/3) z (A_0 = pi, A_1 = 2 pi / 3)
    irr = env.irradiance(dirs, 2)
    assert np.allclose(irr, (1 + 2 / 3 * dirs[:, 2])[:, None], atol=3e-3)
    # nearest-pixel lookup: +z is the top row, +x the centre column (Blender lat-long)
    probe = np.zeros((H, W, 3), np.float32)
    probe[0, :, 0] = 1
    probe[H // 2, W // 2, 1] = 1
    s = sample_latlong(probe, np.array([[0, 0, 1.0], [1.0, 0, 0]]))
    assert s[0, 0] == 1 and s[1, 1] == 1


def test_camera_path_file_names_cannot_escape_the_output_folder():
    assert safe_output_name("camera_path.json") == "camera_path.json"
    assert safe_output_name(" orbit-2.json ") == "orbit-2.json"
    for bad in ("../x.json", "/etc/passwd", "a/b.json", ".hidden.json", "x.txt", "", "..json", "a..json"):
        with pytest.raises(ValueError):
            safe_output_name(bad)
