#!/usr/bin/env python
"""Benchmark K-nearest-within-radius queries: our Taichi grid (shaders.knn) beside scipy's cKDTree
and open3d's hybrid KNN search, in the same process, on the same points, queries and radius.

Scenes (``--points`` points, ``--queries`` queries, float32, seeded):

* ``uniform``: points and queries uniform in the unit cube;
* ``surface``: points on a unit sphere and a torus (a scanned object's surface), queries = surface
  points pushed off the surface by Gaussian noise (sd = radius / 2), as samples placed around a
  surface by GPF's log sampling are.

The radius of each scene is set from its density so that a typical query has ~8-30 points within
it (uniform: 16 expected in the box interior; surface: ~30 for a query on the surface, fewer
off it); the measured median
and 10th / 90th percentiles of the count (cKDTree.query_ball_point on 20,000 queries) are in the
JSON and the table.

Peers: ``scipy.spatial.cKDTree(points)`` then ``.query(queries, k=K, distance_upper_bound=r,
workers=--threads)``; open3d ``o3d.core.nns.NearestNeighborSearch(points)``, ``.hybrid_index(r)``
then ``.hybrid_search(queries, r, K)`` (the tensor API's hybrid search, on the CPU device).
Ours: ``shaders.knn.build_grid(points, r)`` then ``knn_query(grid, queries, K)``. Thread counts:
``OMP_NUM_THREADS`` and ``TI_CPU_MAX_NUM_THREADS`` are set to ``--threads`` before anything is
imported (torch runs single-threaded beside Taichi, as the runtime sets it).

Timing: ``--repeats`` rounds; in each round every library builds and queries once, the order
rotating between rounds. We report median and best wall time, and median process CPU time, of the
build and of the query, and ratios peer / ours (> 1: ours is faster). The machines these numbers
come from are shared (load average in the JSON): compare ratios from one run, not absolute times.

Agreement: each peer's answers are compared with ours per query: same number of neighbours within
the radius, the same sorted distances (rel. 1e-5 on d^2), and the same index set once neighbours
at tied distances (within that tolerance) are allowed to swap. The counts of queries that differ
are in the JSON (a query at the radius within float32 rounding can legitimately differ).

Usage::

    .venv/bin/python tools/bench_knn.py [--points 100000] [--queries 1000000] [--k 8]
        [--scenes uniform surface] [--threads 2] [--repeats 5] [--out tools/results/bench_knn.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_scene(name: str, n: int, nq: int, seed: int = 0):
    """(points (n,3) float32, queries (nq,3) float32, radius) numpy arrays."""
    import numpy as np

    g = np.random.default_rng(seed)
    if name == "uniform":
        pts = g.random((n, 3))
        q = g.random((nq, 3))
        r = (16.0 / (n * 4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)     # 16 points expected in reach
        return pts.astype(np.float32), q.astype(np.float32), r
    if name == "surface":
        def sample(m):
            ns = int(m * 0.6)
            s = g.normal(size=(ns, 3))
            s = s / np.linalg.norm(s, axis=1, keepdims=True)
            u, v = g.random(m - ns) * 2 * math.pi, g.random(m - ns) * 2 * math.pi
            R, rr = 0.8, 0.25                                         # torus beside the sphere
            t = np.stack([(R + rr * np.cos(v)) * np.cos(u) + 2.2, (R + rr * np.cos(v)) * np.sin(u),
                          rr * np.sin(v)], 1)
            return np.concatenate([s, t])
        area = 0.6 * 4 * math.pi + 0.4 * 4 * math.pi ** 2 * 0.8 * 0.25  # per-point share of each surface
        pts = sample(n)
        r = math.sqrt(30.0 * area / (n * math.pi))                   # ~30 points in reach on the surface
        q = sample(nq) + g.normal(scale=r / 2, size=(nq, 3))
        return pts.astype(np.float32), q.astype(np.float32), r
    raise SystemExit(f"unknown scene {name!r} (uniform, surface)")


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run_ours(pts_t, q_t, r, k):
    from shaders.knn import build_grid, knn_query

    tb, cb, grid = _timed(lambda: build_grid(pts_t, r))
    tq, cq, (idx, d2) = _timed(lambda: knn_query(grid, q_t, k))
    return (tb, cb, tq, cq), (idx.numpy(), d2.numpy())


def run_scipy(pts, q, r, k, threads):
    import numpy as np
    from scipy.spatial import cKDTree

    tb, cb, tree = _timed(lambda: cKDTree(pts))
    tq, cq, (d, i) = _timed(lambda: tree.query(q, k=k, distance_upper_bound=r, workers=threads))
    i = np.where(i >= len(pts), -1, i).astype(np.int32)
    return (tb, cb, tq, cq), (i, np.where(np.isfinite(d), d * d, np.inf))


def run_open3d(pts, q, r, k):
    import numpy as np
    import open3d as o3d

    def build():
        nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(pts))
        if not nns.hybrid_index(r):
            raise RuntimeError("open3d hybrid_index failed")
        return nns
    tb, cb, nns = _timed(build)
    tq, cq, (idx, dist, cnt) = _timed(lambda: nns.hybrid_search(o3d.core.Tensor(q), r, k))
    i = idx.numpy().astype(np.int32).reshape(len(q), k)
    d = dist.numpy().astype(np.float64).reshape(len(q), k)
    c = cnt.numpy().reshape(-1)
    valid = np.arange(k)[None] < c[:, None]
    return (tb, cb, tq, cq), (np.where(valid, i, -1), np.where(valid, d, np.inf))


def compare(ours, peer, rtol=1e-5):
    """Queries where the peer differs from ours: in the count, in the distances, in the index set
    (neighbours at tied distances may swap)."""
    import numpy as np

    oi, od = ours
    pi, pd = peer
    od = od.astype(np.float64)
    n_o, n_p = (oi >= 0).sum(1), (pi >= 0).sum(1)
    count = n_o != n_p
    fin = (oi >= 0) & (pi >= 0)
    scale = np.where(fin, np.maximum(np.abs(od), 1e-30), 1.0)
    diff = np.abs(np.where(fin, od, 0.0) - np.where(fin, pd, 0.0))
    dist = (diff > rtol * scale).any(1) & ~count
    same_idx = np.sort(np.where(oi >= 0, oi, -1), 1) == np.sort(np.where(pi >= 0, pi, -1), 1)
    rows_idx = ~same_idx.all(1) & ~count & ~dist
    # an index-set difference is a tie when the last (K-th) distances agree and the differing
    # neighbours are all at that distance: accept those
    last_o = np.where(n_o > 0, od[np.arange(len(od)), np.maximum(n_o - 1, 0)], 0.0)
    tie_ok = np.zeros(len(od), bool)
    for qi in np.nonzero(rows_idx)[0]:
        a, b = set(oi[qi][oi[qi] >= 0].tolist()), set(pi[qi][pi[qi] >= 0].tolist())
        swap = a ^ b
        dd = {int(j): float(x) for j, x in zip(oi[qi], od[qi]) if j >= 0}
        dd.update({int(j): float(x) for j, x in zip(pi[qi], pd[qi]) if j >= 0})
        tie_ok[qi] = all(abs(dd[j] - last_o[qi]) <= rtol * max(last_o[qi], 1e-30) for j in swap)
    return {"count_differs": int(count.sum()), "distances_differ": int(dist.sum()),
            "index_sets_differ": int((rows_idx & ~tie_ok).sum()), "tied_swaps": int((rows_idx & tie_ok).sum())}


def bench_scene(name, n, nq, k, threads, repeats):
    import numpy as np
    import torch
    from scipy.spatial import cKDTree

    pts, q, r = make_scene(name, n, nq)
    pts_t, q_t = torch.from_numpy(pts), torch.from_numpy(q)
    sub = q[:: max(1, nq // 20000)]
    counts = cKDTree(pts).query_ball_point(sub, r, return_length=True, workers=threads)
    runners = {"ours": lambda: run_ours(pts_t, q_t, r, k),
               "scipy_ckdtree": lambda: run_scipy(pts, q, r, k, threads),
               "open3d_hybrid": lambda: run_open3d(pts, q, r, k)}
    run_ours(pts_t[:1000], q_t[:1000], r, k)           # compile the kernel before timing
    names = list(runners)
    times = {m: [] for m in names}
    answers = {}
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for m in order:
            t, ans = runners[m]()
            times[m].append(t)
            answers[m] = ans
            print(f"  {name} round {rep + 1}/{repeats} {m}: build {t[0]:.3f} s, query {t[2]:.3f} s "
                  f"(cpu {t[3]:.3f} s)", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    res = {"scene": name, "points": n, "queries": nq, "k": k, "radius": r,
           "in_radius": {"median": float(np.median(counts)), "p10": float(np.percentile(counts, 10)),
                         "p90": float(np.percentile(counts, 90)), "sampled_queries": int(len(sub))},
           "found_mean": float((answers["ours"][0] >= 0).sum(1).mean()), "libs": {}}
    for m in names:
        ts = times[m]
        res["libs"][m] = {
            "build_wall_median_s": med([t[0] for t in ts]), "build_wall_best_s": min(t[0] for t in ts),
            "build_cpu_median_s": med([t[1] for t in ts]),
            "query_wall_median_s": med([t[2] for t in ts]), "query_wall_best_s": min(t[2] for t in ts),
            "query_cpu_median_s": med([t[3] for t in ts]),
            "total_wall_median_s": med([t[0] + t[2] for t in ts]),
            "total_cpu_median_s": med([t[1] + t[3] for t in ts]),
            "wall_s_all": [[round(t[0], 4), round(t[2], 4)] for t in ts],
        }
    o = res["libs"]["ours"]
    for m in names[1:]:
        p = res["libs"][m]
        p["ratio_peer_over_ours"] = {
            "query_wall_median": p["query_wall_median_s"] / o["query_wall_median_s"],
            "query_wall_best": p["query_wall_best_s"] / o["query_wall_best_s"],
            "query_cpu_median": p["query_cpu_median_s"] / o["query_cpu_median_s"],
            "build_wall_median": p["build_wall_median_s"] / o["build_wall_median_s"],
            "total_wall_median": p["total_wall_median_s"] / o["total_wall_median_s"],
            "total_cpu_median": p["total_cpu_median_s"] / o["total_cpu_median_s"],
        }
        p["agreement_with_ours"] = compare(answers["ours"], answers[m])
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Scenes, peers, timing and agreement rules: see the module docstring.")
    ap.add_argument("--points", type=int, default=100_000, help="points per scene (default 100000)")
    ap.add_argument("--queries", type=int, default=1_000_000, help="query samples (default 1000000)")
    ap.add_argument("--k", type=int, default=8, help="neighbours per query (default 8)")
    ap.add_argument("--scenes", nargs="+", default=["uniform", "surface"], choices=["uniform", "surface"])
    ap.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--out", type=Path, default=Path("bench_knn.json"), help="JSON output")
    args = ap.parse_args(argv)
    if args.points < 1 or args.queries < 1 or args.repeats < 1 or args.threads < 1 or args.k < 1:
        ap.error("--points, --queries, --k, --threads and --repeats must be >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["TI_CPU_MAX_NUM_THREADS"] = str(args.threads)

    import open3d as o3d
    import scipy
    import taichi as ti
    import torch

    from shaders import runtime

    arch = runtime.init()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    scenes = [bench_scene(s, args.points, args.queries, args.k, args.threads, args.repeats) for s in args.scenes]
    result = {
        "command": "tools/bench_knn.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "arch": arch, "threads": args.threads, "repeats": args.repeats, "cpu_count": os.cpu_count(),
        "loadavg_start": load0, "loadavg_end": os.getloadavg(), "seconds": time.perf_counter() - t0,
        "versions": {"taichi": ".".join(map(str, ti.__version__)), "torch": torch.__version__,
                     "scipy": scipy.__version__, "open3d": o3d.__version__},
        "open3d_api": "o3d.core.nns.NearestNeighborSearch.hybrid_index + hybrid_search (CPU tensors)",
        "scenes": scenes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(f"K={args.k}, {args.points} points, {args.queries} queries, {args.threads} threads, "
          f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} (shared machine: read the ratios)")
    hdr = (f"{'scene':8} {'library':14} {'build s':>8} {'query s':>8} {'query cpu s':>11} "
           f"{'query x':>8} {'cpu x':>6} {'total x':>8}  agreement (count/dist/index differ, tied swaps)")
    print(hdr)
    print("-" * len(hdr))
    for s in scenes:
        for m, v in s["libs"].items():
            rt = v.get("ratio_peer_over_ours")
            ag = v.get("agreement_with_ours")
            extra = (f"{rt['query_wall_median']:8.2f} {rt['query_cpu_median']:6.2f} {rt['total_wall_median']:8.2f}  "
                     f"{ag['count_differs']}/{ag['distances_differ']}/{ag['index_sets_differ']}, {ag['tied_swaps']}"
                     if rt else f"{'':8} {'':6} {'':8}  (reference)")
            print(f"{s['scene']:8} {m:14} {v['build_wall_median_s']:8.3f} {v['query_wall_median_s']:8.3f} "
                  f"{v['query_cpu_median_s']:11.3f} {extra}")
        c = s["in_radius"]
        print(f"{'':8} radius {s['radius']:.4f}: points within it median {c['median']:.0f} "
              f"(p10 {c['p10']:.0f}, p90 {c['p90']:.0f}); ours found {s['found_mean']:.2f} of {args.k} on average")
    print(f"\nx = peer time / ours (> 1: ours faster), medians of {args.repeats} interleaved rounds; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
