"""Point field (GPF) benchmark: per-scene quality after a fixed wall-clock budget (beside RayGauss,
trained at the same time), rendering speed, and the across-scenes curve.

Per scene (default)::

    python tools/bench_pointfield.py --data ../shared/data/nerf_synthetic/lego_100 --minutes 15

trains ``pointfield`` (its defaults, plus ``--set KEY=VALUE``) and, with ``--beside raygauss``,
RayGauss's ``cpu`` preset in a second process at the same time (one torch thread each, so both share
the machine alike), each through the trainer with ``time_budget_s``. Then PSNR / SSIM on **all**
test views (masked like ``kernelight eval`` on data with masks: DTU), and rays/s rendering the
test cameras of lego at 200 px (``--speed-data``, cameras scaled to 200 px; every pixel counted,
the one-time encoding of the source views included). Writes ``--out`` (JSON).

Across scenes (``--cross``)::

    python tools/bench_pointfield.py --cross --train-scenes A B C --target dtu/scan24_400 --minutes 15 \
        --finetune-minutes 1 5

pretrains one network on the train scenes for ``--minutes``, then on the target: zero-shot PSNR
(``scene_data``: the target's own points and images, no training), PSNR after each fine-tuning
budget (``init_from``), and from scratch for the same budgets, one arm after the other in one
process. Every arm is evaluated on all the target's test views (the trainer's own end-of-run
evaluation is this script's :func:`evaluate`, so the views are rendered once) and records its wall
and process CPU time and the load average before and after. The JSON is rewritten atomically after
each stage (``last_stage``, ``complete``); ``--pretrained RUN`` starts from a finished pretraining.

Evaluating a finished run in parts (a loaded machine: per-view results are appended as they come,
so an interrupted evaluation keeps what it measured; several parts can run at once)::

    python tools/bench_pointfield.py --eval-run RUN --views 0:100 --part /tmp/a.jsonl
    python tools/bench_pointfield.py --eval-run RUN --speed-only --part /tmp/speed.json
    python tools/bench_pointfield.py --merge RUN /tmp/a.jsonl /tmp/b.jsonl --speed-part /tmp/speed.json \
        --beside-part raygauss.json --out tools/results/bench_pointfield_lego_100.json

Reference: TensoRF reaches 31.37 dB on lego_100 on this machine (issue 15).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def _opts(items) -> dict:
    out = {}
    for kv in items or []:
        key, _, val = kv.partition("=")
        try:
            out[key] = json.loads(val)
        except ValueError:
            out[key] = val
    return out


def evaluate(method, dataset, split="test", max_views=None) -> dict:
    """PSNR / SSIM over the views of ``split`` (all unless ``max_views``), masked as kernelight eval."""
    import torch

    from engine.train import metrics
    from engine.train.trainer import eval_target

    sp = dataset.splits[split]
    n = len(sp.cameras)
    idx = list(range(n)) if not max_views else torch.linspace(0, n - 1, min(n, max_views)).round().long().tolist()
    bg = torch.as_tensor(dataset.background, dtype=torch.float32)
    ps, ss, ts = [], [], []
    with torch.no_grad():
        for i in idx:
            t1 = time.perf_counter()
            out = method.render(sp.cameras, i, background=bg)
            ts.append(time.perf_counter() - t1)
            pred = out["rgb"].clamp(0, 1)
            gt = eval_target(method, sp, i, bg)
            ps.append(float(metrics.psnr(pred, gt)))
            ss.append(float(metrics.ssim(pred, gt)))
    return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "views": len(ps), "test_views_in_split": n,
            "masked": bool(method.masked_eval and sp.masks is not None), "s_per_image_median": sorted(ts)[len(ts) // 2],
            "per_view_psnr": [round(x, 3) for x in ps]}


def trivial_baselines(dataset, split="test") -> dict:
    """PSNR of two predictions that need no model, scored like :func:`evaluate` on data with masks:
    the background everywhere (an empty render) and the mean colour inside the true mask (a flat
    silhouette). A learned result near the second has learned little beyond the mask."""
    import torch

    from engine.train import metrics

    sp = dataset.splits[split]
    if sp.masks is None:
        return {}
    bg = torch.as_tensor(dataset.background, dtype=torch.float32)
    e, f = [], []
    for i in range(len(sp.cameras)):
        img, mask = sp.images[i], sp.masks[i]
        gt = metrics.composite_on_background(img, mask, bg)
        e.append(float(metrics.psnr(bg.expand_as(gt), gt)))
        m = mask.to(img.dtype)[..., None]
        mean = (img * m).sum((0, 1)) / m.sum().clamp_min(1)
        f.append(float(metrics.psnr(metrics.composite_on_background(mean.expand_as(img), mask, bg), gt)))
    return {"empty_render_psnr": sum(e) / len(e), "flat_mean_colour_in_mask_psnr": sum(f) / len(f), "views": len(e)}


def train_run(name, data, output, opts, minutes, max_steps, preset=None, extra_data=None, final_eval=False):
    """Train ``name`` on ``data`` for ``minutes`` through the trainer. ``final_eval``: the trainer's own
    end-of-run test evaluation becomes :func:`evaluate` (PSNR and SSIM, all test views up to the
    trainer's 25) and its result is returned in the record, so the test views are rendered once."""
    from engine import methods
    from engine.train.trainer import Trainer, TrainSettings

    o = dict(methods.get_preset(name, preset)) if preset else {}
    o.update(opts)
    o.update(max_steps=max_steps, time_budget_s=minutes * 60, eval_every=0, checkpoint_every=0, log_every=50)
    t0 = time.time()
    c0 = time.process_time()
    tr = Trainer(TrainSettings(method=methods.get_method(name), data=Path(data), output=Path(output), options=o,
                               progress=False, quiet=True))
    setup_s = time.time() - t0
    full = {}
    if final_eval:
        def _final(max_views=None):
            t1, c1 = time.time(), time.process_time()
            full.update(evaluate(tr.method, tr.dataset, max_views=max_views))
            full.update(eval_wall_s=round(time.time() - t1, 1), eval_cpu_s=round(time.process_time() - c1, 1))
            return {"test_psnr": full["psnr"], "test_views": full["views"]}
        tr.evaluate = _final
    tr.train()
    return tr, {**full, "method": name, "preset": preset, "options": o, "steps": tr.step, "train_time_s": round(tr.train_time, 1),
                "setup_s": round(setup_s, 1), "cpu_s": round(time.process_time() - c0, 1),
                "num_primitives": tr.method.num_primitives, "label": tr.method.progress_label(),
                "run_dir": str(tr.run_dir), "notes": tr.notes}


def speed(method, data: Path, size: int = 200, views: int = 5) -> dict:
    """rays/s rendering ``views`` test cameras of ``data`` scaled to ``size`` px (after one warm-up)."""
    import torch

    from engine.data import load_dataset

    ds = load_dataset(data)
    cams = ds.splits["test"].cameras
    cams = cams.scaled(size / float(cams.width[0]))
    bg = torch.as_tensor(ds.background, dtype=torch.float32)
    method.render(cams, 0, background=bg)
    t = time.perf_counter()
    c = time.process_time()
    rays = 0
    evals = 0.0
    for i in range(1, views + 1):
        out = method.render(cams, i, background=bg)
        rays += out["rgb"].shape[0] * out["rgb"].shape[1]
        evals += float(out["cost"].sum())
    wall = time.perf_counter() - t
    return {"size": size, "views": views, "rays_per_s": rays / wall, "cpu_s_per_view": (time.process_time() - c) / views,
            "kernel_evals_per_ray": evals / rays, "scene_of_cameras": str(data)}


def worker(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    name = args.worker
    tr, res = train_run(name, args.data, args.output, _opts(args.set), args.minutes, args.max_steps, args.preset)
    res.update(evaluate(tr.method, tr.dataset))
    if name == "pointfield" and args.speed_data:
        res["speed"] = speed(tr.method, Path(args.speed_data))
    res["load_average_at_end"] = list(os.getloadavg())
    Path(args.part).write_text(json.dumps(res, indent=1))
    return 0


def _arm(fn):
    """Run ``fn()`` (one arm: a training and/or an evaluation) and add its wall and process CPU time and
    the load average before and after (the lead's benchmarks may share the machine)."""
    la0, t0, c0 = list(os.getloadavg()), time.time(), time.process_time()
    res = fn()
    res.update(arm_wall_s=round(time.time() - t0, 1), arm_cpu_s=round(time.process_time() - c0, 1),
               load_average_start=[round(x, 2) for x in la0],
               load_average_end=[round(x, 2) for x in os.getloadavg()])
    return res


def cross(args) -> int:
    """Pretrain on the train scenes, then zero-shot / fine-tune / scratch on the target (module docstring).
    The JSON is rewritten (atomically) after every stage, so an interrupted run keeps what it measured;
    ``--pretrained RUN`` skips the pretraining and starts from a finished one."""
    import torch

    from engine import methods
    from engine.data import load_dataset
    from engine.io.atomic import atomic_write_text
    from engine.io.checkpoint import latest_valid_checkpoint, load_checkpoint

    torch.set_num_threads(args.threads)
    first, rest = args.train_scenes[0], args.train_scenes[1:]
    opts = _opts(args.set)
    out = {"train_scenes": args.train_scenes, "target": args.target, "pretrain_minutes": args.minutes,
           "finetune_minutes": args.finetune_minutes, "options": opts, "threads": args.threads,
           "eval_views": args.eval_views or "all", "command": " ".join([Path(sys.executable).name] + sys.argv),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "complete": False,
           "finetune": [], "scratch": []}
    t_all, c_all = time.time(), time.process_time()

    def save(stage):
        out["last_stage"] = stage
        out["total_wall_s"] = round(time.time() - t_all, 1)
        out["total_cpu_s"] = round(time.process_time() - c_all, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(out, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {stage} done; wrote {args.out}", flush=True)

    def arm(name, target_opts, minutes):
        tr, r = train_run("pointfield", args.target, args.output, target_opts, minutes, args.max_steps,
                          final_eval=not args.eval_views)
        if args.eval_views:
            t1, c1 = time.time(), time.process_time()
            r.update(evaluate(tr.method, tr.dataset, max_views=args.eval_views))
            r.update(eval_wall_s=round(time.time() - t1, 1), eval_cpu_s=round(time.process_time() - c1, 1))
        if r.get("test_views_in_split", 0) > 25 and not args.eval_views:
            r.update(evaluate(tr.method, tr.dataset))          # more test views than the trainer's 25
        r.update(minutes=minutes, arm=name)
        return r

    if args.pretrained:
        run = Path(args.pretrained)
        out["pretrain"] = {"run_dir": str(run), "reused": True}
    else:
        def pretrain():
            _, pre = train_run("pointfield", first, args.output, dict(opts, scenes=",".join(rest)), args.minutes,
                               args.max_steps, final_eval=True)
            pre["final_eval_scene"] = first
            return pre
        out["pretrain"] = _arm(pretrain)
        run = Path(out["pretrain"]["run_dir"])
        save("pretrain")
    ck_path = latest_valid_checkpoint(run / "checkpoints", method="pointfield")
    if ck_path is None:
        print(f"{run}: no pointfield checkpoint", file=sys.stderr)
        return 1
    ck = load_checkpoint(ck_path, method="pointfield")
    out["pretrain"]["checkpoint"] = str(ck_path)
    out["pretrain"]["checkpoint_step"] = ck.get("step")

    def zero_shot():
        t1, c1 = time.time(), time.process_time()
        cls = methods.get_method("pointfield")
        cfg = methods.make_config("pointfield", dict(load_scene_options(run), **opts, scene_data=str(args.target)))
        zs = cls.from_state_dict(cfg, ck["model"])
        build = {"scene_build_wall_s": round(time.time() - t1, 1), "notes": zs.notes}
        t1, c1 = time.time(), time.process_time()
        r = evaluate(zs, load_dataset(args.target), max_views=args.eval_views)
        r.update(build, eval_wall_s=round(time.time() - t1, 1), eval_cpu_s=round(time.process_time() - c1, 1))
        return r
    out["trivial_baselines"] = trivial_baselines(load_dataset(args.target))
    out["zero_shot"] = _arm(zero_shot)
    save("zero-shot")
    print(f"zero-shot {out['zero_shot']['psnr']:.2f} dB", flush=True)
    for m in args.finetune_minutes:
        out["finetune"].append(_arm(lambda: arm("finetune", dict(opts, init_from=str(run)), m)))
        save(f"fine-tune {m:g} min")
        out["scratch"].append(_arm(lambda: arm("scratch", dict(opts), m)))
        save(f"scratch {m:g} min")
        print(f"{m:g} min: fine-tuned {out['finetune'][-1]['psnr']:.2f} dB, scratch {out['scratch'][-1]['psnr']:.2f} dB",
              flush=True)
    curve = {"zero_shot_psnr": out["zero_shot"]["psnr"]}
    for f, s in zip(out["finetune"], out["scratch"]):
        curve[f"{f['minutes']:g}_min"] = {"finetuned_psnr": f["psnr"], "scratch_psnr": s["psnr"],
                                          "gain_db": f["psnr"] - s["psnr"], "finetuned_steps": f["steps"],
                                          "scratch_steps": s["steps"]}
    out["curve"] = curve
    by_min = {f["minutes"]: (f["psnr"], s["psnr"]) for f, s in zip(out["finetune"], out["scratch"])}
    targets = {}
    if 5.0 in by_min:
        targets["finetune_5min_beats_scratch_5min_by_1.5dB"] = {"gain_db": by_min[5.0][0] - by_min[5.0][1],
                                                              "met": by_min[5.0][0] - by_min[5.0][1] >= 1.5}
    if 1.0 in by_min:
        targets["zero_shot_beats_scratch_1min"] = {"margin_db": out["zero_shot"]["psnr"] - by_min[1.0][1],
                                                   "met": out["zero_shot"]["psnr"] > by_min[1.0][1]}
    out["targets"] = targets
    out["complete"] = True
    out["load_average_at_end"] = list(os.getloadavg())
    save("all")
    return 0


def load_scene_options(run: Path) -> dict:
    """The method options a run was trained with (its config.toml), minus those that name its data."""
    from engine.config import load_scene

    if not (run / "config.toml").is_file():
        return {}
    o = dict(load_scene(run / "config.toml").method_options)
    for k in ("scenes", "init_from", "scene_data", "points", "max_steps", "time_budget_s"):
        o.pop(k, None)
    return o


def eval_run(args) -> int:
    """``--eval-run RUN``: per-view PSNR / SSIM of views ``--views A:B`` appended to ``--part`` (JSON lines),
    or with ``--speed-only`` the rays/s at 200 px written to ``--part``."""
    import torch

    import engine
    from engine.config import load_scene
    from engine.data import load_dataset
    from engine.train import metrics
    from engine.train.trainer import eval_target

    torch.set_num_threads(args.threads)
    m = engine.load(args.eval_run)
    if args.speed_only:
        Path(args.part).write_text(json.dumps(dict(speed(m, Path(args.speed_data)), load_average=list(os.getloadavg()))))
        return 0
    sc = load_scene(Path(args.eval_run) / "config.toml")
    ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format)
    sp = ds.splits["test"]
    a, _, b = args.views.partition(":")
    bg = torch.as_tensor(ds.background, dtype=torch.float32)
    with open(args.part, "a", encoding="utf-8") as f, torch.no_grad():
        for i in range(int(a or 0), min(int(b or len(sp.cameras)), len(sp.cameras))):
            t1, c1 = time.perf_counter(), time.process_time()
            pred = m.render(sp.cameras, i, background=bg)["rgb"].clamp(0, 1)
            gt = eval_target(m, sp, i, bg)
            f.write(json.dumps({"index": i, "psnr": float(metrics.psnr(pred, gt)), "ssim": float(metrics.ssim(pred, gt)),
                                "wall_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c1,
                                "masked": bool(m.masked_eval and sp.masks is not None)}) + "\n")
            f.flush()
    return 0


def merge(args) -> int:
    run = Path(args.merge[0])
    rows = {}
    for p in args.merge[1:]:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["index"]] = r
    from engine.config import load_scene
    from engine.data import load_dataset

    sc = load_scene(run / "config.toml")
    n_test = len(load_dataset(sc.data, downscale=sc.downscale, format=sc.format).splits["test"].cameras)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in recs if "num_primitives" in r]
    v = [rows[k] for k in sorted(rows)]
    pf = {"method": "pointfield", "run_dir": str(run), "steps": recs[-1]["step"],
          "train_time_s": recs[-1].get("train_time_s"), "num_primitives": last[-1]["num_primitives"] if last else None,
          "trainer_final_eval": recs[-1] if recs[-1].get("final") else None,
          "psnr": sum(r["psnr"] for r in v) / len(v), "ssim": sum(r["ssim"] for r in v) / len(v),
          "views": len(v), "test_views_in_split": n_test, "all_test_views": len(v) == n_test,
          "masked": bool(v and v[0]["masked"]), "render_cpu_s_per_view_median": sorted(r["cpu_s"] for r in v)[len(v) // 2]}
    if args.speed_part and Path(args.speed_part).is_file():
        pf["speed"] = json.loads(Path(args.speed_part).read_text())
    res = {"pointfield": pf}
    for p in args.beside_part or []:
        r = json.loads(Path(p).read_text())
        res[r["method"]] = r
    out = {"data": sc.data and str(sc.data), "minutes": args.minutes, "results": res, "tensorf_lego_100_psnr": 31.37,
           "load_average_at_merge": list(os.getloadavg())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for name, r in res.items():
        print(f"{name:<11} {r['steps']:>6} {r['psnr']:>7.2f} dB {r['ssim']:>7.4f} on {r['views']} views")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA / "nerf_synthetic" / "lego_100"))
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--max-steps", type=int, default=100000, help="schedule length (the budget ends first)")
    ap.add_argument("--beside", nargs="*", default=["raygauss"], help="methods trained at the same time (cpu preset)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pointfield options")
    ap.add_argument("--speed-data", default=str(DATA / "nerf_synthetic" / "lego_100"),
                    help="dataset whose test cameras (scaled to 200 px) measure rays/s ('' skips)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--output", default="/tmp/kernelight_bench_pointfield")
    ap.add_argument("--out", default=None, help="JSON (default tools/results/bench_pointfield_<scene>.json)")
    ap.add_argument("--cross", action="store_true", help="the across-scenes curve (module docstring)")
    ap.add_argument("--train-scenes", nargs="*", default=[])
    ap.add_argument("--target", default=str(DATA / "dtu" / "scan24_400"))
    ap.add_argument("--finetune-minutes", nargs="*", type=float, default=[1.0, 5.0])
    ap.add_argument("--eval-views", type=int, default=0, help="cross: evaluate at most N test views (0 = all)")
    ap.add_argument("--pretrained", default=None, metavar="RUN",
                    help="cross: skip the pretraining, start from this finished pointfield run")
    ap.add_argument("--eval-run", default=None, metavar="RUN", help="evaluate a finished run (module docstring)")
    ap.add_argument("--views", default="0:", help="--eval-run: test views A:B")
    ap.add_argument("--speed-only", action="store_true", help="--eval-run: only rays/s at 200 px")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RUN PART", help="assemble --eval-run parts")
    ap.add_argument("--speed-part", default=None)
    ap.add_argument("--beside-part", nargs="*", default=None, help="worker JSONs of the methods trained beside")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.eval_run:
        return eval_run(args)
    if args.merge:
        if not args.out:
            ap.error("--merge needs --out")
        return merge(args)
    tag = Path(args.data).name
    if args.cross:
        if not args.train_scenes:
            ap.error("--cross needs --train-scenes")
        args.out = args.out or str(REPO / "tools" / "results" / "bench_pointfield_cross.json")
        return cross(args)
    args.out = args.out or str(REPO / "tools" / "results" / f"bench_pointfield_{tag}.json")
    procs, parts = [], {}
    t0 = time.time()
    for name in ["pointfield"] + list(args.beside):
        part = Path(args.output) / f"{tag}_{name}.json"
        part.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--worker", name, "--data", args.data, "--minutes", str(args.minutes),
               "--max-steps", str(args.max_steps), "--output", args.output, "--part", str(part),
               "--threads", str(args.threads), "--speed-data", args.speed_data if name == "pointfield" else ""]
        if name == "pointfield" and args.set:
            cmd += ["--set", *args.set]
        if name == "raygauss":
            cmd += ["--preset", "cpu"]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=str(REPO))))
        parts[name] = part
    for name, p in procs:
        if p.wait() != 0:
            print(f"{name} failed (exit {p.returncode})", file=sys.stderr)
            return 1
    res = {name: json.loads(parts[name].read_text()) for name in parts}
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"data": args.data, "minutes": args.minutes, "wall_s": round(time.time() - t0, 1),
           "children_cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
           "run": "methods trained at the same time, one process and one torch thread each", "results": res,
           "tensorf_lego_100_psnr": 31.37}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{'method':<11} {'steps':>6} {'primitives':>10} {'PSNR':>7} {'SSIM':>7}")
    for name, r in res.items():
        print(f"{name:<11} {r['steps']:>6} {r['num_primitives']:>10} {r['psnr']:>7.2f} {r['ssim']:>7.4f}")
    if "speed" in res["pointfield"]:
        print(f"pointfield rendering at 200 px: {res['pointfield']['speed']['rays_per_s']:.0f} rays/s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
