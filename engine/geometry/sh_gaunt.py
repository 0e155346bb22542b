"""Gaunt coefficients and the Gaunt tensor product of SH functions.

The product of two band-limited functions ``f = sum a_k Y_k`` (degree ``L1``) and
``g = sum b_k Y_k`` (degree ``L2``) is band-limited to ``L1 + L2``; its coefficients are

    c_k3 = sum_{k1, k2} G[k1, k2, k3] a_k1 b_k2,   G[k1, k2, k3] = int Y_k1 Y_k2 Y_k3 dOmega

(real Gaunt coefficients). Two ways to compute it:

* :func:`gaunt_product_direct` contracts the Gaunt tensor (the O(L^6) textbook product; the
  selection rules leave O(L^5) non-zeros, stored sparse). The reference.
* :class:`GauntProduct` (solver object, tables built once) uses the 2D-Fourier method of the
  Gaunt Tensor Product (Luo et al., ICLR 2024): every ``Y_lm(theta, phi)`` is a finite 2D Fourier
  series in ``(theta, phi)`` of degree ``l``; the product of two functions is then a 2D
  convolution of Fourier coefficients, done with a zero-padded FFT of size ``>= 2(L1+L2)+1``
  (``4L+1`` for two degree-``L`` inputs: ``2L+1`` would alias), then projected back to SH with
  exact integrals over ``[0, pi] x [0, 2 pi)``. Cost O(L^3) per product.

Coefficients use the standard real convention by default (``convention="3dgs"`` supported).
Inputs are ``(..., K)`` batches: the SH axis is the last one here (scalar functions).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .sh import check_convention, convention_signs, degree_of, legendre_table, lm_arrays, num_coeffs


def _theta_tables(z: np.ndarray, l_max: int) -> np.ndarray:
    """``(n, K)`` theta factors ``Theta_lm(z)`` (standard convention, with sin^|m|) per flat index."""
    zt = torch.as_tensor(z, dtype=torch.float64)
    P = legendre_table(zt, l_max, torch.sqrt(torch.clamp(1.0 - zt * zt, min=0.0)))
    ls, ms = lm_arrays(l_max)
    return np.stack([P[l][:, abs(m)].numpy() for l, m in zip(ls, ms)], axis=1)


def _phi_integrals(L1: int, L2: int, L3: int) -> np.ndarray:
    """``int_0^{2pi} Phi_m1 Phi_m2 Phi_m3 dphi`` for ``m_i = -L_i..L_i`` (exact uniform rule)."""
    n = L1 + L2 + L3 + 1
    phi = 2.0 * np.pi * np.arange(n) / n

    def table(L):
        m = np.arange(-L, L + 1)
        ang = phi[:, None] * np.abs(m)[None]
        return np.where(m[None] < 0, np.sin(ang), np.cos(ang))

    out = np.einsum("qa,qb,qc->abc", table(L1), table(L2), table(L3)) * (2.0 * np.pi / n)
    out[np.abs(out) < 1e-9] = 0.0  # exact zeros (non-zero values are multiples of pi/2)
    return out


def gaunt_coefficients(L1: int, L2: int, L_out: int | None = None, convention: str = "standard") -> torch.Tensor:
    """Real Gaunt tensor ``G[k1, k2, k3] = int Y_k1 Y_k2 Y_k3`` as a sparse COO ``(K1, K2, K3)``.

    ``L_out`` defaults to ``L1 + L2``. Separable exact quadrature: analytic-exact azimuthal
    integrals and Gauss-Legendre in ``z`` with enough nodes for degree ``L1 + L2 + L_out``;
    entries forbidden by the selection rules (parity of ``l1+l2+l3``, triangle, ``m`` rules) are
    not stored.
    """
    check_convention(convention)
    L3 = L1 + L2 if L_out is None else int(L_out)
    z, wz = np.polynomial.legendre.leggauss((L1 + L2 + L3) // 2 + 1)
    T1, T2, T3 = _theta_tables(z, L1), _theta_tables(z, L2), _theta_tables(z, L3)
    Phi = _phi_integrals(L1, L2, L3)
    idx, vals = [], []
    for l1 in range(L1 + 1):
        for l2 in range(L2 + 1):
            l3s = [l for l in range(abs(l1 - l2), min(l1 + l2, L3) + 1) if (l1 + l2 + l) % 2 == 0]
            if not l3s:
                continue
            s1 = slice(l1 * l1, (l1 + 1) ** 2)
            s2 = slice(l2 * l2, (l2 + 1) ** 2)
            k3 = np.concatenate([np.arange(l * l, (l + 1) ** 2) for l in l3s])
            _, m3 = lm_arrays(L3)
            A = (T1[:, s1][:, :, None] * T2[:, s2][:, None, :] * wz[:, None, None]).reshape(len(z), -1)
            th = (A.T @ T3[:, k3]).reshape(2 * l1 + 1, 2 * l2 + 1, len(k3))
            ph = Phi[np.arange(-l1, l1 + 1)[:, None, None] + L1,
                     np.arange(-l2, l2 + 1)[None, :, None] + L2,
                     m3[k3][None, None, :] + L3]
            g = th * ph
            a, b, c = np.nonzero(ph)
            idx.append(np.stack([a + l1 * l1, b + l2 * l2, k3[c]]))
            vals.append(g[a, b, c])
    ind = np.concatenate(idx, axis=1) if idx else np.zeros((3, 0), dtype=np.int64)
    val = np.concatenate(vals) if vals else np.zeros(0)
    if convention == "3dgs":
        s1 = convention_signs(L1, "standard", "3dgs").numpy()
        s2 = convention_signs(L2, "standard", "3dgs").numpy()
        s3 = convention_signs(L3, "standard", "3dgs").numpy()
        val = val * s1[ind[0]] * s2[ind[1]] * s3[ind[2]]
    shape = (num_coeffs(L1), num_coeffs(L2), num_coeffs(L3))
    return torch.sparse_coo_tensor(torch.as_tensor(ind), torch.as_tensor(val), shape,
                                   check_invariants=True).coalesce()


def _check_pair(a, b):
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"batch shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b, degree_of(a.shape[-1], "gaunt product first input"), degree_of(b.shape[-1], "gaunt product second input")


def gaunt_product_direct(a, b, L_out: int | None = None, convention: str = "standard", table=None) -> torch.Tensor:
    """Reference Gaunt product by contracting the Gaunt tensor: ``(..., K1), (..., K2) -> (..., K_out)``.

    ``table``: a precomputed :func:`gaunt_coefficients` tensor for the same degrees (optional).
    """
    a, b, L1, L2 = _check_pair(a, b)
    L3 = L1 + L2 if L_out is None else int(L_out)
    G = table if table is not None else gaunt_coefficients(L1, L2, L3, convention)
    i1, i2, i3 = G.indices()
    v = G.values().to(torch.promote_types(a.dtype, b.dtype))
    batch = a.shape[:-1]
    af = a.reshape(-1, a.shape[-1]).to(v.dtype)
    bf = b.reshape(-1, b.shape[-1]).to(v.dtype)
    out = af.new_zeros(af.shape[0], num_coeffs(L3))
    out.index_add_(1, i3, af[:, i1] * bf[:, i2] * v)
    return out.reshape(*batch, -1)


def _theta_fourier(L: int) -> np.ndarray:
    """``(L+1, L+1, 2L+1)``: Fourier coefficients ``p[l, m, u + L]`` of ``Theta_lm(theta)``
    (signed ``sin``, a trig polynomial of degree ``l``) in ``e^{i u theta}``."""
    M = 2 * L + 2
    th = 2.0 * np.pi * np.arange(M) / M
    zt = torch.as_tensor(np.cos(th))
    P = legendre_table(zt, L, torch.as_tensor(np.sin(th)))
    out = np.zeros((L + 1, L + 1, 2 * L + 1), dtype=np.complex128)
    for l in range(L + 1):
        F = np.fft.fft(P[l].numpy(), axis=0) / M  # (M, l+1)
        u = np.arange(-L, L + 1)
        out[l, : l + 1, :] = F[u % M].T
    return out


def _sin_integral(k: np.ndarray) -> np.ndarray:
    """``int_0^pi e^{i k theta} sin(theta) dtheta`` for integer ``k``."""
    k = np.asarray(k)
    even = k % 2 == 0
    kf = np.where(even, k, 0).astype(np.float64)  # odd k give 0 (and +-1 are set below)
    out = np.where(even, 2.0 / (1.0 - kf**2), 0.0).astype(np.complex128)
    out[k == 1] = 0.5j * np.pi
    out[k == -1] = -0.5j * np.pi
    return out


class GauntProduct:
    """Solver object for Gaunt products of degree-``L1`` and degree-``L2`` SH functions (FFT method).

    >>> prod = GauntProduct(4, 4)           # tables once          # doctest: +SKIP
    >>> c = prod(a, b)                      # (..., 25), (..., 25) -> (..., 81)

    Args:
        L1, L2: input degrees. L_out: output degree (default ``L1 + L2``, the exact product;
            lower truncates). convention: SH convention of inputs and output.
    """

    def __init__(self, L1: int, L2: int, L_out: int | None = None, convention: str = "standard"):
        check_convention(convention)
        self.L1, self.L2 = int(L1), int(L2)
        self.L_out = self.L1 + self.L2 if L_out is None else int(L_out)
        self.convention = convention
        Ls = self.L1 + self.L2
        self.size = 2 * Ls + 1  # linear-convolution support: no aliasing at this FFT size
        N = self.size
        # Forward tables, per input: P[m] (2L+1, L+1, 2L+1) = p[l, |m|, u] (zero where l < |m|),
        # and the flat FFT-grid positions (u, +-|m|) each A[m, u] is added to, with its factor.
        self._fwd = {}
        for L in {self.L1, self.L2}:
            p = torch.as_tensor(_theta_fourier(L))                       # (L+1 l, L+1 |m|, 2L+1 u)
            ms = torch.arange(-L, L + 1)
            Pm = p[:, ms.abs(), :].permute(1, 0, 2).contiguous()        # (m, l, u)
            u = torch.arange(-L, L + 1) % N
            k = ms.abs()
            pos = (u[None, :] * N + (k % N)[:, None])                     # (m, u) at v = +|m|
            neg = (u[None, :] * N + ((-k) % N)[:, None])                  # (m, u) at v = -|m|
            # exact factors 0.5, +-0.5i, 1 (complex128, so nothing downstream drops to complex64)
            cpos = torch.where(ms > 0, 0.5 + 0j, torch.where(ms < 0, -0.5j, 1.0 + 0j)).to(torch.complex128)
            cneg = torch.where(ms > 0, 0.5 + 0j, torch.where(ms < 0, 0.5j, 0.0 + 0j)).to(torch.complex128)
            ls_, ms_ = lm_arrays(L)
            self._fwd[L] = dict(P=Pm.to(torch.complex128), index=torch.cat([pos.reshape(-1), neg.reshape(-1)]),
                                cpos=cpos[:, None], cneg=cneg[:, None],
                                flat=(torch.as_tensor(ms_ + L), torch.as_tensor(ls_)))
        # Back projection: T[l, |m|, u] = sum_u' p[l, |m|, u'] I(u + u'), u over -Ls..Ls, laid out
        # per output m as (m, u, l) for a batched matmul.
        p3 = _theta_fourier(Ls)[: self.L_out + 1, : self.L_out + 1]     # (Lo+1, Lo+1, 2Ls+1)
        u = np.arange(-Ls, Ls + 1)
        T = torch.as_tensor(np.einsum("lmu,uv->lmv", p3, _sin_integral(u[:, None] + u[None, :])))
        mo = torch.arange(-self.L_out, self.L_out + 1)
        ko = mo.abs()
        self._Tback = T[:, ko, :].permute(1, 2, 0).contiguous()          # (m, u, l)
        self._rows = torch.arange(-Ls, Ls + 1) % N
        self._cols_pos, self._cols_neg = ko % N, (-ko) % N
        c128 = dict(dtype=torch.complex128)
        self._factor_pos = torch.where(mo == 0, torch.tensor(2 * math.pi + 0j, **c128),
                                       torch.where(mo > 0, torch.tensor(math.pi + 0j, **c128),
                                                   torch.tensor(1j * math.pi, **c128)))
        self._factor_neg = torch.where(mo == 0, torch.tensor(0j, **c128),
                                       torch.where(mo > 0, torch.tensor(math.pi + 0j, **c128),
                                                   torch.tensor(-1j * math.pi, **c128)))
        ls_, ms_ = lm_arrays(self.L_out)
        self._out_flat = (torch.as_tensor(ms_ + self.L_out), torch.as_tensor(ls_))

    def _to_fourier(self, c: torch.Tensor, L: int) -> torch.Tensor:
        """``(B, K) -> (B, N, N)`` wrapped 2D Fourier coefficients ``F[u, v]`` on the FFT grid."""
        t = self._fwd[L]
        B = c.shape[0]
        grid = c.new_zeros(2 * L + 1, B, L + 1, dtype=torch.complex128)  # (m, B, l)
        mi, li = t["flat"]
        grid[mi, :, li] = c.T.to(torch.complex128)
        A = torch.bmm(grid, t["P"])                                       # (m, B, u)
        vals = torch.cat([(A * t["cpos"][:, :, None]).permute(1, 0, 2).reshape(B, -1),
                          (A * t["cneg"][:, :, None]).permute(1, 0, 2).reshape(B, -1)], dim=1)
        F = torch.zeros(B, self.size * self.size, dtype=torch.complex128)
        F.index_add_(1, t["index"], vals)
        return F.view(B, self.size, self.size)

    def __call__(self, a, b) -> torch.Tensor:
        a, b, L1, L2 = _check_pair(a, b)
        if (L1, L2) != (self.L1, self.L2):
            raise ValueError(f"this GauntProduct is for degrees ({self.L1}, {self.L2}), got ({L1}, {L2})")
        batch = a.shape[:-1]
        dt = torch.promote_types(a.dtype, b.dtype)
        af = a.reshape(-1, a.shape[-1]).to(torch.float64)
        bf = b.reshape(-1, b.shape[-1]).to(torch.float64)
        if self.convention == "3dgs":
            af = af * convention_signs(L1, "3dgs", "standard")
            bf = bf * convention_signs(L2, "3dgs", "standard")
        F1 = self._to_fourier(af, L1)
        F2 = self._to_fourier(bf, L2)
        F3 = torch.fft.ifft2(torch.fft.fft2(F1) * torch.fft.fft2(F2))      # circular == linear here
        F3 = F3[:, self._rows, :]                                           # (B, 2Ls+1 u, N v)
        Bm = (F3[:, :, self._cols_pos] * self._factor_pos + F3[:, :, self._cols_neg] * self._factor_neg)
        grid = torch.bmm(Bm.permute(2, 0, 1), self._Tback).real            # (m, B, l)
        mi, li = self._out_flat
        out = grid[mi, :, li].T                                             # (B, K_out)
        if self.convention == "3dgs":
            out = out * convention_signs(self.L_out, "standard", "3dgs")
        return out.to(dt if dt.is_floating_point else torch.float64).reshape(*batch, -1)


def gaunt_product(a, b, L_out: int | None = None, convention: str = "standard") -> torch.Tensor:
    """One-off FFT Gaunt product (builds a :class:`GauntProduct`; reuse one for many calls)."""
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    return GauntProduct(degree_of(a.shape[-1]), degree_of(b.shape[-1]), L_out, convention)(a, b)
