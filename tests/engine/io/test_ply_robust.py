"""Issue 18: bad PLY headers fail fast with one line naming the file; absurd log-scales are clamped;
the one PLY module reads and writes meshes and point clouds."""
from __future__ import annotations

import re
import resource
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import DataError
from engine.io.ply import (LOG_SCALE_LIMIT, read_gaussian_ply, read_ply_header, read_ply_mesh, read_points_ply,
                           write_gaussian_ply, write_ply)
from tests.conftest import REPO


def _gauss_file(tmp_path, n=20, name="g.ply", **over):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    arrs = dict(means=rng.standard_normal((n, 3)).astype(np.float32),
                log_scales=rng.standard_normal((n, 3)).astype(np.float32) - 3, quats=q,
                opacity_logits=rng.standard_normal(n).astype(np.float32),
                sh=rng.standard_normal((n, 1, 3)).astype(np.float32))
    arrs.update(over)
    return write_gaussian_ply(tmp_path / name, **arrs), arrs


def _with_header(tmp_path, src, pattern, repl, name):
    data = src.read_bytes()
    i = data.index(b"end_header\n") + len(b"end_header\n")
    hdr = re.sub(pattern, repl, data[:i].decode())
    out = tmp_path / name
    out.write_bytes(hdr.encode() + data[i:])
    return out


BAD_HEADERS = [
    (r"element vertex \d+", "element vertex abc", r"line \d+: expected 'element NAME COUNT' with a non-negative"),
    (r"element vertex \d+", "element vertex -5", r"line \d+: expected 'element NAME COUNT' with a non-negative"),
    (r"format [^\n]+", "format", r"line \d+: expected 'format ascii\|binary_little_endian\|binary_big_endian 1.0'"),
    (r"format [^\n]+", "format binary_middle_endian 1.0", r"line \d+: expected 'format"),
    (r"element vertex \d+", "element vertex 1000000000000", r"truncated PLY or corrupt header: element 'vertex' "
                                                               r"claims 1000000000000 rows"),
    (r"property float opacity", "property flaot opacity", r"expected 'property TYPE NAME'"),
    (r"end_header\n", "end_headr\n", r"truncated PLY header \(no end_header\)"),
]


@pytest.mark.parametrize("pattern,repl,msg", BAD_HEADERS)
def test_bad_header_is_one_clear_error(tmp_path, pattern, repl, msg):
    src, _ = _gauss_file(tmp_path)
    bad = _with_header(tmp_path, src, pattern, repl, "bad.ply")
    with pytest.raises(DataError, match=msg) as ei:
        read_gaussian_ply(bad)
    assert str(ei.value).startswith(str(bad)) and "\n" not in str(ei.value)


def test_absurd_count_fails_fast_with_bounded_memory(tmp_path):
    src, _ = _gauss_file(tmp_path)
    for fmt in ("binary_little_endian", "ascii"):
        bad = _with_header(tmp_path, src, r"element vertex \d+", "element vertex 1000000000000", f"{fmt}.ply")
        bad = _with_header(tmp_path, bad, r"format \S+", f"format {fmt}", f"{fmt}.ply")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(DataError, match="claims 1000000000000 rows"):
            read_ply_header(bad)
        with pytest.raises(DataError, match="claims 1000000000000 rows"):
            read_ply_mesh(bad)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_absurd_log_scale_rows_dropped_and_reported(tmp_path):
    s = np.full((20, 3), -3.0, np.float32)
    s[2, 0], s[5, 2], s[6, 1], s[7, 0] = 200.0, -500.0, 31.0, 30.0
    p, _ = _gauss_file(tmp_path, log_scales=s)
    with np.errstate(over="raise"):
        g = read_gaussian_ply(p)
        np.exp(g.log_scales)   # no overflow any more
    assert len(g) == 17 and g.log_scales.max() == LOG_SCALE_LIMIT   # 30 itself is kept
    assert any(r.startswith("dropped 3 Gaussians with a log-scale outside [-30, 30] (values -500..200")
               for r in g.repairs), g.repairs


def test_api_load_reports_the_repair_with_the_file_name(tmp_path):
    import engine

    s = np.full((20, 3), -3.0, np.float32)
    s[2, 0] = 200.0
    p, _ = _gauss_file(tmp_path, log_scales=s, name="ls200.ply")
    with np.errstate(over="raise"):
        m = engine.load(p)
    assert any(n.startswith("ls200.ply: dropped 1 Gaussians with a log-scale outside") for n in m.notes), m.notes


def test_far_positions_dropped(tmp_path):
    m = np.zeros((20, 3), np.float32)
    m[4, 1] = 3e38
    p, _ = _gauss_file(tmp_path, means=m)
    g = read_gaussian_ply(p)
    assert len(g) == 19 and any("beyond +-1e+30" in r for r in g.repairs)


def test_empty_vertex_element(tmp_path):
    p = write_ply(tmp_path / "e.ply", {"x": np.zeros(0, np.float32)})
    with pytest.raises(DataError, match="e.ply: not a 3DGS PLY"):
        read_gaussian_ply(p)


def test_mesh_roundtrip_and_polygons(tmp_path):
    V = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    F = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    p = write_ply(tmp_path / "m.ply", {"x": V[:, 0], "y": V[:, 1], "z": V[:, 2]}, faces=F)
    V2, F2 = read_ply_mesh(p)
    np.testing.assert_array_equal(V2, V.astype(np.float64))
    np.testing.assert_array_equal(F2, F)
    # ASCII with a quad and a triangle: fan triangulation in file order
    a = tmp_path / "quad.ply"
    a.write_text("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\nproperty float z\n"
                 "element face 2\nproperty list uchar int vertex_indices\nend_header\n"
                 "0 0 0\n1 0 0\n1 1 0\n0 1 0\n2 2 0\n4 0 1 2 3\n3 1 4 2\n")
    V3, F3 = read_ply_mesh(a)
    assert V3.shape == (5, 3)
    np.testing.assert_array_equal(F3, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    b = tmp_path / "oob.ply"
    b.write_text(a.read_text().replace("3 1 4 2", "3 1 9 2"))
    with pytest.raises(DataError, match="oob.ply: PLY face refers to vertex 9, outside 0..4"):
        read_ply_mesh(b)


def test_points_colours(tmp_path):
    P = np.arange(12, dtype=np.float32).reshape(4, 3)
    c = np.array([0, 51, 255, 102], np.uint8)
    p = write_ply(tmp_path / "p.ply", {"x": P[:, 0], "y": P[:, 1], "z": P[:, 2], "red": c, "green": c, "blue": c})
    pts, cols = read_points_ply(p)
    np.testing.assert_array_equal(pts, P)
    np.testing.assert_allclose(cols[:, 0], c / 255.0)


def test_dataset_points_use_the_one_reader(tmp_path):
    from engine.data.blender import read_ply_points

    bad = tmp_path / "points3d.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 99999999\nproperty float x\nend_header\n1\n")
    with pytest.raises(DataError, match="points3d.ply: truncated PLY or corrupt header"):
        read_ply_points(bad)


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("pattern,repl,msg", BAD_HEADERS[:5])
def test_cli_render_bad_header_exit_2(tmp_path, capsys, pattern, repl, msg):
    from engine.cli import main

    src, _ = _gauss_file(tmp_path)
    bad = _with_header(tmp_path, src, pattern, repl, "bad.ply")
    assert main(["render", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(msg, err) and str(bad) in err and "Traceback" not in err


def test_cli_render_bad_header_subprocess(tmp_path):
    src, _ = _gauss_file(tmp_path)
    bad = _with_header(tmp_path, src, r"element vertex \d+", "element vertex -5", "neg.ply")
    r = _cli("render", bad, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert f"{bad}: PLY header line" in r.stderr and "'element vertex -5'" in r.stderr


def test_cli_render_absurd_log_scale(tmp_path, capsys):
    from engine.cli import main

    s = np.full((20, 3), -3.0, np.float32)
    s[2, 0] = 200.0
    p, _ = _gauss_file(tmp_path, log_scales=s, name="ls200.ply")
    assert main(["render", str(p), "--out", str(tmp_path / "out"), "--max-views", "1", "--size", "16", "12",
                 "--video", "none"]) == 0
    out = capsys.readouterr()
    assert "ls200.ply: dropped 1 Gaussians with a log-scale outside [-30, 30]" in out.out + out.err
