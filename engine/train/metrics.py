"""Image quality metrics: PSNR, SSIM (11x11 Gaussian window, sigma 1.5), LPIPS when available.

Images are float tensors in [0, 1], shape (H, W, C) or (B, H, W, C) (channels last, the engine's
convention) — or numpy arrays of those shapes.

SSIM follows Wang et al. 2004 with the settings used by the NeRF / 3DGS literature and by
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)``: an 11x11 normalised Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, statistics computed per channel, and the mean of the SSIM map over the
"valid" region (pixels at least 5 from the border), averaged over channels. ``padding="same"``
(zero padding, as 3DGS's training loss does) is available for a differentiable D-SSIM loss over
the whole image.

LPIPS needs pretrained network weights. kernelight never downloads at run time, so
:func:`lpips` returns ``None`` (and :func:`lpips_status` says why) unless the ``lpips`` package
and its backbone weights are already present on this machine. A made-up value is never reported.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03



def composite_on_background(rgb: torch.Tensor, mask: torch.Tensor, background) -> torch.Tensor:
    """``rgb (..., 3)`` inside ``mask (...)`` (bool or [0, 1]) and ``background (3,)`` outside it: the
    target of methods that model a masked object only (DTU), in training and evaluation."""
    m = mask.to(rgb.device, rgb.dtype)[..., None]
    return rgb * m + torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device) * (1 - m)


def _as_bhwc(img) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(img) if not torch.is_tensor(img) else img)
    if not t.is_floating_point():
        raise TypeError(f"metrics expect float images in [0, 1], got dtype {t.dtype}")
    if t.dim() == 2:
        t = t[..., None]
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"expected an image (H,W[,C]) or a batch (B,H,W,C), got shape {tuple(t.shape)}")
    return t


def _check_pair(a, b):
    a, b = _as_bhwc(a), _as_bhwc(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def mse(a, b) -> torch.Tensor:
    """Mean squared error per image, shape (B,)."""
    a, b = _check_pair(a, b)
    return ((a - b) ** 2).flatten(1).mean(1)


def psnr(a, b, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image, shape (B,) (a scalar tensor for a single image).

    ``10 log10(data_range^2 / MSE)``; identical images give ``inf``.
    """
    single = _as_bhwc(a).shape[0] == 1 and (torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a).dim() <= 3
    m = mse(a, b)
    out = 10.0 * torch.log10(data_range**2 / m)
    return out[0] if single else out


@lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def ssim_map(a, b, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """Per-pixel SSIM map, shape (B, C, H', W'); H' = H - 10 for ``valid``, H for ``same``.

    Differentiable (plain torch ops), any float dtype.
    """
    a, b = _check_pair(a, b)
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    B, C, H, W = x.shape
    if padding == "valid" and (H < SSIM_WINDOW or W < SSIM_WINDOW):
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    g = _gauss_1d(SSIM_WINDOW, SSIM_SIGMA, x.dtype).to(x.device)
    pad = SSIM_WINDOW // 2 if padding == "same" else 0

    def blur(z):  # separable Gaussian filter, per channel
        z = z.reshape(B * C, 1, z.shape[-2], z.shape[-1])
        z = F.conv2d(z, g.view(1, 1, -1, 1), padding=(pad, 0))
        z = F.conv2d(z, g.view(1, 1, 1, -1), padding=(0, pad))
        return z.reshape(B, C, z.shape[-2], z.shape[-1])

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def ssim(a, b, data_range: float = 1.0, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM per image, shape (B,) (a scalar for a single (H,W,C) image)."""
    single = (a.dim() if torch.is_tensor(a) else np.ndim(a)) <= 3
    m = ssim_map(a, b, data_range, padding).flatten(1).mean(1)
    return m[0] if single else m


def dssim_loss(pred, target, padding: str = "same") -> torch.Tensor:
    """Structural dissimilarity loss ``1 - SSIM`` averaged over the batch (differentiable)."""
    return 1.0 - ssim_map(pred, target, 1.0, padding).mean()


# ---------------------------------------------------------------------------------------- LPIPS

_LPIPS_CACHE: dict = {}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can be computed offline here, and why not if it cannot."""
    try:
        import lpips as _lpips  # noqa: F401
    except ImportError:
        return False, "the 'lpips' package is not installed (pip install lpips; weights must be present offline)"
    hub = torch.hub.get_dir()
    import glob
    import os

    pattern = {"alex": "alexnet-*.pth", "vgg": "vgg16-*.pth", "squeeze": "squeezenet1_1-*.pth"}[net]
    if not glob.glob(os.path.join(hub, "checkpoints", pattern)):
        return False, f"backbone weights {pattern} not found in {hub}/checkpoints (no downloads at run time)"
    return True, "available"


def lpips(a, b, net: str = "alex"):
    """LPIPS per image (B,), or ``None`` when weights are not available offline."""
    ok, _ = lpips_status(net)
    if not ok:
        return None
    import lpips as _lpips

    if net not in _LPIPS_CACHE:
        _LPIPS_CACHE[net] = _lpips.LPIPS(net=net, verbose=False).eval()
    model = _LPIPS_CACHE[net]
    a, b = _check_pair(a, b)
    with torch.no_grad():
        x = a.permute(0, 3, 1, 2).float() * 2 - 1
        y = b.permute(0, 3, 1, 2).float() * 2 - 1
        return model(x, y).flatten()


def summarize(values) -> dict:
    """Mean and (population) std of a list of floats, ignoring None; {} when empty."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}
