"""Benchmark data-parallel training: 1 rank vs N gloo ranks on this machine, same global batch and
the same wall-clock budget, for RayGauss and shells.

Each configuration is one ``kernelight train`` process (``--nproc N`` for N ranks, which launches
torchrun) with ``--time-budget-s`` so that every run gets the same training time; runs are
interleaved per method (1 rank, N ranks) because these machines are noisy. Reported per run:
steps, training time, rays trained per second (global batch x steps / train time; RayGauss
trains ``batch_images`` whole images per step; a 3-step warm-up run of each configuration first
compiles the kernels, so no budget pays for JIT compilation), final test PSNR (the trainer's end-of-run
evaluation), peak RSS of the largest process (ranks are separate processes), and the model size.
Efficiency = (rays/s with N ranks) / (N x rays/s with 1 rank).

On a machine with C cores, N ranks share them: each Taichi kernel already uses every core in one
process, so the N ranks mostly split the same cores. The numbers measure the overhead of the
scheme (all-reduce, duplicated Python work), not the speed-up N machines would give.

    python tools/bench_distributed.py --budget 120 --out tools/results/bench_distributed.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIC = ROOT / "scenes" / "mic" / "mic_100"

METHODS = {
    # global batch: 2 images of 50x50 per step (1 per rank with 2 ranks)
    "raygauss": ["raygauss", "--data", str(MIC), "--downscale", "2", "--preset", "cpu", "--batch-images", "2",
                 "--max-steps", "100000", "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "10"],
    # global batch: 256 rays per step (128 per rank with 2 ranks); volumetric phase only
    "shells": ["shells", "--data", str(MIC), "--downscale", "2", "--rays-per-batch", "256", "--max-steps", "100000",
               "--shell-finetune-from", "0", "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "10"],
}


def _final(run: Path) -> dict:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    fin = [r for r in recs if r.get("final")]
    return fin[-1] if fin else {}


def run_one(method: str, nproc: int, budget: float, out: Path) -> dict:
    import torch

    args = METHODS[method] + ["--time-budget-s", str(budget), "--output", str(out), "--no-progress",
                              "--name", f"{method}_{nproc}"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    # a wrapper process per run: its RUSAGE_CHILDREN peak is this run's largest process (KiB)
    wrap = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrap, sys.executable, "-m", "engine.cli", "train", *args], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t0
    rss = next((int(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KB")), 0)
    if proc.returncode:
        raise SystemExit(f"{method} x{nproc} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    runs = sorted((out / f"{method}_{nproc}" / method).glob("*"))
    run = runs[-1]
    fin = _final(run)
    ck = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    st = torch.load(ck, weights_only=True)
    steps = int(st["step"])
    train_time = float(st["train_time"])
    nparams = sum(t.numel() for t in _tensors(st["model"]) if t.is_floating_point())
    if method == "raygauss":
        from engine.data import load_dataset

        ds = load_dataset(MIC, downscale=2)
        img = ds.splits["train"].images
        rays_per_step = 2 * int(img.shape[1]) * int(img.shape[2])
    else:
        rays_per_step = 256
    return {"method": method, "ranks": nproc, "steps": steps, "train_time_s": round(train_time, 2),
            "wall_s": round(wall, 1), "rays_per_step": rays_per_step,
            "rays_per_s": round(steps * rays_per_step / max(train_time, 1e-9), 1),
            "steps_per_s": round(steps / max(train_time, 1e-9), 3),
            "test_psnr": round(float(fin.get("test_psnr", float("nan"))), 3), "test_views": fin.get("test_views"),
            "num_primitives": fin.get("num_primitives") or _last(run).get("num_primitives"),
            "model_floats": int(nparams), "peak_rss_mb_largest_process": round(rss / 1024, 1),
            "run": str(run)}


def _last(run: Path) -> dict:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if "num_primitives" in r]
    return recs[-1] if recs else {}


def _tensors(obj):
    import torch

    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--output", default="/tmp/bench_distributed_runs")
    ap.add_argument("--out", default=str(ROOT / "tools" / "results" / "bench_distributed.json"))
    a = ap.parse_args()
    # warm-up: compile (or load) every kernel both configurations use, so that no timed run pays
    # for JIT compilation inside its budget
    for m in a.methods:
        for n in (1, a.nproc):
            args = [x for x in METHODS[m]]
            args[args.index("--max-steps") + 1] = "3"
            cmd = [sys.executable, "-m", "engine.cli", "train", *args, "--output", a.output + "/warmup",
                   "--no-progress"] + (["--nproc", str(n)] if n > 1 else [])
            subprocess.run(cmd, cwd=ROOT, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    rows = []
    for m in a.methods:
        for n in (1, a.nproc):
            r = run_one(m, n, a.budget, Path(a.output))
            rows.append(r)
            print(json.dumps(r), flush=True)
    for m in a.methods:
        one = next(r for r in rows if r["method"] == m and r["ranks"] == 1)
        many = next(r for r in rows if r["method"] == m and r["ranks"] == a.nproc)
        many["speedup_vs_1"] = round(many["rays_per_s"] / one["rays_per_s"], 3)
        many["efficiency"] = round(many["rays_per_s"] / (a.nproc * one["rays_per_s"]), 3)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "budget_s": a.budget,
           "cpu_count": os.cpu_count(), "loadavg_at_end": load, "machine": platform.platform(),
           "note": "ranks are processes on the same cores (gloo on the loopback), other agents share the "
                   "machine: efficiency measures the scheme's overhead, not multi-machine speed-up",
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'method':<9} {'ranks':>5} {'steps':>6} {'rays/s':>9} {'PSNR':>7} {'eff.':>6}")
    for r in rows:
        print(f"{r['method']:<9} {r['ranks']:>5} {r['steps']:>6} {r['rays_per_s']:>9.0f} {r['test_psnr']:>7.2f} "
              f"{r.get('efficiency', 1.0):>6.2f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
