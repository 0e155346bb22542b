"""kernelight eval: PSNR / SSIM / LPIPS on a split, render speed, written to eval.json."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run on its test split and write eval.json",
        description="Render every view of a split (default: test) of the run's dataset and write "
        "eval.json with psnr, ssim, lpips (or 'unavailable' with the reason: weights are never "
        "downloaded), their std, rays_per_sec, fps, num_primitives/num_gaussians and per-view values.",
    )
    p.add_argument("run", help="run folder or checkpoint .pt (or a 3DGS .ply with --cameras)")
    p.add_argument("--cameras", metavar="DATASET", help="dataset to evaluate on (default: the run's)")
    p.add_argument("--data", metavar="UNSEEN", default=None,
                   help="evaluate on an unseen scene with no training: its test cameras and images, and the "
                        "scene itself rebuilt from that dataset (pointfield: its own points from COLMAP / .ply "
                        "/ carving and its own source images; same as --cameras UNSEEN --scene-data UNSEEN). "
                        "Only methods that build their scene from data at render time accept it")
    p.add_argument("--split", default="test")
    p.add_argument("--max-views", type=int, default=None, help="evaluate at most N views (evenly spaced)")
    p.add_argument("--out", default=None, help="output JSON (default: <run>/eval.json)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model lives and Taichi runs (default auto: cuda when torch sees a GPU)")
    p.add_argument("--image-cache", default="auto", metavar="SIZE",
                   help="memory for decoded images (as kernelight train): a split that does not fit streams "
                        "from disk, the next views decoded in the background")
    from ._common import add_method_options

    add_method_options(p, render_only=True)       # render-time overrides (recorded in eval.json)
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import torch
    from rich.progress import track

    from .. import api
    from ..config import load_scene
    from ..data import load_dataset
    from ..errors import ConfigError
    from ..io.atomic import atomic_write_text
    from ..train import metrics
    from ..train.trainer import eval_target

    from ._common import collect_method_options

    options = collect_method_options(args)
    if args.data:
        _unseen_scene(args, options)
    model = api.load(args.run, device=args.device, **options)
    dev = api.model_device(model)
    run_dir = model.run_dir
    if args.cameras:
        ds = load_dataset(args.cameras, image_cache=args.image_cache)
    elif run_dir is not None and (run_dir / "config.toml").is_file():
        sc = load_scene(run_dir / "config.toml")
        ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format,
                          image_cache=args.image_cache)
    else:
        raise ConfigError(f"{args.run}: no dataset known; pass --cameras DATASET")
    if args.split not in ds.splits:
        raise ConfigError(f"dataset has no split {args.split!r} (has {', '.join(ds.splits)})")
    split = ds.splits[args.split]
    bg = torch.as_tensor(ds.background, dtype=torch.float32)
    n = len(split.cameras)
    k = n if args.max_views is None else min(n, args.max_views)
    idx = torch.linspace(0, n - 1, k).round().long().tolist()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    split.prefetch(idx[:2])
    # warm-up (kernel compilation) so timings measure rendering only
    api.render(model, split.cameras, idx[0], background=bg)
    psnrs, ssims, lpipss, times, rays = [], [], [], [], 0
    lp_ok, lp_why = metrics.lpips_status()
    for j, i in enumerate(track(idx, description=f"evaluating {args.split}")):
        split.prefetch(idx[j + 1:j + 3])          # a streamed split decodes the next views meanwhile
        sync()
        t0 = time.perf_counter()
        out = api.render(model, split.cameras, i, background=bg)
        sync()
        times.append(time.perf_counter() - t0)
        pred = out["rgb"].clamp(0, 1).cpu()
        gt = eval_target(model, split, i, bg)
        rays += pred.shape[0] * pred.shape[1]
        psnrs.append(float(metrics.psnr(pred, gt)))
        ssims.append(float(metrics.ssim(pred, gt)))
        if lp_ok:
            lpipss.append(float(metrics.lpips(pred, gt)))
    total = sum(times)
    p, s = metrics.summarize(psnrs), metrics.summarize(ssims)
    result = {
        "psnr": p["mean"], "psnr_std": p["std"], "ssim": s["mean"], "ssim_std": s["std"],
        "lpips": metrics.summarize(lpipss)["mean"] if lp_ok else "unavailable",
        "lpips_std": metrics.summarize(lpipss)["std"] if lp_ok else None,
        "lpips_note": None if lp_ok else lp_why,
        "rays_per_sec": rays / total, "fps": len(idx) / total,
        "num_primitives": model.num_primitives, "num_gaussians": model.num_primitives,
        "split": args.split, "num_views": len(idx), "step": model.step, "options": options,
        "masked": bool(model.masked_eval and split.masks is not None),
        "resolution": [int(split.cameras.width[0]), int(split.cameras.height[0])],
        "device": dev.type,
        "per_view": [{"index": i, "psnr": a, "ssim": b} for i, a, b in zip(idx, psnrs, ssims)],
    }
    out_path = Path(args.out) if args.out else ((run_dir or Path(".")) / "eval.json")
    atomic_write_text(out_path, json.dumps(result, indent=2))
    print(f"PSNR {result['psnr']:.2f} ± {result['psnr_std']:.2f} dB, SSIM {result['ssim']:.4f}, "
          f"LPIPS {result['lpips'] if lp_ok else 'unavailable'}, {result['rays_per_sec']:.0f} rays/s, "
          f"{result['fps']:.2f} fps, {result['num_primitives']} primitives")
    print(f"wrote {out_path}")
    return 0


def _unseen_scene(args, options: dict) -> None:
    """``--data UNSEEN``: evaluate on UNSEEN's cameras with the scene rebuilt from it (the method's
    render-time ``scene_data`` option); a method without one is refused in one line saying why."""
    import dataclasses
    from pathlib import Path

    from .. import api
    from .. import methods as registry
    from ..config import load_scene
    from ..errors import ConfigError

    data = Path(args.data)
    if not data.exists():
        raise ConfigError(f"--data {args.data}: dataset folder not found")
    if args.cameras and Path(args.cameras).resolve() != data.resolve():
        raise ConfigError(f"--data {args.data} and --cameras {args.cameras} disagree: --data evaluates on the "
                          f"unseen scene's own cameras; give one of them")
    if options.get("scene_data") and Path(options["scene_data"]).resolve() != data.resolve():
        raise ConfigError(f"--data {args.data} and --scene-data {options['scene_data']} disagree; give one of them")
    path = Path(args.run)
    if path.is_file() and path.suffix.lower() != ".pt":
        spec = registry.reader_for(path)
        name = spec.name if spec is not None else path.suffix
    else:
        run_dir, ckpt = api.find_run_checkpoint(path)
        name = None
        if run_dir is not None and (run_dir / "config.toml").is_file():
            name = load_scene(run_dir / "config.toml").method
        if not name:
            from ..io.checkpoint import load_checkpoint

            name = load_checkpoint(ckpt)["method"]
    fields = {f.name for f in dataclasses.fields(registry.get(name).config_class())} if name in registry.available() \
        else set()
    if "scene_data" not in fields:
        raise ConfigError(f"--data: method {name} cannot render an unseen scene without training (its model is "
                          f"fitted to the scene it was trained on; only a method whose scene is built from a "
                          f"dataset at render time, such as pointfield, can); train {name} on {args.data} instead")
    options["scene_data"] = str(data)
    args.cameras = str(data)
