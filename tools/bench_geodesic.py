"""Benchmark: our heat geodesics vs potpourri3d (same process, interleaved), plus accuracy.

Speed: setup (solver construction) and per-query time (single source, median over queries) on
stanford-bunny.obj and armadillo.obj, ours (cotan; robust) vs potpourri3d
``MeshHeatMethodDistanceSolver`` (use_robust=False; True = its default). Accuracy: mean and max
error relative to the max exact distance on spot/cow (geodesic_ref, exact MMP distances).

    .venv/bin/python tools/bench_geodesic.py --out bench_geodesic.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load(path):
    import trimesh

    m = trimesh.load(str(path), process=False, maintain_order=True)
    V, F = np.asarray(m.vertices, float), np.asarray(m.faces, np.int64)
    used = np.unique(F)  # potpourri3d needs every vertex referenced; give both the same mesh
    remap = np.full(len(V), -1)
    remap[used] = np.arange(len(used))
    return V[used], remap[F]


def _has_boundary(F) -> bool:
    e = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 1).any())


def bench_speed(V, F, robust: bool, reps: int, queries: int, seed: int = 0, boundary: str = "average"):
    import potpourri3d as pp3d

    from engine.geometry.geodesic import MeshHeatSolver

    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(V), queries)
    setup = {"ours": [], "pp3d": []}
    query = {"ours": [], "pp3d": []}
    for _ in range(reps):  # interleave the two to share the machine's noise
        t0 = time.perf_counter()
        ours = MeshHeatSolver(V, F, robust=robust, boundary=boundary)
        t1 = time.perf_counter()
        theirs = pp3d.MeshHeatMethodDistanceSolver(V, F, use_robust=robust)
        t2 = time.perf_counter()
        setup["ours"].append(t1 - t0)
        setup["pp3d"].append(t2 - t1)
        ours.compute_distance(int(src[0]))
        theirs.compute_distance(int(src[0]))
        for s in src:
            a = time.perf_counter()
            ours.compute_distance(int(s))
            b = time.perf_counter()
            theirs.compute_distance(int(s))
            c = time.perf_counter()
            query["ours"].append(b - a)
            query["pp3d"].append(c - b)
    # batched: all queries in one call (ours only; potpourri3d has no batch API)
    a = time.perf_counter()
    ours.compute_distances([int(s) for s in src])
    batch = (time.perf_counter() - a) / len(src)
    med = {k: {"setup_s": float(np.median(setup[k])), "query_s": float(np.median(query[k]))} for k in setup}
    med["ours"]["query_batched_s"] = float(batch)
    med["setup_ratio"] = med["ours"]["setup_s"] / med["pp3d"]["setup_s"]
    med["query_ratio"] = med["ours"]["query_s"] / med["pp3d"]["query_s"]
    return med


def bench_accuracy(data: Path):
    import potpourri3d as pp3d

    from engine.geometry.geodesic import MeshHeatSolver

    out = {}
    for name in ("spot", "cow"):
        r = np.load(data / "geodesic_ref" / f"{name}_src0.npz")
        V, F, ex = r["V"], r["F"].astype(np.int64), r["exact_pygeodesic"]
        res = {}
        for label, d in (
            ("ours_cotan", MeshHeatSolver(V, F).compute_distance(0)),
            ("ours_robust", MeshHeatSolver(V, F, robust=True).compute_distance(0)),
            ("pp3d_plain", pp3d.MeshHeatMethodDistanceSolver(V, F, use_robust=False).compute_distance(0)),
            ("pp3d_default", pp3d.MeshHeatMethodDistanceSolver(V, F).compute_distance(0)),
        ):
            e = np.abs(d - ex) / ex.max()
            res[label] = {"mean_rel": float(e.mean()), "max_rel": float(e.max())}
        out[name] = res
    return out


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.io.atomic import atomic_write_text
    from tests.conftest import find_shared_data

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="shared data root (default ../shared/data)")
    ap.add_argument("--meshes", nargs="+", default=["stanford-bunny.obj", "armadillo.obj"])
    ap.add_argument("--reps", type=int, default=3, help="setups per solver")
    ap.add_argument("--queries", type=int, default=10, help="single-source queries per setup")
    ap.add_argument("--out", type=Path, default=Path("bench_geodesic.json"))
    args = ap.parse_args(argv)
    data = args.data or find_shared_data()
    if data is None:
        print("shared data not found (use --data)", file=sys.stderr)
        return 2
    results = {"speed": {}, "accuracy": bench_accuracy(data)}
    for mesh in args.meshes:
        V, F = _load(data / "meshes" / mesh)
        for robust in (False, True):
            key = f"{mesh}:{'robust' if robust else 'cotan'}"
            results["speed"][key] = {"n_vertices": len(V), "n_faces": len(F),
                                     **bench_speed(V, F, robust, args.reps, args.queries)}
        # potpourri3d (geometry-central's HeatMethodDistanceSolver) solves the Neumann problem only,
        # also on meshes with boundary; our default averages Neumann and Dirichlet (one more
        # factorisation and one more solve per query). The like-for-like row on boundary meshes:
        if _has_boundary(F):
            results["speed"][f"{mesh}:cotan-neumann"] = {
                "n_vertices": len(V), "n_faces": len(F),
                **bench_speed(V, F, False, args.reps, args.queries, boundary="neumann")}
    con = Console()
    t = Table(title="heat geodesics: ours vs potpourri3d (medians, same run)")
    for c in ("mesh:laplacian", "nV", "setup ours s", "setup pp3d s", "ratio", "query ours ms", "query pp3d ms",
              "ratio", "batched ours ms/q"):
        t.add_column(c)
    for k, r in results["speed"].items():
        t.add_row(k, str(r["n_vertices"]), f"{r['ours']['setup_s']:.3f}", f"{r['pp3d']['setup_s']:.3f}",
                  f"{r['setup_ratio']:.2f}", f"{1e3 * r['ours']['query_s']:.1f}", f"{1e3 * r['pp3d']['query_s']:.1f}",
                  f"{r['query_ratio']:.2f}", f"{1e3 * r['ours']['query_batched_s']:.1f}")
    con.print(t)
    t = Table(title="accuracy vs exact geodesics (relative to max distance)")
    for c in ("mesh", "method", "mean %", "max %"):
        t.add_column(c)
    for mesh, res in results["accuracy"].items():
        for label, e in res.items():
            t.add_row(mesh, label, f"{100 * e['mean_rel']:.2f}", f"{100 * e['max_rel']:.2f}")
    con.print(t)
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
