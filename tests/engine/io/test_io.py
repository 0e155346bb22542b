import os

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, ConfigError, DataError
from engine.io.atomic import atomic_path, atomic_write_text
from engine.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, checkpoint_name
from engine.io.images import read_image, write_image, write_video


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind


def test_image_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((7, 9, 3)).astype(np.float32)
    write_image(tmp_path / "x.png", img)
    back = read_image(tmp_path / "x.png")
    assert back.shape == (7, 9, 3) and np.abs(back - img).max() <= 0.5 / 255 + 1e-6
    write_image(tmp_path / "x.npy", torch.from_numpy(img))
    np.testing.assert_array_equal(read_image(tmp_path / "x.npy"), img)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png"):
        read_image(tmp_path / "bad.png")


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_video(tmp_path, ext):
    frames = [np.full((33, 35, 3), i / 10, np.float32) for i in range(10)]
    p = write_video(tmp_path / f"v{ext}", frames, fps=10)
    assert p.exists() and p.stat().st_size > 100
    import imageio.v3 as iio

    n = sum(1 for _ in iio.imiter(p))
    assert n == 10


def test_checkpoint_roundtrip_and_errors(tmp_path):
    d = tmp_path / "checkpoints"
    for s in (5, 100, 20):
        save_checkpoint(d / checkpoint_name(s), {"model": {"w": torch.ones(3) * s}}, method="raygauss", step=s)
    ck = latest_checkpoint(d)
    assert ck.name == "step-000100.pt"
    data = load_checkpoint(ck, method="raygauss")
    assert data["step"] == 100 and torch.equal(data["model"]["w"], torch.full((3,), 100.0))
    with pytest.raises(CheckpointError, match="from method 'raygauss', not 'shells'"):
        load_checkpoint(ck, method="shells")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a kernelight checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "trunc.pt").write_bytes(ck.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_checkpoint_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "kernelight-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_scene_config(tmp_path):
    from engine.config import load_scene

    (tmp_path / "d").mkdir()
    p = tmp_path / "s.toml"
    p.write_text('[scene]\ndata = "d"\nbackground = "0,0.5,1"\n[method]\nname = "raygauss"\n'
                 '[method.options]\nmax_steps = 7\n')
    sc = load_scene(p)
    assert sc.data == (tmp_path / "d").resolve() and sc.background == (0.0, 0.5, 1.0)
    assert sc.method == "raygauss" and sc.method_options == {"max_steps": 7} and sc.name == "d"
    p.write_text('[scene]\ndata = "d"\ncolour = 1\n')
    with pytest.raises(ConfigError, match="unknown key.*colour"):
        load_scene(p)
    p.write_text('[scene\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scene(p)
    p.write_text('[scene]\ndata = "d"\nbackground = "pink"\n')
    with pytest.raises(ConfigError, match="background"):
        load_scene(p)


def test_bundled_scene_config_points_at_bundled_data():
    from pathlib import Path

    from engine.config import load_scene

    sc = load_scene(Path(__file__).resolve().parents[3] / "scenes" / "mic.toml")
    assert (sc.data / "transforms_train.json").is_file() and sc.method == "raygauss"
