"""Fuzzed PLY reader (3DGS and mesh): mutated real files give a DataError or a stated repair, never
another exception, and never allocate from an absurd header (peak memory bounded by the file)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.io.ply import read_gaussian_ply, read_ply_mesh, read_points_ply, write_gaussian_ply
from tests.conftest import require
from tests.engine.io.fuzz_util import expect_contract, fuzz_settings, mutated_bytes

LIMIT = 64 << 20   # bytes a parse may allocate for these < 100 KB files


@pytest.fixture(scope="module")
def gauss_seed(shared_data, tmp_path_factory):
    """The first 64 Gaussians of the real SH-degree-3 file, binary, and an ASCII copy of 8 of them."""
    g = read_gaussian_ply(require(shared_data / "gaussians" / "kacytran_try_iter7000_sh3.ply"))
    d = tmp_path_factory.mktemp("ply")
    p = write_gaussian_ply(d / "g.ply", g.means[:64], g.log_scales[:64], g.quats[:64], g.opacity_logits[:64],
                           g.sh[:64])
    raw = p.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    names = [ln.split()[-1] for ln in raw[:end].decode().splitlines() if ln.startswith("property")]
    rows = np.frombuffer(raw[end:], dtype="<f4").reshape(64, len(names))[:8]
    ascii_ = raw[:end].decode().replace("binary_little_endian", "ascii").replace("vertex 64", "vertex 8")
    ascii_ += "".join(" ".join(f"{v:.6g}" for v in r) + "\n" for r in rows)
    return raw, end, ascii_.encode(), ascii_.index("end_header")


@pytest.fixture(scope="module")
def mesh_seed(shared_data):
    raw = require(shared_data / "meshes" / "bunny_small.ply").read_bytes()
    return raw, raw.index(b"end_header") + 11


def _check_gauss(path):
    g = expect_contract(lambda: read_gaussian_ply(path), max_bytes=LIMIT)
    if g is not None:   # a parse that succeeds is consistent
        n = len(g)
        assert n > 0 and g.means.shape == (n, 3) and g.sh.shape[0] == n and g.sh.shape[2] == 3
        assert np.isfinite(g.means).all() and np.isfinite(g.log_scales).all() and np.abs(g.log_scales).max() <= 30
        assert np.allclose(np.linalg.norm(g.quats, axis=1), 1, atol=1e-3)


@pytest.mark.timeout(120)
def test_fuzz_gaussian_ply_binary(gauss_seed, tmp_path):
    raw, end, _, _ = gauss_seed
    p = tmp_path / "f.ply"

    @fuzz_settings(150)
    @given(mutated_bytes(raw, hot=end))
    def run(data):
        p.write_bytes(data)
        _check_gauss(p)

    run()


@pytest.mark.timeout(120)
def test_fuzz_gaussian_ply_ascii(gauss_seed, tmp_path):
    _, _, raw, end = gauss_seed
    p = tmp_path / "f.ply"

    @fuzz_settings(80)
    @given(mutated_bytes(raw, hot=end))
    def run(data):
        p.write_bytes(data)
        _check_gauss(p)

    run()


@pytest.mark.timeout(120)
def test_fuzz_mesh_ply(mesh_seed, tmp_path):
    raw, end = mesh_seed
    p = tmp_path / "m.ply"

    @fuzz_settings(120)
    @given(mutated_bytes(raw, hot=end))
    def run(data):
        p.write_bytes(data)
        out = expect_contract(lambda: read_ply_mesh(p), max_bytes=LIMIT)
        if out is not None:
            V, F = out
            assert V.ndim == 2 and V.shape[1] == 3 and len(V) > 0
            assert F is None or (F.ndim == 2 and F.shape[1] == 3 and F.min() >= 0 and F.max() < len(V))
        expect_contract(lambda: read_points_ply(p), max_bytes=LIMIT)

    run()


@pytest.mark.timeout(60)
def test_fuzz_random_headers(tmp_path):
    """Headers assembled from random lines (counts, types, formats) over a short random body."""
    p = tmp_path / "h.ply"
    line = st.one_of(
        st.builds(lambda n, c: f"element {n} {c}", st.sampled_from(["vertex", "face", "x"]),
                  st.one_of(st.integers(-5, 10**13), st.text(max_size=4))),
        st.builds(lambda t, n: f"property {t} {n}", st.sampled_from(["float", "uchar", "double", "int", "flaot", ""]),
                  st.sampled_from(["x", "y", "z", "f_dc_0", "opacity", "x"])),
        st.builds(lambda a, b, n: f"property list {a} {b} {n}", st.sampled_from(["uchar", "int", "float"]),
                  st.sampled_from(["int", "uint", "float"]), st.sampled_from(["vertex_indices", "vertex_index"])),
        st.sampled_from(["format ascii 1.0", "format binary_little_endian 1.0", "format binary_big_endian 1.0",
                         "format", "format ascii", "comment hi", "obj_info x", "bogus line", ""]))

    @fuzz_settings(150)
    @given(st.lists(line, max_size=10), st.binary(max_size=200))
    def run(lines, body):
        p.write_bytes(("ply\n" + "\n".join(lines) + "\nend_header\n").encode() + body)
        expect_contract(lambda: read_ply_mesh(p), max_bytes=LIMIT)
        expect_contract(lambda: read_gaussian_ply(p), max_bytes=LIMIT)

    run()
