"""kernelight export: write a trained model in a standard format (the formats its method declares)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from ..methods import specs

    formats = {}
    for sp in specs():
        for fmt, text in sp.export_formats.items():
            formats.setdefault(fmt, []).append(f"{sp.name}: {text}")
    p = sub.add_parser(
        "export",
        help="export a trained run (3DGS .ply, shell meshes, ...)",
        description="Export RUN (run folder or checkpoint) in a format its method declares:\n"
        + "".join(f"  --format {fmt:<8} {'; '.join(v)}\n" for fmt, v in formats.items())
        + "The 3DGS .ply is readable by 3DGS viewers and by 'kernelight render FILE.ply'. RayGauss density "
        "Gaussians are converted to opacity (1 - exp(-s sqrt(2 pi) min scale)).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run folder or checkpoint .pt")
    p.add_argument("--format", choices=sorted(formats), default=None,
                   help="output format (default: the method's first; see above)")
    p.add_argument("--out", default=None,
                   help="output file or folder (default: <run>/export/..., e.g. export/point_cloud.ply)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from .. import api
    from ..errors import ConfigError

    model = api.load(args.run)
    fmt = args.format or next(iter(model.export_formats), None)
    if fmt is None:
        raise ConfigError(f"{args.run}: method {model.name} has no export format")
    if fmt not in model.export_formats:
        raise ConfigError(f"{args.run}: a {model.name} run exports {', '.join(model.export_formats) or 'nothing'}, "
                          f"not --format {fmt}")
    run_dir = model.run_dir or Path(".")
    out = Path(args.out) if args.out else model.default_export_path(fmt, run_dir)
    for p in model.export(fmt, out):
        print(f"wrote {p}")
    print(f"{model.progress_label()} exported as {fmt}")
    return 0
