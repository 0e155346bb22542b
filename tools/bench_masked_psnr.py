"""Score trained runs of any methods on one dataset's test views with the same three metrics, so
that methods which evaluate differently can be compared side by side (e.g. shells, which evaluate
DTU inside its masks, beside RayGauss, which fits the whole photo):

* ``psnr_full``: the whole image against the photo;
* ``psnr_composite``: the whole image against the photo inside the mask and the background colour
  outside (what ``kernelight eval`` reports for a method with ``masked_eval``);
* ``psnr_in_mask``: the squared error over the pixels inside the mask only (the DTU convention of
  NeuS and IDR), the one metric that does not depend on what a method renders outside the object.

Without masks only ``psnr_full`` is reported. SSIM of the whole image beside it.

    python tools/bench_masked_psnr.py --data ../shared/data/dtu/scan24_400 \\
        shells=outputs/scan24_400/shells/RUN raygauss=outputs/scan24_400/raygauss/RUN --out result.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def score(model, split, background, views=None) -> dict:
    """Mean metrics over ``views`` (indices; default all) of ``split``; see the module docstring."""
    import torch

    from engine.train import metrics

    n = len(split.cameras)
    idx = list(range(n)) if views is None else views
    bg = torch.as_tensor(background, dtype=torch.float32)
    acc = {"psnr_full": [], "ssim_full": [], "psnr_composite": [], "psnr_in_mask": []}
    t0 = time.perf_counter()
    for i in idx:
        with torch.no_grad():
            out = model.render(split.cameras, i, background=bg)
        pred = out["rgb"].detach().float().cpu().clamp(0, 1)
        img = split.images[i].float()
        acc["psnr_full"].append(float(metrics.psnr(pred, img)))
        acc["ssim_full"].append(float(metrics.ssim(pred, img)))
        masks = getattr(split, "masks", None)
        if masks is not None:
            m = masks[i].float()[..., None]
            comp = metrics.composite_on_background(img, masks[i], bg)
            acc["psnr_composite"].append(float(metrics.psnr(pred, comp)))
            se = ((pred - img) ** 2 * m).sum() / (m.sum() * 3).clamp_min(1.0)
            acc["psnr_in_mask"].append(float(-10 * torch.log10(se.clamp_min(1e-12))))
    res = {k: sum(v) / len(v) for k, v in acc.items() if v}
    res.update(views=len(idx), s_per_image=(time.perf_counter() - t0) / max(len(idx), 1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN", help="a label and a run folder or checkpoint")
    ap.add_argument("--data", required=True, help="the dataset whose test views are scored")
    ap.add_argument("--out", default=None, help="write the results here (JSON)")
    args = ap.parse_args(argv)

    import engine
    from engine.errors import KernelightError
    from engine.io.atomic import atomic_write_text

    pairs = []
    for r in args.runs:
        name, sep, path = r.partition("=")
        if not sep or not name or not path:
            ap.error(f"{r!r}: expected NAME=RUN (a label, '=', a run folder or checkpoint)")
        if not Path(path).exists():
            ap.error(f"{name}: {path} does not exist")
        pairs.append((name, path))
    try:
        ds = engine.load_dataset(args.data)
    except KernelightError as e:
        ap.error(f"--data {args.data}: {e}")
    split = ds.splits.get("test") or ds.splits.get("val")
    if split is None:
        ap.error(f"--data {args.data}: the dataset has no test or val split")
    result = {"data": args.data, "has_masks": getattr(split, "masks", None) is not None, "runs": {}}
    for name, path in pairs:
        try:
            model = engine.load(path)
        except KernelightError as e:
            ap.error(f"{name}: {e}")
        r = score(model, split, ds.background)
        r.update(run=str(path), method=getattr(model, "name", "?"), step=getattr(model, "step", None))
        result["runs"][name] = r
        print(f"{name:>12}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
