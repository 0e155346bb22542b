#!/usr/bin/env python
"""Benchmark the Taichi BVH (shaders/bvh.py) against Embree (open3d RaycastingScene).

For each mesh: build time (ours vs Embree), closest-hit throughput on ~1M primary rays of an
orbit camera (8 views around the mesh), and the time ratio ours / Embree (issue 19 targets:
build and trace <= 1.5). Both run in the same process, interleaved, repeated ``--repeats``
times; the best (minimum) time of each is reported, as the least disturbed by other processes on
a shared machine, plus the ratio of medians and the ratio of process CPU time (all threads),
which is less sensitive to load.
Taichi compile time (first call, offline cache permitting) is reported apart.
Also: build and refit time of the AABB BVH over 1M random boxes, and a segment-query rate.

Embree builds lazily on the first ``cast_rays``: its build time is (first cast) - (an
immediately following identical cast), median of the repeats (build times are medians). Our
build is ``build_triangle_bvh`` (everything closest_hit needs). Build ratios are reported on
wall time (median) and on process CPU time (median; Embree's CPU build time is the same
difference of two casts), the latter less sensitive to other processes on a shared machine.
Tree quality: the SAH cost of our traversal tree (``shaders.bvh_sah_refit.sah_cost``, traversal and
intersection cost 1: expected node visits + triangle tests of a ray hitting the root box).

Usage::

    .venv/bin/python tools/bench_bvh.py [--data ../shared/data] [--rays 1000000] \
        [--out bench_bvh.json] [--repeats 5]
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

MESHES = ("meshes/stanford-bunny.obj", "meshes/armadillo.obj")


def orbit_rays(vertices, n_rays: int, views: int = 8, fov_deg: float = 40.0):
    """Primary rays of ``views`` pinhole cameras on a circle around the mesh (30 deg elevation).

    Each view is S x S pixels with S = round(sqrt(n_rays / views)); rays are ordered view by
    view, row by row (so consecutive rays are coherent). Returns origins, unit dirs (R, 3).
    """
    import torch

    v = vertices.double()
    center = 0.5 * (v.min(0).values + v.max(0).values)
    radius = float((v - center).norm(dim=1).max())
    dist = radius / math.sin(math.radians(fov_deg) / 2) * 1.05
    s = max(1, round(math.sqrt(n_rays / views)))
    f = 0.5 * s / math.tan(math.radians(fov_deg) / 2)
    jj, ii = torch.meshgrid(torch.arange(s, dtype=torch.float64),
                            torch.arange(s, dtype=torch.float64), indexing="ij")
    cam_dirs = torch.stack([(ii + 0.5 - s / 2) / f, (jj + 0.5 - s / 2) / f,
                            torch.ones_like(ii)], -1).reshape(-1, 3)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    origins, dirs = [], []
    for k in range(views):
        az = 2 * math.pi * k / views
        el = math.radians(30.0)
        eye = center + dist * torch.tensor([math.cos(el) * math.sin(az), math.sin(el),
                                            math.cos(el) * math.cos(az)], dtype=torch.float64)
        fwd = center - eye
        fwd = fwd / fwd.norm()
        right = torch.linalg.cross(fwd, up)
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        rot = torch.stack([right, down, fwd], 1)  # OpenCV camera axes as columns
        d = cam_dirs @ rot.T
        dirs.append(d / d.norm(dim=1, keepdim=True))
        origins.append(eye.expand(d.shape[0], 3))
    return torch.cat(origins).float().contiguous(), torch.cat(dirs).float().contiguous()


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _timed_cpu(fn):
    """(wall s, process CPU s summed over all threads, result)."""
    c = time.process_time()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def bench_mesh(path: Path, n_rays: int, repeats: int) -> dict:
    import numpy as np
    import open3d as o3d
    import torch
    import trimesh

    from shaders import bvh
    from shaders.bvh_sah_refit import sah_cost

    mesh = trimesh.load(path, force="mesh", process=False)
    V = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    F = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int32)
    o, d = orbit_rays(V, n_rays)
    rays = o3d.core.Tensor(torch.cat([o, d], 1).numpy())

    # Taichi compile (first call; the offline cache may make it short) -- excluded from timings.
    t_compile, _ = _timed(lambda: bvh.closest_hit(bvh.build_triangle_bvh(V[:3], F[:1] * 0 +
                                                  torch.tensor([0, 1, 2], dtype=torch.int32)),
                                                  o[:8], d[:8]))
    ours_build, embree_build, ours_cast, embree_cast = [], [], [], []
    ours_cpu, embree_cpu, lbvh_cast = [], [], []
    ours_build_cpu, embree_build_cpu = [], []
    # the alternative traversal tree (collapsed LBVH), kept for the record of the choice
    tbvh_lbvh = bvh.build_triangle_bvh(V, F, builder="lbvh")
    bvh.closest_hit(tbvh_lbvh, o[:8], d[:8])
    res_ours = res_embree = None
    for _ in range(repeats):
        tb_time, tb_cpu, tbvh = _timed_cpu(lambda: bvh.build_triangle_bvh(V, F))
        ours_build.append(tb_time)
        ours_build_cpu.append(tb_cpu)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(V.numpy()),
                            o3d.core.Tensor(F.numpy().astype(np.uint32)))
        first, first_cpu, res_embree = _timed_cpu(lambda: scene.cast_rays(rays))
        second, cpu, res_embree = _timed_cpu(lambda: scene.cast_rays(rays))
        embree_cast.append(second)
        embree_cpu.append(cpu)
        embree_build.append(max(first - second, 0.0))
        embree_build_cpu.append(max(first_cpu - cpu, 0.0))
        t_ours, cpu, res_ours = _timed_cpu(lambda: bvh.closest_hit(tbvh, o, d))
        ours_cast.append(t_ours)
        ours_cpu.append(cpu)
        t_lbvh, _cpu, _res = _timed_cpu(lambda: bvh.closest_hit(tbvh_lbvh, o, d))
        lbvh_cast.append(t_lbvh)
    t, face, _uv = res_ours
    et = torch.from_numpy(res_embree["t_hit"].numpy().copy())
    ef = torch.from_numpy(res_embree["primitive_ids"].numpy().astype(np.int64))
    e_hit = torch.isfinite(et)
    o_hit = face >= 0
    both = e_hit & o_hit
    rel = ((t[both] - et[both]).abs() / et[both].clamp_min(1e-12)) if both.any() else torch.zeros(1)
    med = min  # best of the interleaved repeats: the least disturbed by other processes
    return {
        "mesh": path.name,
        "faces": int(F.shape[0]),
        "rays": int(o.shape[0]),
        "hit_fraction": float(o_hit.float().mean()),
        "hit_miss_disagreements": int((e_hit != o_hit).sum()),
        "face_disagreements": int((face.long()[both] != ef[both]).sum()),
        "t_rel_err_max_where_same_face": float(
            rel[(face.long()[both] == ef[both])].max()) if both.any() else 0.0,
        "taichi_first_call_s": t_compile,
        # builds: medians (Embree's is a difference of two noisy casts; its minimum is biased)
        "build_s_ours": statistics.median(ours_build),
        "build_s_embree": statistics.median(embree_build),
        "cast_s_ours": med(ours_cast),
        "cast_s_embree": med(embree_cast),
        "rays_per_s_ours": o.shape[0] / med(ours_cast),
        "rays_per_s_embree": o.shape[0] / med(embree_cast),
        "cast_time_ratio_ours_over_embree": med(ours_cast) / med(embree_cast),
        "cast_time_ratio_median": statistics.median(ours_cast) / statistics.median(embree_cast),
        "cast_cpu_s_ours": med(ours_cpu),
        "cast_cpu_s_embree": med(embree_cpu),
        "cast_cpu_ratio_ours_over_embree": med(ours_cpu) / med(embree_cpu),
        "cast_cpu_ratio_median": statistics.median(ours_cpu) / statistics.median(embree_cpu),
        "cast_s_ours_lbvh_traversal": med(lbvh_cast),
        "cast_time_ratio_lbvh_traversal_over_embree": med(lbvh_cast) / med(embree_cast),
        "build_time_ratio_ours_over_embree": statistics.median(ours_build) / max(
            statistics.median(embree_build), 1e-9),
        "build_cpu_s_ours": statistics.median(ours_build_cpu),
        "build_cpu_s_embree": statistics.median(embree_build_cpu),
        "build_cpu_ratio_ours_over_embree": statistics.median(ours_build_cpu) / max(
            statistics.median(embree_build_cpu), 1e-9),
        "build_time_ratio_min": min(ours_build) / max(min(embree_build), 1e-9),
        "build_cpu_ratio_min": min(ours_build_cpu) / max(min(embree_build_cpu), 1e-9),
        "sah_cost": sah_cost(tbvh.packed, tbvh.root_lo, tbvh.root_hi, tbvh.root_code),
        "sah_cost_lbvh_traversal": sah_cost(tbvh_lbvh.packed, tbvh_lbvh.root_lo,
                                            tbvh_lbvh.root_hi, tbvh_lbvh.root_code),
    }


def bench_aabb(n: int, repeats: int) -> dict:
    import torch

    from shaders import bvh

    g = torch.Generator().manual_seed(0)
    c = torch.rand(n, 3, generator=g)
    s = torch.rand(n, 3, generator=g) * (0.02 * (1e6 / n) ** (1 / 3))
    lo, hi = c - s, c + s
    bvh.refit_aabb_bvh(bvh.build_aabb_bvh(lo[:4], hi[:4]), lo[:4], hi[:4])  # compile
    builds, refits = [], []
    b = None
    for _ in range(repeats):
        tb, b = _timed(lambda: bvh.build_aabb_bvh(lo, hi))
        builds.append(tb)
        lo2, hi2 = lo + 0.01, hi + 0.01
        tr, _ = _timed(lambda: bvh.refit_aabb_bvh(b, lo2, hi2))
        refits.append(tr)
    r = 100_000
    o = torch.rand(r, 3, generator=g) * 1.2 - 0.1
    d = torch.nn.functional.normalize(torch.randn(r, 3, generator=g), dim=1)
    bvh.segment_query(b, o[:4], d[:4], 0.0, 0.05, 64)  # compile
    tq, (_ids, counts) = _timed(lambda: bvh.segment_query(b, o, d, 0.0, 0.05, 64))
    return {
        "boxes": n,
        "build_s": min(builds),
        "refit_s": min(refits),
        "segment_queries": r,
        "segment_query_s": tq,
        "segment_mean_hits": float(counts.float().mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="shared data root (default: ../shared/data next to the repo)")
    ap.add_argument("--rays", type=int, default=1_000_000, help="primary rays per mesh")
    ap.add_argument("--aabbs", type=int, default=1_000_000, help="random AABBs for build/refit")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--out", type=Path, default=Path("bench_bvh.json"), help="JSON output")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from engine.io.atomic import atomic_write
    from shaders import runtime

    arch = runtime.init()
    console = Console(width=200)
    load_start = os.getloadavg()
    meshes = []
    for rel in MESHES:
        path = args.data / rel
        if not path.exists():
            console.print(f"[red]{path}: missing, skipped")
            continue
        console.print(f"casting {args.rays} rays at {path.name} ...")
        meshes.append(bench_mesh(path, args.rays, args.repeats))
    console.print(f"building/refitting {args.aabbs} AABBs ...")
    aabb = bench_aabb(args.aabbs, args.repeats)

    table = Table(title=f"BVH closest hit, {meshes[0]['rays'] if meshes else 0} orbit rays, ours "
                        f"(Taichi {arch}) vs Embree (open3d); ratio = our time / Embree's")
    for col in ("mesh", "faces", "build ms ours", "build ms Embree", "build ratio",
                "build ratio (CPU)", "SAH cost", "Mrays/s ours", "Mrays/s Embree",
                "ratio (best)", "ratio (median)", "ratio (CPU)", "ratio LBVH trav.",
                "hit/miss diff", "first call s"):
        table.add_column(col, justify="right")
    for m in meshes:
        table.add_row(m["mesh"].removesuffix(".obj"), str(m["faces"]),
                      f"{m['build_s_ours']*1e3:.1f}", f"{m['build_s_embree']*1e3:.1f}",
                      f"{m['build_time_ratio_ours_over_embree']:.2f}",
                      f"{m['build_cpu_ratio_ours_over_embree']:.2f}", f"{m['sah_cost']:.2f}",
                      f"{m['rays_per_s_ours']/1e6:.2f}", f"{m['rays_per_s_embree']/1e6:.2f}",
                      f"{m['cast_time_ratio_ours_over_embree']:.2f}",
                      f"{m['cast_time_ratio_median']:.2f}",
                      f"{m['cast_cpu_ratio_ours_over_embree']:.2f}",
                      f"{m['cast_time_ratio_lbvh_traversal_over_embree']:.2f}",
                      str(m["hit_miss_disagreements"]), f"{m['taichi_first_call_s']:.2f}")
    console.print(table)
    t2 = Table(title="AABB BVH (random boxes)")
    for col in ("boxes", "build ms", "refit ms", "segment queries/s", "mean hits"):
        t2.add_column(col, justify="right")
    t2.add_row(str(aabb["boxes"]), f"{aabb['build_s']*1e3:.1f}", f"{aabb['refit_s']*1e3:.1f}",
               f"{aabb['segment_queries']/aabb['segment_query_s']/1e6:.2f} M",
               f"{aabb['segment_mean_hits']:.1f}")
    console.print(t2)
    result = {"arch": arch, "meshes": meshes, "aabb": aabb, "rays_requested": args.rays,
              "repeats": args.repeats, "cpu_count": os.cpu_count(),
              "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()}}
    console.print(f"load average (1, 5, 15 min): start {load_start}, end {os.getloadavg()}")
    with atomic_write(args.out, "w") as f:
        json.dump(result, f, indent=2)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
