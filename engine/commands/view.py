"""kernelight view: the interactive web viewer (viser) for a run, checkpoint, 3DGS .ply or mesh."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "view",
        help="open the interactive web viewer on a run, checkpoint, 3DGS .ply or mesh",
        description="Serve PATH in the browser (viser): fly around a trained scene (render modes RGB/depth/"
        "alpha, adaptive resolution, training cameras as clickable frustums, camera paths saved as "
        "camera_path.json), or a mesh with the heat-geodesic tool; a spherical-harmonics tool is always "
        "there. Listens on 127.0.0.1 only, unless --host 0.0.0.0 is given. Over SSH: "
        "ssh -L 7007:127.0.0.1:7007 HOST, then open http://127.0.0.1:7007.",
        epilog="examples:\n  kernelight view outputs/mic/raygauss/<stamp>\n"
        "  kernelight view ../shared/data/gaussians/playcanvas_guitar_decoded_inria_sh0.ply --up=-y\n"
        "  kernelight view ../shared/data/meshes/spot.obj --sh-data ../shared/data/sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="run folder, checkpoint .pt, 3DGS .ply, or mesh (.obj .off .stl .ply .glb)")
    p.add_argument("--port", type=int, default=7007, help="TCP port (default 7007; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes the viewer to the network)")
    p.add_argument("--max-res", type=int, default=512, help="full render size, longer side in pixels (default 512)")
    p.add_argument("--target-fps", type=float, default=10.0, help="frame rate aimed at while the camera moves")
    p.add_argument("--up", default="auto", help="world up: auto (from training cameras, else +z), +z, -y, +y, ... (write a leading minus as --up=-y)")
    p.add_argument("--sh-data", metavar="DIR", default=None,
                   help="folder of lat-long env maps (.npy) for the SH tool (e.g. ../shared/data/sh)")
    p.add_argument("--output", metavar="DIR", default=None,
                   help="folder where camera_path.json is saved (default: the run folder, else the current folder)")
    p.add_argument("--background", default=None, help="black | white | R,G,B (default black)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where a run's model lives and Taichi runs (default: the model on the CPU, Taichi on "
                        "its default arch)")
    from ._common import add_method_options

    add_method_options(p, render_only=True)   # render-time overrides of the loaded model (e.g. --dt 0.01)
    p.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop after N seconds
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..config import parse_background
    from ..errors import ConfigError

    if args.max_res < 16:
        raise ConfigError(f"--max-res must be >= 16, got {args.max_res}")
    if args.target_fps <= 0:
        raise ConfigError(f"--target-fps must be > 0, got {args.target_fps}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    from .. import kernels

    if args.device is not None:     # check (one line) and start Taichi on the matching arch first
        from ..train.distributed import resolve_device

        resolve_device(args.device, start=True)
    kernels.init()
    import viewer.app as app  # lazy: the viewer is optional for every other command

    host = args.host
    if host not in ("127.0.0.1", "localhost"):
        print(f"WARNING: --host {host}: the viewer will accept connections from other machines; it has no "
              "authentication. Prefer SSH port forwarding (ssh -L 7007:127.0.0.1:7007 HOST).", file=sys.stderr)
    port = args.port or app.free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    bg = parse_background(args.background) if args.background else (0.0, 0.0, 0.0)
    opts = app.ViewerOptions(host=host, port=port, max_side=args.max_res, target_fps=args.target_fps,
                             up=None if args.up == "auto" else args.up, sh_data=args.sh_data,
                             output_dir=args.output, background=bg)
    from ._common import collect_method_options

    load_opts = collect_method_options(args)
    if args.device is not None:
        load_opts["device"] = args.device
    viewer = app.ViewerApp.open(args.path, opts, **load_opts)
    for note in viewer.scene.notes:
        print(f"note: {note}")
    print(f"kernelight viewer: {viewer.url}  (Ctrl-C to stop)", flush=True)
    viewer.serve_forever(args.timeout)
    return 0
