"""How sharp is a render? PSNR of a dataset's test images against themselves blurred by a Gaussian.

A method's test PSNR can be read as "as close to the ground truth as the ground truth blurred by
sigma pixels": on lego_100, sigma 0.5 px scores about 34 dB and 1.0 px about 25 dB (session 20).
This gives a scale for the gap between two methods' scores::

    python tools/blur_reference.py --data ../shared/data/nerf_synthetic/lego_100 --sigmas 0.3 0.5 0.7 1.0

Edges are padded by replication; the blur is separable (radius 3 sigma, at least 1 pixel). Mean
PSNR over ``--views`` evenly spaced test views (0 = all). Writes ``--out`` (JSON) when given.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gaussian_blur(img, sigma: float):
    """``img (C, H, W)`` blurred by a separable Gaussian of ``sigma`` pixels (replicated edges); the
    kernel is :func:`engine.train.metrics._gauss_1d`, SSIM's window, at radius ``ceil(3 sigma)``."""
    import torch.nn.functional as Fn

    from engine.train.metrics import _gauss_1d

    r = max(1, int(math.ceil(3 * sigma)))
    k = _gauss_1d(2 * r + 1, float(sigma), img.dtype)
    g = img[:, None]
    g = Fn.conv2d(Fn.pad(g, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    g = Fn.conv2d(Fn.pad(g, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return g[:, 0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (its test split is used)")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0.3, 0.5, 0.7, 1.0], help="blur widths in pixels")
    ap.add_argument("--views", type=int, default=0, help="evenly spaced test views (0 = all)")
    ap.add_argument("--out", default=None, help="JSON")
    a = ap.parse_args(argv)
    bad = [s for s in a.sigmas if not s > 0]
    if bad:
        print(f"error: --sigmas must be > 0, got {bad[0]}", file=sys.stderr)
        return 2
    import torch

    import engine
    from engine.errors import KernelightError
    from engine.train.metrics import psnr

    try:
        ds = engine.load_dataset(a.data)
    except KernelightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = ds.splits.get("test") or ds.splits["train"]
    n = len(split.cameras)
    idx = list(range(n)) if a.views <= 0 or a.views >= n else torch.linspace(0, n - 1, a.views).round().long().tolist()
    res = {}
    for s in a.sigmas:
        ps = []
        for i in idx:
            gt = split.images[i][..., :3].permute(2, 0, 1).float()
            ps.append(float(psnr(gaussian_blur(gt, s).permute(1, 2, 0), gt.permute(1, 2, 0))))
        res[str(s)] = sum(ps) / len(ps)
        print(f"sigma {s:g} px: {res[str(s)]:.2f} dB ({len(idx)} views)")
    if a.out:
        from engine.io.atomic import atomic_write_text

        atomic_write_text(a.out, json.dumps({"data": str(a.data), "views": len(idx), "psnr_by_sigma": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
