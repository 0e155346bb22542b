"""Benchmark Adaptive Shells: full volumetric rendering vs shell rendering of the same trained field.

For each trained run (``kernelight train shells ...``) this extracts the shells (or takes the
run's own), then renders the same test views every way, interleaved in one process (CPU timings
are noisy; compare ratios), and reports per mode, over all test views by default (``--views N``:
N evenly spaced ones):

* test PSNR and SSIM;
* the cost per ray, every evaluation counted: ``samples_per_ray`` (network samples: points where
  the SDF network runs -- at 4 finite-difference points, or once with analytic normals -- and the
  colour network once; the same unit in every mode), ``probes_per_ray`` (grid lookups: the occupancy grid's, one per candidate
  position in the box, volumetrically; the probe grid's trilinear lookups of SDF and kernel size
  in the probe modes; 0 for the mesh-only shell rules) and ``evaluations_per_ray`` (their sum: a
  grid probe counts as a sample). Ray/mesh intersection queries are not field evaluations; their
  cost is in the times;
* ``time_s`` (wall) and ``cpu_s`` (this process's CPU time) per image, and ``first_frame_s``:
  the time from a loaded model to its first image, one-time work included (the shells' BVH; the
  probe grid, built from the field; the extraction when it is done here is reported apart as
  ``extract_time_s``). Taichi compiles its kernels on first use: a warm-up render before any
  timing keeps compilation out of both;
* shell face counts, extraction time and the run's training time.

Writes JSON (``--out``).

PSNR is computed against the training target: the image, or for data with masks (DTU) the image
inside the mask on the dataset background outside it (the field models the masked object only).

Modes: ``volume`` (occupancy grid, early termination), ``shells@STEP`` (samples every STEP times
the box half-size inside every band interval) and ``shells1@STEP`` (one sample on the surface per
outer-to-inner crossing, opacity from the interval's ends; STEP for the other intervals -- the
renderer before the probe sampler) and ``probe`` (the default renderer: the probe sampler of
``shaders/band_probe.py``, one sample per descent through the surface with its opacity from an
SDF grid, near misses sampled where the grid says they have opacity; ``probe@STEP/TAU[/SOLID[/CUT]]`` with
``--probe-settings``). ``--crossings`` picks the shells modes, ``--probe off`` drops the probe
modes. ``--one-sample-max-lens`` adds ``shells1@STEP/LMAX``
modes: the one-sample rules only for band intervals at most LMAX (times the half-size) long, the
step rule for longer ones (``shell_one_sample_max_len``: grazing rays and near misses).

Train with the defaults (8,000 steps of 1,024 rays; the shells are extracted after 7,000 and the
colour network is fine-tuned inside them) and benchmark::

    kernelight train shells --data ../shared/data/nerf_synthetic/lego_200 --eval-every 0 \
        --output outputs --name lego_200
    kernelight train shells --data ../shared/data/dtu/scan24_400 --eval-every 0 \
        --output outputs --name scan24_400
    python tools/bench_shells.py outputs/lego_200/shells/<stamp> outputs/scan24_400/shells/<stamp> \
        --crossings off --shell-steps 0.01 --out tools/results/bench_shells_accounting.json

For the volumetric-only baseline train with ``--shell-finetune-from 0 --max-steps 7000`` and
benchmark that run (its shells are extracted here, ``--grid-res 256``). To fine-tune an existing
volumetric run instead, copy its config and last checkpoint to a new folder and continue it with
``kernelight train --resume NEW --max-steps 8000 --shell-finetune-from 7001``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _psnr(a, b) -> float:
    import torch

    mse = ((a - b) ** 2).mean().clamp_min(1e-12)
    return float(-10 * torch.log10(mse))


def _ssim(a, b) -> float:
    from engine.train.metrics import ssim

    return float(ssim(a.clamp(0, 1), b))


def cost_per_ray(out) -> dict:
    """The per-ray cost of one render output (:meth:`ShellsMethod.render`): network samples, grid
    probes, SDF-only points (fine-tuning's descents; 0 when rendering) and all evaluations."""
    samples = float(out["cost"].float().mean())
    probes = float(out["probes"].float().mean()) if "probes" in out else 0.0
    geo = float(out["geo_evals"].float().mean()) if "geo_evals" in out else 0.0
    return {"samples_per_ray": samples, "probes_per_ray": probes, "geo_evals_per_ray": geo,
            "evaluations_per_ray": samples + probes + geo}


def bench_run(run: Path, views: int, grid_res: int | None, target_faces: int | None, out_dir: Path | None,
              shell_steps: list[float] | None = None, reextract: bool = False, crossings: str = "both",
              max_lens: list[float] | None = None, probe: bool = True,
              probe_settings: list[str] | None = None, volume: bool = True, render_chunk: int | None = None,
              settings: dict | None = None) -> dict:
    import torch

    import engine
    from engine.config import load_scene
    from engine.train.metrics import composite_on_background

    model = engine.load(run, **(settings or {}))        # render options overridden as by kernelight eval
    if render_chunk:
        model.cfg.render_chunk = int(render_chunk)      # rays per chunk: speed only, the images are the same
    scene = load_scene(Path(run) / "config.toml")
    ds = engine.load_dataset(scene.data, downscale=scene.downscale, background=scene.background)
    split = ds.splits.get("test") or ds.splits.get("val") or ds.splits["train"]
    bg = ds.background
    n = len(split)
    idx = list(range(n)) if views <= 0 or views >= n else torch.linspace(0, n - 1, views).round().long().tolist()

    overrides = {}
    if grid_res:
        overrides["grid_res"] = grid_res
    if target_faces is not None:
        overrides["target_faces"] = target_faces
    t0 = time.perf_counter()
    if model.shells is not None and not reextract:
        shells = model.shells              # fine-tuned runs: the field was trained for these shells
        t_extract = None
        # the occupancy grid stops following the field once the shells exist: refresh it so that the
        # volumetric rendering of the fine-tuned field is not cut by a stale grid
        model.occ.update(model._occupied)
    else:
        shells = model.extract_shells(**overrides)
        t_extract = time.perf_counter() - t0
    if out_dir is not None:
        from engine.methods.shells.extract import write_shells

        write_shells(shells, out_dir)

    steps = list(shell_steps or [model.cfg.shell_step])
    ones = {"none": [], "off": [False], "on": [True], "both": [False, True]}[crossings]
    lens = list(max_lens or [0.0])
    modes = (["volume"] if volume else []) + [f"shells@{st:g}" for one in ones if not one for st in steps] + \
        [f"shells1@{st:g}" + (f"/L{ln:g}" if ln > 0 else "") for one in ones if one for st in steps for ln in lens] + \
        ([f"probe@{x}" for x in probe_settings] if probe and probe_settings else ["probe"] if probe else [])
    rows = {m: [] for m in modes}

    renderers = {}
    probe_res = int(model.cfg.shell_probe_grid) or 256
    t_probe = None

    def set_mode(mode: str) -> str:
        """``volume``, ``shells@STEP`` or ``shells1@STEP[/LMAX]`` (one sample per crossing) -> render mode."""
        nonlocal t_probe
        if mode == "volume":
            return mode
        if mode.startswith("probe"):
            model.cfg.shell_probe_grid = probe_res
            if "@" in mode:
                st, tau, *rest = mode.split("@")[1].split("/")
                model.cfg.shell_probe_step, model.cfg.shell_probe_tau = float(st), float(tau)
                model.cfg.shell_probe_solid = float(rest[0]) if rest else 0.0
                model.cfg.shell_probe_cut = float(rest[1]) if len(rest) > 1 else 0.0
            if "probe" not in renderers:
                model._renderer = None
                renderers["probe"] = model.renderer
                t = time.perf_counter()
                renderers["probe"].probe_grid()
                t_probe = time.perf_counter() - t
            model._renderer = renderers["probe"]
            return "shells"
        model.cfg.shell_probe_grid = 0
        kind, st = mode.split("@")
        st, _, ln = st.partition("/L")
        one = kind == "shells1"
        model.cfg.shell_step = float(st)
        model.cfg.shell_one_sample_max_len = float(ln or 0.0)
        model.cfg.shell_one_sample_crossings = one
        if one not in renderers:                 # built here, outside the timings
            model._renderer = None
            renderers[one] = model.renderer
        model._renderer = renderers[one]
        return "shells"

    # warm-up outside the timings: Taichi compiles its kernels and the shells' BVH is built on first use
    for mode in modes:
        model.render(split.cameras, idx[0], background=bg, mode=set_mode(mode))
    # time to first frame: a fresh renderer per mode (BVH, probe grid), then the first view
    first = {}
    for mode in modes:
        rmode = set_mode(mode)
        keep = model._renderer
        t = time.perf_counter()
        if rmode == "shells":
            model._renderer = None
            if mode.startswith("probe"):
                model.renderer.probe_grid()
        model.render(split.cameras, idx[0], background=bg, mode=rmode)
        first[mode] = time.perf_counter() - t
        model._renderer = keep
    for i in idx:
        gt = split.images[i]
        if split.masks is not None:
            gt = composite_on_background(gt, split.masks[i], bg)
        for mode in modes:                     # interleaved: all modes see the same machine load
            rmode = set_mode(mode)
            t, c = time.perf_counter(), time.process_time()
            out = model.render(split.cameras, i, background=bg, mode=rmode)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            hit = out["alpha"] > 0.5
            rows[mode].append({"view": i, "psnr": _psnr(out["rgb"], gt), "ssim": _ssim(out["rgb"], gt),
                               "time_s": dt, "cpu_s": dc, **cost_per_ray(out),
                               "samples_per_hit_ray": float(out["cost"][hit].mean()) if hit.any() else 0.0})
    metrics = []
    mfile = Path(run) / "metrics.jsonl"
    if mfile.is_file():
        metrics = [json.loads(x) for x in mfile.read_text().splitlines() if x.strip()]
    last = [r for r in metrics if "train_time_s" in r]
    res = {"run": str(run), "scene": scene.name, "step": getattr(model, "step", None),
           "train_time_s": last[-1]["train_time_s"] if last else None,
           "image_size": [split.width, split.height], "views": idx,
           "shell_faces": shells.face_counts(), "extract_time_s": t_extract,
           "probe_grid": probe_res if probe else None, "probe_grid_time_s": t_probe,
           "shell_halfwidth_mean": shells.info.get("halfwidth_mean_near_surface"),
           "load_average_at_end": list(os.getloadavg())}
    keys = ("psnr", "ssim", "time_s", "cpu_s", "samples_per_ray", "probes_per_ray", "geo_evals_per_ray",
            "evaluations_per_ray", "samples_per_hit_ray")
    for mode, rs in rows.items():
        k = len(rs)
        res[mode] = {key: sum(r[key] for r in rs) / k for key in keys}
        res[mode]["first_frame_s"] = first[mode]
        res[mode]["per_view"] = rs
    v = res.get("volume")
    for mode in (modes[1:] if v is not None else []):
        s = res[mode]
        s["samples_ratio"] = v["samples_per_ray"] / max(s["samples_per_ray"], 1e-9)
        s["evaluations_ratio"] = v["evaluations_per_ray"] / max(s["evaluations_per_ray"], 1e-9)
        s["speedup"] = v["time_s"] / max(s["time_s"], 1e-9)
        s["psnr_diff_db"] = s["psnr"] - v["psnr"]
    res["modes"] = modes
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="shells run folders")
    ap.add_argument("--views", type=int, default=0, help="test views per run, evenly spaced (0 = all, the default)")
    ap.add_argument("--grid-res", type=int, default=None, help="marching-cubes grid (default: config)")
    ap.add_argument("--target-faces", type=int, default=None, help="decimation target (default: config)")
    ap.add_argument("--export", default=None, help="also write the shells under this folder (one per run)")
    ap.add_argument("--shell-steps", type=float, nargs="+", default=None,
                    help="sample spacings inside the band to compare (times the box half-size; default: config)")
    ap.add_argument("--crossings", choices=("none", "off", "on", "both"), default="both",
                    help="shell modes without (shells@STEP) and/or with (shells1@STEP) one sample per surface "
                         "crossing (shell_one_sample_crossings); none: neither (the probe modes only)")
    ap.add_argument("--one-sample-max-lens", type=float, nargs="+", default=None,
                    help="shells1 modes also with shell_one_sample_max_len = each of these (times the half-size; "
                         "0 = any length, the default renderer)")
    ap.add_argument("--probe", choices=("on", "off"), default="on",
                    help="also the probe mode (the default renderer; shell_probe_grid, or 256 if the run has it off)")
    ap.add_argument("--probe-settings", nargs="+", default=None, metavar="STEP/TAU[/SOLID[/CUT]]",
                    help="probe modes with these shell_probe_step/shell_probe_tau (/shell_probe_solid, default 0; "
                         "/shell_probe_cut, default 0) settings, e.g. 0.01/0.01 0.0075/0.003/0.8 0.0075/0.01/1/0.001 "
                         "(default: one probe mode with the run's settings)")
    ap.add_argument("--reextract", action="store_true",
                    help="extract new shells even when the run has some (runs fine-tuned inside their shells)")
    ap.add_argument("--volume", choices=("on", "off"), default="on",
                    help="also the volumetric render (the reference of the ratios; slow: off for quick comparisons)")
    ap.add_argument("--render-chunk", type=int, default=None,
                    help="rays per chunk for every mode (default: the run's render_chunk; runs trained before "
                         "session 16 stored 8,192, the default is 65,536 now)")
    ap.add_argument("--set", nargs="+", default=[], metavar="OPTION=VALUE",
                    help="render options of the run's config to override for every mode, e.g. shell_max_hits=8 "
                         "(the run's own config otherwise)")
    ap.add_argument("--out", default="bench_shells.json")
    args = ap.parse_args(argv)
    settings = {}
    if args.set:
        from engine.errors import ConfigError
        from engine.methods.shells.config import ShellsConfig

        allowed = ShellsConfig.render_fields()
        for item in args.set:
            key, eq, val = item.partition("=")
            if not eq or key.replace("-", "_") not in allowed:
                ap.error(f"--set {item!r}: expected OPTION=VALUE with OPTION one of the render options: "
                         f"{', '.join(sorted(allowed))}")
            settings[key.replace("-", "_")] = val
        try:            # the config's own coercion and checks, as for 'kernelight eval --OPTION'
            ShellsConfig.from_options(settings, "shells")
        except ConfigError as e:
            ap.error(f"--set: {e}")

    from shaders import runtime

    runtime.init()
    from engine.io.atomic import atomic_write_text

    results = []
    for r in args.runs:
        exp = Path(args.export) / Path(r).parts[-3] if args.export else None
        results.append(bench_run(Path(r), args.views, args.grid_res, args.target_faces, exp, args.shell_steps,
                                 args.reextract, args.crossings, args.one_sample_max_lens, args.probe == "on",
                                 args.probe_settings, args.volume == "on", args.render_chunk, settings))
        atomic_write_text(args.out, json.dumps({"results": results}, indent=2))
    hdr = (f"{'scene':<12}{'mode':<20}{'PSNR':>7}{'SSIM':>7}{'spp':>7}{'probes':>8}{'all ev':>8}{'s/img':>7}"
           f"{'1st s':>7}{'fewer spp':>10}{'fewer ev':>9}{'speedup':>8}{'dPSNR':>7}")
    print(hdr)
    for r in results:
        for mode in r["modes"]:
            m = r[mode]
            extra = (f"{m['samples_ratio']:9.1f}x{m['evaluations_ratio']:8.1f}x{m['speedup']:7.2f}x"
                     f"{m['psnr_diff_db']:+7.2f}" if "samples_ratio" in m else "")
            print(f"{r['scene']:<12}{mode:<20}{m['psnr']:7.2f}{m['ssim']:7.4f}{m['samples_per_ray']:7.2f}"
                  f"{m['probes_per_ray']:8.2f}{m['evaluations_per_ray']:8.2f}{m['time_s']:7.2f}"
                  f"{m['first_frame_s']:7.2f}{extra}")
        print(f"{'':<12}step {r['step']}, train {r['train_time_s'] or 0:.0f} s, shell faces {r['shell_faces']}, "
              f"extraction {'(stored shells)' if r['extract_time_s'] is None else format(r['extract_time_s'], '.1f') + ' s'}"
              + (f", probe grid {r['probe_grid']}^3 built in {r['probe_grid_time_s']:.1f} s"
                 if r.get("probe_grid_time_s") is not None else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
