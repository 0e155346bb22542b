"""GVGEN training-set build: build time, per-object fit time and fitted PSNR.

Two ways to run it:

    # summarise a build that already ran (its --summary JSON and dataset.json)
    python tools/bench_gvgen_dataset.py --from /tmp/kl/gvgen/primitives \
        --summary /tmp/kl/gvgen/logs/primitives_summary.json

    # or build a set now (the same code path as 'kernelight gvgen dataset') and summarise it
    python tools/bench_gvgen_dataset.py --build DIR --shapes sphere,torus --colours red,blue --workers 2

Per object: render seconds (the engine's BVH ray caster, all views), fit seconds (the gvolume
method's steps), total seconds and process CPU seconds, fitted PSNR on the object's test views.
Aggregates per shape and per size, plus wall / CPU time of the whole build and the load average
(the machine is shared: wall times are only comparable within one run). Writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _stats(xs):
    xs = [float(x) for x in xs]
    if not xs:
        return None
    return {"n": len(xs), "mean": round(statistics.fmean(xs), 3), "median": round(statistics.median(xs), 3),
            "min": round(min(xs), 3), "max": round(max(xs), 3)}


def summarise(folder: Path, summary: dict | None) -> dict:
    doc = json.loads((folder / "dataset.json").read_text())
    recs = {r["id"]: r for r in (summary or {}).get("objects", [])}
    rows = []
    for o in doc["objects"]:
        if o.get("status") != "done":
            continue
        r = dict(recs.get(o["id"], {}))
        r.update({"id": o["id"], "shape": o["shape"], "colour": o["colour"], "size": o["size"], "split": o["split"],
                  "psnr": o.get("psnr", r.get("psnr")), "fit_seconds": o.get("fit_seconds", r.get("fit_seconds"))})
        rows.append(r)
    out = {"dataset": str(folder), "N": doc["N"], "image_size": doc["image_size"], "views": doc["views"],
           "build_options": doc.get("build"), "objects_done": len(rows), "objects_total": len(doc["objects"]),
           "psnr": _stats(r["psnr"] for r in rows), "fit_seconds": _stats(r["fit_seconds"] for r in rows),
           "render_seconds": _stats(r["render_seconds"] for r in rows if "render_seconds" in r),
           "object_seconds": _stats(r["seconds"] for r in rows if "seconds" in r),
           "object_cpu_seconds": _stats(r["cpu_seconds"] for r in rows if "cpu_seconds" in r),
           "per_shape": {s: {"psnr": _stats(r["psnr"] for r in rows if r["shape"] == s),
                             "fit_seconds": _stats(r["fit_seconds"] for r in rows if r["shape"] == s)}
                         for s in doc["shapes"]},
           "per_size": {s: {"psnr": _stats(r["psnr"] for r in rows if r["size"] == s)} for s in doc["sizes"]},
           "objects": rows}
    if summary:
        out["build"] = {k: summary.get(k) for k in ("wall_seconds", "cpu_seconds_parent", "cpu_seconds_children",
                                                    "workers", "built", "skipped", "total")}
        if summary.get("built"):
            out["build"]["wall_seconds_per_object"] = round(summary["wall_seconds"] / summary["built"], 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--from", dest="src", type=Path, help="a finished (or partial) dataset folder")
    g.add_argument("--build", type=Path, help="build a dataset here first")
    ap.add_argument("--summary", type=Path, help="the build's --summary JSON (with --from)")
    ap.add_argument("--shapes", default="sphere,torus,cone")
    ap.add_argument("--colours", default="red,blue")
    ap.add_argument("--sizes", default="large")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--N", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--command", default=None, help="the command that built the set (recorded in the JSON)")
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "results" / "bench_gvgen_dataset.json")
    a = ap.parse_args(argv)
    load_before = os.getloadavg()
    summary = None
    if a.build:
        from engine.methods.gvgen.dataset import BuildOptions, build

        opts = BuildOptions(N=a.N, steps=a.steps, views_train=a.views, shapes=a.shapes.split(","),
                            colours=a.colours.split(","), sizes=a.sizes.split(","))
        summary = build(a.build, opts, workers=a.workers, progress=True)
        folder = a.build
    else:
        folder = a.src
        if a.summary:
            summary = json.loads(a.summary.read_text())
    res = summarise(folder, summary)
    res.update({"command": a.command, "loadavg_at_summary": [round(x, 2) for x in os.getloadavg()],
                "loadavg_before": [round(x, 2) for x in load_before], "cpu_count": os.cpu_count(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    from engine.io.atomic import atomic_write

    with atomic_write(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
    p, f = res["psnr"], res["fit_seconds"]
    print(f"{res['objects_done']}/{res['objects_total']} objects; fitted PSNR mean {p and p['mean']} dB "
          f"(min {p and p['min']}, max {p and p['max']}); fit seconds mean {f and f['mean']} (max {f and f['max']})")
    for s, v in res["per_shape"].items():
        if v["psnr"]:
            print(f"  {s:10s} PSNR {v['psnr']['mean']:6.2f} dB   fit {v['fit_seconds']['mean']:6.1f} s")
    if res.get("build"):
        print(f"build: {res['build']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
