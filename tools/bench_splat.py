"""Imported 3DGS files: splatting (the default) vs the ray-traced mode, and the cost of the RayGauss
density-to-opacity conversion of ``kernelight export --format ply`` (issue 19, part 1).

Part 1, for every ``.ply`` in ``--gaussians`` (default ``../shared/data/gaussians``): the orbit that
``kernelight render FILE.ply`` renders (``engine/commands/render.py`` ``_orbit_around_model``: up -y,
50 deg field of view, radius 1.1 x the 2-98 % box diagonal), ``--views`` views at ``--size`` (200x150),
black background, rendered with the default path (splat) and with ``render_mode=raytrace``:

* PSNR / SSIM of raytrace against splat (whole frame; ``psnr_fg`` only over pixels where either
  mode has alpha > 0.01, since the empty black background inflates the whole-frame number);
* cold first frame: a fresh Python process per (file, mode) that imports, loads the file and renders
  one frame; ``first_frame_s`` is that render (Taichi kernel compile or offline-cache load, BVH
  build included), ``process_s`` the whole process as the parent saw it (interpreter + torch
  start-up, load, first frame). Measured with the offline cache as it is (``cached``) and with an
  empty cache directory (``nocache``: ``KERNELIGHT_CACHE`` pointed at a fresh folder);
* warm frames in one process: after one render of each view in each mode, ``--repeats`` rounds of
  (view x mode) interleaved, median wall and process CPU time (``time.process_time``, all threads).

Part 2 (``--lego-run RUN``, a RayGauss run trained on NeRF-synthetic, e.g. lego_100 with ``--preset
cpu``): ``kernelight export RUN --format ply`` in a subprocess, then on ALL test views (white
background, the dataset's ground truth):

* ``own_raytrace``: the run's own renders (ray traced, what ``kernelight eval`` measures);
* ``export_splat``: the exported .ply loaded as a 3DGS file and splatted (what a 3DGS viewer sees);
* ``export_raytrace``: the exported .ply ray traced (conversion without the change of renderer;
  every ``--export-raytrace-every``-th view only, it is slow);
* ``own_splat``: the run's density Gaussians splatted with ``render_mode=splat`` (conversion and
  splatting with the SG lobes kept: no file round trip);
* ``own_raytrace_nosg``: the run's renders with the spherical-Gaussian lobes off (the .ply format
  has no place for them);

each against ground truth and against ``own_raytrace`` (PSNR / SSIM), with per-view render times.

    .venv/bin/python tools/bench_splat.py                                  # part 1
    .venv/bin/python tools/bench_splat.py --skip-files --lego-run RUN      # part 2

These machines are shared and noisy: every time is measured beside its peer in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("splat", "raytrace")


def _orbit(model, size, views):
    from engine.camera_paths import look_at
    from engine.cameras import Cameras
    from engine.commands.render import _orbit_around_model

    return _orbit_around_model(model, SimpleNamespace(size=tuple(size), frames=views, up="auto"), look_at, Cameras)


def _load(path, mode):
    from engine import api

    return api.load(path) if mode == "splat" else api.load(path, render_mode=mode)


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def cold_child(path: str, mode: str, size) -> None:
    """One fresh process: import, load, render frame 0 of the orbit; print a JSON line."""
    t_start = time.perf_counter()
    import torch

    from engine import api

    t_import = time.perf_counter() - t_start
    m, t_load, _ = _timed(lambda: _load(path, mode))
    cams = _orbit(m, size, 3)
    bg = torch.zeros(3)
    with torch.no_grad():
        _, w1, c1 = _timed(lambda: api.render(m, cams, 0, background=bg))
        _, w2, c2 = _timed(lambda: api.render(m, cams, 1, background=bg))
    print(json.dumps({"import_s": t_import, "load_s": t_load, "first_frame_s": w1, "first_frame_cpu_s": c1,
                      "second_frame_s": w2, "second_frame_cpu_s": c2,
                      "render_mode": m.model.render_mode(), "n": m.num_primitives}))


def run_cold(path, mode, size, cache: str, timeout: float) -> dict:
    env = dict(os.environ)
    tmp = None
    if cache == "nocache":
        tmp = tempfile.mkdtemp(prefix="bench_splat_cache_")
        env["KERNELIGHT_CACHE"] = tmp
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cold-child", str(path), "--mode", mode,
           "--size", str(size[0]), str(size[1])]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    total = time.perf_counter() - t0
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-2000:], "process_s": total}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = total
    return res


def psnr_fg(a, b, fg):
    import torch

    if int(fg.sum()) == 0:
        return float("nan")
    mse = ((a - b) ** 2).mean(-1)[fg].mean().clamp_min(1e-12)
    return float(-10 * torch.log10(mse))


def bench_file(path: Path, args, con) -> dict:
    import torch

    from engine import api
    from engine.io.images import write_image
    from engine.train import metrics

    res = {"file": path.name, "size": list(args.size), "views": args.views}
    # ---- cold: fresh processes, interleaved modes, cached then empty cache
    if not args.no_cold:
        cold = {}
        for cache in ("cached", "nocache"):
            for mode in MODES:
                con.print(f"  cold {cache:8s} {mode:8s} ...", end=" ")
                r = run_cold(path, mode, args.size, cache, args.cold_timeout)
                cold[f"{mode}_{cache}"] = r
                con.print("error" if "error" in r else f"first frame {r['first_frame_s']:.2f} s, "
                          f"process {r['process_s']:.2f} s")
        res["cold"] = cold
    # ---- warm: one process, both modes loaded the way the CLI loads them
    models = {mode: _load(path, mode) for mode in MODES}
    res["n_gaussians"] = models["splat"].num_primitives
    res["sh_degree"] = models["splat"].model.max_sh_degree
    res["dt_raytrace"] = models["raytrace"].cfg.dt
    assert models["splat"].model.render_mode() == "splat", "imported 3DGS files should splat by default"
    cams = _orbit(models["splat"], args.size, args.views)
    bg = torch.zeros(3)
    imgs, first = {}, {m: [] for m in MODES}
    with torch.no_grad():
        for v in range(args.views):
            for mode in MODES:
                out, w, c = _timed(lambda: api.render(models[mode], cams, v, background=bg))
                imgs[(mode, v)] = out
                first[mode].append({"wall_s": w, "cpu_s": c})
        times = {m: {"wall": [], "cpu": []} for m in MODES}
        for _ in range(args.repeats):
            for v in range(args.views):
                for mode in MODES:
                    _, w, c = _timed(lambda: api.render(models[mode], cams, v, background=bg))
                    times[mode]["wall"].append(w)
                    times[mode]["cpu"].append(c)
    res["inprocess_first_per_view"] = first
    res["warm"] = {m: {"median_s": statistics.median(t["wall"]), "median_cpu_s": statistics.median(t["cpu"]),
                       "min_s": min(t["wall"]), "max_s": max(t["wall"]), "samples": len(t["wall"])}
                   for m, t in times.items()}
    res["warm"]["raytrace_over_splat"] = res["warm"]["raytrace"]["median_s"] / res["warm"]["splat"]["median_s"]
    per_view = []
    for v in range(args.views):
        a, b = imgs[("raytrace", v)], imgs[("splat", v)]
        ra, rb = a["rgb"].clamp(0, 1), b["rgb"].clamp(0, 1)
        fg = torch.maximum(a["alpha"], b["alpha"]) > 0.01
        per_view.append({"view": v, "psnr": float(metrics.psnr(ra, rb)), "ssim": float(metrics.ssim(ra, rb)),
                         "psnr_fg": psnr_fg(ra, rb, fg), "fg_frac": float(fg.float().mean()),
                         "alpha_mean_splat": float(b["alpha"].mean()), "alpha_mean_raytrace": float(a["alpha"].mean()),
                         "n_capped_raytrace": int(a.get("n_capped", 0))})
        if args.save_images:
            d = Path(args.save_images) / path.stem
            write_image(d / f"{v}_splat.png", rb)
            write_image(d / f"{v}_raytrace.png", ra)
    res["per_view"] = per_view
    for k in ("psnr", "ssim", "psnr_fg"):
        res[k] = statistics.mean(p[k] for p in per_view)
    return res


def _finite(x):
    """None for an infinite PSNR (identical images), so the JSON stays standard."""
    import math

    return x if math.isfinite(x) else None


def bench_lego(args, con) -> dict:
    import torch

    from engine import api
    from engine.config import load_scene
    from engine.data import load_dataset
    from engine.train import metrics
    from engine.train.trainer import eval_target

    run = Path(args.lego_run)
    res = {"run": str(run)}
    mlines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r for r in mlines if "step" in r]
    if steps:
        last = steps[-1]
        res["train_last_record"] = {k: last[k] for k in last if not isinstance(last[k], (list, dict))}
    res["train_records_tail"] = mlines[-3:]
    export = Path(args.lego_export or (Path(tempfile.mkdtemp(prefix="bench_splat_export_")) / "point_cloud.ply"))
    cmd = [str(Path(sys.executable).with_name("kernelight")), "export", str(run), "--format", "ply", "--out", str(export)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    con.print(r.stdout.strip())
    if r.returncode != 0:
        raise SystemExit(f"export failed: {r.stderr[-2000:]}")
    res["export_cmd"] = " ".join(cmd)
    res["export_ply"] = str(export)
    sc = load_scene(run / "config.toml")
    ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format)
    split = ds.splits["test"]
    bg = torch.as_tensor(ds.background, dtype=torch.float32)
    own = api.load(run)
    variants = {
        "own_raytrace": own,
        "export_splat": api.load(export),
        "export_raytrace": api.load(export, render_mode="raytrace"),
        "own_splat": api.load(run, render_mode="splat"),
        "own_raytrace_nosg": api.load(run),
    }
    variants["own_raytrace_nosg"].model.active_sg = False
    res["step"] = own.step
    res["n_gaussians"] = own.num_primitives
    res["sg_active"] = bool(own.model.active_sg)
    res["export_dt_raytrace"] = variants["export_raytrace"].cfg.dt
    res["render_modes"] = {k: m.model.render_mode() for k, m in variants.items()}
    n = len(split.cameras) if args.lego_views is None else min(args.lego_views, len(split.cameras))
    idx = torch.linspace(0, len(split.cameras) - 1, n).round().long().tolist()
    acc = {k: {"psnr_gt": [], "ssim_gt": [], "psnr_own": [], "ssim_own": [], "s": []} for k in variants}
    with torch.no_grad():
        for m in variants.values():        # warm-up (kernel compile, BVH)
            api.render(m, split.cameras, idx[0], background=bg)
        sub = []
        for j, i in enumerate(idx):
            gt = eval_target(own, split, i, bg)
            preds = {}
            for k, m in variants.items():
                if k == "export_raytrace" and j % args.export_raytrace_every:
                    continue
                out, w, _ = _timed(lambda: api.render(m, split.cameras, i, background=bg))
                preds[k] = out["rgb"].clamp(0, 1)
                acc[k]["s"].append(w)
            for k, p in preds.items():
                acc[k]["psnr_gt"].append(float(metrics.psnr(p, gt)))
                acc[k]["ssim_gt"].append(float(metrics.ssim(p, gt)))
                acc[k]["psnr_own"].append(float(metrics.psnr(p, preds["own_raytrace"])) if k != "own_raytrace"
                                          else float("inf"))
                if k == "own_raytrace" and "export_raytrace" in preds:   # the same subset, for comparison
                    sub.append((acc[k]["psnr_gt"][-1], acc[k]["ssim_gt"][-1]))
                acc[k]["ssim_own"].append(float(metrics.ssim(p, preds["own_raytrace"])))
            if j % 25 == 0:
                con.print(f"  view {j + 1}/{n}: " + ", ".join(f"{k} {acc[k]['psnr_gt'][-1]:.2f}" for k in variants))
    res["views"] = n
    res["variants"] = {}
    for k, a in acc.items():
        res["variants"][k] = {
            "psnr_gt": statistics.mean(a["psnr_gt"]), "psnr_gt_std": statistics.pstdev(a["psnr_gt"]),
            "ssim_gt": statistics.mean(a["ssim_gt"]),
            "psnr_vs_own": _finite(statistics.mean(a["psnr_own"])) if k != "own_raytrace" else None,
            "ssim_vs_own": statistics.mean(a["ssim_own"]),
            "median_s_per_view": statistics.median(a["s"]), "views": len(a["s"]),
        }
    res["own_raytrace_on_export_raytrace_views"] = {"psnr_gt": statistics.mean(x[0] for x in sub),
                                                    "ssim_gt": statistics.mean(x[1] for x in sub), "views": len(sub)}
    v = res["variants"]
    res["conversion_cost_db"] = v["own_raytrace"]["psnr_gt"] - v["export_splat"]["psnr_gt"]
    return res


def bench_dilation(args, con) -> dict:
    """Where the export's loss comes from: the exported .ply splatted with the 3DGS screen-space
    dilation ``eps2d`` (0.3 px^2, what 3DGS viewers add) and without it, at the training resolution
    and (``--lego-hires-data``) at twice it, beside the run's own ray-traced renders."""
    import torch

    from engine import api
    from engine.config import load_scene
    from engine.data import load_dataset
    from engine.render.gaussians import gaussian_colors
    from engine.train import metrics
    from engine.train.trainer import eval_target
    from shaders.splat import splat

    run = Path(args.lego_run)
    export = Path(args.lego_export)
    own, exp = api.load(run), api.load(export)
    M = exp.model
    sc = load_scene(run / "config.toml")
    sets = [("train_res", load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format),
             1)]
    if args.lego_hires_data:
        sets.append(("hires", load_dataset(args.lego_hires_data, background=sc.background), args.hires_every))
    res = {"eps2d": list(args.eps2d)}
    for name, ds, every in sets:
        split = ds.splits["test"]
        bg = torch.as_tensor(ds.background, dtype=torch.float32)
        idx = list(range(0, len(split.cameras), every))
        acc = {k: [] for k in ["own_raytrace"] + [f"export_splat_eps{e:g}" for e in args.eps2d]}
        vs_own = {k: [] for k in acc}
        cams = split.cameras
        with torch.no_grad():
            for i in idx:
                gt = eval_target(own, split, i, bg)
                ref = api.render(own, cams, i, background=bg)["rgb"].clamp(0, 1)
                acc["own_raytrace"].append(float(metrics.psnr(ref, gt)))
                rgb = gaussian_colors(M.means, M.sh, M.max_sh_degree, cams.c2w[i, :3, 3], None)
                for e in args.eps2d:
                    o = splat(M.means, M.quats, M.log_scales, M.density, rgb, cams.c2w[i], float(cams.fx[i]),
                              float(cams.fy[i]), float(cams.cx[i]), float(cams.cy[i]), int(cams.width[i]),
                              int(cams.height[i]), background=bg, eps2d=e)["rgb"].clamp(0, 1)
                    acc[f"export_splat_eps{e:g}"].append(float(metrics.psnr(o, gt)))
                    vs_own[f"export_splat_eps{e:g}"].append(float(metrics.psnr(o, ref)))
        res[name] = {"data": str(ds.root) if hasattr(ds, "root") else None, "size": [int(cams.width[0]), int(cams.height[0])],
                     "views": len(idx),
                     "psnr_gt": {k: statistics.mean(v) for k, v in acc.items()},
                     "psnr_vs_own": {k: statistics.mean(v) for k, v in vs_own.items() if v}}
        con.print(f"  {name} {res[name]['size']}: " + json.dumps(res[name]["psnr_gt"]))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", default=str(REPO.parent / "shared" / "data" / "gaussians"),
                    help="folder of 3DGS .ply files (all are measured)")
    ap.add_argument("--size", type=int, nargs=2, default=[200, 150], metavar=("W", "H"))
    ap.add_argument("--views", type=int, default=3, help="orbit views per file")
    ap.add_argument("--repeats", type=int, default=3, help="warm rounds over (view x mode)")
    ap.add_argument("--no-cold", action="store_true", help="skip the fresh-process first-frame measurements")
    ap.add_argument("--cold-timeout", type=float, default=300.0)
    ap.add_argument("--skip-files", action="store_true", help="skip part 1 (the .ply files)")
    ap.add_argument("--lego-run", default=None, help="a trained RayGauss run folder: part 2 (export conversion)")
    ap.add_argument("--lego-export", default=None, help="where to write the exported .ply (default: a temp folder)")
    ap.add_argument("--lego-views", type=int, default=None, help="test views for part 2 (default: all)")
    ap.add_argument("--export-raytrace-every", type=int, default=8,
                    help="ray trace the exported .ply on every K-th test view only (slow: opacity Gaussians at the "
                         "file's scale-aware dt); the other variants use all views")
    ap.add_argument("--dilation", action="store_true",
                    help="with --lego-run and --lego-export: splat the exported .ply with and without the 3DGS "
                         "screen-space dilation (where the export's loss comes from)")
    ap.add_argument("--eps2d", type=float, nargs="+", default=[0.3, 0.1, 0.0])
    ap.add_argument("--lego-hires-data", default=None,
                    help="the same scene at a higher resolution (e.g. lego_200) for --dilation")
    ap.add_argument("--hires-every", type=int, default=4, help="--dilation at --lego-hires-data: every K-th test view")
    ap.add_argument("--train-note", default=None, help="free text recorded with part 2 (how the run was trained)")
    ap.add_argument("--save-images", default=None, help="write the part-1 renders (PNG) here")
    ap.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_splat.json"),
                    help="JSON results (merged into an existing file's other part)")
    ap.add_argument("--cold-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="splat", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.cold_child:
        cold_child(args.cold_child, args.mode, args.size)
        return 0

    from rich.console import Console
    from rich.table import Table

    from engine.io.atomic import atomic_write_text

    con = Console(width=200)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                         "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.skip_files:
        files = sorted(Path(args.gaussians).glob("*.ply"))
        result["files"] = []
        for f in files:
            con.print(f"[bold]{f.name}[/bold]")
            result["files"].append(bench_file(f, args, con))
        result["files_loadavg_end"] = os.getloadavg()
    if args.lego_run and args.dilation:
        con.print("[bold]export: splatting with / without the 3DGS dilation[/bold]")
        result["dilation"] = bench_dilation(args, con)
    elif args.lego_run:
        con.print("[bold]export conversion[/bold]")
        result["export"] = bench_lego(args, con)
        if args.train_note:
            result["export"]["train_note"] = args.train_note
        result["export_loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2, default=float))

    if result.get("files"):
        t = Table(title=f"3DGS files, {args.size[0]}x{args.size[1]}, raytrace vs splat (splat = default)")
        for c in ("file", "N", "PSNR", "PSNR fg", "SSIM", "splat warm s (cpu)", "rt warm s (cpu)", "splat cold s",
                  "rt cold s", "splat cold nocache s", "rt cold nocache s"):
            t.add_column(c, justify="right")
        for r in result["files"]:
            cold = r.get("cold", {})

            def cf(k):
                x = cold.get(k, {})
                return (f"{x['first_frame_s']:.2f} / {x['first_frame_cpu_s']:.2f} ({x['process_s']:.1f})"
                        if "first_frame_s" in x else "-")

            t.add_row(r["file"], str(r["n_gaussians"]), f"{r['psnr']:.2f}", f"{r['psnr_fg']:.2f}", f"{r['ssim']:.4f}",
                      *(f"{r['warm'][m]['median_s']:.3f} ({r['warm'][m]['median_cpu_s']:.2f})" for m in MODES),
                      cf("splat_cached"), cf("raytrace_cached"), cf("splat_nocache"), cf("raytrace_nocache"))
        con.print(t)
        con.print("warm: median wall s (process CPU s); cold: first frame wall s / CPU s in a fresh process "
                  "(process wall incl. interpreter/torch start-up and load)")
    if result.get("export"):
        e = result["export"]
        t = Table(title=f"export conversion: {e['run']} (step {e['step']}, {e['n_gaussians']} Gaussians, "
                        f"{e['views']} test views)")
        for c in ("variant", "views", "PSNR vs GT", "SSIM vs GT", "PSNR vs own", "SSIM vs own", "s/view"):
            t.add_column(c, justify="right")
        for k, v in e["variants"].items():
            t.add_row(k, str(v["views"]), f"{v['psnr_gt']:.2f}", f"{v['ssim_gt']:.4f}",
                      "-" if k == "own_raytrace" else ("inf" if v["psnr_vs_own"] is None else f"{v['psnr_vs_own']:.2f}"), f"{v['ssim_vs_own']:.4f}",
                      f"{v['median_s_per_view']:.3f}")
        con.print(t)
    if result.get("dilation"):
        d = result["dilation"]
        t = Table(title="exported .ply splatted with the 3DGS dilation eps2d (px^2) and without: PSNR vs GT")
        keys = ["own_raytrace"] + [f"export_splat_eps{e:g}" for e in d["eps2d"]]
        t.add_column("test set", justify="right")
        for k in keys:
            t.add_column(k, justify="right")
        for name in ("train_res", "hires"):
            if name in d:
                r = d[name]
                t.add_row(f"{r['size'][0]}x{r['size'][1]}, {r['views']} views", *(f"{r['psnr_gt'][k]:.2f}" for k in keys))
        con.print(t)
    con.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
