"""kernelight train: train a representation on a dataset."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from ..methods import specs
    from ._common import add_method_options

    p = sub.add_parser(
        "train",
        help="train a method on a dataset (or a scene TOML)",
        description="Train a representation. TARGET is a method name (then --data is required) or a "
        "scene TOML file (data, method and options come from it; flags override). Writes "
        "<output>/<scene>/<method>/<timestamp>/ with config.toml, checkpoints/, metrics.jsonl. "
        "Ctrl-C saves a checkpoint; --resume RUN continues from the newest one. "
        "Methods:\n" + "".join(f"  {sp.name:<10} {sp.description}\n" for sp in specs()),
        epilog="examples:\n  kernelight train raygauss --data ../shared/data/nerf_synthetic/lego_100 "
        "--max-steps 3000\n  kernelight train scenes/mic.toml\n  kernelight train --resume "
        "outputs/mic/raygauss/2026-01-01_120000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="?", help="method name or scene .toml")
    p.add_argument("--data", help="dataset folder (any supported format, auto-detected)")
    p.add_argument("--format", dest="data_format", help="force the dataset format (blender, nerfstudio, colmap, dtu, llff)")
    p.add_argument("--downscale", type=int, default=None, help="downscale images by this integer factor")
    p.add_argument("--background", default=None, help="white | black | R,G,B (default: the dataset's)")
    p.add_argument("--output", default="outputs", help="root folder for runs (default: outputs)")
    p.add_argument("--name", default=None, help="scene name used in the run path (default: data folder name)")
    p.add_argument("--preset", default=None,
                   help="named option set applied before the scene's options and flags ("
                        + "; ".join(f"{sp.name}: {', '.join(sorted(sp.preset_table()))}" for sp in specs()
                                    if sp.presets is not None) + ")")
    p.add_argument("--resume", metavar="RUN", default=None, help="continue the run in this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--viewer", action="store_true",
                   help="serve the live web viewer on 127.0.0.1 while training (Pause/Resume, live renders)")
    p.add_argument("--viewer-port", type=int, default=7007, help="viewer port (default 7007, 0 = any free)")
    add_method_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from .. import methods
    from ..config import is_scene_file, load_scene, parse_background
    from ..errors import ConfigError
    from ..train.trainer import TrainSettings, train
    from ._common import collect_method_options

    options = {}
    scene = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no config.toml)")
        scene = load_scene(run_dir / "config.toml")
    elif args.target and is_scene_file(args.target):
        scene = load_scene(args.target)
    if scene is not None:
        method = scene.method or (args.target if args.target in methods.available() else None)
        options.update(scene.method_options)
        data = Path(args.data) if args.data else scene.data
        name = args.name or scene.name
        fmt = args.data_format or scene.format
        downscale = args.downscale or scene.downscale
        background = parse_background(args.background) if args.background else scene.background
    else:
        method = args.target
        if not method:
            raise ConfigError("give a method name or a scene .toml (see kernelight train --help)")
        if not args.data:
            raise ConfigError(f"--data is required with method {method!r}")
        data, name, fmt = Path(args.data), args.name, args.data_format
        downscale, background = args.downscale or 1, parse_background(args.background)
    spec = methods.get(method)      # unknown name: ConfigError listing the registered methods
    if not Path(data).exists():
        raise ConfigError(f"{data}: dataset folder not found")
    preset = args.preset or (scene.preset if scene is not None else None)
    if preset:
        options = {**spec.preset(preset), **options}
    options.update(collect_method_options(args))
    spec.config_class().from_options(options, method)   # bad options fail here, before any folder is made
    hooks = []
    if args.viewer:
        import sys

        from viewer.training import TrainingViewerHook  # lazy: engine never imports viewer at module level

        hooks.append(TrainingViewerHook(port=args.viewer_port, keep_open=sys.stdin.isatty()))
    settings = TrainSettings(method=spec.method_class(), data=Path(data), output=Path(args.output), scene_name=name,
                             data_format=fmt, downscale=downscale, background=background, options=options,
                             run_dir=Path(args.resume) if args.resume else None,
                             progress=not args.no_progress, hooks=hooks)
    run_dir = train(settings)
    print(f"run folder: {run_dir}")
    return 0
