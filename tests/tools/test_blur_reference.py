"""tools/blur_reference.py: the Gaussian blur against scipy's, and its bad input."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import blur_reference  # noqa: E402


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_matches_scipy(sigma):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    img = rng.random((3, 17, 23))
    ours = blur_reference.gaussian_blur(torch.as_tensor(img), sigma).numpy()
    # scipy's radius is int(truncate * sigma + 0.5): truncate 3 gives ours, ceil(3 sigma), for these sigmas
    ref = np.stack([gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in img])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_blur_keeps_constant_and_mass():
    c = torch.full((3, 9, 9), 0.25, dtype=torch.float64)
    assert torch.allclose(blur_reference.gaussian_blur(c, 1.3), c)
    imp = torch.zeros(1, 21, 21, dtype=torch.float64)
    imp[0, 10, 10] = 1
    b = blur_reference.gaussian_blur(imp, 1.0)
    assert float(b.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(b[0, 10, 10]) < 0.2 and float(b[0, 10, 11]) == pytest.approx(float(b[0, 11, 10]))


def test_bad_input_is_one_line(tmp_path, capsys):
    assert blur_reference.main(["--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1
    assert blur_reference.main(["--data", str(tmp_path / "missing"), "--sigmas", "0.5", "0"]) == 2
    err = capsys.readouterr().err
    assert "--sigmas" in err and err.count("\n") == 1
