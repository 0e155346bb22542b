"""Benchmark: our heat geodesics vs potpourri3d (same process, interleaved), speed and accuracy.

Speed: setup (solver construction) and per-query time (single source, median over queries) on
stanford-bunny.obj and armadillo.obj: ours with its defaults (robust = intrinsic Delaunay, Neumann
boundary) vs potpourri3d ``MeshHeatMethodDistanceSolver`` with its defaults (use_robust=True),
and the plain cotan pair (robust=False / use_robust=False).

Accuracy against exact polyhedral geodesics (MMP): on stanford-bunny and armadillo from
``--sources`` random vertices (seed 0), exact distances computed here with pygeodesic (the same
MMP code as shared/data/geodesic_ref, ~2 s per source); on spot and cow from vertex 0
(geodesic_ref). Two mean errors: per vertex, ``mean |d - exact| / exact`` (vertices with
exact > 0), and relative to the maximum, ``mean |d - exact| / max(exact)``; plus the max of the
latter. Averaged over the sources.

    .venv/bin/python tools/bench_geodesic.py --out tools/results/bench_geodesic.json
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


def bench_speed(V, F, robust: bool, reps: int, queries: int, seed: int = 0):
    import potpourri3d as pp3d

    from engine.geometry.geodesic import MeshHeatSolver

    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(V), queries)
    setup = {"ours": [], "pp3d": []}
    query = {"ours": [], "pp3d": []}
    for _ in range(reps):  # interleave the two to share the machine's noise
        t0 = time.perf_counter()
        ours = MeshHeatSolver(V, F, robust=robust)
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


def _errors(d, ex):
    m = ex > 0
    e = np.abs(d - ex)
    return {"per_vertex": float(np.mean(e[m] / ex[m])), "mean_rel": float(e.mean() / ex.max()),
            "max_rel": float(e.max() / ex.max())}


def exact_distances(V, F, sources):
    """Exact polyhedral geodesic distances ``(len(sources), n)`` (MMP, pygeodesic)."""
    from pygeodesic import geodesic

    alg = geodesic.PyGeodesicAlgorithmExact(np.ascontiguousarray(V, float), np.ascontiguousarray(F, np.int32))
    return np.array([alg.geodesicDistances(np.array([int(s)]), None)[0] for s in sources])


def bench_accuracy(V, F, sources, exact):
    """Mean over sources of the errors of ours (default, plain) and potpourri3d's (default, plain)."""
    import potpourri3d as pp3d

    from engine.geometry.geodesic import MeshHeatSolver

    solvers = {
        "ours_default": MeshHeatSolver(V, F),
        "ours_plain": MeshHeatSolver(V, F, robust=False),
        "pp3d_default": pp3d.MeshHeatMethodDistanceSolver(V, F),
        "pp3d_plain": pp3d.MeshHeatMethodDistanceSolver(V, F, use_robust=False),
    }
    out = {}
    for label, solver in solvers.items():
        errs = [_errors(np.asarray(solver.compute_distance(int(s))), ex) for s, ex in zip(sources, exact)]
        out[label] = {k: float(np.mean([e[k] for e in errs])) for k in errs[0]}
    out["sources"] = [int(s) for s in sources]
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
    ap.add_argument("--sources", type=int, default=6, help="sources (exact MMP distances) per mesh for accuracy")
    ap.add_argument("--out", type=Path, default=Path("bench_geodesic.json"))
    args = ap.parse_args(argv)
    data = args.data or find_shared_data()
    if data is None:
        print("shared data not found (use --data)", file=sys.stderr)
        return 2
    results = {"speed": {}, "accuracy": {}}
    for name in ("spot", "cow"):
        r = np.load(data / "geodesic_ref" / f"{name}_src0.npz")
        results["accuracy"][name] = bench_accuracy(r["V"], r["F"].astype(np.int64), [0], r["exact_pygeodesic"][None])
    try:
        import pygeodesic  # noqa: F401
    except ImportError:
        pygeodesic = None
        print("pygeodesic is not installed (pip install -c constraints.txt '.[bench]'): no exact distances, "
              "accuracy only on spot/cow", file=sys.stderr)
    for mesh in args.meshes:
        V, F = _load(data / "meshes" / mesh)
        if pygeodesic is not None:
            src = np.random.default_rng(0).integers(0, len(V), args.sources)
            t0 = time.perf_counter()
            ex = exact_distances(V, F, src)
            print(f"{mesh}: exact distances from {len(src)} sources in {time.perf_counter() - t0:.1f} s")
            results["accuracy"][mesh] = bench_accuracy(V, F, src, ex)
        for robust in (True, False):
            key = f"{mesh}:{'default' if robust else 'plain'}"
            results["speed"][key] = {"n_vertices": len(V), "n_faces": len(F),
                                     **bench_speed(V, F, robust, args.reps, args.queries)}
    con = Console(width=200)
    t = Table(title="heat geodesics: ours vs potpourri3d (medians, same run; default = robust intrinsic Delaunay "
                    "for both, plain = cotan)")
    for c in ("mesh:laplacian", "nV", "setup ours s", "setup pp3d s", "ratio", "query ours ms", "query pp3d ms",
              "ratio", "batched ours ms/q"):
        t.add_column(c)
    for k, r in results["speed"].items():
        t.add_row(k, str(r["n_vertices"]), f"{r['ours']['setup_s']:.3f}", f"{r['pp3d']['setup_s']:.3f}",
                  f"{r['setup_ratio']:.2f}", f"{1e3 * r['ours']['query_s']:.1f}", f"{1e3 * r['pp3d']['query_s']:.1f}",
                  f"{r['query_ratio']:.2f}", f"{1e3 * r['ours']['query_batched_s']:.1f}")
    con.print(t)
    t = Table(title="accuracy vs exact geodesics (mean over sources): per vertex = mean |d-exact|/exact; "
                    "vs max = mean |d-exact| / max exact")
    for c in ("mesh", "method", "per vertex %", "vs max %", "max vs max %"):
        t.add_column(c)
    for mesh, res in results["accuracy"].items():
        for label, e in res.items():
            if label != "sources":
                t.add_row(mesh, label, f"{100 * e['per_vertex']:.3f}", f"{100 * e['mean_rel']:.3f}",
                          f"{100 * e['max_rel']:.2f}")
    con.print(t)
    summary = {}
    for mesh in args.meshes:
        acc, sp_ = results["accuracy"].get(mesh), results["speed"][f"{mesh}:default"]
        summary[mesh] = {
            "ours_per_vertex": acc and acc["ours_default"]["per_vertex"],
            "ours_vs_max": acc and acc["ours_default"]["mean_rel"],
            "pp3d_per_vertex": acc and acc["pp3d_default"]["per_vertex"],
            "pp3d_vs_max": acc and acc["pp3d_default"]["mean_rel"],
            "ours_query_s": sp_["ours"]["query_s"], "pp3d_query_s": sp_["pp3d"]["query_s"],
            "query_ratio": sp_["query_ratio"],
        }
    results["summary_defaults"] = summary
    t = Table(title="defaults (ours: robust; potpourri3d: use_robust=True): the issue-19 targets")
    for c in ("mesh", "ours per-vertex %", "ours vs-max %", "pp3d per-vertex %", "pp3d vs-max %",
              "query ours ms", "query pp3d ms", "ratio"):
        t.add_column(c)
    for mesh, r in summary.items():
        f = (lambda v: "-" if v is None else f"{100 * v:.3f}")
        t.add_row(mesh, f(r["ours_per_vertex"]), f(r["ours_vs_max"]), f(r["pp3d_per_vertex"]), f(r["pp3d_vs_max"]),
                  f"{1e3 * r['ours_query_s']:.1f}", f"{1e3 * r['pp3d_query_s']:.1f}", f"{r['query_ratio']:.2f}")
    con.print(t)
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
