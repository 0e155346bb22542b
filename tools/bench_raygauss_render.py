"""RayGauss render speed of a trained model: tile-binned path vs BVH path, same machine, same run.

Loads a run folder or checkpoint (default: the lego_100 model of ``bench_raygauss_quality.py``),
renders every test view of ``--data`` with both paths (tiles: ``shaders.raygauss_tiles``, the
default for rendering without gradients; bvh: ``shaders.raygauss`` kernels) and reports the
median seconds per image, PSNR/SSIM of both (they must agree), rays/s at ``--speed-data``
resolution and Gaussian evaluations per ray, beside TensoRF's 0.49 s per 100x100 image
measured with nerfstudio on this kind of machine.

    python tools/bench_raygauss_render.py RUN_OR_CHECKPOINT [--data DIR] [--views N]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TENSORF_S_PER_IMAGE = 0.49


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder or checkpoint of a RayGauss model")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "nerf_synthetic" / "lego_100"))
    ap.add_argument("--speed-data", default=None, help="dataset for rays/s (default: lego_200 next to --data)")
    ap.add_argument("--views", type=int, default=0, help="test views to evaluate (0 = all)")
    ap.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_raygauss_render.json"))
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    import engine
    from engine.data import load_dataset
    from engine.io.atomic import atomic_write_text
    from engine.train import metrics

    con = Console()
    method = engine.load(args.run)
    model = method.model
    ds = load_dataset(args.data)
    test = ds.splits["test"]
    bg = torch.as_tensor(ds.background, dtype=torch.float32)
    n = len(test.cameras)
    idx = list(range(n)) if args.views <= 0 else torch.linspace(0, n - 1, min(args.views, n)).round().long().tolist()
    result = {"run": str(args.run), "data": args.data, "num_gaussians": model.num_gaussians, "views": len(idx),
              "torch_threads": torch.get_num_threads()}
    with torch.no_grad():
        for path in ("tiles", "bvh"):
            model.render_camera(test.cameras, idx[0], background=bg, tiles=path == "tiles")   # warm-up
            ts, ps, ss, ev = [], [], [], []
            for i in idx:
                t0 = time.perf_counter()
                out = model.render_camera(test.cameras, i, background=bg, tiles=path == "tiles")
                ts.append(time.perf_counter() - t0)
                pred = out["rgb"].clamp(0, 1)
                ps.append(float(metrics.psnr(pred, test.images[i])))
                ss.append(float(metrics.ssim(pred, test.images[i])))
                ev.append(float(out["cost"].float().mean()))
            result[path] = {"s_per_image": sorted(ts)[len(ts) // 2], "psnr": sum(ps) / len(ps),
                            "ssim": sum(ss) / len(ss), "gaussian_evals_per_ray": sum(ev) / len(ev)}
            con.print(f"{path:5s}: {result[path]['s_per_image'] * 1000:.1f} ms per image, "
                      f"PSNR {result[path]['psnr']:.3f}, SSIM {result[path]['ssim']:.4f}")
        speed_data = Path(args.speed_data) if args.speed_data else Path(args.data).parent / "lego_200"
        if speed_data.exists():
            cams = load_dataset(speed_data).splits["test"].cameras
            speed = {"data": str(speed_data)}
            for path in ("tiles", "bvh"):
                model.render_camera(cams, 0, background=bg, tiles=path == "tiles")
                t0 = time.perf_counter()
                rays = 0
                for i in range(5):
                    out = model.render_camera(cams, i * 7, background=bg, tiles=path == "tiles")
                    rays += out["rgb"].shape[0] * out["rgb"].shape[1]
                speed[f"{path}_rays_per_sec"] = rays / (time.perf_counter() - t0)
            result["render_speed"] = speed
            con.print(f"{speed_data.name}: tiles {speed['tiles_rays_per_sec']:,.0f} rays/s, "
                      f"bvh {speed['bvh_rays_per_sec']:,.0f} rays/s")
    result["tiles_vs_bvh_speedup"] = result["bvh"]["s_per_image"] / result["tiles"]["s_per_image"]
    result["vs_tensorf_render_speedup"] = TENSORF_S_PER_IMAGE / result["tiles"]["s_per_image"]
    result["load_average_at_end"] = list(os.getloadavg())
    t = Table(title=f"RayGauss render, {Path(args.data).name}, {model.num_gaussians} Gaussians")
    for c in ("path", "s / image", "PSNR", "SSIM", "evals / ray"):
        t.add_column(c)
    for path in ("tiles", "bvh"):
        r = result[path]
        t.add_row(path, f"{r['s_per_image']:.3f}", f"{r['psnr']:.3f}", f"{r['ssim']:.4f}",
                  f"{r['gaussian_evals_per_ray']:.0f}")
    t.add_row("TensoRF (nerfstudio)", f"{TENSORF_S_PER_IMAGE:.3f}", "31.37", "0.978", "")
    con.print(t)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    con.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
