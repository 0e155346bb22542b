"""kernelight sh: spherical-harmonics tools (project an environment map)."""
from __future__ import annotations

import argparse

_PROJECT_HELP = """\
Project a lat-long environment map onto real spherical harmonics up to --degree, print the
coefficients, and write into --out: coeffs.npy ((L+1)^2 x 3, float64), reconstruction.npy/.png
(the degree-L reconstruction, linear / tone-mapped), irradiance.npy/.png (Ramamoorthi-Hanrahan
irradiance E from the first 9 coefficients; the PNG shows E/pi, the radiance of a white diffuse
surface). Map convention: Blender equirectangular (row 0 = zenith, centre column = +X), Z-up by
default, --up y for a Y-up world ((x, y, z) -> (x, z, -y)). Inputs: .npy (H, W, 3) float,
.hdr, .png/.jpg (sRGB, linearised)."""


def register(sub) -> None:
    p = sub.add_parser("sh", help="spherical harmonics: project an environment map to SH coefficients",
                       description="Spherical-harmonics tools. 'kernelight sh project ENVMAP --degree L' "
                       "projects a lat-long environment map and writes its reconstruction and irradiance.")
    actions = p.add_subparsers(dest="sh_action", metavar="ACTION")
    pr = actions.add_parser("project", help="project a lat-long environment map onto SH",
                            description=_PROJECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("envmap", metavar="ENVMAP", help="lat-long environment map (.npy, .hdr, .png, .jpg)")
    pr.add_argument("--degree", "-L", type=int, required=True, help="SH degree L (>= 0)")
    pr.add_argument("--out", default=None, help="output folder (default outputs/sh/<envmap name>)")
    pr.add_argument("--coeffs", default=None, metavar="FILE",
                    help="also save the coefficients to FILE (.npy: (K, 3) array; .json: with l, m, metadata)")
    pr.add_argument("--up", choices=("z", "y"), default="z", help="world up axis of the map (default z, Blender)")
    pr.add_argument("--convention", choices=("standard", "3dgs"), default="standard",
                    help="SH sign convention of the saved coefficients (default standard = scipy/sphericart)")
    pr.add_argument("--method", choices=("quadrature", "lstsq"), default="quadrature",
                    help="quadrature with exact pixel solid angles, or weighted least squares (exact for "
                    "band-limited maps)")
    pr.add_argument("--exposure", type=float, default=None,
                    help="scale before tone mapping the PNGs (default: 1 / 99th percentile of the input)")
    p.set_defaults(func=_no_action, sh_parser=p)
    pr.set_defaults(func=run_project)


def _no_action(args) -> int:
    args.sh_parser.print_help()
    return 0


def _tonemap(img, scale: float):
    """Linear HDR -> [0, 1] sRGB display values: exposure scale, Reinhard, sRGB transfer."""
    import numpy as np

    x = np.clip(np.asarray(img, dtype=np.float64) * scale, 0.0, None)
    x = x / (1.0 + x) * 2.0  # Reinhard, mid-grey 1 -> 1.0 after the x2
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def _coeff_table(coeffs, degree: int, convention: str):
    from rich.table import Table

    t = Table(title=f"SH coefficients (degree {degree}, {convention} convention)")
    for col in ("l", "m", "R", "G", "B"):
        t.add_column(col, justify="right")
    per_band = 5 if degree > 3 else None
    for l in range(degree + 1):
        ms = list(range(-l, l + 1))
        if per_band is not None and len(ms) > per_band:
            ms = list(range(-(per_band // 2), per_band // 2 + 1))
        for m in ms:
            r, g, b = (float(v) for v in coeffs[l * (l + 1) + m])
            t.add_row(str(l), str(m), f"{r:+.6f}", f"{g:+.6f}", f"{b:+.6f}")
        if len(ms) < 2 * l + 1:
            t.add_row(str(l), "...", "", "", "")
    return t


def run_project(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from rich.console import Console
    from rich.progress import Progress

    from ..errors import ConfigError
    from ..geometry import sh
    from ..io.atomic import atomic_path, atomic_write_text
    from ..io.images import write_image

    if args.degree < 0:
        raise ConfigError(f"--degree must be >= 0, got {args.degree}")
    src = Path(args.envmap)
    out = Path(args.out) if args.out else Path("outputs") / "sh" / src.stem
    if args.coeffs and Path(args.coeffs).suffix.lower() not in (".npy", ".json"):
        raise ConfigError(f"--coeffs {args.coeffs}: use a .npy or .json file name")
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("loading", total=5)
        img = sh.load_envmap(src)
        H, W = img.shape[:2]
        if W <= 2 * args.degree:
            raise ConfigError(f"--degree {args.degree} is too high for a {W}-pixel-wide map (needs W > 2L)")
        progress.update(task, advance=1, description=f"projecting ({H}x{W}, L={args.degree})")
        proj = sh.EnvmapProjector(H, W, args.degree, up=args.up, convention=args.convention)
        coeffs = proj.project(img, method=args.method)
        progress.update(task, advance=1, description="reconstructing")
        recon = proj.reconstruct(coeffs).numpy().astype(np.float32)
        progress.update(task, advance=1, description="irradiance")
        e9 = sh.irradiance_coeffs(coeffs, l_max=2)
        irr_proj = proj if args.degree >= 2 else sh.EnvmapProjector(H, W, 2, up=args.up, convention=args.convention)
        irr = irr_proj.reconstruct(e9).numpy().astype(np.float32)
        progress.update(task, advance=1, description="writing")
        scale = args.exposure
        if scale is None:
            p99 = float(np.percentile(img.mean(axis=2), 99))
            scale = 1.0 / p99 if p99 > 0 else 1.0
        c = coeffs.numpy()
        with atomic_path(out / "coeffs.npy") as tmp:
            np.save(tmp, c)
        with atomic_path(out / "reconstruction.npy") as tmp:
            np.save(tmp, recon)
        with atomic_path(out / "irradiance.npy") as tmp:
            np.save(tmp, irr)
        write_image(out / "reconstruction.png", _tonemap(recon, scale))
        write_image(out / "irradiance.png", _tonemap(irr / np.pi, scale))
        if args.coeffs:
            dest = Path(args.coeffs)
            if dest.suffix.lower() == ".npy":
                with atomic_path(dest) as tmp:
                    np.save(tmp, c)
            else:
                ls, ms = sh.lm_arrays(args.degree)
                doc = {"envmap": str(src), "degree": args.degree, "convention": args.convention, "up": args.up,
                       "method": args.method, "index": "k = l*(l+1) + m",
                       "lm": [[int(a), int(b)] for a, b in zip(ls, ms)], "coefficients": c.tolist()}
                atomic_write_text(dest, json.dumps(doc, indent=1) + "\n")
        progress.update(task, advance=1)
    console.print(_coeff_table(c, args.degree, args.convention))
    w = sh.latlong_solid_angles(H, W).numpy()[:, :, None]
    rel = float(np.sqrt((w * (recon - img) ** 2).sum() / max((w * img**2).sum(), 1e-30)))
    console.print(f"relative L2 error (solid-angle weighted) of the degree-{args.degree} reconstruction: {rel:.4f}")
    console.print(f"wrote {out}/coeffs.npy, reconstruction.(png|npy), irradiance.(png|npy)"
                  + (f" and {args.coeffs}" if args.coeffs else ""))
    return 0
