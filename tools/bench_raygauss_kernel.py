#!/usr/bin/env python
"""Benchmark the RayGauss ray-casting kernels (shaders/raygauss.py) against the torch reference.

Scene: ``--gaussians`` (default 20k) random Gaussians in the unit cube (scales 0.005..0.02,
densities 1..20, or opacities 0.05..0.9 in opacity mode); rays: a ``--res`` x ``--res``
pinhole camera looking at the cube, clipped to it. Measured, interleaved in one process and
repeated ``--repeats`` times (median): forward rays/s and forward+backward rays/s of the Taichi
kernels (BVH collect, refit included in neither; also per CPU-second, which other processes on
shared cores disturb less), and of the brute-force reference on
``--ref-rays`` of the same rays; the speed-up is the ratio of the rays/s. Taichi compile time is
excluded (a warm-up call precedes the timings).

Usage::

    .venv/bin/python tools/bench_raygauss_kernel.py [--mode density|opacity|both] [--res 100]
        [--gaussians 20000] [--ref-rays 8] [--repeats 3] [--out bench_raygauss_kernel.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_scene(n, mode, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g)
    log_scale = torch.rand(n, 3, generator=g) * math.log(4.0) + math.log(0.005)
    quat = torch.randn(n, 4, generator=g)
    if mode == "density":
        resp = torch.rand(n, generator=g) * 19.0 + 1.0
    else:
        resp = torch.rand(n, generator=g) * 0.85 + 0.05
    rgb = torch.rand(n, 3, generator=g)
    return means, log_scale, quat, resp, rgb


def camera_rays(res, fov_deg=40.0):
    """res x res rays of a pinhole at (0.5, 0.5, -1.2) looking along +z, clipped to [0,1]^3."""
    import torch

    f = 0.5 * res / math.tan(math.radians(fov_deg) / 2)
    jj, ii = torch.meshgrid(torch.arange(res, dtype=torch.float32),
                            torch.arange(res, dtype=torch.float32), indexing="ij")
    d = torch.stack([(ii + 0.5 - res / 2) / f, (jj + 0.5 - res / 2) / f,
                     torch.ones_like(ii)], -1).reshape(-1, 3)
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.tensor([0.5, 0.5, -1.2]).expand_as(d).contiguous()
    inv = 1.0 / torch.where(d == 0, torch.full_like(d, 1e-12), d)
    ta, tb = (0.0 - o) * inv, (1.0 - o) * inv
    tn = torch.minimum(ta, tb).amax(-1).clamp(min=0)
    tf = torch.maximum(ta, tb).amin(-1)
    return o, d, tn, tf


_CPU: list = []


def _timed(fn):
    """Wall seconds of fn(); its process CPU seconds are appended to _CPU."""
    c = time.process_time()
    t = time.perf_counter()
    fn()
    _CPU.append(time.process_time() - c)
    return time.perf_counter() - t


def bench_mode(mode, args):
    import torch

    from shaders.bvh import build_aabb_bvh
    from shaders.raygauss import RayGaussConfig, gaussian_aabbs, render_rays
    from shaders.raygauss_ref import render_rays_reference

    cfg = RayGaussConfig(mode=mode)
    params = make_scene(args.gaussians, mode)
    rays = camera_rays(args.res)
    n_rays = rays[0].shape[0]
    sub = torch.linspace(0, n_rays - 1, args.ref_rays).round().long()
    ref_rays = tuple(r[sub] for r in rays)
    lo, hi = gaussian_aabbs(*params[:4], mode, cfg)
    t_build = _timed(lambda: build_aabb_bvh(lo, hi))
    bvh = build_aabb_bvh(lo, hi)
    g = torch.Generator().manual_seed(1)
    w_rgb = torch.randn(n_rays, 3, generator=g)

    def ours(backward, rays_=rays, w=w_rgb):
        ps = [p.clone().requires_grad_(backward) for p in params]
        out = render_rays(*ps, *rays_, cfg, bvh=bvh)
        if backward:
            loss = (out["rgb"] * w[: out["rgb"].shape[0]]).sum() + out["alpha"].sum()
            loss.backward()
        return out

    def ref(backward):
        ps = [p.clone().requires_grad_(backward) for p in params]
        out = render_rays_reference(*ps, *ref_rays, cfg)
        if backward:
            loss = (out["rgb"] * w_rgb[sub]).sum() + out["alpha"].sum()
            loss.backward()
        return out

    warm = ours(True)                               # compile (or load from the offline cache)
    ours(True, ref_rays, w_rgb[sub])
    t_of, t_ob, t_rf, t_rb = [], [], [], []
    c_of, c_ob = [], []
    for _ in range(args.repeats):                   # interleaved: ours, ref, ours, ref, ...
        t_of.append(_timed(lambda: ours(False)))
        c_of.append(_CPU[-1])
        t_rf.append(_timed(lambda: ref(False)))
        t_ob.append(_timed(lambda: ours(True)))
        c_ob.append(_CPU[-1])
        t_rb.append(_timed(lambda: ref(True)))
    med = statistics.median
    # accuracy on the reference rays (same call as the timing, BVH collect)
    with torch.no_grad():
        a = render_rays(*params, *ref_rays, cfg, bvh=bvh)
        b = render_rays_reference(*params, *ref_rays, cfg)
    max_err = max(float((a[k] - b[k]).abs().max()) for k in ("rgb", "alpha", "depth"))
    res = dict(
        mode=mode, gaussians=args.gaussians, rays=n_rays, ref_rays=args.ref_rays,
        bvh_build_s=t_build,
        fwd_rays_per_s=n_rays / med(t_of), fwd_bwd_rays_per_s=n_rays / med(t_ob),
        ref_fwd_rays_per_s=args.ref_rays / med(t_rf),
        ref_fwd_bwd_rays_per_s=args.ref_rays / med(t_rb),
        # rays per CPU-second (all threads summed): robust to other processes sharing the cores
        fwd_rays_per_cpu_s=n_rays / med(c_of), fwd_bwd_rays_per_cpu_s=n_rays / med(c_ob),
        mean_evals_per_ray=float(warm["n_evals"].double().mean()),
        mean_alpha=float(warm["alpha"].detach().mean()), n_capped=warm["n_capped"],
        max_abs_err_vs_ref=max_err,
    )
    res["fwd_speedup"] = res["fwd_rays_per_s"] / res["ref_fwd_rays_per_s"]
    res["fwd_bwd_speedup"] = res["fwd_bwd_rays_per_s"] / res["ref_fwd_bwd_rays_per_s"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("density", "opacity", "both"), default="both")
    ap.add_argument("--res", type=int, default=100)
    ap.add_argument("--gaussians", type=int, default=20000)
    ap.add_argument("--ref-rays", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_raygauss_kernel.json")
    args = ap.parse_args(argv)

    from shaders import runtime

    arch = runtime.init()
    modes = ("density", "opacity") if args.mode == "both" else (args.mode,)
    results = [bench_mode(m, args) for m in modes]
    cols = ("mode", "fwd_rays_per_s", "fwd_bwd_rays_per_s", "fwd_rays_per_cpu_s",
            "fwd_bwd_rays_per_cpu_s", "ref_fwd_rays_per_s",
            "ref_fwd_bwd_rays_per_s", "fwd_speedup", "fwd_bwd_speedup", "mean_evals_per_ray",
            "mean_alpha", "max_abs_err_vs_ref")
    print(f"arch={arch}  gaussians={args.gaussians}  rays={args.res}x{args.res}")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in results:
        print("  ".join(f"{r[c]:>14.4g}" if isinstance(r[c], float) else f"{r[c]:>14}"
                        for c in cols))
    from engine.io.atomic import atomic_write

    with atomic_write(args.out, "w") as f:
        json.dump(dict(arch=arch, results=results), f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
