"""Real spherical harmonics: basis, conventions, projection, reconstruction, irradiance.

Conventions (stated by every function through its ``convention`` argument)
------------------------------------------------------------------------
* Flattened index ``k = l*(l+1) + m``, ``m = -l..l``; ``K = (l_max+1)**2`` functions up to
  degree ``l_max`` (inclusive).
* ``"standard"``: real orthonormal SH as scipy (``sph_harm_y`` combined into real form:
  ``sqrt(2) (-1)^m Re Y_l^m`` for ``m > 0``, ``sqrt(2) (-1)^m Im Y_l^|m|`` for ``m < 0``) and
  sphericart; no Condon-Shortley phase: degree 1 is ``sqrt(3/4pi) * (y, z, x)``.
* ``"3dgs"``: the 3D Gaussian Splatting / gsplat basis = standard * ``(-1)**m``: degree 1 is
  ``0.4886025119029199 * (-y, z, -x)``. Same ordering. Convert coefficients with
  :func:`convert_coeffs`.
* Directions are 3-vectors ``(x, y, z)`` (normalised internally); polar angle ``theta`` from +Z,
  azimuth ``phi`` from +X towards +Y.
* Coefficient arrays: ``(K,)`` for one scalar function, ``(..., K, C)`` for ``C`` channels (an
  environment map's ``(K, 3)``, Gaussians' ``(N, K, 3)``): the SH axis is ``-2`` when there is a
  channel axis. Functions taking a ``dim`` argument let you say otherwise.

Backends: :func:`sh_basis` uses the Taichi closed-form kernels (:mod:`shaders.sh`) for
``l_max <= 8`` and the vectorised torch recurrence (:func:`sh_basis_recurrence`, float64 accurate
to 1e-12 beyond degree 30, differentiable by autograd, double-backward included) above.

Environment maps (lat-long, Blender convention, see :func:`latlong_directions`) are projected
separably (an exact per-row DFT over columns, then a per-row Legendre quadrature with the exact
solid angle of each pixel row), so memory stays ``O(H * L^2)`` even at high degree.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError

CONVENTIONS = ("standard", "3dgs")
TAICHI_MAX_DEGREE = 8  # measured: the Taichi closed forms beat the recurrence 20-25x at l=8 (tools/bench_sh.py)
"""``sh_basis(backend="auto")`` uses the Taichi closed forms up to this degree."""


# ----------------------------------------------------------------------------------------------
# Indexing and conventions
# ----------------------------------------------------------------------------------------------

def num_coeffs(l_max: int) -> int:
    """``(l_max + 1)**2``."""
    return (int(l_max) + 1) ** 2


def sh_index(l: int, m: int) -> int:
    """Flattened index ``l*(l+1) + m`` of ``Y_lm``."""
    if abs(m) > l:
        raise ValueError(f"|m| must be <= l, got l={l}, m={m}")
    return l * (l + 1) + m


def degree_of(num: int, what: str = "coeffs") -> int:
    """``l_max`` such that ``(l_max+1)**2 == num``; raises naming ``what`` otherwise."""
    l_max = int(round(math.sqrt(num))) - 1
    if l_max < 0 or num_coeffs(l_max) != num:
        raise ValueError(f"{what}: {num} is not a number of SH coefficients (1, 4, 9, 16, ...)")
    return l_max


def lm_arrays(l_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``(l, m)`` of length ``K`` giving the degree and order of each flattened index."""
    ls = np.concatenate([np.full(2 * l + 1, l) for l in range(l_max + 1)])
    ms = np.concatenate([np.arange(-l, l + 1) for l in range(l_max + 1)])
    return ls, ms


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ConfigError(f"SH convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return convention


def _sh_axis(t: torch.Tensor, dim: int | None) -> int:
    if dim is not None:
        return dim % t.ndim
    return 0 if t.ndim == 1 else t.ndim - 2


def convention_signs(l_max: int, src: str, dst: str, dtype=torch.float64) -> torch.Tensor:
    """(K,) signs ``s`` with ``Y^src_k = s_k Y^dst_k`` (so ``c^dst = s * c^src``)."""
    check_convention(src)
    check_convention(dst)
    _, ms = lm_arrays(l_max)
    s = np.ones(len(ms))
    if src != dst:
        s = np.where(ms % 2 == 0, 1.0, -1.0)
    return torch.as_tensor(s, dtype=dtype)


def convert_coeffs(coeffs: torch.Tensor, src: str, dst: str, dim: int | None = None) -> torch.Tensor:
    """Re-express SH coefficients given in convention ``src`` in convention ``dst``.

    ``eval(coeffs, src) == eval(convert_coeffs(coeffs, src, dst), dst)`` for every direction.
    ``dim`` is the SH axis (default: 0 for 1-D input, else -2, the ``(..., K, C)`` layout).
    The standard <-> 3dgs map flips the sign of every odd ``m``; it is its own inverse.
    """
    coeffs = torch.as_tensor(coeffs)
    ax = _sh_axis(coeffs, dim)
    l_max = degree_of(coeffs.shape[ax], "convert_coeffs")
    s = convention_signs(l_max, src, dst, coeffs.dtype if coeffs.is_floating_point() else torch.float64)
    shape = [1] * coeffs.ndim
    shape[ax] = -1
    return coeffs * s.to(coeffs.device).view(shape)


# ----------------------------------------------------------------------------------------------
# Basis
# ----------------------------------------------------------------------------------------------

_REC_CACHE: dict = {}


def _recurrence_coeffs(l: int, dtype, device):
    key = (l, dtype, device)
    if key not in _REC_CACHE:
        m = torch.arange(l - 1, dtype=torch.float64)
        a = torch.sqrt((4.0 * l * l - 1.0) / (l * l - m * m))
        b = torch.sqrt(((l - 1.0) ** 2 - m * m) * (2.0 * l + 1.0) / ((2.0 * l - 3.0) * (l * l - m * m)))
        _REC_CACHE[key] = (a.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device))
    return _REC_CACHE[key]


def legendre_table(z: torch.Tensor, l_max: int, s: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Normalised associated Legendre functions by the stable three-term recurrence.

    Returns a list over ``l`` of tensors ``(..., l+1)`` holding, for ``m = 0..l``,
    ``Nbar_lm * d^m P_l/dz^m (z) * s^m`` with ``Nbar_lm`` the real-SH normalisation
    (``sqrt((2l+1)/4pi (l-m)!/(l+m)!)``, times ``sqrt(2)`` for ``m > 0``). With ``s = None`` the
    ``s^m`` factor is 1 (the polynomial part used with Cartesian ``(x + iy)^m``); with
    ``s = sin(theta)`` these are the usual ``Theta_lm(theta)`` (no Condon-Shortley phase).

    Sectoral start ``P_mm = sqrt((2m+1)/(2m)) s P_{m-1,m-1}`` (``sqrt(3)`` at ``m = 1``), then
    ``P_{m+1,m} = sqrt(2m+3) z P_mm`` and
    ``P_lm = a_lm z P_{l-1,m} - b_lm P_{l-2,m}``, vectorised over ``m`` and over ``z``.
    """
    one = torch.ones_like(z)
    diag = [one * (0.5 / math.sqrt(math.pi))]
    for m in range(1, l_max + 1):
        f = math.sqrt(3.0) if m == 1 else math.sqrt((2.0 * m + 1.0) / (2.0 * m))
        diag.append(diag[-1] * f if s is None else diag[-1] * (f * s))
    out = [diag[0].unsqueeze(-1)]
    zz = z.unsqueeze(-1)
    for l in range(1, l_max + 1):
        parts = []
        if l >= 2:
            a, b = _recurrence_coeffs(l, z.dtype, z.device)
            parts.append(a * zz * out[l - 1][..., : l - 1] - b * out[l - 2][..., : l - 1])
        parts.append((math.sqrt(2.0 * l + 1.0) * z * diag[l - 1]).unsqueeze(-1))
        parts.append(diag[l].unsqueeze(-1))
        out.append(torch.cat(parts, dim=-1))
    return out


def _signs_for(l: int, convention: str, like: torch.Tensor) -> torch.Tensor | None:
    if convention == "standard":
        return None
    m = torch.arange(l + 1, device=like.device)
    return torch.where(m % 2 == 0, 1.0, -1.0).to(like.dtype)


def _check_dirs(dirs, name="dirs") -> torch.Tensor:
    dirs = torch.as_tensor(dirs)
    if dirs.ndim < 1 or dirs.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(dirs.shape)}")
    if not dirs.is_floating_point():
        dirs = dirs.to(torch.get_default_dtype())
    return dirs


def sh_basis_recurrence(dirs: torch.Tensor, l_max: int, convention: str = "standard") -> torch.Tensor:
    """Real SH ``(..., K)`` at ``dirs (..., 3)`` by the Legendre recurrence (any degree, torch autograd).

    Cartesian form ``Y_lm = P_l^|m|(z) * Re/Im (x + iy)^|m|`` (see :func:`legendre_table`), so it
    has no pole singularity and its gradient is exact everywhere (directions are normalised inside,
    the gradient passes through the normalisation). Accuracy in float64: ~1e-14 at degree 30.
    """
    check_convention(convention)
    dirs = _check_dirs(dirs)
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    x, y, z = d.unbind(-1)
    cs_c = [torch.ones_like(x)]
    cs_s = [torch.zeros_like(x)]
    for _ in range(l_max):
        c, s = cs_c[-1], cs_s[-1]
        cs_c.append(x * c - y * s)
        cs_s.append(x * s + y * c)
    C = torch.stack(cs_c, -1)
    S = torch.stack(cs_s, -1)
    P = legendre_table(z, l_max)
    cols = []
    for l in range(l_max + 1):
        p = P[l]
        sg = _signs_for(l, convention, p)
        if sg is not None:
            p = p * sg
        cols.append((p[..., 1:] * S[..., 1 : l + 1]).flip(-1))
        cols.append(p[..., :1])
        cols.append(p[..., 1:] * C[..., 1 : l + 1])
    return torch.cat(cols, dim=-1)


def sh_basis(dirs: torch.Tensor, l_max: int, convention: str = "standard", backend: str = "auto") -> torch.Tensor:
    """Real spherical harmonics ``Y_k(dirs)``, ``(..., 3) -> (..., (l_max+1)**2)``, index ``l(l+1)+m``.

    Args:
        dirs: directions (normalised inside), float32 or float64.
        l_max: degree (inclusive), any ``>= 0``.
        convention: ``"standard"`` (scipy/sphericart) or ``"3dgs"`` (gsplat signs, ``(-1)^m``).
        backend: ``"taichi"`` (closed forms, ``l_max <= 8``, first derivatives only),
            ``"torch"`` (recurrence, any degree, higher derivatives), or ``"auto"``
            (taichi for ``l_max <= 8``, torch above).

    Differentiable w.r.t. ``dirs`` on both backends.
    """
    check_convention(convention)
    dirs = _check_dirs(dirs)
    l_max = int(l_max)
    if l_max < 0:
        raise ValueError(f"l_max must be >= 0, got {l_max}")
    if backend == "auto":
        backend = "taichi" if l_max <= TAICHI_MAX_DEGREE and dirs.dtype in (torch.float32, torch.float64) else "torch"
    if backend == "torch":
        return sh_basis_recurrence(dirs, l_max, convention)
    if backend != "taichi":
        raise ConfigError(f"backend must be 'auto', 'taichi' or 'torch', got {backend!r}")
    from shaders import sh as sh_kernels

    lead = dirs.shape[:-1]
    out = sh_kernels.sh_basis(dirs.reshape(-1, 3), l_max, convention)
    return out.reshape(*lead, out.shape[-1])


def eval_sh(coeffs: torch.Tensor, dirs: torch.Tensor, convention: str = "standard", dim: int | None = None) -> torch.Tensor:
    """Evaluate the SH expansion ``f(d) = sum_k coeffs_k Y_k(d)`` at ``dirs (..., 3)``.

    ``coeffs`` is ``(K,)`` -> result ``(...)``, or ``(K, C)`` -> ``(..., C)`` (SH axis ``dim``,
    default as in :func:`convert_coeffs`). Uses :func:`sh_basis` (auto backend).
    """
    coeffs = torch.as_tensor(coeffs)
    dirs = _check_dirs(dirs).to(coeffs.dtype) if coeffs.is_floating_point() else _check_dirs(dirs)
    ax = _sh_axis(coeffs, dim)
    l_max = degree_of(coeffs.shape[ax], "eval_sh coeffs")
    c = coeffs.movedim(ax, 0)
    Y = sh_basis(dirs, l_max, convention)
    return torch.tensordot(Y, c.to(Y.dtype), dims=([-1], [0]))


# ----------------------------------------------------------------------------------------------
# Quadrature and projection of samples
# ----------------------------------------------------------------------------------------------

def sphere_quadrature(degree: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Product Gauss-Legendre (in ``z``) x uniform (in ``phi``) rule on the unit sphere.

    Exact for every spherical polynomial of degree ``<= degree`` (so a product of SH of degrees
    ``l1 + l2 <= degree`` integrates exactly). Returns ``dirs (M, 3)`` and ``weights (M,)``
    summing to ``4 pi``.
    """
    nz = degree // 2 + 1
    nphi = degree + 1
    z, wz = np.polynomial.legendre.leggauss(nz)
    phi = 2.0 * np.pi * (np.arange(nphi) + 0.5) / nphi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    st = np.sqrt(1.0 - zz**2)
    d = np.stack([st * np.cos(pp), st * np.sin(pp), zz], -1).reshape(-1, 3)
    w = (wz[:, None] * np.full(nphi, 2.0 * np.pi / nphi)[None, :]).reshape(-1)
    return torch.as_tensor(d, dtype=dtype), torch.as_tensor(w, dtype=dtype)


def project_samples(dirs, values, l_max: int, weights=None, convention: str = "standard") -> torch.Tensor:
    """Project samples of a function on the sphere onto SH: ``c_k = sum_i w_i f_i Y_k(d_i)``.

    Args:
        dirs: (M, 3) sample directions.
        values: (M,) or (M, C) function values.
        weights: (M,) quadrature weights (solid angles); default ``4 pi / M`` (uniform random
            samples, Monte Carlo). Use :func:`sphere_quadrature` for an exact rule.
    Returns:
        (K,) or (K, C) coefficients in ``convention``.
    """
    dirs = _check_dirs(dirs)
    values = torch.as_tensor(values)
    if values.shape[0] != dirs.shape[0] or dirs.ndim != 2:
        raise ValueError(f"values {tuple(values.shape)} must have one row per direction {tuple(dirs.shape)}")
    dt = torch.promote_types(dirs.dtype, values.dtype) if values.is_floating_point() else dirs.dtype
    if weights is None:
        weights = torch.full((dirs.shape[0],), 4.0 * math.pi / max(dirs.shape[0], 1), dtype=dt)
    weights = torch.as_tensor(weights, dtype=dt)
    if weights.shape != (dirs.shape[0],):
        raise ValueError(f"weights must have shape ({dirs.shape[0]},), got {tuple(weights.shape)}")
    Y = sh_basis(dirs.to(dt), l_max, convention)
    wv = values.to(dt) * (weights if values.ndim == 1 else weights[:, None])
    return Y.transpose(0, 1) @ wv


# ----------------------------------------------------------------------------------------------
# Zonal convolution and irradiance
# ----------------------------------------------------------------------------------------------

# Ramamoorthi & Hanrahan (2001) constants of the quadratic irradiance formula.
RH_CONSTANTS = {"c1": 0.429043, "c2": 0.511664, "c3": 0.743125, "c4": 0.886227, "c5": 0.247708}


def lambert_factors(l_max: int) -> np.ndarray:
    """``A_l`` of the clamped-cosine kernel: ``pi, 2pi/3, pi/4, 0, -pi/24, ...`` (E_lm = A_l L_lm)."""
    A = np.zeros(l_max + 1)
    for l in range(l_max + 1):
        if l == 0:
            A[l] = np.pi
        elif l == 1:
            A[l] = 2.0 * np.pi / 3.0
        elif l % 2 == 0:
            h = l // 2
            A[l] = (2.0 * np.pi * (-1) ** (h - 1) / ((l + 2) * (l - 1))
                    * math.factorial(l) / (2.0**l * math.factorial(h) ** 2))
    return A


def zonal_coeffs(profile, l_max: int, nodes: int | None = None, split_at_zero: bool = True) -> np.ndarray:
    """Zonal SH coefficients ``h_l = 2 pi int_{-1}^{1} k(t) Y_l0(t) dt`` of a kernel ``k(cos angle)``.

    ``profile`` maps a numpy array of cosines to kernel values. Gauss-Legendre on ``[-1, 0]`` and
    ``[0, 1]`` separately (exact for kernels that are polynomial on each half, like the clamped
    cosine ``max(t, 0)``); ``nodes`` per half defaults to ``l_max + 64``.
    """
    n = nodes or (l_max + 64)
    x, w = np.polynomial.legendre.leggauss(n)
    if split_at_zero:
        t = np.concatenate([(x - 1.0) / 2.0, (x + 1.0) / 2.0])
        wt = np.concatenate([w, w]) / 2.0
    else:
        t, wt = x, w
    k = np.asarray(profile(t), dtype=np.float64)
    P = legendre_table(torch.as_tensor(t), l_max)
    Yl0 = np.stack([P[l][:, 0].numpy() for l in range(l_max + 1)], 0)  # (L+1, n)
    return 2.0 * np.pi * (Yl0 * (k * wt)[None]).sum(1)


def convolve_zonal(coeffs, zonal, dim: int | None = None) -> torch.Tensor:
    """Convolve an SH function with a zonal kernel (Funk-Hecke): ``f_lm * sqrt(4 pi/(2l+1)) h_l``.

    ``zonal``: ``(L_k+1,)`` zonal coefficients ``h_l`` of the kernel (from :func:`zonal_coeffs`);
    coefficients of degree above ``L_k`` become 0. Convention-independent (``m = 0`` terms agree).
    """
    c = torch.as_tensor(coeffs)
    ax = _sh_axis(c, dim)
    l_max = degree_of(c.shape[ax], "convolve_zonal coeffs")
    h = np.zeros(l_max + 1)
    z = np.asarray(zonal, dtype=np.float64)[: l_max + 1]
    h[: len(z)] = z
    ls, _ = lm_arrays(l_max)
    f = h[ls] * np.sqrt(4.0 * np.pi / (2.0 * ls + 1.0))
    shape = [1] * c.ndim
    shape[ax] = -1
    return c * torch.as_tensor(f, dtype=c.dtype).view(shape)


def irradiance_coeffs(coeffs, l_max: int = 2, dim: int | None = None) -> torch.Tensor:
    """Irradiance SH ``E_lm = A_l L_lm`` from radiance SH (clamped-cosine convolution).

    Truncated to degree ``l_max`` (default 2: the 9-coefficient Ramamoorthi-Hanrahan
    approximation, error < 3% on average). Output has ``(l_max+1)**2`` coefficients.
    """
    c = torch.as_tensor(coeffs)
    ax = _sh_axis(c, dim)
    L = degree_of(c.shape[ax], "irradiance coeffs")
    keep = min(L, l_max)
    c = c.narrow(ax, 0, num_coeffs(keep))
    ls, _ = lm_arrays(keep)
    shape = [1] * c.ndim
    shape[ax] = -1
    out = c * torch.as_tensor(lambert_factors(keep)[ls], dtype=c.dtype).view(shape)
    if keep < l_max:
        pad = list(out.shape)
        pad[ax] = num_coeffs(l_max) - num_coeffs(keep)
        out = torch.cat([out, out.new_zeros(pad)], dim=ax)
    return out


def irradiance_sh9(coeffs9, normals, constants: dict | None = None) -> torch.Tensor:
    """Ramamoorthi-Hanrahan closed form ``E(n)`` from 9 radiance coefficients (standard convention).

    ``E = c4 L00 - c5 L20 + c3 L20 z^2 + 2 c2 (L11 x + L1-1 y + L10 z) + c1 L22 (x^2 - y^2)
    + 2 c1 (L2-2 xy + L21 xz + L2-1 yz)``. ``coeffs9 (9[, C])``, ``normals (..., 3)`` ->
    ``(...[, C])``. ``constants`` defaults to :data:`RH_CONSTANTS` (6 digits, as published).
    """
    k = dict(RH_CONSTANTS if constants is None else constants)
    L = torch.as_tensor(coeffs9, dtype=torch.float64)
    if L.shape[0] != 9:
        raise ValueError(f"irradiance_sh9 needs 9 coefficients, got {tuple(L.shape)}")
    n = _check_dirs(normals).to(torch.float64)
    n = n / n.norm(dim=-1, keepdim=True)
    x, y, z = (t.unsqueeze(-1) if L.ndim == 2 else t for t in n.unbind(-1))
    return (k["c4"] * L[0] - k["c5"] * L[6] + k["c3"] * L[6] * z * z
            + 2 * k["c2"] * (L[3] * x + L[1] * y + L[2] * z)
            + k["c1"] * L[8] * (x * x - y * y)
            + 2 * k["c1"] * (L[4] * x * y + L[7] * x * z + L[5] * y * z))


# Lat-long environment maps live in sh_envmap.py (kept importable from here).
from .sh_envmap import (  # noqa: E402,F401
    EnvmapProjector,
    latlong_angles,
    latlong_directions,
    latlong_solid_angles,
    load_envmap,
    project_envmap,
    reconstruct_envmap,
)
