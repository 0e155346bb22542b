"""kernelight gvgen: GVGEN's training data (``kernelight gvgen dataset --out DIR``)."""
from __future__ import annotations

import argparse


def _names(s: str) -> list[str]:
    return [x.strip().lower() for x in s.split(",") if x.strip()]


def register(sub) -> None:
    from ..methods.gvgen.dataset import BuildOptions

    d = BuildOptions()
    p = sub.add_parser(
        "gvgen",
        help="GVGEN text-to-3D data: build the training set of GaussianVolumes",
        description="GVGEN (text-to-3D with GaussianVolumes). Subcommands: 'dataset' builds a training set. "
        "Train the generator with 'kernelight train gvgen --data DIR' and generate with 'kernelight generate'.",
    )
    gsub = p.add_subparsers(dest="gvgen_command", metavar="SUBCOMMAND")
    q = gsub.add_parser(
        "dataset",
        help="render primitives (and licensed meshes) with the engine and fit a GaussianVolume to each",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build a GVGEN training set in --out: every shape x colour x size is normalised into the "
        "box [-0.5, 0.5]^3, rendered with the engine's BVH ray caster (Lambert + ambient light, RGBA, "
        "cameras on a sphere, Blender format: 'kernelight train gvolume --data OUT/objects/ID' reads each "
        "object) and fitted as an N^3 GaussianVolume (the gvolume method: Candidate Pool Strategy), saved as "
        "OUT/objects/ID/volume.pt (grid in GVGEN's channel order + Gaussian Distance Field). Captions come "
        "from templates ('a small red torus', 'a red donut', ...). Colour-shape pairs listed in --heldout are "
        "built too but marked split 'heldout' (kept out of training, for the benchmark). Resumable: run the "
        "same command again and finished objects (those with volume.pt) are skipped, unfinished ones are "
        "rebuilt. dataset.json describes the set (format 'kernelight-gvgen').",
    )
    q.add_argument("--out", required=True, metavar="DIR", help="dataset folder (new, empty, or a GVGEN dataset to resume)")
    q.add_argument("--shapes", default=",".join(d.shapes), metavar="LIST",
                   help="comma-separated shapes: primitives box, sphere, cylinder, cone, torus, capsule, pyramid, "
                   "ring, octahedron; licensed meshes cow (Spot, public domain), bunny (MIT)")
    q.add_argument("--colours", "--colors", default=",".join(d.colours), metavar="LIST",
                   help="comma-separated colours: red, orange, yellow, green, cyan, blue, purple, pink, white, gray, "
                   "black, brown")
    q.add_argument("--sizes", default=",".join(d.sizes), metavar="LIST", help="comma-separated sizes: small, large")
    q.add_argument("--heldout", default=None, metavar="FILE",
                   help="held-out colour-shape pairs, one 'colour shape' per line (default: the shipped "
                   "engine/methods/gvgen/heldout.txt; 'none' holds nothing out)")
    q.add_argument("--N", "--grid-size", dest="N", type=int, default=d.N, help="GaussianVolume grid size (N^3 Gaussians)")
    q.add_argument("--steps", type=int, default=d.steps, help="fitting steps per object (one image per step)")
    q.add_argument("--views", type=int, default=d.views_train, help="training views per object")
    q.add_argument("--test-views", type=int, default=d.views_test, help="test views per object (fitted PSNR)")
    q.add_argument("--image-size", type=int, default=d.image_size, help="image width = height in pixels")
    q.add_argument("--supersample", type=int, default=d.supersample, help="rays per pixel side (anti-aliasing)")
    q.add_argument("--sh-degree", type=int, default=d.sh_degree, help="SH degree of the fitted colours (GVGEN: 0)")
    q.add_argument("--seed", type=int, default=d.seed, help="seed of the fits")
    q.add_argument("--workers", type=int, default=1, help="objects fitted in parallel (worker processes)")
    q.add_argument("--limit", type=int, default=None, help="build at most this many objects now (resume later)")
    q.add_argument("--meshes-dir", default=None, metavar="DIR",
                   help="folder with spot.obj / bunny_small.ply (default: $KERNELIGHT_DATA/meshes or ../shared/data/meshes)")
    q.add_argument("--encoder", default="minilm", help="text encoder that embeds every caption into OUT/text_cache.pt "
                   "once all objects are built (minilm, clip; 'none' skips)")
    q.add_argument("--summary", default=None, metavar="FILE.json", help="also write the build summary (timings, PSNR) here")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=run_dataset)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def run_dataset(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from rich.console import Console

    from ..errors import ConfigError
    from ..methods.gvgen import primitives as P
    from ..methods.gvgen.dataset import BuildOptions, build

    console = Console(stderr=True)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > (os.cpu_count() or 1):
        console.print(f"[yellow]--workers {args.workers} is more than the {os.cpu_count()} CPU cores[/yellow]")
    held = []
    if args.heldout is None:
        held = P.parse_heldout(P.DEFAULT_HELDOUT)
    elif args.heldout.lower() != "none":
        if not Path(args.heldout).is_file():
            raise ConfigError(f"--heldout {args.heldout}: no such file")
        held = P.parse_heldout(args.heldout)
    opts = BuildOptions(N=args.N, image_size=args.image_size, views_train=args.views, views_test=args.test_views,
                        supersample=args.supersample, steps=args.steps, sh_degree=args.sh_degree, seed=args.seed,
                        shapes=_names(args.shapes), colours=_names(args.colours), sizes=_names(args.sizes),
                        heldout=[list(p) for p in held], meshes_dir=args.meshes_dir)
    opts.validate()
    for w in opts.heldout_warnings():
        console.print(f"[yellow]warning: {w}[/yellow]")
    used = [s for s in opts.shapes if s in P.MESHES]
    for s in used:
        console.print(f"mesh shape {s!r}: {P.MESHES[s].file}, {P.MESHES[s].licence}")
    summary = build(Path(args.out), opts, workers=args.workers, progress=not args.no_progress, console=console,
                    limit=args.limit, encoder=None if args.encoder.lower() == "none" else args.encoder)
    if args.summary:
        from ..io.atomic import atomic_write

        with atomic_write(args.summary, "w") as fh:
            json.dump(summary, fh, indent=1)
    objs = summary["objects"]
    psnr = f", fitted PSNR mean {sum(o['psnr'] for o in objs) / len(objs):.2f} dB" if objs else ""
    console.print(f"{args.out}: {summary['built']} built, {summary['skipped']} already there, "
                  f"{len(summary['failed'])} failed, {summary['pending']} pending of {summary['total']} "
                  f"({summary['wall_seconds']:.0f} s{psnr})"
                  + (f"; {summary['captions_encoded']} captions embedded in text_cache.pt" if summary["captions_encoded"] else ""))
    return 1 if summary["failed"] else 0
