"""``kernelight points``: a point cloud from a dataset or a trained run, written as a PLY."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "points",
        help="point cloud from a dataset (its points, or carved from masks/alpha) or a run (fused depth)",
        description=(
            "Write the point cloud a point-based method can start from, as a standard PLY (x y z red green "
            "blue). Sources: 'dataset' = the points the capture came with (COLMAP points3D, points3d.ply, "
            "nerfstudio ply_file_path, or a points3D.ply / sparse_pc.ply beside the data); 'carve' = the "
            "surface of the visual hull carved from the training masks/alpha in the dataset's scene box; "
            "'mvs' = that hull carved further where a plane sweep over the training images finds the "
            "photo-consistent surface behind it (concavities the silhouettes cannot see; a voxel goes when 8 percent "
            "of the views see through it; pixels without texture keep the hull); "
            "'run' = the depth a trained run renders for its training views, back-projected where alpha > "
            "--alpha-threshold, fused, voxel-downsampled and cleaned of statistical outliers (open3d). "
            "'auto' (default): the dataset's points if it has any, else carving, else (for a RUN) its depth. "
            "The source used is printed; when none works the error says why for each one tried."),
    )
    p.add_argument("path", metavar="RUN|DATASET", help="run folder (or checkpoint .pt), dataset folder or scene .toml")
    p.add_argument("--out", required=True, metavar="POINTS.ply", help="output PLY")
    p.add_argument("--from", dest="source", default="auto", choices=["auto", "run", "dataset", "carve", "mvs"],
                   help="point source (default auto)")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="dataset for a run (default: the one in the run's config.toml)")
    p.add_argument("--voxel", type=float, default=None, metavar="SIZE",
                   help="voxel size of the downsampling in scene units (run: default 1/512 of the fused "
                        "points' box diagonal, 0 keeps all; dataset/carve: none unless given)")
    p.add_argument("--max-points", type=int, default=None, metavar="N", help="keep at most N points (seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-points subset (default 0)")
    p.add_argument("--carve-resolution", type=int, default=128, metavar="N",
                   help="carving (and mvs) voxels along the scene box's longest side (default 128)")
    p.add_argument("--alpha-threshold", type=float, default=0.5, metavar="A",
                   help="run: back-project pixels with alpha above A (default 0.5)")
    p.add_argument("--views", type=int, default=None, metavar="N",
                   help="run: render at most N training views, evenly spaced (default all)")
    p.add_argument("--downscale", type=int, default=None, metavar="N",
                   help="image downscale for loading the dataset (default: the run's, else 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..errors import ConfigError

    console = Console(stderr=True)
    if args.max_points is not None and args.max_points < 1:
        raise ConfigError(f"--max-points must be >= 1, got {args.max_points}")
    if args.voxel is not None and not args.voxel >= 0:
        raise ConfigError(f"--voxel must be >= 0, got {args.voxel}")
    if args.carve_resolution < 2:
        raise ConfigError(f"--carve-resolution must be >= 2, got {args.carve_resolution}")
    if not 0 <= args.alpha_threshold < 1:
        raise ConfigError(f"--alpha-threshold must be in [0, 1), got {args.alpha_threshold}")
    if args.views is not None and args.views < 1:
        raise ConfigError(f"--views must be >= 1, got {args.views}")
    if args.downscale is not None and args.downscale < 1:
        raise ConfigError(f"--downscale must be >= 1, got {args.downscale}")
    path = Path(args.path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    is_run = path.suffix == ".pt" or (path.is_dir() and ((path / "checkpoints").is_dir() or (path / "config.toml").is_file()))

    from ..data import load_dataset
    from ..geometry.points import points_from, write_points_ply

    method = None
    data, fmt, downscale, background = path, None, 1, None
    if is_run:
        from ..api import find_run_checkpoint, load
        from ..config import load_scene

        run_dir, ckpt = find_run_checkpoint(path)
        sc = load_scene(run_dir / "config.toml") if run_dir is not None and (run_dir / "config.toml").is_file() else None
        if args.data is None and sc is None:
            raise ConfigError(f"{path}: no config.toml names the run's dataset; pass --data DATASET")
        if args.data is not None:
            data = Path(args.data)
        else:
            data, fmt, downscale, background = sc.data, sc.format, sc.downscale, sc.background
        if args.source in ("auto", "run"):
            def method():          # loaded only when its depth is needed
                from shaders import runtime

                runtime.init()
                with console.status(f"loading {ckpt}"):
                    return load(ckpt)
    elif args.source == "run":
        raise ConfigError(f"{path}: --from run needs a run folder or checkpoint (this is a dataset)")
    elif args.data is not None:
        raise ConfigError("--data is for runs; give the dataset as the path")
    if args.downscale is not None:
        downscale = args.downscale
    with console.status(f"loading dataset {data}"):
        ds = load_dataset(data, downscale=downscale, background=background, format=fmt)
    cams = ds.train.cameras if method is not None else None

    def progress(i, n):
        console.print(f"{'swept' if args.source == 'mvs' else 'rendered'} view {i}/{n}", end="\r")

    pc = points_from(args.source, dataset=ds, method=method, cameras=cams, run_label=str(path),
                     voxel=args.voxel, max_points=args.max_points, seed=args.seed,
                     carve_resolution=args.carve_resolution, alpha_threshold=args.alpha_threshold,
                     views=args.views, progress=progress if (method is not None or args.source == "mvs") else None)
    write_points_ply(args.out, pc)
    lo, hi = pc.points.min(0), pc.points.max(0)
    print(f"source: {pc.source} ({pc.detail})")
    if len(pc.stats.get("tried", [])) > 1:
        print(f"tried: {', '.join(pc.stats['tried'])} (earlier sources gave no points)")
    print(f"{len(pc)} points, box [{', '.join(f'{v:.4g}' for v in lo)}] .. [{', '.join(f'{v:.4g}' for v in hi)}]")
    print(f"wrote {args.out}")
    return 0
