"""Format detection, load_dataset options, the ray sampler and the `kernelight dataset` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cameras import Cameras
from engine.cli import main
from engine.data.dataset import Split, parse_background
from engine.data.detect import detect_format, load_dataset
from engine.data.sampler import RaySampler, gather_rays, iter_images
from engine.errors import ConfigError, DataError


def test_detect_each_real_format(lego_100, fox, beer, dtu):
    assert detect_format(lego_100) == "blender"
    assert detect_format(fox) == "nerfstudio"
    assert detect_format(beer) == "colmap"  # also has poses_bounds.npy: COLMAP wins
    assert detect_format(dtu) == "dtu"      # also has poses_bounds.npy: DTU wins


def test_detect_failures_and_options(tmp_path, lego_100):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: cannot detect the dataset format: looked for "
                       r"transforms_train\.json \(blender\), transforms\.json .*poses_bounds\.npy \(llff\)"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ConfigError, match="unknown dataset format 'nerf'"):
        load_dataset(lego_100, format="nerf")
    with pytest.raises(ConfigError, match="downscale must be a positive integer"):
        load_dataset(lego_100, downscale=1.5)
    with pytest.raises(ConfigError, match="background"):
        parse_background("purple")
    assert parse_background("0,255,0").tolist() == [0.0, 1.0, 0.0]
    assert parse_background("0.5,0.25,1").tolist() == [0.5, 0.25, 1.0]


def test_scene_toml(tmp_path, lego_100):
    toml = tmp_path / "scene.toml"
    toml.write_text(f'[scene]\ndata = "{lego_100}"\n')          # the one scene schema (engine.config)
    assert load_dataset(toml).format == "blender"
    toml.write_text('[scene]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"scene\.toml: \[scene\] needs a 'data' key"):
        load_dataset(toml)
    toml.write_text(f'data = "{lego_100}"\n')                   # a top-level key is not the schema
    with pytest.raises(ConfigError, match=r"scene\.toml: missing \[scene\] table"):
        load_dataset(toml)


def _tiny_split(dist=None):
    g = torch.Generator().manual_seed(0)
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.randn(3, 3, generator=g)
    cams = Cameras(20.0, 21.0, 8.3, 5.9, 16, 12, c2w, dist)
    images = torch.rand(3, 12, 16, 3, generator=g)
    masks = torch.rand(3, 12, 16, generator=g) > 0.5
    return Split("train", cams, images, [], masks, None)


@pytest.mark.parametrize("dist", [None, [0.1, -0.05, 0.001, 0.002, 0.0]])
def test_sampler_targets_and_rays(dist):
    split = _tiny_split(dist)
    s = RaySampler(split, 500, seed=3)
    b = s.sample()
    assert len(b) == 500 and b.origins.shape == (500, 3) and b.rgb.shape == (500, 3)
    u, v = b.pixel[:, 0], b.pixel[:, 1]
    assert (u >= 0).all() and (u < 16).all() and (v >= 0).all() and (v < 12).all()
    assert torch.equal(b.rgb, split.images[b.image_index, v, u])
    assert torch.equal(b.mask, split.masks[b.image_index, v, u])
    for i in range(3):
        o, d = split.cameras.generate_rays(i)
        sel = b.image_index == i
        assert sel.any()
        assert torch.allclose(b.directions[sel], d[v[sel], u[sel]], atol=1e-6)
        assert torch.allclose(b.origins[sel], o[v[sel], u[sel]])
    # reproducible, seed-dependent, resumable
    assert torch.equal(RaySampler(split, 500, seed=3).sample().pixel, b.pixel)
    assert not torch.equal(RaySampler(split, 500, seed=4).sample().pixel, b.pixel)
    state = s.state_dict()
    nxt = s.sample()
    s2 = RaySampler(split, 500, seed=99)
    s2.load_state_dict(state)
    assert torch.equal(s2.sample().pixel, nxt.pixel)
    # the batch size is the new sampler's (a resumed run's --rays-per-batch), not the saved one
    s3 = RaySampler(split, 64, seed=99)
    s3.load_state_dict(state)
    assert len(s3.sample()) == 64


def test_sampler_covers_images_uniformly_and_jitters_inside_pixels():
    split = _tiny_split([0.1, -0.05, 0.001, 0.002, 0.0])
    b = RaySampler(split, 30000, seed=1, jitter=True).sample()
    counts = torch.bincount(b.image_index, minlength=3).float()
    assert float((counts / 10000 - 1).abs().max()) < 0.05
    flat = torch.bincount(b.pixel[:, 1] * 16 + b.pixel[:, 0], minlength=192).float()
    assert float(flat.min()) > 0
    # A point along each jittered ray projects back into that ray's pixel.
    for i in range(3):
        sel = b.image_index == i
        pts = b.origins[sel] + 2.0 * b.directions[sel]
        uv, _ = split.cameras.project(pts.double(), i)
        assert torch.equal(uv.floor().long(), b.pixel[sel])
    fixed = gather_rays(split, torch.tensor([1]), torch.tensor([[3, 4]]))
    assert torch.allclose(fixed.directions[0], split.cameras.generate_rays(1)[1][4, 3], atol=1e-6)
    assert [i for i, *_ in iter_images(split)] == [0, 1, 2]


def test_dataset_command(lego_100, tmp_path, capsys):
    sheet, fr = tmp_path / "sheet.png", tmp_path / "fr.png"
    rc = main(["dataset", str(lego_100), "--json", "--split", "val", "--downscale", "2", "--background", "0,0,255",
               "--contact-sheet", str(sheet), "--frustums", str(fr)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "blender" and out["splits"] == {"val": 100} and out["resolutions"] == ["50x50"]
    assert out["background"] == [0.0, 0.0, 1.0] and out["fx"][0] == pytest.approx(69.4444, rel=1e-4)
    a = np.asarray(Image.open(sheet))
    assert a.ndim == 3 and a.shape[0] > 300 and a.shape[1] > 300
    assert (a.reshape(-1, 3) == [0, 0, 255]).all(1).mean() > 0.05  # the blue background shows
    f = np.asarray(Image.open(fr).convert("RGB"))
    assert f.shape[1] == 2 * f.shape[0] - 40 and (f != 255).any(-1).mean() > 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fr.png", "sheet.png"]  # no temp files left


def test_dataset_command_table_and_errors(dtu, tmp_path, capsys):
    assert main(["dataset", str(dtu)]) == 0
    out = capsys.readouterr().out
    assert "dtu" in out and "train 42, test 7" in out and "400x300" in out
    assert main(["dataset", str(dtu), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "has no split 'val'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "x").mkdir()
    assert main(["dataset", str(tmp_path / "x")]) == 2
    assert "cannot detect the dataset format" in capsys.readouterr().err
