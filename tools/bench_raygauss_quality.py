"""RayGauss quality and speed on this CPU: train with a wall-clock budget, report the PSNR-vs-time
curve, final PSNR/SSIM on all test views, render time per image, and rays/s at 200 px beside the
brute-force reference (same model, same machine, same run).

    python tools/bench_raygauss_quality.py --data ../shared/data/nerf_synthetic/lego_100 --minutes 15

Peers (nerfstudio 1.1.5 on CPU, same kind of machine, same data, 15 min): TensoRF 31.37 dB /
SSIM 0.978, 0.49 s per 100x100 image; nerfacto 25.94 dB / 0.924, 3.4 s per image.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS = {"tensorf": {"psnr": 31.37, "ssim": 0.978, "s_per_image": 0.49},
         "nerfacto": {"psnr": 25.94, "ssim": 0.924, "s_per_image": 3.4}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "nerf_synthetic" / "lego_100"))
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--marks", type=float, nargs="+", default=[2, 5, 10, 15], help="minutes at which to evaluate")
    ap.add_argument("--curve-views", type=int, default=25, help="test views for the intermediate curve points")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--max-steps", type=int, default=6000, help="schedule length (the budget usually ends first)")
    ap.add_argument("--speed-data", default=None, help="dataset for the rays/s test (default: lego_200 next to --data)")
    ap.add_argument("--ref-rays", type=int, default=64, help="rays rendered by the brute-force reference")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override preset options, e.g. --set max_gaussians=60000 (values parsed as JSON when possible)")
    ap.add_argument("--output", default="/tmp/kernelight_bench")
    ap.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_raygauss_quality.json"))
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from engine.data import load_dataset
    from engine.io.atomic import atomic_write_text
    from engine.methods.raygauss.presets import PRESETS
    from engine.train import metrics
    from engine.methods.raygauss.method import RayGaussMethod
    from engine.train.trainer import Trainer, TrainSettings

    con = Console()
    opts = dict(PRESETS[args.preset])
    for kv in args.set:
        key, sep, val = kv.partition("=")
        if not sep:
            ap.error(f"--set {kv!r}: expected KEY=VALUE")
        try:
            opts[key] = json.loads(val)
        except ValueError:
            opts[key] = val
    opts.update(max_steps=args.max_steps, time_budget_s=args.minutes * 60, eval_every=0, checkpoint_every=0,
                log_every=50)
    tr = Trainer(TrainSettings(method=RayGaussMethod, data=Path(args.data), output=Path(args.output), options=opts,
                               progress=False, quiet=True))
    test = tr.dataset.splits["test"]
    bg = tr.background
    curve = []
    marks = sorted(m for m in args.marks if m <= args.minutes + 1e-9)

    def evaluate(views=None):
        n = len(test.cameras)
        idx = list(range(n)) if views is None else torch.linspace(0, n - 1, min(views, n)).round().long().tolist()
        ps, ss, ts = [], [], []
        for i in idx:
            t0 = time.perf_counter()
            out = tr.method.render(test.cameras, i, background=bg)
            ts.append(time.perf_counter() - t0)
            pred = out["rgb"].clamp(0, 1)
            ps.append(float(metrics.psnr(pred, test.images[i])))
            ss.append(float(metrics.ssim(pred, test.images[i])))
        return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "s_per_image": sorted(ts)[len(ts) // 2],
                "views": len(idx)}

    con.print(f"training {args.preset} preset on {args.data} for {args.minutes} min; notes: {tr.notes}")
    while tr.train_time < args.minutes * 60 and tr.step < args.max_steps:
        t0 = time.perf_counter()
        tr._step(tr._next_indices() if tr.batch_mode == "image" else None)
        tr.train_time += time.perf_counter() - t0
        tr.step += 1
        while marks and tr.train_time >= marks[0] * 60:
            m = marks.pop(0)
            r = evaluate(args.curve_views)
            curve.append({"minutes": m, "step": tr.step, "num_gaussians": tr.method.num_primitives, **r})
            con.print(f"{m:>5.1f} min  step {tr.step:>5}  PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.4f}  "
                      f"N {tr.method.num_primitives}")
    final = evaluate(None)
    con.print(f"final (all {final['views']} test views): PSNR {final['psnr']:.2f} SSIM {final['ssim']:.4f}, "
              f"{final['s_per_image']:.3f} s per image")
    path = tr.save()

    # ---- render speed at 200 px: ours vs the brute-force reference on the same model
    from engine.methods.raygauss.model import ray_box_intersect
    from shaders import raygauss as rg
    from shaders.raygauss_ref import render_rays_reference

    speed_data = Path(args.speed_data) if args.speed_data else Path(args.data).parent / "lego_200"
    speed = {}
    if speed_data.exists():
        ds2 = load_dataset(speed_data)
        cams = ds2.splits["test"].cameras
        m = tr.method.model
        with torch.no_grad():
            m.render_camera(cams, 0, background=bg)  # warm-up
            t0 = time.perf_counter()
            nviews, rays, evals = 5, 0, 0.0
            for i in range(nviews):
                out = m.render_camera(cams, i * 7, background=bg)
                rays += out["rgb"].shape[0] * out["rgb"].shape[1]
                evals += float(out["cost"].float().sum())
            ours = rays / (time.perf_counter() - t0)
            o, d = cams.generate_rays(0)
            sel = torch.randperm(o.shape[0] * o.shape[1], generator=torch.Generator().manual_seed(0))[:args.ref_rays]
            o, d = o.reshape(-1, 3)[sel], d.reshape(-1, 3)[sel]
            tn, tf = ray_box_intersect(o, d, m.scene_box)
            kc = m.kernel_config()
            rgb = m.colors(cams.c2w[0, :3, 3])
            t0 = time.perf_counter()
            render_rays_reference(m.means, m.log_scales, m.quats, m.response(), rgb, o, d, tn, tf, kc, background=bg)
            ref = len(sel) / (time.perf_counter() - t0)
        speed = {"data": str(speed_data), "rays_per_sec": ours, "reference_rays_per_sec": ref,
                 "speedup_vs_reference": ours / ref, "gaussian_evals_per_ray": evals / rays,
                 "fps_200px": ours / (200 * 200)}
        con.print(f"200 px render: {ours:,.0f} rays/s (reference {ref:,.1f} rays/s, x{ours / ref:,.0f}), "
                  f"{evals / rays:.0f} Gaussian evaluations per ray")
    result = {"data": args.data, "minutes": args.minutes, "preset": args.preset, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
              "steps": tr.step, "num_gaussians": tr.method.num_primitives, "curve": curve, "final": final,
              "render_speed_200px": speed, "peers_15min_cpu": PEERS, "checkpoint": str(path),
              "torch_threads": torch.get_num_threads(), "load_average_at_end": list(__import__("os").getloadavg())}
    result["vs_tensorf"] = {"psnr_gain_db": final["psnr"] - PEERS["tensorf"]["psnr"],
                            "render_speedup": PEERS["tensorf"]["s_per_image"] / final["s_per_image"]}
    t = Table(title="RayGauss on this CPU")
    for k in ("minutes", "step", "psnr", "ssim", "num_gaussians"):
        t.add_column(k)
    for c in curve:
        t.add_row(f"{c['minutes']}", str(c["step"]), f"{c['psnr']:.2f}", f"{c['ssim']:.4f}", str(c["num_gaussians"]))
    con.print(t)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    con.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
