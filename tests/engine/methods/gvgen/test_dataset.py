"""The GVGEN training set (engine/methods/gvgen/{primitives,data_render,dataset}.py, kernelight gvgen dataset)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, DataError, KernelightError
from engine.methods.gvgen import data_render as R
from engine.methods.gvgen import dataset as D
from engine.methods.gvgen import primitives as P
from engine.methods.gvgen import text as T

BOX = np.array(D.BOX)


@pytest.mark.parametrize("shape", list(P.PRIMITIVES))
def test_primitives_normalised_into_the_box(shape):
    for size, frac in P.SIZES.items():
        m = P.normalised_mesh(shape, size, BOX)
        lo, hi = m.bounds
        assert np.allclose((lo + hi) / 2, 0, atol=1e-6)
        assert math.isclose(float((hi - lo).max()), frac, rel_tol=1e-6)
        assert len(m.faces) > 0 and np.isfinite(m.vertex_normals).all()


def test_captions_and_heldout_file(tmp_path):
    caps = P.captions("torus", "red", "small")
    assert caps[0] == "a small red torus" and "a red torus" in caps and "a red donut" in caps
    assert len(caps) == len(set(caps))
    pairs = P.parse_heldout(P.DEFAULT_HELDOUT)
    assert ("red", "torus") in pairs and len(pairs) >= 5
    f = tmp_path / "held.txt"
    f.write_text("# comment\na Blue cone\n\nsmall green box  # trailing\nblue cone\n")
    assert P.parse_heldout(f) == [("blue", "cone"), ("green", "box")]
    f.write_text("red teapot\n")
    with pytest.raises(DataError, match="line 1"):
        P.parse_heldout(f)


def test_sphere_render_matches_the_analytic_silhouette_and_lambert_shading():
    """A sphere seen from distance d covers a disc of angular radius asin(r/d); the pixel at the
    image centre sees the point whose normal faces the camera, shaded ambient + key + fill."""
    mesh = P.normalised_mesh("sphere", "large", BOX)
    r = P.SIZES["large"] / 2
    c2w, fov = R.camera_rig(BOX, 3, 0.0)
    size = 96
    img = R.render_rgba(mesh, (0.8, 0.4, 0.2), c2w, fov, size, supersample=2)
    for k in range(3):
        d = float(np.linalg.norm(c2w[k, :3, 3]))
        focal = 0.5 * size / math.tan(fov / 2)
        disc = math.pi * (focal * math.tan(math.asin(r / d))) ** 2
        assert abs(img[k, ..., 3].sum() / disc - 1) < 0.03   # icosphere (subdivision 3) vs the true sphere
        n = c2w[k, :3, 3] / d       # the normal at the point the centre ray hits
        shade = R.AMBIENT + sum(i * max(0.0, float(n @ (np.array(l) / np.linalg.norm(l)))) for i, l in (R.KEY, R.FILL))
        want = np.clip(np.array([0.8, 0.4, 0.2]) * shade, 0, 1)
        c = img[k, size // 2 - 1:size // 2 + 1, size // 2 - 1:size // 2 + 1, :3].mean((0, 1))
        assert np.abs(c - want).max() < 0.02
    assert set(np.unique(img[..., 3])) <= {i / 4 for i in range(5)}     # coverage of 2x2 sub-pixels
    assert (img[0, 0, 0] == 0).all()                                    # corners see nothing


def test_gdf_from_grid_counts_only_the_gaussians_asked_for():
    n, box = 3, torch.tensor(D.BOX)
    g = torch.zeros(n, n, n, 14)
    g[..., 13] = -10.0                                   # free slots
    g[0, 0, 0, 13], g[0, 0, 0, :3] = 3.0, torch.tensor([0.1, 0.0, 0.0])   # opaque, centre (-0.4, -0.5, -0.5)
    g[2, 2, 2, 13] = math.log(1e-4 / (1 - 1e-4))          # re-activated (opacity 1e-4) at (0.5, 0.5, 0.5)
    from engine.methods.gvolume.model import grid_points

    p = grid_points(box, n)
    d_op = (p - torch.tensor([-0.4, -0.5, -0.5])).norm(dim=1)
    d_re = (p - torch.tensor([0.5, 0.5, 0.5])).norm(dim=1)
    assert torch.allclose(D.gdf_from_grid(g, box).reshape(-1), d_op, atol=1e-6)
    assert torch.allclose(D.gdf_from_grid(g, box, 0.0).reshape(-1), torch.minimum(d_op, d_re), atol=1e-6)
    g[0, 0, 0, 13] = -10.0
    assert torch.isinf(D.gdf_from_grid(g, box)).all()


def _opts(**kw):
    base = dict(N=6, image_size=16, views_train=4, views_test=2, supersample=1, steps=12,
                shapes=["sphere", "torus"], colours=["red"], sizes=["large"], heldout=[["red", "torus"]])
    base.update(kw)
    return D.BuildOptions(**base)


class _WordCount(T.TextEncoder):
    """A stand-in encoder (the MiniLM one is tested in test_text.py): word lengths."""
    name, dim = "wordcount", 4

    def _encode_batch(self, caps):
        L = max(len(c.split()) for c in caps)
        tok, mask = torch.zeros(len(caps), L, 4), torch.zeros(len(caps), L, dtype=torch.bool)
        for i, c in enumerate(caps):
            for j, w in enumerate(c.split()):
                tok[i, j, 0], mask[i, j] = len(w), True
        return torch.nn.functional.normalize(tok.sum(1) + 1, dim=-1), tok, mask


def test_build_resume_and_bad_folders(tmp_path, monkeypatch):
    monkeypatch.setitem(T.ENCODERS, "wordcount", _WordCount)
    out = tmp_path / "ds"
    s = D.build(out, _opts(), workers=1, progress=False, encoder="wordcount")
    assert (s["built"], s["skipped"], s["failed"], s["pending"]) == (2, 0, [], 0)
    caps = {c for o in json.loads((out / "dataset.json").read_text())["objects"] for c in o["captions"]}
    assert s["captions_encoded"] == len(caps) > 2
    cached = torch.load(out / "text_cache.pt", weights_only=True)["encoders"]["wordcount"]
    assert set(cached) == caps
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["format"] == "kernelight-gvgen" and doc["N"] == 6 and doc["box"] == D.BOX
    assert doc["views"] == {"train": 4, "test": 2} and doc["heldout"] == [["red", "torus"]]
    by = {o["id"]: o for o in doc["objects"]}
    assert by["torus-red-large"]["split"] == "heldout" and by["sphere-red-large"]["split"] == "train"
    assert by["sphere-red-large"]["caption"] == "a large red sphere" and all(o["status"] == "done" for o in by.values())
    # each object is a Blender-format dataset the engine reads
    from engine.data import blender

    ds = blender.load(out / "objects" / "sphere-red-large")
    assert len(ds.splits["train"].cameras) == 4 and ds.splits["test"].images[0].shape == (16, 16, 3)
    v = D.read_volume(out / "objects" / "sphere-red-large" / "volume.pt")
    g, gdf = v["grid"], v["gdf"]
    assert g.shape == (6, 6, 6, 14) and g.dtype == torch.float32 and gdf.shape == (6, 6, 6)
    assert torch.allclose(g[..., 9:13].norm(dim=-1)[g[..., 13] != -10], torch.ones(()), atol=1e-5)
    # the GDF is the distance from each grid point to the nearest active Gaussian centre
    from engine.methods.gvolume.model import grid_points

    anchors = grid_points(torch.tensor(D.BOX), 6)
    flat = g.reshape(-1, 14)
    active = flat[:, 13] != -10
    centres = anchors[active] + flat[active, :3]
    ref = torch.cdist(anchors.double(), centres.double()).min(1).values.reshape(6, 6, 6).float()
    assert torch.allclose(gdf, ref, atol=1e-5)
    assert torch.allclose(D.gdf_from_grid(g, v["box"], 0.0), gdf, atol=1e-5)
    op = torch.sigmoid(flat[:, 13]) >= D.OPAQUE
    ref_op = torch.cdist(anchors.double(), (anchors[op] + flat[op, :3]).double()).min(1).values.reshape(6, 6, 6)
    assert torch.allclose(v["gdf_opaque"], ref_op.float(), atol=1e-5)
    assert torch.allclose(D.gdf_from_grid(g, v["box"]), v["gdf_opaque"], atol=1e-5)
    assert math.isfinite(v["psnr"]) and v["fit_seconds"] > 0
    # the grid alone renders the fitted test PSNR (nothing of the volume is lost in volume.pt)
    vol = D.volume_from_grid(g, v["box"])
    t = ds.splits["test"]
    with torch.no_grad():
        ps = [float(-10 * torch.log10(((vol.render_camera(t.cameras, i, ds.background)["rgb"] - t.images[i]) ** 2)
                                       .mean())) for i in range(len(t.cameras))]
    assert abs(np.mean(ps) - v["psnr"]) < 1e-3

    # resume: a finished object is skipped, a lost volume.pt and a half-written folder are rebuilt
    (out / "objects" / "torus-red-large" / "volume.pt").unlink()
    (out / "objects" / "torus-red-large" / "train" / "r_0.png").write_bytes(b"half")
    before = (out / "objects" / "sphere-red-large" / "volume.pt").stat().st_mtime_ns
    notes = D.open_dataset(out, _opts())[1]
    assert any("torus-red-large" in n for n in notes)
    s2 = D.build(out, _opts(), workers=1, progress=False, encoder=None)
    assert (s2["built"], s2["skipped"], s2["pending"]) == (1, 1, 0)
    assert (out / "objects" / "sphere-red-large" / "volume.pt").stat().st_mtime_ns == before
    D.read_volume(out / "objects" / "torus-red-large" / "volume.pt")
    # a larger set grows the same folder (limit=0: only plan it); a smaller one keeps what is finished
    s3 = D.build(out, _opts(shapes=["sphere", "torus", "cone"]), progress=False, limit=0, encoder=None)
    assert (s3["built"], s3["skipped"], s3["pending"], s3["total"]) == (0, 2, 1, 3)
    doc, notes = D.open_dataset(out, _opts(shapes=["sphere"]))
    assert [o["id"] for o in doc["objects"]] == ["sphere-red-large", "torus-red-large"]
    assert any("cone-red-large" in n and "left out" in n for n in notes)
    # other data-defining options are refused
    with pytest.raises(ConfigError, match="N=6"):
        D.open_dataset(out, _opts(N=8))
    # not a GVGEN dataset
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a GVGEN dataset folder"):
        D.build(other, _opts(), progress=False)
    (other / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a GVGEN dataset"):
        D.build(other, _opts(), progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from engine.cli import main

    d = tmp_path / "x"
    d.mkdir()
    (d / "a").write_text("1")
    assert main(["gvgen", "dataset", "--out", str(d), "--no-progress", "--encoder", "none"]) == 2
    assert "not a GVGEN dataset folder" in capsys.readouterr().err
    assert main(["gvgen", "dataset", "--out", str(tmp_path / "y"), "--shapes", "teapot"]) == 2
    assert "unknown shape(s) teapot" in capsys.readouterr().err
    assert main(["gvgen", "dataset", "--out", str(tmp_path / "y"), "--heldout", str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(KernelightError):
        _opts(steps=0).validate()
    with pytest.raises(DataError, match="spot.obj"):
        _opts(shapes=["cow"], meshes_dir=str(tmp_path)).validate()
    assert _opts(colours=["red", "blue"]).heldout_warnings() == []
    assert _opts(shapes=["torus", "sphere"], colours=["red"], heldout=[["red", "torus"]]).heldout_warnings() == \
        ["held-out pair 'red torus': no training object is a torus"]
