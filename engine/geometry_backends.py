"""Lazy access to optional native backends (open3d), with clear messages when they are missing.

open3d's wheel links against the system library ``libusb-1.0``; on a bare Debian/Ubuntu machine
``import open3d`` fails with "libusb-1.0.so.0: cannot open shared object file". We import it only
when a feature needs it and turn that failure into an instruction.
"""
from __future__ import annotations

_O3D = None


def check_open3d():
    """Import and return the open3d module, or raise ImportError saying what to install."""
    global _O3D
    if _O3D is not None:
        return _O3D
    try:
        import open3d as o3d
    except ImportError as exc:
        msg = str(exc)
        if "libusb" in msg:
            raise ImportError(
                "open3d needs the system library libusb-1.0: install it with "
                "'sudo apt-get install libusb-1.0-0' (Debian/Ubuntu) or your system's equivalent "
                f"(original error: {msg})"
            ) from exc
        if "libgomp" in msg or ".so" in msg:
            raise ImportError(
                f"open3d could not load a system library ({msg}); install it with your package manager"
            ) from exc
        raise ImportError(
            "open3d is not installed: pip install -c constraints.txt open3d-cpu==0.20.0"
        ) from exc
    _O3D = o3d
    return o3d
