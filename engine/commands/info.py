"""kernelight info: versions, Taichi arch, torch device, data folder."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show versions, the Taichi arch and device in use, and where the data folder is",
        description="Print the versions of kernelight and its key dependencies, the Taichi arch "
        "(KERNELIGHT_ARCH=auto|cpu|cuda|vulkan overrides), the torch device, the kernel cache folder "
        "and the shared data folder if one is found.",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def collect() -> dict:
    import os
    import platform
    from pathlib import Path

    import torch

    from shaders import runtime

    from .. import __version__
    from ..methods import specs

    arch = runtime.init()
    repo = Path(__file__).resolve().parents[2]
    data = None
    for cand in filter(None, [os.environ.get("KERNELIGHT_DATA"), str(repo.parent / "shared" / "data")]):
        if Path(cand).is_dir():
            data = str(Path(cand).resolve())
            break
    o3d_ok, o3d_msg = True, _version("open3d-cpu")
    try:
        from ..geometry_backends import check_open3d

        check_open3d()
    except ImportError as exc:
        o3d_ok, o3d_msg = False, str(exc)
    return {
        "kernelight": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "taichi": _version("taichi"),
        "open3d": o3d_msg if o3d_ok else f"unavailable: {o3d_msg}",
        "numpy": _version("numpy"),
        "taichi_arch": arch,
        "torch_device": str(runtime.torch_device()),
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
        "kernel_cache": str(runtime.cache_dir()),
        "data_folder": data or "not found (set KERNELIGHT_DATA)",
        "methods": {sp.name: {"description": sp.description, "presets": sorted(sp.preset_table()),
                              "export_formats": sorted(sp.export_formats), "reads": sorted(sp.reads)}
                    for sp in specs()},
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="kernelight info", show_header=False)
    for k, v in info.items():
        if k == "methods":
            continue
        t.add_row(k, str(v))
    for name, m in info["methods"].items():
        extra = []
        if m["presets"]:
            extra.append("presets " + ", ".join(m["presets"]))
        if m["export_formats"]:
            extra.append("exports " + ", ".join(m["export_formats"]))
        if m["reads"]:
            extra.append("reads " + ", ".join(m["reads"]))
        t.add_row(f"method {name}", m["description"] + (f" ({'; '.join(extra)})" if extra else ""))
    Console().print(t)
    return 0
