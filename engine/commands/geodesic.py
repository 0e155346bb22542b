"""``kernelight geodesic``: heat-method geodesic distances on a mesh or a point cloud."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "geodesic",
        help="heat-method geodesic distance from source vertices (mesh or point cloud)",
        description=(
            "Geodesic distance from one or more source vertices by the heat method. INPUT is a mesh "
            "(.obj/.ply/.off/.stl) or a point cloud (.ply without faces, .xyz, .npy). With several "
            "--source, each vertex gets the distance to the nearest source. Vertices that no source "
            "can reach (other components, unreferenced vertices) get +inf."
        ),
    )
    p.add_argument("input", metavar="MESH", help="mesh or point cloud file")
    p.add_argument("--source", type=int, action="append", required=True, metavar="I",
                   help="source vertex index (0-based, as in the file); repeat for several")
    p.add_argument("--out", metavar="DIST.npy", help="write the (n,) float64 distances as .npy")
    p.add_argument("--ply", metavar="COLORED.ply", help="write the geometry with distance colours (and a distance property)")
    p.add_argument("--isolines", type=int, default=0, metavar="N", help="N evenly spaced isolines (bands in --ply, lines in --isolines-obj)")
    p.add_argument("--isolines-obj", metavar="LINES.obj", help="write isoline segments as an OBJ of lines (meshes only)")
    p.add_argument("--t-coef", type=float, default=1.0, help="diffusion time factor: t = t_coef * h^2 (default 1)")
    p.add_argument("--robust", action=argparse.BooleanOptionalAction, default=True,
                   help="operators on the intrinsic Delaunay triangulation (default, as potpourri3d); "
                        "--no-robust: the plain cotan Laplacian (wrong on meshes with many obtuse triangles)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    import warnings

    import numpy as np
    from rich.console import Console

    from ..errors import ConfigError
    from ..geometry.geodesic import MeshHeatSolver, PointCloudHeatSolver
    from ..geometry.geodesic_io import (distance_colors, isolines, load_geometry, write_colored_ply,
                                        write_isolines_obj)
    from ..io.atomic import atomic_write

    console = Console(stderr=True)
    if args.isolines < 0:
        raise ConfigError(f"--isolines must be >= 0, got {args.isolines}")
    if args.isolines_obj and args.isolines == 0:
        raise ConfigError("--isolines-obj needs --isolines N (N > 0)")
    if not args.t_coef > 0:
        raise ConfigError(f"--t-coef must be positive, got {args.t_coef}")
    V, F = load_geometry(args.input)
    if F is None and args.isolines_obj:
        raise ConfigError(f"--isolines-obj needs a mesh; {args.input} is a point cloud")
    t0 = time.perf_counter()
    with console.status("factorising the heat and Poisson systems"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if F is None:
                solver = PointCloudHeatSolver(V, t_coef=args.t_coef)
            else:
                solver = MeshHeatSolver(V, F, t_coef=args.t_coef, robust=args.robust)
        except ValueError as exc:
            raise ConfigError(f"{args.input}: {exc}") from exc
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}")
    t1 = time.perf_counter()
    try:
        d = solver.compute_distance(args.source)
    except ValueError as exc:
        raise ConfigError(f"--source: {exc}") from exc
    t2 = time.perf_counter()
    fin = np.isfinite(d)
    kind = "point cloud" if F is None else "mesh"
    print(f"{kind}: {len(V)} vertices" + ("" if F is None else f", {len(F)} faces") + f"; sources {sorted(set(args.source))}")
    print(f"max distance {d[fin].max():.6g}, mean {d[fin].mean():.6g}; unreachable {int((~fin).sum())}")
    print(f"setup {t1 - t0:.3f} s, query {1e3 * (t2 - t1):.1f} ms")
    if args.out:
        with atomic_write(args.out, "wb") as fh:
            np.save(fh, d)
        print(f"wrote {args.out}")
    levels = None
    if args.isolines:
        dmax = d[fin].max()
        levels = dmax * np.arange(1, args.isolines + 1) / (args.isolines + 1)
    if args.ply:
        write_colored_ply(args.ply, V, F, distance_colors(d, n_bands=args.isolines), d)
        print(f"wrote {args.ply}")
    if args.isolines_obj:
        pts, segs, lev = isolines(V, F, d, levels)
        write_isolines_obj(args.isolines_obj, pts, segs, levels, lev)
        print(f"wrote {args.isolines_obj} ({len(segs)} segments)")
    return 0
