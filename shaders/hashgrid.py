"""Multiresolution hash encoding (Instant-NGP style) as Taichi forward/backward kernels.

Math (matched exactly by the pure-torch twin :func:`shaders.hashgrid_ref.hash_encode_reference`)
-------------------------------------------------------------------------------------------------
Inputs ``x (N, 3)`` are normalised coordinates; they are clamped to ``[0, 1]`` (the gradient
w.r.t. ``x`` is zero where clamping is active). Level ``l`` (``0..L-1``) has resolution
``res[l]`` (:func:`level_resolutions`) and a table ``table[l] (T, F)``.

* ``p = x * res[l]``, cell ``c = min(floor(p), res[l] - 1)`` per axis, ``w = p - c`` in [0, 1].
* The 8 corners ``v = c + b`` (``b`` in {0,1}^3, grid vertices ``0..res[l]``) are indexed
  densely, ``v0 + v1 (res+1) + v2 (res+1)^2``, when ``(res+1)^3 <= T``; otherwise by the spatial
  hash ``(v0 * 1) xor (v1 * 2654435761) xor (v2 * 805459861)`` in uint32 arithmetic (wrapping),
  modulo ``T``.
* Trilinear interpolation: ``out[n, l F + f] = sum_b prod_k (b_k ? w_k : 1 - w_k) table[l, idx_b, f]``.

Outputs ``(N, L F)``, level-major. Gradients: w.r.t. ``table`` (scatter-add of the trilinear
weights, atomics) and w.r.t. ``x`` (derivative of the trilinear weights, times ``res[l]``; the
encoding is continuous but only piecewise smooth across cell faces). Second derivatives are not
available (the backward is marked once-differentiable). A field that needs ``grad f`` inside a loss
(eikonal, NeuS) either uses finite differences, as Neuralangelo does for hash grids, or
:func:`hash_encode_jacobian`: the encoding with its Jacobian w.r.t. ``x``, both linear in the table
and differentiable w.r.t. it (``jac[n, l F + f, k] = sum_b d w_b / d x_k table[l, idx_b, f]``; its
backward scatters ``w_b g_out + grad w_b . g_jac`` per corner).

The table gradient has two kernels that compute the same sums: point-parallel (a thread per point;
atomic adds), used on a GPU, and level-major (one level after another, its points in turn; plain
adds, one level's table in cache), used on the CPU (:data:`LEVEL_MAJOR`). They can differ in the
last bits (the order of the additions).

Float32 and float64 are supported: ``x`` and ``table`` of one call share the dtype, and every local
variable of the kernels uses that dtype (kernels are built per dtype by :func:`_kernels`).
"""
import math
import sys
import threading
from typing import NamedTuple

import taichi as ti
import torch

from . import runtime

__all__ = ["level_resolutions", "hash_encode", "hash_encode_jacobian", "HashEncodeFn", "HashEncodeJacobianFn", "PRIMES"]

#: Spatial-hash multipliers per axis (Teschner et al. / Instant-NGP).
PRIMES = (1, 2654435761, 805459861)

_CACHE: dict = {}

#: Table-gradient buffers of :meth:`HashEncodeFn.backward`, one per (shape, dtype, device).
_GRAD_POOL: dict = {}
_GRAD_POOL_LOCK = threading.Lock()


def level_resolutions(levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Grid resolution of each level: ``floor(base * b^l)`` with ``b = (max / base)^(1 / (L - 1))``."""
    if levels < 1 or base_resolution < 1 or max_resolution < base_resolution:
        raise ValueError(f"level_resolutions: need levels >= 1 and 1 <= base <= max, got "
                         f"levels={levels}, base={base_resolution}, max={max_resolution}")
    if levels == 1:
        return [int(base_resolution)]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1))
    return [int(math.floor(base_resolution * b ** l + 1e-9)) for l in range(levels)]


def _kernels(real, F: int):
    key = (real, F)
    if key in _CACHE:
        return _CACHE[key]

    @ti.func
    def corner_index(v0, v1, v2, r1, dense, T):
        idx = 0
        if dense:
            idx = v0 + v1 * r1 + v2 * r1 * r1
        else:
            h = (ti.cast(v0, ti.u32) * ti.u32(PRIMES[0])) ^ (ti.cast(v1, ti.u32) * ti.u32(PRIMES[1])) \
                ^ (ti.cast(v2, ti.u32) * ti.u32(PRIMES[2]))
            tu = ti.cast(T, ti.u32)
            if (tu & (tu - ti.u32(1))) == ti.u32(0):
                idx = ti.cast(h & (tu - ti.u32(1)), ti.i32)     # T a power of two: the same as h % T
            else:
                idx = ti.cast(h % tu, ti.i32)
        return idx

    @ti.func
    def cell(x: ti.template(), n, res):
        c = ti.Vector([0, 0, 0], dt=ti.i32)
        w = ti.Vector([0.0, 0.0, 0.0], dt=real)
        inside = ti.Vector([1.0, 1.0, 1.0], dt=real)
        for k in ti.static(range(3)):
            xk = ti.cast(x[n, k], real)
            if xk < 0.0:
                xk = ti.cast(0.0, real)
                inside[k] = 0.0
            if xk > 1.0:
                xk = ti.cast(1.0, real)
                inside[k] = 0.0
            p = xk * ti.cast(res, real)
            ck = ti.min(ti.cast(ti.floor(p), ti.i32), res - 1)
            c[k] = ck
            w[k] = p - ti.cast(ck, real)
        return c, w, inside

    @ti.func
    def corner(c, w, b: ti.template(), r, dense, T):
        """Trilinear weight and table index of corner ``b`` (0..7, compile time) of cell ``c``."""
        b0, b1, b2 = b & 1, (b >> 1) & 1, (b >> 2) & 1
        wt = (w[0] if b0 else 1.0 - w[0]) * (w[1] if b1 else 1.0 - w[1]) * (w[2] if b2 else 1.0 - w[2])
        return wt, corner_index(c[0] + b0, c[1] + b1, c[2] + b2, r + 1, dense, T)

    @ti.func
    def corner_dw(w, ins, rr, b: ti.template()):
        """Gradient of corner ``b``'s trilinear weight w.r.t. ``x`` (``rr`` = the level's
        resolution; zero along an axis where ``x`` was clamped, ``ins`` = 0)."""
        b0, b1, b2 = b & 1, (b >> 1) & 1, (b >> 2) & 1
        f0 = w[0] if b0 else 1.0 - w[0]
        f1 = w[1] if b1 else 1.0 - w[1]
        f2 = w[2] if b2 else 1.0 - w[2]
        return ti.Vector([(1.0 if b0 else -1.0) * f1 * f2 * ins[0],
                          f0 * (1.0 if b1 else -1.0) * f2 * ins[1],
                          f0 * f1 * (1.0 if b2 else -1.0) * ins[2]], dt=real) * rr

    @ti.func
    def jac_coef(grad_out: ti.template(), grad_jac: ti.template(), n, l, wt, dw):
        """d loss / d table[l, idx, :] from one corner with weight ``wt`` and weight gradient ``dw``,
        given the gradients of the encoding (``grad_out``) and of its Jacobian (``grad_jac``)."""
        g = ti.Vector.zero(real, F)
        for f in ti.static(range(F)):
            g[f] = wt * ti.cast(grad_out[n, l * F + f], real)
            for k in ti.static(range(3)):
                g[f] += dw[k] * ti.cast(grad_jac[n, l * F + f, k], real)
        return g

    @ti.func
    def grad_row(grad_out: ti.template(), n, l):
        g = ti.Vector.zero(real, F)
        for f in ti.static(range(F)):
            g[f] = ti.cast(grad_out[n, l * F + f], real)
        return g

    @ti.func
    def is_dense(r, T):
        r1 = ti.cast(r + 1, ti.i64)
        return r1 * r1 * r1 <= ti.cast(T, ti.i64)

    @ti.kernel
    def forward(x: ti.types.ndarray(), table: ti.types.ndarray(), res: ti.types.ndarray(),
                out: ti.types.ndarray(), jac: ti.types.ndarray(), with_jac: ti.template()):
        """The encoding; with ``with_jac`` (compile time) also its Jacobian w.r.t. x into ``jac``
        (hash_encode_jacobian; otherwise ``jac`` is a placeholder and is not touched)."""
        N = x.shape[0]
        L = table.shape[0]
        T = table.shape[1]
        for n, l in ti.ndrange(N, L):
            r = res[l]
            dense = is_dense(r, T)
            c, w, ins = cell(x, n, r)
            rr = ti.cast(r, real)
            acc = ti.Vector.zero(real, F)
            J = ti.Matrix.zero(real, F, 3)
            for b in ti.static(range(8)):
                wt, idx = corner(c, w, b, r, dense, T)
                dw = ti.Vector.zero(real, 3)
                if ti.static(with_jac):
                    dw = corner_dw(w, ins, rr, b)
                for f in ti.static(range(F)):
                    tv = ti.cast(table[l, idx, f], real)
                    acc[f] += wt * tv
                    if ti.static(with_jac):
                        for k in ti.static(range(3)):
                            J[f, k] += dw[k] * tv
            for f in ti.static(range(F)):
                out[n, l * F + f] = acc[f]
                if ti.static(with_jac):
                    for k in ti.static(range(3)):
                        jac[n, l * F + f, k] = J[f, k]

    @ti.kernel
    def backward(x: ti.types.ndarray(), table: ti.types.ndarray(), res: ti.types.ndarray(),
                 grad_out: ti.types.ndarray(), grad_table: ti.types.ndarray(),
                 grad_x: ti.types.ndarray(), want_table: ti.i32, want_x: ti.i32):
        N = x.shape[0]
        L = table.shape[0]
        T = table.shape[1]
        for n in range(N):
            gx = ti.Vector([0.0, 0.0, 0.0], dt=real)
            for l in range(L):
                r = res[l]
                dense = is_dense(r, T)
                c, w, ins = cell(x, n, r)
                rr = ti.cast(r, real)
                g = grad_row(grad_out, n, l)
                for b in ti.static(range(8)):
                    wt, idx = corner(c, w, b, r, dense, T)
                    if want_table:
                        for f in ti.static(range(F)):
                            ti.atomic_add(grad_table[l, idx, f], wt * g[f])
                    if want_x:
                        tv = ti.cast(0.0, real)
                        for f in ti.static(range(F)):
                            tv += ti.cast(table[l, idx, f], real) * g[f]
                        gx += tv * corner_dw(w, ins, rr, b)
            if want_x:
                for k in ti.static(range(3)):
                    grad_x[n, k] = gx[k]

    # ---- CPU variant of the table gradient: levels one after another, each level's points in turn.
    # Taichi does not split a loop of L (12) iterations across threads, so this runs on one core; it
    # needs no atomics (on x86 a float atomic add is a compare-and-swap loop) and keeps one level's
    # table (2^16 x 2 float32 = 512 KB by default) in cache. Too little parallelism for a GPU.
    @ti.kernel
    def backward_table_levels(x: ti.types.ndarray(), res: ti.types.ndarray(), grad_out: ti.types.ndarray(),
                              grad_table: ti.types.ndarray()):
        T = grad_table.shape[1]
        for l in range(grad_table.shape[0]):
            dense = is_dense(res[l], T)
            for n in range(x.shape[0]):
                c, w, _ins = cell(x, n, res[l])
                g = grad_row(grad_out, n, l)
                for b in ti.static(range(8)):
                    wt, idx = corner(c, w, b, res[l], dense, T)
                    for f in ti.static(range(F)):
                        # a plain load and store: one thread writes the whole table
                        grad_table[l, idx, f] = grad_table[l, idx, f] + wt * g[f]

    # ---- the table gradient of the encoding and its Jacobian w.r.t. x (hash_encode_jacobian) ----
    @ti.kernel
    def jac_backward(x: ti.types.ndarray(), res: ti.types.ndarray(), grad_out: ti.types.ndarray(),
                     grad_jac: ti.types.ndarray(), grad_table: ti.types.ndarray()):
        T = grad_table.shape[1]
        for n, l in ti.ndrange(x.shape[0], grad_table.shape[0]):
            r = res[l]
            dense = is_dense(r, T)
            c, w, ins = cell(x, n, r)
            rr = ti.cast(r, real)
            for b in ti.static(range(8)):
                wt, idx = corner(c, w, b, r, dense, T)
                g = jac_coef(grad_out, grad_jac, n, l, wt, corner_dw(w, ins, rr, b))
                for f in ti.static(range(F)):
                    ti.atomic_add(grad_table[l, idx, f], g[f])

    @ti.kernel
    def jac_backward_levels(x: ti.types.ndarray(), res: ti.types.ndarray(), grad_out: ti.types.ndarray(),
                            grad_jac: ti.types.ndarray(), grad_table: ti.types.ndarray()):
        T = grad_table.shape[1]
        for l in range(grad_table.shape[0]):
            r = res[l]
            dense = is_dense(r, T)
            rr = ti.cast(r, real)
            for n in range(x.shape[0]):
                c, w, ins = cell(x, n, r)
                for b in ti.static(range(8)):
                    wt, idx = corner(c, w, b, r, dense, T)
                    g = jac_coef(grad_out, grad_jac, n, l, wt, corner_dw(w, ins, rr, b))
                    for f in ti.static(range(F)):
                        grad_table[l, idx, f] = grad_table[l, idx, f] + g[f]

    _CACHE[key] = _Kernels(forward, backward, backward_table_levels, jac_backward, jac_backward_levels)
    return _CACHE[key]


class _Kernels(NamedTuple):
    forward: object
    backward: object
    backward_table_levels: object
    jac_backward: object
    jac_backward_levels: object


_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}


def _check(x, table, res):
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"hash_encode: x must be (N, 3), got {tuple(x.shape)}")
    if table.ndim != 3:
        raise ValueError(f"hash_encode: table must be (L, T, F), got {tuple(table.shape)}")
    if x.dtype != table.dtype or x.dtype not in _REAL:
        raise ValueError(f"hash_encode: x and table must share a dtype in float32/float64, got "
                         f"{x.dtype} and {table.dtype}")
    if res.shape != (table.shape[0],):
        raise ValueError(f"hash_encode: resolutions has shape {tuple(res.shape)}, expected "
                         f"({table.shape[0]},) (one per level of the table)")


#: Which table-gradient kernel runs: None (auto) picks the level-major one on the CPU and the
#: point-parallel one elsewhere; True / False force one (tests run both against the reference).
LEVEL_MAJOR: bool | None = None


def _level_major(device) -> bool:
    """Whether the level-major table-gradient kernel runs (see ``LEVEL_MAJOR``). Measured here
    (3,500 points near a surface, 12 levels of 2^16 x 2, quiet 2-core machine, 3 runs of 200 calls):
    4.2-4.8 ms on one core against 4.5-7.2 ms (median 7.1) on two cores with atomics; with 30,000
    points 24-27 against 35 ms. A GPU needs the point-parallel kernel's parallelism."""
    if LEVEL_MAJOR is not None:
        return bool(LEVEL_MAJOR)
    return torch.device(device).type == "cpu"


def _table_grad_buffer(shape, dtype, device) -> torch.Tensor:
    """A zeroed tensor of the table's shape, dtype and device, for the backward's scatter-add.

    The backward returns a dense table gradient (12 x 2^16 x 2 floats = 6.3 MB for the shells'
    default) and a step makes one call per group of samples. A fresh allocation of that size cost
    4-5 ms per call on the CPU (the first writes to new pages: ``zeros_like`` ran at about 1.5 GB/s),
    more than the scatter itself for a few thousand points; zeroing a kept buffer costs 0.2 ms.
    So the buffer is kept and reused once nothing else holds it: autograd accumulates a
    returned gradient into ``.grad`` by copying or adding (never by taking a tensor that another
    reference holds), and a caller that kept one (``torch.autograd.grad``) holds a Python
    reference, so a new buffer is made instead and the kept one is never overwritten."""
    key = (tuple(shape), dtype, torch.device(device))
    with _GRAD_POOL_LOCK:
        buf = _GRAD_POOL.get(key)
        # references: the pool's dict, this local and getrefcount's argument -- nothing else
        if buf is not None and buf._use_count() == 1 and sys.getrefcount(buf) <= 3:
            return buf.zero_()
        buf = torch.zeros(tuple(shape), dtype=dtype, device=device)
        _GRAD_POOL[key] = buf
        return buf


def _grad_sink(param: torch.Tensor) -> torch.Tensor:
    """The tensor a backward in ``accumulate_grad`` mode adds the table gradient into: ``param.grad``
    when it is a dense, contiguous tensor of the table's shape and dtype (a later call of the same
    step), else a kept buffer, zeroed and installed as ``param.grad`` (the first call of a step,
    after ``zero_grad(set_to_none=True)``)."""
    g = param.grad
    if g is not None:
        if (g.layout == torch.strided and g.is_contiguous() and g.shape == param.shape
                and g.dtype == param.dtype and g.device == param.device):
            return g
        raise ValueError("hash_encode(accumulate_grad=True): the table's .grad is not a dense contiguous "
                         f"tensor of its shape and dtype ({tuple(g.shape)}, {g.dtype}); zero it with "
                         "zero_grad(set_to_none=True)")
    buf = getattr(param, "_kl_grad_sink", None)
    if buf is None or buf.shape != param.shape or buf.dtype != param.dtype or buf.device != param.device:
        buf = torch.zeros_like(param, memory_format=torch.contiguous_format)
        param._kl_grad_sink = buf
    else:
        buf.zero_()
    param.grad = buf
    return buf


def _encode(x, table, res, with_jac: bool):
    """Run the forward kernel on the Taichi device: ``(x, table, res)`` there, the encoding
    ``(N, L F)`` and, with ``with_jac``, its Jacobian ``(N, L F, 3)`` (else None)."""
    runtime.init()
    dev = runtime.torch_device()
    xc = x.detach().to(dev).contiguous()
    tc = table.detach().to(dev).contiguous()
    rc = res.to(dev, torch.int32).contiguous()
    LF = tc.shape[0] * tc.shape[2]
    out = torch.empty((xc.shape[0], LF), dtype=x.dtype, device=dev)
    jac = torch.empty((xc.shape[0] if with_jac else 1, LF if with_jac else 1, 3), dtype=x.dtype, device=dev)
    if xc.shape[0] > 0:
        fwd = _kernels(_REAL[x.dtype], int(tc.shape[2])).forward
        with runtime.runtime_lock:
            fwd(xc, tc, rc, out, jac, with_jac)
    return xc, tc, rc, out, (jac if with_jac else None)


class HashEncodeFn(torch.autograd.Function):
    """Autograd wrapper: ``forward(x, table, resolutions, accumulate_grad=False) -> (N, L F)``."""

    @staticmethod
    def forward(ctx, x, table, res, accumulate_grad=False):
        xc, tc, rc, out, _ = _encode(x, table, res, False)
        ctx.save_for_backward(xc, tc, rc)
        ctx.devices = (x.device, table.device)
        # accumulate_grad: the backward adds into table.grad itself (see hash_encode)
        ctx.sink_param = table if accumulate_grad and table.requires_grad else None
        return out.to(x.device)    # results live where the caller's tensors do (as torch ops)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        xc, tc, rc = ctx.saved_tensors
        want_x, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        sink = ctx.sink_param if want_t else None
        if sink is not None and sink.device != tc.device:
            sink = None        # table elsewhere than the kernels: the ordinary path (returned, copied)
        if sink is not None:
            gt = _grad_sink(sink)
        elif want_t:
            gt = _table_grad_buffer(tc.shape, tc.dtype, tc.device)
        else:
            gt = torch.zeros((1, 1, 1), dtype=tc.dtype, device=tc.device)
        gx = torch.zeros_like(xc) if want_x else torch.zeros((1, 3), dtype=xc.dtype, device=xc.device)
        if xc.shape[0] > 0 and (want_x or want_t):
            ks = _kernels(_REAL[xc.dtype], int(tc.shape[2]))
            go = grad_out.to(xc.device, xc.dtype).contiguous()
            with runtime.runtime_lock:
                if _level_major(xc.device):
                    if want_t:
                        ks.backward_table_levels(xc, rc, go, gt)
                    if want_x:       # x's gradient sums over levels: the point-parallel kernel
                        ks.backward(xc, tc, rc, go, gt, gx, 0, 1)
                else:
                    ks.backward(xc, tc, rc, go, gt, gx, int(want_t), int(want_x))
        dx, dt = ctx.devices
        ctx.sink_param = None
        return (gx.to(dx) if want_x else None), (gt.to(dt) if want_t and sink is None else None), None, None


def hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions, accumulate_grad: bool = False) -> torch.Tensor:
    """Encode points ``x (N, 3)`` in ``[0, 1]^3`` with the hash tables ``table (L, T, F)``.

    ``resolutions``: (L,) ints (see :func:`level_resolutions`). Returns ``(N, L F)`` in the dtype
    of ``x``; differentiable w.r.t. ``x`` and ``table`` (once). See the module docstring.

    ``accumulate_grad=True`` (training loops that read ``table.grad``; ``table`` a leaf that requires
    grad): the backward scatter-adds straight into ``table.grad`` -- a kept buffer installed when
    ``.grad`` is None -- and hands autograd no table gradient. A training step that encodes in
    several calls (one per round of early termination) then writes one dense gradient instead of
    zeroing and adding one per call (for a 12 x 2^18 x 2 table, 25 MB each). The gradient reaches
    ``.grad`` only: ``torch.autograd.grad`` w.r.t. the table gives None, and a ``.grad`` kept across
    ``zero_grad(set_to_none=True)`` is zeroed and reused by the next step's first backward.
    """
    res = torch.as_tensor(resolutions, dtype=torch.int32)
    _check(x, table, res)
    if accumulate_grad and table.requires_grad and not table.is_leaf:
        raise ValueError("hash_encode(accumulate_grad=True): the table must be a leaf tensor (a Parameter)")
    return HashEncodeFn.apply(x, table, res, bool(accumulate_grad))


class HashEncodeJacobianFn(torch.autograd.Function):
    """Autograd wrapper: ``forward(x, table, resolutions, accumulate_grad=False) -> (out (N, L F),
    jac (N, L F, 3))``; differentiable w.r.t. ``table`` only (see :func:`hash_encode_jacobian`)."""

    @staticmethod
    def forward(ctx, x, table, res, accumulate_grad=False):
        xc, tc, rc, out, jac = _encode(x, table, res, True)
        ctx.save_for_backward(xc, rc)
        ctx.table_meta = (tuple(tc.shape), tc.dtype, tc.device, table.device)
        ctx.sink_param = table if accumulate_grad and table.requires_grad else None
        return out.to(x.device), jac.to(x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_jac):
        xc, rc = ctx.saved_tensors
        shape, dtype, tdev, dt = ctx.table_meta
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        sink = ctx.sink_param
        if sink is not None and sink.device != tdev:
            sink = None
        if sink is not None:
            gt = _grad_sink(sink)
        else:
            gt = _table_grad_buffer(shape, dtype, tdev)
        if xc.shape[0] > 0:
            ks = _kernels(_REAL[xc.dtype], int(shape[2]))
            go = grad_out.to(xc.device, xc.dtype).contiguous()
            gj = grad_jac.to(xc.device, xc.dtype).contiguous()
            with runtime.runtime_lock:
                if _level_major(xc.device):
                    ks.jac_backward_levels(xc, rc, go, gj, gt)
                else:
                    ks.jac_backward(xc, rc, go, gj, gt)
        ctx.sink_param = None
        return None, (gt.to(dt) if sink is None else None), None, None


def hash_encode_jacobian(x: torch.Tensor, table: torch.Tensor, resolutions,
                         accumulate_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoding of ``x (N, 3)`` and its Jacobian w.r.t. ``x``: ``(N, L F)`` and ``(N, L F, 3)``.

    ``jac[n, l F + f, k] = d out[n, l F + f] / d x[n, k]``, the derivative of the trilinear weights
    (zero along an axis where ``x`` is clamped; piecewise constant in the cell's own coordinate).
    Both outputs are linear in ``table`` and differentiable w.r.t. it, so a loss on an analytic
    SDF gradient (an eikonal term, a NeuS opacity through ``cos``) trains the table in one backward
    pass: the kernel scatters ``w g_out + dw . g_jac`` per corner. There is no gradient w.r.t. ``x``
    (that would need second derivatives of the weights); ``x`` that requires grad is refused.
    ``accumulate_grad`` as in :func:`hash_encode`.
    """
    res = torch.as_tensor(resolutions, dtype=torch.int32)
    _check(x, table, res)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("hash_encode_jacobian: no gradient w.r.t. x (second derivatives of the encoding "
                         "are not available); pass x.detach()")
    if accumulate_grad and table.requires_grad and not table.is_leaf:
        raise ValueError("hash_encode_jacobian(accumulate_grad=True): the table must be a leaf tensor "
                         "(a Parameter)")
    return HashEncodeJacobianFn.apply(x, table, res, bool(accumulate_grad))
