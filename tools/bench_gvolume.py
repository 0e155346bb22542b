"""GaussianVolume (GVGEN) beside RayGauss: the same data, the same wall-clock training budget, both
runs at the same time (one process and one torch thread each, so the two share the machine alike),
PSNR / SSIM on all test views.

    python tools/bench_gvolume.py --data ../shared/data/nerf_synthetic/lego_100 --minutes 15

Each method trains through the trainer (``time_budget_s``); GaussianVolume with its defaults
(N = 32, DC colour, the visual-hull cube) and its schedule laid over the budget (``max_steps`` sets
the schedule; densification ends at ``densify_until / max_steps`` of the budget), RayGauss with its
``cpu`` preset (the preset ``tools/bench_raygauss_quality.py`` uses). Writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(args) -> int:
    import torch

    torch.set_num_threads(1)
    from engine import methods
    from engine.train import metrics
    from engine.train.trainer import Trainer, TrainSettings

    name = args.worker
    opts = dict(methods.get_preset(name, args.preset)) if args.preset else {}
    for kv in args.set:
        key, _, val = kv.partition("=")
        try:
            opts[key] = json.loads(val)
        except ValueError:
            opts[key] = val
    opts.update(max_steps=args.max_steps, time_budget_s=args.minutes * 60, eval_every=0, checkpoint_every=0,
                log_every=50)
    t0 = time.time()
    tr = Trainer(TrainSettings(method=methods.get_method(name), data=Path(args.data), output=Path(args.output),
                               options=opts, progress=False, quiet=True))
    setup_s = time.time() - t0
    tr.train()
    test = tr.dataset.splits["test"]
    ps, ss, ts = [], [], []
    import torch

    with torch.no_grad():
        for i in range(len(test.cameras)):
            t1 = time.perf_counter()
            out = tr.method.render(test.cameras, i, background=tr.background)
            ts.append(time.perf_counter() - t1)
            pred = out["rgb"].clamp(0, 1)
            ps.append(float(metrics.psnr(pred, test.images[i])))
            ss.append(float(metrics.ssim(pred, test.images[i])))
    res = {"method": name, "preset": args.preset, "options": opts, "steps": tr.step,
           "train_time_s": round(tr.train_time, 1), "setup_s": round(setup_s, 1),
           "num_primitives": tr.method.num_primitives, "label": tr.method.progress_label(),
           "psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "views": len(ps),
           "s_per_image": sorted(ts)[len(ts) // 2], "run_dir": str(tr.run_dir), "notes": tr.notes,
           "load_average_at_end": list(os.getloadavg())}
    if name == "gvolume":
        v = tr.method.vol
        with torch.no_grad():
            op = torch.sigmoid(v.opacity)[v.active]
            off = (v.offset / v.cell).abs().amax(1)[v.active]
        res["gvolume"] = {"grid_size": v.grid_size, "slots": v.num_slots, "active": v.num_active,
                          "densification_ended": tr.method.strategy.ended,
                          "opacity_above_0.005": int((op > 0.005).sum()),
                          "max_offset_cells": float(off.max()), "mean_offset_cells": float(off.mean())}
    Path(args.part).write_text(json.dumps(res, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "nerf_synthetic" / "lego_100"))
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget of each method")
    ap.add_argument("--max-steps", type=int, default=6000, help="schedule length (the budget ends first)")
    ap.add_argument("--methods", nargs="+", default=["gvolume", "raygauss"])
    ap.add_argument("--gvolume-set", nargs="*", default=[], metavar="KEY=VALUE", help="GaussianVolume options")
    ap.add_argument("--raygauss-preset", default="cpu")
    ap.add_argument("--output", default="/tmp/kernelight_bench_gvolume")
    ap.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_gvolume.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    procs, parts = [], {}
    tag = Path(args.data).name
    for name in args.methods:
        part = Path(args.output) / f"{tag}_{name}.json"
        part.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--worker", name, "--data", args.data, "--minutes", str(args.minutes),
               "--max-steps", str(args.max_steps), "--output", args.output, "--part", str(part)]
        if name == "raygauss":
            cmd += ["--preset", args.raygauss_preset]
        if name == "gvolume" and args.gvolume_set:
            cmd += ["--set", *args.gvolume_set]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=str(REPO))))
        parts[name] = part
    for name, p in procs:
        if p.wait() != 0:
            print(f"{name} failed (exit {p.returncode})", file=sys.stderr)
            return 1
    res = {name: json.loads(parts[name].read_text()) for name in parts}
    out = {"data": args.data, "minutes": args.minutes, "run": "both methods trained at the same time, "
           "one process and one torch thread each", "results": res}
    if "gvolume" in res and "raygauss" in res:
        out["gvolume_minus_raygauss"] = {"psnr_db": res["gvolume"]["psnr"] - res["raygauss"]["psnr"],
                                         "ssim": res["gvolume"]["ssim"] - res["raygauss"]["ssim"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{'method':<10} {'steps':>6} {'primitives':>10} {'PSNR':>7} {'SSIM':>7} {'s/img':>6}")
    for name, r in res.items():
        print(f"{name:<10} {r['steps']:>6} {r['num_primitives']:>10} {r['psnr']:>7.2f} {r['ssim']:>7.4f} "
              f"{r['s_per_image']:>6.3f}")
    if "gvolume_minus_raygauss" in out:
        print(f"gvolume - raygauss: {out['gvolume_minus_raygauss']['psnr_db']:+.2f} dB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
