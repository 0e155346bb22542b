"""kernelight render: render test views, depth/alpha maps and a turntable video."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "render",
        help="render a trained run or a 3DGS .ply: test views, depth/alpha maps, turntable video",
        description="Render SOURCE (a run folder, a checkpoint .pt, or a standard 3DGS .ply). "
        "Cameras come from the run's dataset, or from --cameras DATASET; a .ply without --cameras "
        "gets an orbit around its Gaussians. Writes PNGs (and depth/alpha colour maps) to "
        "<run>/renders/<split>/ (or --out) and a turntable video (--video).",
        epilog="examples:\n  kernelight render outputs/mic/raygauss/<stamp> --video turntable.mp4\n"
        "  kernelight render ../shared/data/gaussians/playcanvas_guitar_decoded_inria_sh0.ply --out guitar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="run folder, checkpoint .pt, or 3DGS .ply")
    p.add_argument("--cameras", metavar="DATASET", help="dataset folder (or scene .toml) whose cameras to render")
    p.add_argument("--split", default="test", help="dataset split to render (default: test)")
    p.add_argument("--max-views", type=int, default=None, help="render at most this many views (evenly spaced)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/renders, or ./renders_<name>)")
    p.add_argument("--no-views", action="store_true", help="skip the split's views (only the video)")
    p.add_argument("--depth", action="store_true", help="also write depth maps (colour-mapped PNG and .npy)")
    p.add_argument("--alpha", action="store_true", help="also write accumulated-opacity maps")
    p.add_argument("--video", default="turntable.mp4", help="turntable video file name (.mp4 or .gif); 'none' to skip")
    p.add_argument("--camera-path", metavar="JSON", default=None,
                   help="render this camera_path.json (nerfstudio format, e.g. saved by kernelight view) as the video")
    p.add_argument("--frames", type=int, default=60, help="turntable frames (default 60)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None, help="video resolution")
    p.add_argument("--up", choices=["auto", "+z", "-y", "+y"], default="auto",
                   help="world up for orbits without a dataset (3DGS/COLMAP scenes are usually -y: write --up=-y)")
    p.add_argument("--background", default=None, help="white | black | R,G,B (default: the dataset's, or black)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model lives and Taichi runs (default auto: cuda when torch sees a GPU)")
    from ._common import add_method_options

    add_method_options(p, render_only=True)       # render-time overrides, e.g. --render-mode volume
    p.set_defaults(func=run)


def _load_cameras(path, split_name):
    from ..config import is_scene_file, load_scene
    from ..data import load_dataset
    from ..errors import ConfigError

    if is_scene_file(path):
        sc = load_scene(path)
        ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format)
    else:
        ds = load_dataset(path)
    if split_name not in ds.splits:
        raise ConfigError(f"{path}: no split {split_name!r} (has {', '.join(ds.splits)})")
    return ds, ds.splits[split_name]


def run(args) -> int:
    from pathlib import Path

    import torch
    from rich.progress import track

    from .. import api
    from ..camera_paths import look_at, orbit
    from ..cameras import Cameras
    from ..config import load_scene, parse_background
    from ..io.images import colormap, write_image, write_video

    src = Path(args.source)
    from ._common import collect_method_options

    model = api.load(src, device=args.device, **collect_method_options(args))
    for note in model.notes:
        print(f"note: {note}")
    run_dir = model.run_dir
    ds = split = None
    if args.cameras:
        ds, split = _load_cameras(args.cameras, args.split)
    elif run_dir is not None and (run_dir / "config.toml").is_file():
        sc = load_scene(run_dir / "config.toml")
        from ..data import load_dataset

        ds = load_dataset(sc.data, downscale=sc.downscale, background=sc.background, format=sc.format)
        split = ds.splits.get(args.split) or ds.splits["train"]
    bg = parse_background(args.background) if args.background else (
        tuple(float(x) for x in ds.background) if ds is not None else (0.0, 0.0, 0.0))
    out = Path(args.out) if args.out else (run_dir / "renders" if run_dir is not None else Path(f"renders_{src.stem}"))
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    if split is not None and not args.no_views:
        n = len(split.cameras)
        k = n if args.max_views is None else min(n, args.max_views)
        idx = torch.linspace(0, n - 1, k).round().long().tolist()
        folder = out / args.split
        for i in track(idx, description=f"rendering {args.split} views"):
            r = _cpu(api.render(model, split.cameras, i, background=bg))
            write_image(folder / f"{i:04d}.png", r["rgb"])
            if args.depth:
                d = r["depth"].clone()
                d[r["alpha"] < 0.05] = float("nan")
                write_image(folder / f"{i:04d}_depth.png", colormap(d))
                write_image(folder / f"{i:04d}_depth.npy", r["depth"])     # expected depth (normalised by alpha)
            if args.alpha:
                write_image(folder / f"{i:04d}_alpha.png", r["alpha"])
            written += 1
        print(f"wrote {written} views to {folder}")
    if args.camera_path:
        from ..camera_paths_json import read_camera_path

        path_cams, path_fps = read_camera_path(args.camera_path)
        frames = [api.render(model, path_cams, i, background=bg)["rgb"].clamp(0, 1).cpu()
                  for i in track(range(len(path_cams)), description="rendering camera path")]
        name = Path(args.camera_path).stem + ".mp4" if args.video in ("turntable.mp4", "none") else args.video
        print(f"wrote {write_video(out / name, frames, fps=path_fps)}")
    elif args.video.lower() != "none":
        if split is not None:
            W, H = args.size or (None, None)
            path_cams = orbit(split.cameras, args.frames, width=W, height=H)
        else:
            path_cams = _orbit_around_model(model, args, look_at, Cameras)
        frames = []
        for i in track(range(len(path_cams)), description="rendering turntable"):
            frames.append(api.render(model, path_cams, i, background=bg)["rgb"].clamp(0, 1).cpu())
        vpath = write_video(out / args.video, frames, fps=args.fps)
        print(f"wrote {vpath}")
    print(f"outputs in {out}")
    return 0


def _cpu(out: dict) -> dict:
    """A render's tensors on the CPU (the model may live on the GPU: --device)."""
    return {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in out.items()}


def _orbit_around_model(model, args, look_at, Cameras):
    import math

    import torch

    pts = model.points()
    if pts is not None and pts.shape[0] > 0:
        if pts.shape[0] > 100000:
            pts = pts[torch.linspace(0, pts.shape[0] - 1, 100000).long()]
        lo, hi = torch.quantile(pts.float(), 0.02, 0), torch.quantile(pts.float(), 0.98, 0)
    else:
        lo, hi = model.bounds().float()
    center = (lo + hi) / 2
    radius = float((hi - lo).norm()) * 1.1
    up = {"auto": torch.tensor([0.0, -1.0, 0.0]), "-y": torch.tensor([0.0, -1.0, 0.0]),
          "+y": torch.tensor([0.0, 1.0, 0.0]), "+z": torch.tensor([0.0, 0.0, 1.0])}[args.up]
    e1 = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = e1 - (e1 @ up) * up
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    W, H = args.size or (256, 256)
    f = 0.5 * W / math.tan(math.radians(50) / 2)
    mats = []
    for i in range(args.frames):
        th = 2 * math.pi * i / args.frames
        eye = center + radius * (math.cos(0.35) * (math.cos(th) * e1 + math.sin(th) * e2) + math.sin(0.35) * up)
        mats.append(look_at(eye, center, up))
    return Cameras(f, f, W / 2, H / 2, W, H, torch.stack(mats))
