"""The generator shipped inside the package works with no training (issue: "works out of the box")."""
import pytest
import torch

from engine.generate import DEFAULT_WEIGHTS


pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_generator_generates_a_held_out_caption(tmp_path):
    import engine
    from engine.io.checkpoint import load_checkpoint
    from engine.io.ply import read_gaussian_ply

    assert DEFAULT_WEIGHTS.is_file(), f"{DEFAULT_WEIGHTS} is missing from the package"
    assert DEFAULT_WEIGHTS.stat().st_size < 12e6
    meta = load_checkpoint(DEFAULT_WEIGHTS)["model"]["meta"]
    assert meta["N"] == 16 and "a small red torus" in meta["heldout_captions"]
    assert not any("red torus" in c for c in meta["train_captions"])   # held out of its training
    g = engine.generate("a red torus", seed=0, steps=20, out=tmp_path / "t.ply")
    assert g.unknown_words == [] and g.grid.shape == (16, 16, 16, 14)
    n = len(read_gaussian_ply(tmp_path / "t.ply"))
    assert 100 < n < 16 ** 3
    rgb = torch.sigmoid(g.grid[..., 13]) > 0.3
    colour = (0.28209479177387814 * g.grid[rgb][:, 3:6] + 0.5).mean(0)
    assert colour[0] > colour[1] + 0.2 and colour[0] > colour[2] + 0.2   # red, even though never trained on
