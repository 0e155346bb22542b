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
        "'kernelight train METHOD --help' lists that method's options only. Methods:\n" + "".join(f"  {sp.name:<10} {sp.description}\n" for sp in specs()),
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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where the model, the data and the optimizer state live, and Taichi runs (default: "
                        "the scene TOML's [run] device, else auto = cuda when torch sees a GPU)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel training on N local processes (launches torchrun; gloo on the CPU, "
                        "NCCL on GPUs). Ranks split each step's batch (rays_per_batch / batch_images): N must "
                        "divide it. Multi-node: torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d "
                        "--rdzv-endpoint HOST:PORT -m engine.cli train ...")
    p.add_argument("--image-cache", default=None, metavar="SIZE",
                   help="memory for decoded images: auto (default: half the available memory), MB (2048, 512MB, "
                        "2GB), a number of images (300img) or all. A dataset that does not fit streams from disk "
                        "through a cache of this size (rays from working sets of cached images, the next images "
                        "decoded in the background)")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="S",
                   help="data-parallel runs: a rank silent this many seconds makes the others stop (default 600)")
    add_method_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..train import distributed

    distributed.pin_local_gpu()   # under torchrun with several GPUs: one per rank, before CUDA starts
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
    device = args.device or (_scene_run_table(scene.path).get("device") if scene is not None else None) or "auto"
    image_cache = args.image_cache or (_scene_run_table(scene.path).get("image_cache") if scene is not None
                                       else None) or "auto"
    from ..data.stream import parse_image_cache

    parse_image_cache(image_cache)      # a bad value: one line, before anything starts
    spec = methods.get(method)      # unknown name: ConfigError listing the registered methods
    if not Path(data).exists():
        raise ConfigError(f"{data}: dataset folder not found")
    preset = args.preset or (scene.preset if scene is not None else None)
    if preset:
        options = {**spec.preset(preset), **options}
    options.update(collect_method_options(args))
    cfg = spec.config_class().from_options(options, method)   # bad options fail here, before any folder is made
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout:g}")
    if args.nproc is not None:
        return _launch(args, spec, cfg, device)
    hooks = []
    if args.viewer:
        import sys

        from viewer.training import TrainingViewerHook  # lazy: engine never imports viewer at module level

        hooks.append(TrainingViewerHook(port=args.viewer_port, keep_open=sys.stdin.isatty()))
    settings = TrainSettings(method=spec.method_class(), data=Path(data), output=Path(args.output), scene_name=name,
                             data_format=fmt, downscale=downscale, background=background, options=options,
                             run_dir=Path(args.resume) if args.resume else None,
                             progress=not args.no_progress, hooks=hooks, device=device, image_cache=image_cache,
                             dist_timeout_s=args.dist_timeout or distributed.DEFAULT_TIMEOUT_S)
    run_dir = train(settings)
    if distributed.env_world()[0] == 0:
        print(f"run folder: {run_dir}")
    return 0


def _scene_run_table(path) -> dict:
    """The ``[run]`` table of a scene TOML / run config.toml (world_size, device), or {}."""
    import tomllib

    try:
        raw = tomllib.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError):
        return {}
    run = raw.get("run")
    return run if isinstance(run, dict) else {}


def _launch(args, spec, cfg, device: str) -> int:
    """``--nproc N``: check what can be checked here (one line each), then run this same command
    under torchrun with N local ranks and return its exit status."""
    import os
    import socket
    import subprocess
    import sys

    from ..errors import ConfigError
    from ..train import distributed

    n = int(args.nproc)
    if os.environ.get("WORLD_SIZE") not in (None, "", "1"):
        raise ConfigError("--nproc inside a torchrun rank: give --nproc only to the kernelight command you start")
    if n < 1:
        raise ConfigError(f"--nproc must be >= 1, got {n}")
    dev = distributed.resolve_device(device)
    limit = distributed.max_local_ranks(dev)
    if n > limit:
        what = f"{limit} GPU(s)" if dev.type == "cuda" else f"{limit} CPU core(s)"
        raise ConfigError(f"--nproc {n}: this machine has {what}; each rank needs its own "
                          f"({'one GPU' if dev.type == 'cuda' else 'one core'} per rank), so use --nproc {limit} or fewer")
    distributed.check_world(spec.method_class(), cfg, n)
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc-per-node={n}",
           "--master-addr", "127.0.0.1", f"--master-port={port}", "--max-restarts", "0", "-m", "engine.cli", *rest]
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)
