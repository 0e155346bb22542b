"""Taichi runtime: one initialisation, arch selection, offline cache, and a thread lock.

Arch selection (``KERNELIGHT_ARCH`` overrides, default ``auto``):

* ``auto``   -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
* ``cpu``, ``cuda``, ``vulkan`` -> that arch.

``ti.gpu`` is never used: on machines without a GPU its OpenGL probe segfaults the process.

The offline cache lives in ``$KERNELIGHT_CACHE/taichi`` (default ``~/.cache/kernelight/taichi``)
so compiled kernels survive between processes.

Taichi is not thread safe, and its CPU (LLVM) backend asserts that kernels are *compiled* on
the thread that called ``ti.init``. So:

* every kernel call holds :data:`runtime_lock` (re-entrant; wrappers take it unconditionally);
* threads other than the Taichi thread (viewer callbacks) never call kernels directly: they
  submit the work to :class:`shaders.thread_queue.TaichiQueue` (``default_queue().call(fn)``),
  which the Taichi thread pumps (the viewer's main loop, or the trainer between steps).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

_VALID_ARCHS = ("auto", "cpu", "cuda", "vulkan")

runtime_lock = threading.RLock()
_state = {"initialized": False, "arch": None}


def cache_dir() -> Path:
    root = os.environ.get("KERNELIGHT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "kernelight"
    return base / "taichi"


def _resolve_arch(requested: str | None) -> str:
    name = (requested or os.environ.get("KERNELIGHT_ARCH") or "auto").strip().lower()
    if name not in _VALID_ARCHS:
        raise ValueError(
            f"KERNELIGHT_ARCH={name!r} is not one of {', '.join(_VALID_ARCHS)}"
        )
    if name == "auto":
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    return name


def init(arch: str | None = None, *, debug: bool = False) -> str:
    """Initialise Taichi once and return the arch name in use ("cpu", "cuda" or "vulkan").

    Later calls are no-ops that return the arch chosen the first time; asking for a
    different arch after initialisation raises, because Taichi cannot switch safely while
    tensors and kernels from the first arch are alive.
    """
    with runtime_lock:
        if _state["initialized"]:
            if arch is not None and _resolve_arch(arch) != _state["arch"]:
                raise RuntimeError(
                    f"Taichi already initialised on {_state['arch']!r}; cannot switch to {arch!r}"
                )
            return _state["arch"]
        import taichi as ti

        name = _resolve_arch(arch)
        if name == "cuda":
            _require_cuda_torch("KERNELIGHT_ARCH=cuda")
        ti_arch = {"cpu": ti.cpu, "cuda": ti.cuda, "vulkan": ti.vulkan}[name]
        cdir = cache_dir()
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            cache_kwargs = dict(offline_cache=True, offline_cache_file_path=str(cdir))
        except OSError:
            cache_kwargs = dict(offline_cache=False)
        ti.init(
            arch=ti_arch,
            default_fp=ti.f32,
            default_ip=ti.i32,
            debug=debug,
            log_level=ti.WARN,
            **cache_kwargs,
        )
        actual = ti.lang.impl.current_cfg().arch
        if name == "cuda" and actual != ti.cuda:
            raise RuntimeError(
                "KERNELIGHT_ARCH=cuda but Taichi could not start on CUDA "
                "(no driver or no GPU). Unset KERNELIGHT_ARCH to use the CPU."
            )
        _state["initialized"] = True
        _state["arch"] = name
        _set_torch_threads(name)
        return name


def _set_torch_threads(arch: str) -> None:
    """On the CPU, torch's intra-op pool and Taichi's pool compete for the same cores: torch's
    OpenMP threads spin between the many small ops around each kernel call. Measured on a 2-core
    machine, one RayGauss training step took 0.99 s with torch on 2 threads and 0.19 s on 1 thread
    (the Taichi kernels keep all cores). So with Taichi on the CPU, torch runs single-threaded
    unless ``KERNELIGHT_TORCH_THREADS`` says otherwise (0 leaves torch's setting untouched)."""
    import torch

    env = os.environ.get("KERNELIGHT_TORCH_THREADS")
    n = int(env) if env not in (None, "") else (1 if arch == "cpu" else 0)
    if n > 0:
        torch.set_num_threads(n)


CUDA_TORCH_HINT = ("install the CUDA build of torch: make setup TORCH=cu128 (or pip install torch==2.13.0 "
                   "--index-url https://download.pytorch.org/whl/cu128; README 'GPU install')")


class DeviceMismatch(RuntimeError):
    """The torch device and the Taichi arch asked for cannot run together (one line: what and how)."""


def _require_cuda_torch(what: str) -> None:
    """Refuse CUDA Taichi (or ``--device cuda``) when torch cannot hold CUDA tensors: Taichi's
    ndarray arguments are torch tensors, so both must be on the GPU."""
    import torch

    if torch.cuda.is_available():
        return
    if getattr(torch.version, "cuda", None) is None:
        raise DeviceMismatch(f"{what} needs torch with CUDA, but torch {torch.__version__} is the CPU-only "
                             f"build; {CUDA_TORCH_HINT}")
    raise DeviceMismatch(f"{what}: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
                         "(no driver, or CUDA_VISIBLE_DEVICES hides it); use --device cpu")


def check_device(requested: str | None = "auto"):
    """The torch device for ``requested`` (``auto`` | ``cpu`` | ``cuda``), which must match the
    Taichi arch so that kernels take tensors where they are (no per-call host-device copies).

    ``auto``: CUDA when torch sees a GPU, else the CPU; when Taichi is already running or
    ``KERNELIGHT_ARCH`` names an arch, that arch's device. Start Taichi with ``init(device.type)``
    afterwards. Raises :class:`DeviceMismatch` (one line) for ``cuda`` without a usable CUDA torch,
    ``cuda`` with Taichi on the CPU, and ``cpu`` with Taichi on CUDA.
    """
    import torch

    req = (requested or "auto").strip().lower()
    if req not in ("auto", "cpu", "cuda"):
        raise DeviceMismatch(f"--device must be auto, cpu or cuda, got {requested!r}")
    if req == "cuda":
        _require_cuda_torch("--device cuda")
    env = (os.environ.get("KERNELIGHT_ARCH") or "auto").strip().lower()
    if _state["initialized"]:
        arch = _state["arch"]
    elif env == "auto":          # Taichi not started and free to follow the device
        if req == "auto":
            req = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(req)
    else:
        arch = _resolve_arch(None)
    if arch == "cuda":
        _require_cuda_torch("KERNELIGHT_ARCH=cuda")
    if req == "auto":
        return torch.device("cuda" if arch == "cuda" else "cpu")
    if req == "cuda" and arch != "cuda":
        raise DeviceMismatch(f"--device cuda but Taichi runs on {arch} (KERNELIGHT_ARCH="
                             f"{os.environ.get('KERNELIGHT_ARCH', 'auto')}): unset KERNELIGHT_ARCH or set it to cuda")
    if req == "cpu" and arch == "cuda":
        raise DeviceMismatch("--device cpu but Taichi runs on CUDA (KERNELIGHT_ARCH=cuda or auto with a GPU): "
                             "every kernel call would copy its inputs to the GPU and back; use --device cuda "
                             "or KERNELIGHT_ARCH=cpu")
    return torch.device(req)


def arch_name() -> str:
    """The arch Taichi runs on (initialising it if needed)."""
    return init()


def torch_device():
    """The torch device that matches the Taichi arch (so ndarray arguments stay zero-copy)."""
    import torch

    return torch.device("cuda") if arch_name() == "cuda" else torch.device("cpu")


def call(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` while holding the runtime lock (use from non-main threads)."""
    init()
    with runtime_lock:
        return fn(*args, **kwargs)


def contiguous(*tensors):
    """Return the tensors as contiguous tensors on the runtime's device (a tuple, or one tensor)."""
    dev = torch_device()
    out = tuple(t.to(dev).contiguous() if t is not None else None for t in tensors)
    return out[0] if len(out) == 1 else out
