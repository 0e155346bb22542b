"""kernelight export: write a trained model in a standard format."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained run (3DGS .ply, or shell meshes)",
        description="Export RUN (run folder or checkpoint). --format ply writes the standard 3DGS "
        "layout (x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*), readable by 3DGS viewers and "
        "by 'kernelight render FILE.ply'. RayGauss density Gaussians are converted to opacity "
        "(1 - exp(-s sqrt(2 pi) min scale)) and spherical-Gaussian lobes are dropped (not in the format). "
        "--format shells (Adaptive Shells runs) writes outer.ply, inner.ply and surface.ply (SDF zero level set).",
    )
    p.add_argument("run", help="run folder or checkpoint .pt")
    p.add_argument("--format", choices=["ply", "shells"], default="ply")
    p.add_argument("--out", default=None, help="output file (default: <run>/export/point_cloud.ply)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from .. import api
    from ..errors import ConfigError

    model = api.load(args.run)
    run_dir = getattr(model, "run_dir", None) or Path(".")
    if args.format == "shells":
        if not hasattr(model, "export"):
            raise ConfigError(f"{args.run}: --format shells needs a run of the shells method")
        out = Path(args.out) if args.out else run_dir / "export" / "shells"
        for p in model.export("shells", out):
            print(f"wrote {p}")
        return 0
    if not hasattr(model, "model") or not hasattr(model.model, "export_ply"):
        raise ConfigError(f"{args.run}: --format ply needs a Gaussian model (raygauss run)")
    out = Path(args.out) if args.out else run_dir / "export" / "point_cloud.ply"
    model.model.export_ply(out)
    print(f"wrote {out} ({model.num_primitives} Gaussians)")
    return 0
