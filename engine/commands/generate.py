"""kernelight generate: text -> a 3D object (GVGEN), written as a standard 3DGS .ply."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a 3D object from a caption (GVGEN text-to-3D) as a 3DGS .ply",
        description="Generate a GaussianVolume from TEXT with a gvgen generator: the GDF is sampled by DDIM "
        "from the stage-1 diffusion U-Net, then the stage-2 U-Net writes every Gaussian's attributes in one "
        "pass. Writes a standard 3DGS .ply (kernelight view and other 3DGS viewers open it) and optionally a "
        "turntable video. Without --model the small generator shipped in the package is used (trained on "
        "the primitives set: shapes box, sphere, cylinder, cone, torus, capsule, ... in a few colours and two "
        "sizes); words its training captions never had are listed and the object is generated anyway.",
        epilog="examples:\n  kernelight generate \"a red torus\" --out torus.ply --video turntable.mp4\n"
        "  kernelight generate \"a small blue cone\" --out cone.ply --seed 3 --model outputs/set/gvgen/RUN",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("text", help="the caption, e.g. \"a red torus\" (quote it)")
    p.add_argument("--out", default=None, help="output .ply (default: the caption's words joined by _, .ply)")
    p.add_argument("--video", default=None, metavar="FILE", help="also write a turntable video (.mp4 or .gif)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same object; default 0)")
    p.add_argument("--model", default=None, metavar="RUN",
                   help="a gvgen run folder or checkpoint .pt (default: the shipped generator)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the generator's, 50)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the generator's, 3; 1 = none, half the time)")
    p.add_argument("--grid-size", type=int, default=None, metavar="N",
                   help="insist on an N^3 generator (an error if the model makes another N)")
    p.add_argument("--frames", type=int, default=60, help="turntable frames (default 60)")
    p.add_argument("--size", type=int, default=256, help="turntable video side in pixels (default 256)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--background", default="white", help="video background: white | black | R,G,B (default white)")
    p.set_defaults(func=run)


def default_out(caption: str) -> str:
    import re

    words = re.findall(r"[A-Za-z0-9]+", caption.lower())
    return ("_".join(words[:8]) or "generation") + ".ply"


def run(args) -> int:
    from pathlib import Path

    from .. import generate as gen_mod
    from ..config import parse_background
    from ..errors import ConfigError

    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise ConfigError(f"--steps must be in [1, 1000], got {args.steps}")
    if args.frames < 1 or args.size < 8:
        raise ConfigError("--frames must be >= 1 and --size >= 8")
    if args.video and Path(args.video).suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--video {args.video}: the file must end in .mp4 or .gif")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() != ".ply":
        raise ConfigError(f"--out {out}: a 3DGS file must end in .ply")
    bg = parse_background(args.background)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import os

    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        # the U-Nets run on 8^3 grids: one intra-op thread is as fast on an idle 2-core machine and 20x
        # faster on a loaded one (OpenMP workers spin against each other; tools/bench_gvgen.py)
        torch.set_num_threads(1)
    gen = gen_mod.load_generator(args.model, **({} if args.grid_size is None else {"grid_size": args.grid_size}))
    with Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as prog:
        task = prog.add_task("ddim", total=args.steps or gen.cfg.ddim_steps)
        g = gen_mod.generate(args.text, seed=args.seed, model=args.model, steps=args.steps, guidance=args.guidance,
                             grid_size=args.grid_size,
                             callback=lambda i, n: prog.update(task, completed=i, total=n))
    if g.unknown_words:
        print(f"note: the training captions never had the word(s) {', '.join(repr(w) for w in g.unknown_words)}; "
              f"generated anyway (the text encoder still embeds them, but expect them to be ignored or guessed)")
    out = out or Path(default_out(g.caption))
    path = g.write_ply(out)
    n = g.generator.grid_size
    print(f"generated {g.caption!r} (seed {g.seed}) in {g.seconds:.2f} s: {g.num_primitives:,} of {n ** 3:,} "
          f"Gaussians ({n}^3 volume) above opacity {g.generator.cfg.min_opacity:g}")
    print(f"wrote {path}")
    if args.video:
        from rich.progress import track

        from ..generate import turntable_cameras
        from ..io.images import write_video

        cams = turntable_cameras(g.bounds(), frames=args.frames, size=args.size)
        frames = [g.render(cams, i, background=bg)["rgb"].clamp(0, 1)
                  for i in track(range(len(cams)), description="rendering turntable", transient=True)]
        print(f"wrote {write_video(args.video, frames, fps=args.fps)}")
    return 0
