"""Benchmark images that stream from disk (engine.data.stream) against eager loading.

The dataset is lego_200 with its 100 training views listed ``--copies`` times (default 20: 2,000
training images, 1.2 GB decoded with alpha; image folders symlinked) and its 200 test views. Each
configuration runs in its own process, so peak RSS (``ru_maxrss``) is its own:

* ``all``: eager loading (every image decoded into memory; the sampler draws uniformly over all);
* ``<N>MB``: streaming with an N MB image cache; the ray sampler draws from working sets of half
  the images that fit, refreshed once a set has served ~1/16 of its pixels (at least 25 steps),
  the next set decoded in the background;
* ``<N>MB uniform``: streaming without working sets (every batch spans all images): what the
  working sets avoid.

Per configuration: dataset load time, the first batch (which waits for the first working set),
the ray sampler's rays/s over the next ``--steps`` batches of ``--rays`` rays (at least three
working-set periods, so the decoding of later sets is counted; the data path of a ray method's
training step: image/pixel draw, ray generation, colour gather), the evaluation walk (every test view in order, as ``kernelight eval`` reads them)
in images/s, cache statistics and peak RSS. Wall and process CPU time are both reported; the
load average is recorded.

    python tools/bench_streaming.py --out tools/results/bench_streaming.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ["all", "1024MB", "256MB", "64MB", "64MB uniform"]


def many_copies(src: Path, dst: Path, copies: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for d in ("train", "test"):
        if not (dst / d).exists():
            (dst / d).symlink_to(src / d)
    for split, k in (("train", copies), ("test", 1)):
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        meta["frames"] = [dict(f) for _ in range(k) for f in meta["frames"]]
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta))
    return dst


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(data: str, config: str, steps: int, rays: int) -> dict:
    import torch

    from engine.data import RaySampler, load_dataset
    from engine.data.sampler import iter_images

    torch.set_num_threads(1)
    cache, uniform = config.split()[0], config.endswith("uniform")
    base = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    ds = load_dataset(data, image_cache=cache)
    load = (time.perf_counter() - t0, time.process_time() - c0)
    rss_load = rss_mb()
    train = ds.train
    s = RaySampler(train, rays, seed=0, jitter=True, **({"working_set": None} if uniform else {}))
    n_steps = min(steps, 3) if uniform else max(steps, 3 * s.refresh_every if s.working_set else 0)
    t0, c0 = time.perf_counter(), time.process_time()
    s.sample()                                           # waits for the first working set
    first = (time.perf_counter() - t0, time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        s.sample()
    samp = (time.perf_counter() - t0, time.process_time() - c0)
    test = ds.splits["test"]
    t0, c0 = time.perf_counter(), time.process_time()
    k = 0
    for _i, _o, _d, rgb, _m in iter_images(test):
        k += int(rgb.shape[0] > 0)
    ev = (time.perf_counter() - t0, time.process_time() - c0)
    out = {"config": config, "streaming": train.streaming, "train_images": len(train),
           "decoded_mb": ds.metadata["image_cache"]["decoded_mb"], "working_set": s.working_set,
           "refresh_every": s.refresh_every if s.working_set else None,
           "load_s": round(load[0], 2), "load_cpu_s": round(load[1], 2),
           "first_batch_s": round(first[0], 2), "first_batch_cpu_s": round(first[1], 2),
           "sample_steps": n_steps, "rays_per_step": rays,
           "rays_per_s": round(n_steps * rays / samp[0]), "rays_per_cpu_s": round(n_steps * rays / max(samp[1], 1e-9)),
           "eval_views": k, "eval_images_per_s": round(k / ev[0], 1), "eval_images_per_cpu_s": round(k / max(ev[1], 1e-9), 1),
           "rss_base_mb": round(base), "rss_after_load_mb": round(rss_load), "rss_peak_mb": round(rss_mb())}
    if ds.image_cache is not None:
        out["cache"] = ds.image_cache.stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "data" / "nerf_synthetic" / "lego_200"))
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--work", default="/tmp/kernelight_bench_streaming")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--out", default=str(ROOT / "tools" / "results" / "bench_streaming.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    data = Path(a.work) / f"lego_200_x{a.copies}"
    if a.child:
        print(json.dumps(child(str(data), a.child, a.steps, a.rays)), flush=True)
        return
    many_copies(Path(a.src), data, a.copies)
    rows = []
    for cfg in a.configs:
        r = subprocess.run([sys.executable, __file__, "--child", cfg, "--copies", str(a.copies), "--work", a.work,
                            "--steps", str(a.steps), "--rays", str(a.rays)], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=1800)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"configuration {cfg!r} failed")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["loadavg"] = os.getloadavg()
        rows.append(row)
        print(f"{cfg:>14}: load {row['load_s']:6.1f} s  first batch {row['first_batch_s']:5.1f} s  sampler {row['rays_per_s']:>9,} rays/s "
              f"({row['rays_per_cpu_s']:>9,}/CPU s)  eval {row['eval_images_per_s']:6.1f} img/s  "
              f"peak RSS {row['rss_peak_mb']:>5} MB", flush=True)
    doc = {"dataset": f"lego_200 train x{a.copies} ({a.copies * 100} images) + 200 test views", "rows": rows,
           "steps": a.steps, "rays": a.rays, "cpu_count": os.cpu_count(), "machine": platform.platform(),
           "loadavg_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
