"""Data-parallel training helpers (torch.distributed): process group, gradient averaging, state
broadcast, rank-0-only writes, and the device the run lives on.

How a distributed step works (:meth:`engine.train.trainer.Trainer._step`):

* **One global batch, split by rank.** Every rank holds the same seeded generators (image order,
  ray sampler, a method's own generator), draws the *whole* step's batch (``world x`` its share)
  and keeps its slice: rank ``r`` of ``W`` renders images ``r*b .. r*b+b-1`` of the step's
  ``W*b`` images, or rays ``r*R/W .. (r+1)*R/W - 1`` of its ``R``. Ranks see different rays and
  images, every rank's random state stays identical to the others', and the result does not depend
  on the world size: 2 ranks x 1 image train exactly what 1 rank x 2 images trains, and a
  checkpoint resumes with any number of ranks that divides the batch.
* **Gradients are averaged** (:func:`average_gradients`): one ``all_reduce`` over a flat buffer of
  every parameter's gradient (zeros where a rank has none, with a presence flag so a parameter no
  rank touched keeps ``grad = None``, as Adam expects), divided by the world size. Each rank's loss
  is the mean over *its* share, so the average is the mean over the global batch. Loss terms whose
  element count differs between ranks (per-sample terms) use :meth:`engine.methods.base.Method.batch_mean`.
  The step's loss and PSNR travel in the same buffer (the logged values are global).
* **One optimizer step** on every rank with identical gradients, so parameters stay identical.
* **Structural changes** (densify / prune, the shells extraction) are computed by every rank from
  identical inputs, then rank 0's model and optimizer state are broadcast
  (``Trainer._sync_from_rank0``) so no nondeterminism (thread scheduling in a mesh decimation, a
  different BLAS path) can make ranks drift apart. The initial model is broadcast the same way.
* **Rank 0 alone writes** ``config.toml``, ``metrics.jsonl``, checkpoints and serves ``--viewer``.
* **Failures** (a rank killed, a rank hung past ``timeout_s``) surface in the next collective as a
  :class:`DistributedError` naming the step: every surviving rank stops with one line.

Backends: gloo on the CPU, NCCL on CUDA (``KERNELIGHT_DIST_BACKEND`` overrides). The process group
comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); ``KERNELIGHT_DIST_INIT=file:///path`` uses a file store instead of TCP (tests).
"""
from __future__ import annotations

import datetime as _dt
import io
import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError, KernelightError

DEFAULT_TIMEOUT_S = 600.0


class DistributedError(KernelightError):
    """Another rank died or stopped answering: this rank stops (the message says where)."""


@dataclass
class DistContext:
    """Where this process sits in the run: ``rank`` of ``world_size`` (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's slice of ``n`` items of a global batch (contiguous, as even as possible)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


SINGLE = DistContext()


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    def get(name, default):
        v = os.environ.get(name, "")
        try:
            return int(v) if v.strip() else default
        except ValueError:
            raise ConfigError(f"environment variable {name}={v!r} is not an integer") from None

    world = get("WORLD_SIZE", 1)
    rank = get("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    return rank, world, get("LOCAL_RANK", rank)


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun described (or return :data:`SINGLE` for one process)."""
    import torch.distributed as dist

    rank, world, local = env_world()
    if world == 1:
        return DistContext(device=device, timeout_s=timeout_s)
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: multi-process training is unavailable")
    backend = os.environ.get("KERNELIGHT_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        init_method = os.environ.get("KERNELIGHT_DIST_INIT") or "env://"
        if init_method == "env://":
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
            if missing:
                raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start ranks with "
                                  "torchrun (or kernelight train ... --nproc N)")
        try:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                    timeout=_dt.timedelta(seconds=float(timeout_s)))
        except Exception as exc:  # noqa: BLE001 - one line naming what failed
            raise DistributedError(f"rank {rank}/{world}: could not join the process group ({backend}, "
                                   f"{init_method}) within {timeout_s:g} s: {_first_line(exc)}") from None
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, device=device,
                       timeout_s=float(timeout_s))


def shutdown(ctx: DistContext) -> None:
    import torch.distributed as dist

    if ctx.enabled and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone; nothing left to release cleanly
            pass


def _first_line(exc: BaseException) -> str:
    s = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (s[0] if s else type(exc).__name__)[:300]


def _fail(ctx: DistContext, what: str, exc: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {ctx.rank}/{ctx.world_size}: lost contact with the other ranks during {what} "
        f"(a rank died or did not answer within {ctx.timeout_s:g} s: {_first_line(exc)}); stopping")


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(ctx: DistContext, t: torch.Tensor, what: str = "an all-reduce") -> torch.Tensor:
    """Sum of ``t`` over ranks (returned on ``t``'s device; ``t`` itself is left unchanged)."""
    if not ctx.enabled:
        return t
    import torch.distributed as dist

    buf = t.detach().to(_comm_device(ctx), copy=True).contiguous()
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    except Exception as exc:  # noqa: BLE001
        raise _fail(ctx, what, exc) from None
    return buf.to(t.device)


def average_gradients(ctx: DistContext, params, scalars=(), what: str = "the gradient all-reduce") -> list[float]:
    """Average ``p.grad`` over ranks for every parameter in ``params`` (in place), and the floats
    ``scalars`` with them; returns the averaged scalars. A parameter no rank has a gradient for
    keeps ``grad = None``. One all-reduce per call."""
    if not ctx.enabled:
        return [float(s) for s in scalars]
    params = list(params)
    dev = _comm_device(ctx)
    pieces = [(p.grad.detach().reshape(-1).to(dev, torch.float32) if p.grad is not None
               else torch.zeros(p.numel(), dtype=torch.float32, device=dev)) for p in params]
    flags = torch.tensor([1.0 if p.grad is not None else 0.0 for p in params], device=dev)
    sc = torch.tensor([float(s) for s in scalars], dtype=torch.float32, device=dev)
    buf = torch.cat(pieces + [flags, sc]) if pieces else torch.cat([flags, sc])
    buf = all_reduce_sum(ctx, buf, what) / ctx.world_size
    total = sum(p.numel() for p in params)
    flags = buf[total:total + len(params)].tolist()
    off = 0
    for i, p in enumerate(params):
        n = p.numel()
        if flags[i] > 0:
            g = buf[off:off + n].view_as(p).to(p.device, p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        else:
            p.grad = None
        off += n
    return buf[total + len(params):].tolist()


def broadcast_bytes(ctx: DistContext, data: bytes | None, what: str = "a broadcast") -> bytes:
    """Rank 0's ``data`` on every rank."""
    if not ctx.enabled:
        return data
    import torch.distributed as dist

    dev = _comm_device(ctx)
    try:
        n = torch.tensor([len(data) if ctx.is_main else 0], dtype=torch.int64, device=dev)
        dist.broadcast(n, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if ctx.is_main
               else torch.empty(int(n.item()), dtype=torch.uint8, device=dev))
        dist.broadcast(buf, src=0)
    except Exception as exc:  # noqa: BLE001
        raise _fail(ctx, what, exc) from None
    return data if ctx.is_main else bytes(buf.cpu().numpy().tobytes())


def broadcast_state(ctx: DistContext, state, map_location=None, what: str = "a state broadcast"):
    """Rank 0's ``state`` (tensors and plain values) on every rank, loaded with ``weights_only=True``."""
    if not ctx.enabled:
        return state
    data = None
    if ctx.is_main:
        bio = io.BytesIO()
        torch.save(state, bio)
        data = bio.getvalue()
    data = broadcast_bytes(ctx, data, what)
    if ctx.is_main:
        return state
    return torch.load(io.BytesIO(data), map_location=map_location or ctx.device, weights_only=True)


def broadcast_float(ctx: DistContext, x: float, what: str = "a broadcast") -> float:
    if not ctx.enabled:
        return x
    import torch.distributed as dist

    t = torch.tensor([float(x)], dtype=torch.float64, device=_comm_device(ctx))
    try:
        dist.broadcast(t, src=0)
    except Exception as exc:  # noqa: BLE001
        raise _fail(ctx, what, exc) from None
    return float(t.item())


# ------------------------------------------------------------------------------------ device


def resolve_device(requested: str | None = "auto", start: bool = False) -> torch.device:
    """The torch device of a run (``auto`` | ``cpu`` | ``cuda``), checked against the Taichi arch
    (:func:`shaders.runtime.check_device`): a combination that cannot run is a one-line
    :class:`~engine.errors.ConfigError`. ``start``: also start Taichi on the matching arch."""
    from shaders import runtime

    try:
        dev = runtime.check_device(requested)
        if start:
            env = (os.environ.get("KERNELIGHT_ARCH") or "auto").strip().lower()
            runtime.init(dev.type if env == "auto" else None)
    except runtime.DeviceMismatch as exc:
        raise ConfigError(str(exc)) from None
    return dev


def pin_local_gpu() -> str | None:
    """Under torchrun on a machine with several GPUs, let rank ``LOCAL_RANK`` see only GPU
    ``LOCAL_RANK`` (``CUDA_VISIBLE_DEVICES``), because Taichi runs on a process's first visible GPU
    and torch must use the same one. Call before anything starts CUDA; no-op with one process, when
    ``CUDA_VISIBLE_DEVICES`` is set already, with fewer GPUs than local ranks (they share GPU 0) or
    ``KERNELIGHT_PIN_GPU=0``. Returns the value set, or None."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None or os.environ.get("KERNELIGHT_PIN_GPU", "1") == "0":
        return None
    rank, world, local = env_world()
    if world == 1:
        return None
    try:   # NVML count: does not initialise CUDA (which would freeze the visible devices)
        n = int(torch.cuda._device_count_nvml())
    except Exception:  # noqa: BLE001 - no NVML: no GPU to pin
        return None
    if n <= 1 or local >= n:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = str(local)
    return str(local)


def max_local_ranks(device: torch.device) -> int:
    """How many ranks one machine can run: the CPU cores (gloo), or the GPUs (NCCL)."""
    if device.type == "cuda":
        return max(torch.cuda.device_count(), 1)
    return os.cpu_count() or 1


def check_world(method_cls, cfg, world_size: int, context: str = "") -> int:
    """The global batch of ``cfg`` (see :meth:`Method.global_batch`); a ConfigError when
    ``world_size`` does not divide it (``context`` starts the message, e.g. the checkpoint's world)."""
    b = int(method_cls.global_batch(cfg))
    if world_size > 1 and b % world_size:
        opt = method_cls.batch_option()
        hint = f"; set --{opt.replace('_', '-')} to a multiple of {world_size}" if opt else ""
        raise ConfigError(f"{context}{world_size} ranks do not divide the batch of method {method_cls.name} "
                          f"({opt or 'batch'} = {b}){hint}")
    return b
