"""kernelight dataset: load a dataset folder and summarise it (optionally draw images and cameras)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "dataset",
        help="load a dataset folder and print a summary (format, splits, cameras, bounds)",
        description="Load a dataset (NeRF-synthetic/Blender, nerfstudio/instant-ngp, COLMAP, NeuS/DTU or LLFF; "
        "the format is detected from the folder) and print its format, splits and image counts, resolution, "
        "camera model, intrinsics range, scene bounds, background and point count. Optionally write a "
        "contact sheet of the images and a top/side plot of the camera frusta.",
    )
    p.add_argument("path", help="dataset folder, or a scene .toml whose 'data' key names the folder")
    p.add_argument("--downscale", type=int, default=1, metavar="N", help="divide the image size by N (box filter)")
    p.add_argument("--split", default=None, help="only describe this split (train, val, test)")
    p.add_argument("--format", default=None, help="force the format: blender, nerfstudio, colmap, dtu, llff")
    p.add_argument("--background", default=None, metavar="white|black|R,G,B",
                   help="background for RGBA images (default: white for blender, black otherwise)")
    p.add_argument("--contact-sheet", default=None, metavar="OUT.png", help="write a thumbnail grid of the images")
    p.add_argument("--frustums", default=None, metavar="OUT.png", help="write a top and side view of the cameras")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from ..data.detect import load_dataset
    from ..errors import ConfigError

    if args.downscale < 1:
        raise ConfigError(f"--downscale must be >= 1, got {args.downscale}")
    console = Console(stderr=True)
    with console.status(f"loading {args.path} ..."):
        ds = load_dataset(args.path, downscale=args.downscale, background=args.background, format=args.format)
    splits = ds.splits
    if args.split is not None:
        splits = {args.split: ds.split(args.split)}
    summary = ds.summary()
    if args.split is not None:
        summary["splits"] = {k: len(v) for k, v in splits.items()}
    if args.contact_sheet:
        from ..data.plots import contact_sheet

        contact_sheet(splits, args.contact_sheet)
        summary["contact_sheet"] = str(args.contact_sheet)
    if args.frustums:
        from ..data.plots import frustum_plot

        frustum_plot(ds, splits, args.frustums)
        summary["frustums"] = str(args.frustums)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.table import Table

    t = Table(title=f"dataset {summary['root']}", show_header=False)
    fmt = lambda v: ", ".join(f"{k} {n}" for k, n in v.items()) if isinstance(v, dict) else str(v)  # noqa: E731
    for k, v in summary.items():
        if k != "root":
            t.add_row(k, fmt(v))
    Console().print(t)
    return 0
