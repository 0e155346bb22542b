"""Real spherical harmonics in Taichi: closed forms, forward and backward, plus a torch reference.

Conventions
-----------
Flattened index ``k = l*(l+1) + m`` with ``m = -l..l``; ``K = (l_max+1)**2`` functions.

* ``"standard"``: the real, orthonormal SH of scipy (``sph_harm_y`` combined into real form)
  and sphericart, *without* the Condon-Shortley phase, e.g. degree 1 =
  ``sqrt(3/(4 pi)) * [y, z, x]``.
* ``"3dgs"``: the basis used by 3D Gaussian Splatting / gsplat: the standard basis times
  ``(-1)**m``, e.g. degree 1 = ``0.4886025119029199 * [-y, z, -x]``. Same ordering.

Both are orthonormal on the unit sphere.

Closed forms
------------
Every function is ``Y_lm(d) = N_lm * Q_l^|m|(z) * {C_|m|(x, y) if m >= 0, S_|m|(x, y) if m < 0}``
where ``Q_l^m = d^m P_l / dz^m`` (a polynomial in ``z`` of parity ``l - m``),
``C_m + i S_m = (x + i y)^m`` and ``N_lm`` the orthonormalisation constant (times ``sqrt(2)``
for ``m != 0``, times ``(-1)^m`` in the 3DGS convention). The polynomial coefficients are
computed exactly (integers) at import time and baked into the kernels as constants, evaluated by
Horner's rule in ``z^2``; ``ti.static`` unrolls everything, so the compiled kernel is the
straight-line closed form (as in 3DGS' hand-written shaders), for any ``l_max <= MAX_KERNEL_DEGREE``.

Directions do not have to be unit length: the kernels normalise them, and the direction gradient
is the gradient through that normalisation (tangential to the sphere, divided by ``|d|``).
A zero direction yields the value of the polynomials at the origin and a zero gradient.

Kernels
-------
* :func:`sh_basis` (autograd): ``dirs (N, 3) -> Y (N, K)``, grad w.r.t. ``dirs``.
* :func:`sh_eval` (autograd): ``rgb[n, c] = sum_k coeffs[n, k, c] * Y_k(d_n)`` with grads w.r.t.
  ``dirs`` and ``coeffs`` (the rendering path, with hand-written backward kernels).
* :func:`sh_basis_reference`, :func:`sh_eval_reference`: the same math in plain torch
  (autograd gives the reference gradients).

Both support float32 and float64 (the kernel is compiled per dtype, locals use that precision).
Only first derivatives are available through the Taichi path (no double backward).
"""
# No ``from __future__ import annotations`` here: Taichi reads the kernels' annotations as objects.
import contextlib
import math
import warnings
from fractions import Fraction

import numpy as np
import taichi as ti
import torch

from . import runtime

MAX_KERNEL_DEGREE = 8
"""Largest degree the Taichi closed-form kernels are generated for (4 is used for rendering)."""

CONVENTIONS = ("standard", "3dgs")


def num_coeffs(l_max: int) -> int:
    """Number of SH functions up to and including degree ``l_max``: ``(l_max + 1)**2``."""
    return (l_max + 1) ** 2


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


# ----------------------------------------------------------------------------------------------
# Exact polynomial tables
# ----------------------------------------------------------------------------------------------

def _legendre_poly(l: int) -> list[Fraction]:
    """Coefficients of P_l(z) in ascending powers of z (exact)."""
    c = [Fraction(0)] * (l + 1)
    for k in range(l // 2 + 1):
        num = (-1) ** k * math.factorial(2 * l - 2 * k)
        den = 2**l * math.factorial(k) * math.factorial(l - k) * math.factorial(l - 2 * k)
        c[l - 2 * k] = Fraction(num, den)
    return c


def _derivative(c: list[Fraction]) -> list[Fraction]:
    return [c[i] * i for i in range(1, len(c))] or [Fraction(0)]


def norm_constant(l: int, m: int, convention: str = "standard") -> float:
    """``N_lm`` such that ``Y_lm = N_lm * d^|m|P_l/dz^|m|(z) * (C or S)_|m|``."""
    am = abs(m)
    val = Fraction(2 * l + 1) * Fraction(math.factorial(l - am), math.factorial(l + am))
    n = math.sqrt(float(val) / (4.0 * math.pi))
    if am:
        n *= math.sqrt(2.0)
        if convention == "3dgs" and am % 2 == 1:
            n = -n
    return n


def _horner_z2(c: list[Fraction], parity: int, scale: float) -> tuple[float, ...]:
    """Coefficients (descending powers of z^2) of ``scale * c(z) / z^parity``."""
    terms = [c[p] for p in range(parity, len(c), 2)]
    if not terms:
        return (0.0,)
    return tuple(float(t) * scale for t in reversed(terms))


def _tables(l_max: int, convention: str):
    """For each l and m = 0..l: (parity, horner coeffs of N_lm Q_l^m, horner coeffs of N_lm Q_l^{m+1})."""
    out = []
    for l in range(l_max + 1):
        row = []
        deriv = _legendre_poly(l)
        for m in range(l + 1):
            nrm = norm_constant(l, m, convention)
            nxt = _derivative(deriv)
            par = (l - m) % 2
            row.append((par, _horner_z2(deriv, par, nrm), _horner_z2(nxt, 1 - par, nrm) if l > m else (0.0,)))
            deriv = nxt
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------
# Taichi kernels
# ----------------------------------------------------------------------------------------------

_KERNELS: dict = {}


@contextlib.contextmanager
def _locked():
    """Hold the runtime lock; silence Taichi's unrolling warning (the unrolling is intended)."""
    with runtime.runtime_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unrolling more than", category=SyntaxWarning)
        yield


def _kernels(dtype: torch.dtype, l_max: int, convention: str):
    key = (dtype, l_max, convention)
    if key in _KERNELS:
        return _KERNELS[key]
    runtime.init()
    real = {torch.float32: ti.f32, torch.float64: ti.f64}[dtype]
    tab = _tables(l_max, convention)
    L = l_max
    K = num_coeffs(L)

    @ti.func
    def horner(coefs: ti.template(), z2):
        q = real(coefs[0])
        for j in ti.static(range(1, len(coefs))):
            q = q * z2 + real(coefs[j])
        return q

    @ti.func
    def unit(d0, d1, d2):
        x = ti.cast(d0, real)
        y = ti.cast(d1, real)
        z = ti.cast(d2, real)
        r = ti.sqrt(x * x + y * y + z * z)
        inv = ti.cast(0.0, real)
        if r > 0:
            inv = ti.cast(1.0, real) / r
        return x * inv, y * inv, z * inv, inv

    @ti.func
    def cs(x, y):
        c = ti.Vector.zero(real, L + 1)
        s = ti.Vector.zero(real, L + 1)
        c[0] = 1.0
        for m in ti.static(range(1, L + 1)):
            c[m] = x * c[m - 1] - y * s[m - 1]
            s[m] = x * s[m - 1] + y * c[m - 1]
        return c, s

    @ti.func
    def values(x, y, z):
        z2 = z * z
        c, s = cs(x, y)
        Y = ti.Vector.zero(real, K)
        for l in ti.static(range(L + 1)):
            for m in ti.static(range(l + 1)):
                q = horner(ti.static(tab[l][m][1]), z2)
                if ti.static(tab[l][m][0] == 1):
                    q = q * z
                if ti.static(m == 0):
                    Y[l * (l + 1)] = q
                else:
                    Y[l * (l + 1) + m] = q * c[m]
                    Y[l * (l + 1) - m] = q * s[m]
        return Y

    @ti.func
    def dir_grad(x, y, z, inv, g: ti.template()):
        """sum_k g[k] * dY_k/dd for the unnormalised direction (projected through normalisation)."""
        z2 = z * z
        c, s = cs(x, y)
        gx = ti.cast(0.0, real)
        gy = ti.cast(0.0, real)
        gz = ti.cast(0.0, real)
        for l in ti.static(range(L + 1)):
            for m in ti.static(range(l + 1)):
                q = horner(ti.static(tab[l][m][1]), z2)
                if ti.static(tab[l][m][0] == 1):
                    q = q * z
                dq = ti.cast(0.0, real)
                if ti.static(l > m):
                    dq = horner(ti.static(tab[l][m][2]), z2)
                    if ti.static(tab[l][m][0] == 0):
                        dq = dq * z
                if ti.static(m == 0):
                    gz += g[l * (l + 1)] * dq
                else:
                    gc = g[l * (l + 1) + m]
                    gs = g[l * (l + 1) - m]
                    # d C_m = m (C_{m-1} dx - S_{m-1} dy), d S_m = m (S_{m-1} dx + C_{m-1} dy)
                    gx += q * real(ti.static(float(m))) * (gc * c[m - 1] + gs * s[m - 1])
                    gy += q * real(ti.static(float(m))) * (gs * c[m - 1] - gc * s[m - 1])
                    gz += dq * (gc * c[m] + gs * s[m])
        dot = gx * x + gy * y + gz * z
        return (gx - dot * x) * inv, (gy - dot * y) * inv, (gz - dot * z) * inv

    @ti.kernel
    def basis_fwd(dirs: ti.types.ndarray(), out: ti.types.ndarray()):
        for n in range(dirs.shape[0]):
            x, y, z, inv = unit(dirs[n, 0], dirs[n, 1], dirs[n, 2])
            Y = values(x, y, z)
            for k in ti.static(range(K)):
                out[n, k] = Y[k]

    @ti.kernel
    def basis_bwd(dirs: ti.types.ndarray(), grad_y: ti.types.ndarray(), grad_dirs: ti.types.ndarray()):
        for n in range(dirs.shape[0]):
            x, y, z, inv = unit(dirs[n, 0], dirs[n, 1], dirs[n, 2])
            g = ti.Vector.zero(real, K)
            for k in ti.static(range(K)):
                g[k] = ti.cast(grad_y[n, k], real)
            gx, gy, gz = dir_grad(x, y, z, inv, g)
            grad_dirs[n, 0] = gx
            grad_dirs[n, 1] = gy
            grad_dirs[n, 2] = gz

    @ti.kernel
    def eval_fwd(dirs: ti.types.ndarray(), coeffs: ti.types.ndarray(), out: ti.types.ndarray()):
        for n in range(dirs.shape[0]):
            x, y, z, inv = unit(dirs[n, 0], dirs[n, 1], dirs[n, 2])
            Y = values(x, y, z)
            for ch in range(out.shape[1]):
                acc = ti.cast(0.0, real)
                for k in ti.static(range(K)):
                    acc += Y[k] * ti.cast(coeffs[n, k, ch], real)
                out[n, ch] = acc

    @ti.kernel
    def eval_bwd(dirs: ti.types.ndarray(), coeffs: ti.types.ndarray(), grad_out: ti.types.ndarray(),
                 grad_dirs: ti.types.ndarray(), grad_coeffs: ti.types.ndarray()):
        for n in range(dirs.shape[0]):
            x, y, z, inv = unit(dirs[n, 0], dirs[n, 1], dirs[n, 2])
            Y = values(x, y, z)
            g = ti.Vector.zero(real, K)
            for ch in range(grad_out.shape[1]):
                go = ti.cast(grad_out[n, ch], real)
                for k in ti.static(range(K)):
                    grad_coeffs[n, k, ch] = go * Y[k]
                    g[k] += go * ti.cast(coeffs[n, k, ch], real)
            gx, gy, gz = dir_grad(x, y, z, inv, g)
            grad_dirs[n, 0] = gx
            grad_dirs[n, 1] = gy
            grad_dirs[n, 2] = gz

    # unit/values are also used inside other modules' kernels (e.g. shaders.raygauss_tiles)
    ks = dict(basis_fwd=basis_fwd, basis_bwd=basis_bwd, eval_fwd=eval_fwd, eval_bwd=eval_bwd,
              unit=unit, values=values)
    _KERNELS[key] = ks
    return ks


def _empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Uninitialised output buffer. Large CPU buffers come from numpy, which asks the kernel for
    transparent huge pages (torch does not by default): first-touch page faults otherwise cost
    more than the SH kernel itself."""
    if torch.device(device).type == "cpu":
        npdt = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
        return torch.from_numpy(np.empty(shape, dtype=npdt))
    return torch.empty(shape, dtype=dtype, device=device)


def _prep_dirs(dirs: torch.Tensor, name: str = "dirs") -> torch.Tensor:
    if not isinstance(dirs, torch.Tensor) or dirs.ndim != 2 or dirs.shape[1] != 3:
        raise ValueError(f"{name} must be a (N, 3) tensor, got {getattr(dirs, 'shape', type(dirs))}")
    if dirs.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {dirs.dtype}")
    return dirs


def _check_degree(l_max: int) -> int:
    if not (0 <= int(l_max) <= MAX_KERNEL_DEGREE):
        raise ValueError(f"l_max must be in 0..{MAX_KERNEL_DEGREE} for the Taichi kernels, got {l_max}")
    return int(l_max)


class _SHBasis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dirs, l_max, convention):
        dev = runtime.torch_device()
        d = dirs.detach().to(dev).contiguous()
        out = _empty((d.shape[0], num_coeffs(l_max)), d.dtype, dev)
        ks = _kernels(d.dtype, l_max, convention)
        if d.shape[0]:
            with _locked():
                ks["basis_fwd"](d, out)
        ctx.save_for_backward(d)
        ctx.meta = (l_max, convention, dirs.device)
        return out.to(dirs.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        (d,) = ctx.saved_tensors
        l_max, convention, device = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None
        g = grad_y.to(d.device, d.dtype).contiguous()
        gd = torch.zeros_like(d)
        if d.shape[0]:
            with _locked():
                _kernels(d.dtype, l_max, convention)["basis_bwd"](d, g, gd)
        return gd.to(device), None, None


class _SHEval(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dirs, coeffs, l_max, convention):
        dev = runtime.torch_device()
        d = dirs.detach().to(dev).contiguous()
        c = coeffs.detach().to(dev, d.dtype)[:, : num_coeffs(l_max)].contiguous()
        out = _empty((d.shape[0], c.shape[2]), d.dtype, dev)
        ks = _kernels(d.dtype, l_max, convention)
        if d.shape[0] and c.shape[2]:
            with _locked():
                ks["eval_fwd"](d, c, out)
        ctx.save_for_backward(d, c)
        ctx.meta = (l_max, convention, dirs.device, coeffs.shape, coeffs.dtype)
        return out.to(dirs.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        d, c = ctx.saved_tensors
        l_max, convention, device, cshape, cdtype = ctx.meta
        go = grad_out.to(d.device, d.dtype).contiguous()
        gd = torch.zeros_like(d)
        gc = torch.zeros_like(c)
        if d.shape[0] and c.shape[2]:
            with _locked():
                _kernels(d.dtype, l_max, convention)["eval_bwd"](d, c, go, gd, gc)
        grad_coeffs = None
        if ctx.needs_input_grad[1]:
            grad_coeffs = torch.zeros(cshape, dtype=cdtype, device=device)
            grad_coeffs[:, : c.shape[1]] = gc.to(device, cdtype)
        grad_dirs = gd.to(device) if ctx.needs_input_grad[0] else None
        return grad_dirs, grad_coeffs, None, None


def sh_basis(dirs: torch.Tensor, l_max: int, convention: str = "standard") -> torch.Tensor:
    """Real SH basis by the Taichi closed forms.

    Args:
        dirs: (N, 3) float32/float64 directions (normalised inside; need not be unit).
        l_max: degree, ``0 <= l_max <= MAX_KERNEL_DEGREE``.
        convention: ``"standard"`` (scipy/sphericart) or ``"3dgs"`` (gsplat signs).

    Returns:
        (N, (l_max+1)**2) tensor of the dirs' dtype, index ``l*(l+1)+m``. Differentiable w.r.t. ``dirs``.
    """
    _prep_dirs(dirs)
    return _SHBasis.apply(dirs, _check_degree(l_max), _check_convention(convention))


def sh_eval(dirs: torch.Tensor, coeffs: torch.Tensor, l_max: int, convention: str = "3dgs") -> torch.Tensor:
    """Evaluate per-point SH functions: ``out[n, c] = sum_k coeffs[n, k, c] * Y_k(d_n)``.

    Args:
        dirs: (N, 3) float32/float64 directions (normalised inside).
        coeffs: (N, K', C) coefficients with ``K' >= (l_max+1)**2``; only the first
            ``(l_max+1)**2`` are used (active-degree schedules), the rest get zero gradient.
        l_max: active degree, ``0 <= l_max <= MAX_KERNEL_DEGREE``.
        convention: default ``"3dgs"`` (the Gaussian-splatting layout of the engine).

    Returns:
        (N, C) tensor in the dirs' dtype; differentiable w.r.t. ``dirs`` and ``coeffs``. No
        ``+0.5`` offset is added (the caller's colour model decides).
    """
    _prep_dirs(dirs)
    l_max = _check_degree(l_max)
    if coeffs.ndim != 3 or coeffs.shape[0] != dirs.shape[0] or coeffs.shape[1] < num_coeffs(l_max):
        raise ValueError(
            f"coeffs must be (N={dirs.shape[0]}, K>={num_coeffs(l_max)}, C), got {tuple(coeffs.shape)}"
        )
    return _SHEval.apply(dirs, coeffs, l_max, _check_convention(convention))


# ----------------------------------------------------------------------------------------------
# Pure-torch reference of the same closed forms
# ----------------------------------------------------------------------------------------------

def sh_basis_reference(dirs: torch.Tensor, l_max: int, convention: str = "standard") -> torch.Tensor:
    """Torch implementation of the closed forms of :func:`sh_basis` (same tables, autograd grads)."""
    _prep_dirs(dirs)
    _check_convention(convention)
    tab = _tables(l_max, convention)
    d = dirs / dirs.norm(dim=1, keepdim=True)
    x, y, z = d.unbind(1)
    z2 = z * z
    c = [torch.ones_like(x)]
    s = [torch.zeros_like(x)]
    for m in range(1, l_max + 1):
        c.append(x * c[m - 1] - y * s[m - 1])
        s.append(x * s[m - 1] + y * c[m - 1])
    cols = [None] * num_coeffs(l_max)
    for l in range(l_max + 1):
        for m in range(l + 1):
            par, h, _ = tab[l][m]
            q = torch.full_like(z, h[0])
            for a in h[1:]:
                q = q * z2 + a
            if par:
                q = q * z
            if m == 0:
                cols[l * (l + 1)] = q
            else:
                cols[l * (l + 1) + m] = q * c[m]
                cols[l * (l + 1) - m] = q * s[m]
    return torch.stack(cols, dim=1)


def sh_eval_reference(dirs: torch.Tensor, coeffs: torch.Tensor, l_max: int, convention: str = "3dgs") -> torch.Tensor:
    """Torch reference of :func:`sh_eval`."""
    Y = sh_basis_reference(dirs, l_max, convention)
    return torch.einsum("nk,nkc->nc", Y, coeffs[:, : Y.shape[1]].to(Y.dtype))
