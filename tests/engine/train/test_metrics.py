import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine.train import metrics


def _pair(seed=0, h=37, w=53, c=3):
    rng = np.random.default_rng(seed)
    a = rng.random((h, w, c))
    # correlated target: blurred structure plus noise, so SSIM is in an interesting range
    b = np.clip(0.7 * a + 0.3 * np.roll(a, 3, axis=1) + 0.05 * rng.standard_normal(a.shape), 0, 1)
    return a, b


def test_psnr_matches_skimage():
    a, b = _pair()
    ours = metrics.psnr(torch.tensor(a), torch.tensor(b)).item()
    ref = peak_signal_noise_ratio(a, b, data_range=1.0)
    assert ours == pytest.approx(ref, rel=1e-12)


def test_psnr_identical_is_inf_and_batch_shape():
    a, _ = _pair()
    t = torch.tensor(a)
    assert math.isinf(metrics.psnr(t, t).item())
    batch = torch.stack([t, t * 0.5])
    out = metrics.psnr(batch, batch * 0.9)
    assert out.shape == (2,)


@pytest.mark.parametrize("seed,shape", [(0, (37, 53, 3)), (1, (100, 100, 3)), (2, (64, 40, 1))])
def test_ssim_matches_skimage(seed, shape):
    a, b = _pair(seed, *shape)
    ours = metrics.ssim(torch.tensor(a), torch.tensor(b)).item()
    ref = structural_similarity(
        a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    assert ours == pytest.approx(ref, abs=1e-10)


def test_ssim_float32_close_and_differentiable():
    a, b = _pair(3)
    pa = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    loss = metrics.dssim_loss(pa, torch.tensor(b, dtype=torch.float32))
    loss.backward()
    assert torch.isfinite(pa.grad).all() and pa.grad.abs().sum() > 0
    ref = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert metrics.ssim(pa.detach(), torch.tensor(b, dtype=torch.float32)).item() == pytest.approx(ref, abs=1e-5)


def test_ssim_gradcheck_float64():
    rng = np.random.default_rng(4)
    a = torch.tensor(rng.random((12, 13, 2)), requires_grad=True)
    b = torch.tensor(rng.random((12, 13, 2)))
    assert torch.autograd.gradcheck(lambda x: metrics.ssim_map(x, b, padding="same").sum(), (a,))


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))


def test_lpips_never_made_up():
    ok, why = metrics.lpips_status()
    a, b = _pair()
    val = metrics.lpips(torch.tensor(a), torch.tensor(b))
    if ok:
        assert val is not None and torch.isfinite(val).all()
    else:
        assert val is None and why
