"""Lat-long environment maps on the sphere: directions, exact per-pixel solid angles, loading, and
projection to / reconstruction from SH coefficients (:class:`EnvmapProjector`).

Split out of :mod:`engine.geometry.sh`, which re-exports every name here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io.hdr import read_hdr
from .sh import _signs_for, check_convention, degree_of, legendre_table, lm_arrays, num_coeffs

# ----------------------------------------------------------------------------------------------
# Lat-long environment maps
# ----------------------------------------------------------------------------------------------

# Rotation taking the Blender (Z-up) frame of the map to the Y-up frame: (x, y, z) -> (x, z, -y).
ZUP_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _up_rotation(up: str) -> np.ndarray | None:
    if up == "z":
        return None
    if up == "y":
        return ZUP_TO_YUP
    raise ConfigError(f"up must be 'z' or 'y', got {up!r}")


def latlong_angles(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre polar angles ``theta (H,)`` and azimuths ``phi (W,)`` (Blender equirectangular).

    ``theta = pi (row + 0.5) / H`` from the up axis; ``phi = pi - 2 pi (col + 0.5) / W``: the
    centre column faces +X, ``u = 0.25`` faces +Y (Z-up), the left/right edges face -X.
    """
    theta = np.pi * (np.arange(height) + 0.5) / height
    phi = np.pi - 2.0 * np.pi * (np.arange(width) + 0.5) / width
    return theta, phi


def latlong_directions(height: int, width: int, up: str = "z", dtype=torch.float64) -> torch.Tensor:
    """Unit directions ``(H, W, 3)`` of the pixel centres of a lat-long map.

    ``up="z"`` (Blender, default): ``d = (sin t cos p, sin t sin p, cos t)`` with ``t, p`` from
    :func:`latlong_angles`. ``up="y"``: the same map in a Y-up world, ``(x, y, z) -> (x, z, -y)``
    (row 0 faces +Y, the centre column +X).
    """
    theta, phi = latlong_angles(height, width)
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    d = np.stack(np.broadcast_arrays(st * np.cos(phi)[None], st * np.sin(phi)[None], ct), -1)
    R = _up_rotation(up)
    if R is not None:
        d = d @ R.T
    return torch.as_tensor(d, dtype=dtype)


def latlong_solid_angles(height: int, width: int, dtype=torch.float64) -> torch.Tensor:
    """Exact solid angle of every pixel, ``(H, W)``: ``(2 pi / W)(cos theta_top - cos theta_bottom)``.

    Sums to ``4 pi`` (up to rounding).
    """
    edges = np.cos(np.pi * np.arange(height + 1) / height)
    rows = (2.0 * np.pi / width) * (edges[:-1] - edges[1:])
    return torch.as_tensor(np.repeat(rows[:, None], width, axis=1), dtype=dtype)


def load_envmap(path) -> np.ndarray:
    """Load a lat-long environment map as linear float32 ``(H, W, 3)``.

    Supported: ``.npy`` (float array ``(H, W, 3)`` or ``(H, W)``), ``.hdr`` (Radiance RGBE, linear,
    read by :func:`engine.io.hdr.read_hdr`), ``.png``/``.jpg``/``.jpeg`` (8/16-bit sRGB through
    imageio, decoded to linear). Raises
    :class:`engine.errors.DataError` naming the file otherwise.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "no such file")
    ext = p.suffix.lower()
    if ext == ".npy":
        from ..io.npy import load_npy   # numeric arrays only: never numpy's allow_pickle advice

        arr = load_npy(p)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DataError(p, f"expected a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    elif ext == ".hdr":
        try:
            arr = read_hdr(p)   # our own RGBE reader: imageio's .hdr support depends on the machine
        except DataError:
            raise
        except Exception as exc:  # pragma: no cover - read_hdr reports its own problems as DataError
            raise DataError(p, f"cannot read Radiance .hdr ({type(exc).__name__})") from None
    elif ext in (".png", ".jpg", ".jpeg"):
        import imageio.v3 as iio

        from ..io.images import image_decode_error

        try:
            raw = iio.imread(p)
        except Exception as exc:  # imageio's text lists plugins to install: not passed on
            raise image_decode_error(p, exc) from None
        if raw.dtype not in (np.uint8, np.uint16):
            raise DataError(p, f"expected an 8- or 16-bit image, got {raw.dtype}")
        scale = 65535.0 if raw.dtype == np.uint16 else 255.0
        x = np.asarray(raw, dtype=np.float64) / scale
        arr = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)
    else:
        raise DataError(p, f"unsupported environment map format {ext!r} (use .npy, .hdr, .png or .jpg; "
                        "convert EXR to .hdr or .npy first)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DataError(p, f"expected a lat-long image (H, W, 3), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if not np.isfinite(arr).all():
        raise DataError(p, "environment map contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def _phi_basis(phi: torch.Tensor, l_max: int) -> torch.Tensor:
    """``(W, 2L+1)`` azimuthal factors indexed by ``m + L``: ``sin(|m| phi)`` for m<0, ``cos(m phi)`` for m>=0."""
    m = torch.arange(-l_max, l_max + 1, dtype=phi.dtype)
    ang = phi[:, None] * m.abs()[None, :]
    return torch.where(m[None, :] < 0, torch.sin(ang), torch.cos(ang))


def _theta_matrix(theta: torch.Tensor, l_max: int, convention: str) -> torch.Tensor:
    """``(H, L+1, 2L+1)``: ``Theta_lm(theta_r)`` for ``l, m`` (index ``m + L``), zero for ``|m| > l``."""
    P = legendre_table(torch.cos(theta), l_max, torch.sin(theta))
    T = theta.new_zeros(theta.shape[0], l_max + 1, 2 * l_max + 1)
    for l in range(l_max + 1):
        p = P[l]
        sg = _signs_for(l, convention, p)
        if sg is not None:
            p = p * sg
        T[:, l, l_max : l_max + l + 1] = p
        T[:, l, l_max - l : l_max] = p[:, 1:].flip(-1)
    return T


def _flat_to_grid(coeffs: torch.Tensor, l_max: int) -> torch.Tensor:
    """``(K, C) -> (L+1, 2L+1, C)`` (zero where |m| > l)."""
    ls, ms = lm_arrays(l_max)
    g = coeffs.new_zeros(l_max + 1, 2 * l_max + 1, coeffs.shape[-1])
    g[torch.as_tensor(ls), torch.as_tensor(ms + l_max)] = coeffs
    return g


def _grid_to_flat(grid: torch.Tensor, l_max: int) -> torch.Tensor:
    ls, ms = lm_arrays(l_max)
    return grid[torch.as_tensor(ls), torch.as_tensor(ms + l_max)]


class EnvmapProjector:
    """Solver object for one lat-long size and degree: pays for the Legendre tables once.

    >>> proj = EnvmapProjector(128, 256, l_max=8)            # doctest: +SKIP
    >>> coeffs = proj.project(img)         # (81, 3), standard convention, Z-up
    >>> img_l8 = proj.reconstruct(coeffs)  # (128, 256, 3)

    Args:
        height, width: map size (``width > 2 l_max`` is required for the azimuthal sums to be
            exact; ``height > l_max`` for ``method="lstsq"``).
        l_max: degree.
        up: ``"z"`` (Blender, default) or ``"y"`` (see :func:`latlong_directions`).
        convention: SH convention of the coefficients.
        dtype: torch dtype of the computation (float64 default).
    """

    def __init__(self, height: int, width: int, l_max: int, up: str = "z", convention: str = "standard",
                 dtype=torch.float64):
        check_convention(convention)
        self.rotation = _up_rotation(up)
        if height < 2 or width < 2:
            raise ConfigError(f"environment map must be at least 2x2, got {height}x{width}")
        if width <= 2 * l_max:
            raise ConfigError(f"degree {l_max} needs a map wider than {2 * l_max} pixels (got {width})")
        self.height, self.width, self.l_max, self.up, self.convention, self.dtype = (
            height, width, int(l_max), up, convention, dtype)
        theta, phi = latlong_angles(height, width)
        self.theta = torch.as_tensor(theta, dtype=dtype)
        self.phi = torch.as_tensor(phi, dtype=dtype)
        self.row_weights = latlong_solid_angles(height, 1, dtype)[:, 0] / width  # per pixel of the row
        self.T = _theta_matrix(self.theta, self.l_max, convention)      # (H, L+1, 2L+1)
        self.F = _phi_basis(self.phi, self.l_max)                       # (W, 2L+1)
        # batched-over-m layouts for BLAS: (2L+1, L+1, H) weighted, and (2L+1, H, L+1)
        self._Tw_mlh = (self.T * self.row_weights[:, None, None]).permute(2, 1, 0).contiguous()
        self._T_mhl = self.T.permute(2, 0, 1).contiguous()
        self._gram_inv = None

    def _to_world(self, coeffs: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            return coeffs
        from .sh_rotation import rotate_coeffs

        return rotate_coeffs(coeffs, torch.as_tensor(self.rotation, dtype=coeffs.dtype), convention=self.convention)

    def _to_local(self, coeffs: torch.Tensor) -> torch.Tensor:
        if self.rotation is None:
            return coeffs
        from .sh_rotation import rotate_coeffs

        return rotate_coeffs(coeffs, torch.as_tensor(self.rotation.T, dtype=coeffs.dtype), convention=self.convention)

    def _check_image(self, image) -> torch.Tensor:
        img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        squeeze = img.ndim == 2
        if squeeze:
            img = img[..., None]
        if img.ndim != 3 or img.shape[:2] != (self.height, self.width):
            raise ValueError(f"image must be ({self.height}, {self.width}[, C]), got {tuple(img.shape)}")
        return img.to(self.dtype), squeeze

    def project(self, image, method: str = "quadrature") -> torch.Tensor:
        """Project an image ``(H, W, C)`` (or ``(H, W)``) to coefficients ``(K, C)`` (or ``(K,)``).

        ``method="quadrature"``: ``c_k = sum_pixels f Y_k dOmega`` with exact pixel solid angles
        (Y sampled at pixel centres). ``method="lstsq"``: the solid-angle-weighted least-squares
        fit, exact for band-limited maps (the Gram matrix is block-diagonal in ``m`` because the
        azimuthal sums are exact, so each ``m`` solves a small ``(L-|m|+1)`` system).
        """
        img, squeeze = self._check_image(image)
        L = self.l_max
        A = (img.permute(2, 0, 1) @ self.F).permute(2, 1, 0)              # (2L+1, H, C) azimuthal sums
        rhs = torch.bmm(self._Tw_mlh, A)                                   # (2L+1, L+1, C)
        if method == "lstsq":
            if self.height <= L:
                raise ConfigError(f"lstsq projection at degree {L} needs more than {L} rows (got {self.height})")
            if self._gram_inv is None:
                s = (self.F**2).sum(0)                                       # (2L+1,) exact azimuthal norms
                G = torch.bmm(self._Tw_mlh, self._T_mhl) * s[:, None, None]  # (2L+1, L+1, L+1)
                mabs = (torch.arange(2 * L + 1) - L).abs()
                inactive = torch.arange(L + 1)[None, :] < mabs[:, None]        # l < |m|: not a function
                eye = torch.eye(L + 1, dtype=self.dtype).expand_as(G)
                G = torch.where(inactive[:, :, None] | inactive[:, None, :], eye, G)
                self._gram_inv = torch.linalg.inv(G)
            rhs = torch.bmm(self._gram_inv, rhs)
        elif method != "quadrature":
            raise ConfigError(f"method must be 'quadrature' or 'lstsq', got {method!r}")
        rhs = rhs.permute(1, 0, 2)                                           # (L+1, 2L+1, C)
        out = self._to_world(_grid_to_flat(rhs, L))
        return out[:, 0] if squeeze else out

    def reconstruct(self, coeffs) -> torch.Tensor:
        """Evaluate coefficients ``(K', C)`` or ``(K',)`` of any degree ``<= l_max`` at the pixel centres."""
        c = torch.as_tensor(coeffs, dtype=self.dtype)
        squeeze = c.ndim == 1
        if squeeze:
            c = c[:, None]
        lc = degree_of(c.shape[0], "reconstruct coeffs")
        if lc > self.l_max:
            raise ValueError(f"coefficients of degree {lc} exceed the projector's l_max {self.l_max}")
        if lc < self.l_max:
            c = torch.cat([c, c.new_zeros(num_coeffs(self.l_max) - c.shape[0], c.shape[1])])
        grid = _flat_to_grid(self._to_local(c), self.l_max)               # (L+1, 2L+1, C)
        rows = torch.bmm(self._T_mhl, grid.permute(1, 0, 2).contiguous())  # (2L+1, H, C)
        img = (rows.permute(2, 1, 0) @ self.F.T).permute(1, 2, 0)          # (H, W, C)
        return img[..., 0] if squeeze else img


def project_envmap(image, l_max: int, up: str = "z", convention: str = "standard", method: str = "quadrature"):
    """One-off :meth:`EnvmapProjector.project` of a lat-long image ``(H, W[, C])`` -> ``(K[, C])``."""
    img = np.asarray(image) if not isinstance(image, torch.Tensor) else image
    return EnvmapProjector(img.shape[0], img.shape[1], l_max, up, convention).project(img, method)


def reconstruct_envmap(coeffs, height: int, width: int, up: str = "z", convention: str = "standard"):
    """One-off :meth:`EnvmapProjector.reconstruct`: coefficients ``(K[, C])`` -> image ``(H, W[, C])``."""
    c = torch.as_tensor(coeffs)
    return EnvmapProjector(height, width, degree_of(c.shape[0], "coeffs"), up, convention).reconstruct(c)
