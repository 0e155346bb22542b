"""3D Gaussian Splatting PLY files (the standard INRIA layout), read and write.

Layout (one ``vertex`` element, float32 properties, pre-activation values):
``x y z [nx ny nz] f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0 scale_1
scale_2 rot_0 rot_1 rot_2 rot_3`` with K = (degree+1)^2 SH coefficients per channel,
``f_rest`` stored channel-major (all of R's higher coefficients, then G's, then B's), ``opacity``
a logit, ``scale_*`` natural-log scales, ``rot_*`` a wxyz quaternion (w first), SH in the 3DGS sign
convention (rgb = SH . basis + 0.5).

Bad input gets a clear error (missing properties, wrong element, truncated file) or a stated
repair that is reported back in :attr:`GaussianPly.repairs`: rows with NaN/Inf values are dropped;
quaternions are normalised (a zero quaternion drops the row). Scales are log-scales, so every
finite value is a valid positive scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .atomic import atomic_path

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class GaussianPly:
    """Gaussians as stored in a 3DGS PLY (pre-activation values, numpy float32).

    means (N,3); log_scales (N,3); quats (N,4) wxyz (unit after loading); opacity_logits (N,);
    sh (N,K,3) with K = (degree+1)^2 (index 0 = DC), 3DGS sign convention.
    """

    means: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    repairs: list[str] = field(default_factory=list)

    @property
    def degree(self) -> int:
        return int(round(np.sqrt(self.sh.shape[1]))) - 1

    def __len__(self) -> int:
        return int(self.means.shape[0])


def _read_header(f, path):
    first = f.readline()
    if first.strip() != b"ply":
        raise DataError(path, "not a PLY file (missing 'ply' magic line)")
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    while True:
        line = f.readline()
        if not line:
            raise DataError(path, "truncated PLY header (no end_header)")
        s = line.decode("ascii", "replace").strip()
        if s == "end_header":
            break
        parts = s.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise DataError(path, f"property before any element: {s!r}")
            if parts[1] == "list":
                elements[-1][2].append((parts[-1], "list"))
            else:
                if parts[1] not in _PLY_TYPES:
                    raise DataError(path, f"unknown PLY property type {parts[1]!r}")
                elements[-1][2].append((parts[2], _PLY_TYPES[parts[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise DataError(path, f"unsupported PLY format {fmt!r}")
    return fmt, elements


def read_vertex_properties(path) -> dict[str, np.ndarray]:
    """All scalar properties of the ``vertex`` element, by name (float/ints as stored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "PLY file not found")
    with open(path, "rb") as f:
        fmt, elements = _read_header(f, path)
        if not elements or elements[0][0] != "vertex":
            raise DataError(path, "expected the first PLY element to be 'vertex'")
        _, n, props = elements[0]
        if any(t == "list" for _, t in props):
            raise DataError(path, "list properties in the vertex element are not supported")
        if fmt == "ascii":
            rows = [f.readline() for _ in range(n)]
            try:
                arr = np.loadtxt(rows, dtype=np.float64, ndmin=2)
            except ValueError as exc:
                raise DataError(path, f"malformed ASCII vertex data ({exc})") from exc
            if arr.shape != (n, len(props)):
                raise DataError(path, f"expected {n} vertices x {len(props)} properties, got {arr.shape}")
            return {name: arr[:, i] for i, (name, _) in enumerate(props)}
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, endian + t) for name, t in props])
        data = f.read(dtype.itemsize * n)
        if len(data) < dtype.itemsize * n:
            raise DataError(path, f"truncated PLY: expected {n} vertices ({dtype.itemsize * n} bytes), "
                                  f"got {len(data)} bytes")
        rec = np.frombuffer(data, dtype=dtype, count=n)
        return {name: np.asarray(rec[name]) for name, _ in props}


def read_gaussian_ply(path) -> GaussianPly:
    """Read a standard 3DGS PLY. Errors name the file; repairs are listed in ``.repairs``."""
    path = Path(path)
    props = read_vertex_properties(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in props]
    if missing:
        raise DataError(path, f"not a 3DGS PLY: missing vertex properties {', '.join(missing)}")
    rest_names = sorted((k for k in props if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    n_rest = len(rest_names)
    if n_rest % 3:
        raise DataError(path, f"{n_rest} f_rest_* properties is not a multiple of 3")
    k_rest = n_rest // 3
    deg = int(round(np.sqrt(k_rest + 1))) - 1
    if (deg + 1) ** 2 != k_rest + 1:
        raise DataError(path, f"{n_rest} f_rest_* properties do not form a full SH degree "
                              "(expected 0, 9, 24 or 45)")
    if rest_names and rest_names != [f"f_rest_{i}" for i in range(n_rest)]:
        raise DataError(path, "f_rest_* properties are not numbered 0..N-1")

    def col(names):
        return np.stack([np.asarray(props[nm], dtype=np.float32) for nm in names], axis=1)

    means = col(["x", "y", "z"])
    log_scales = col(["scale_0", "scale_1", "scale_2"])
    quats = col(["rot_0", "rot_1", "rot_2", "rot_3"])
    opac = np.asarray(props["opacity"], dtype=np.float32)
    n = means.shape[0]
    sh = np.zeros((n, k_rest + 1, 3), dtype=np.float32)
    sh[:, 0, :] = col(["f_dc_0", "f_dc_1", "f_dc_2"])
    if k_rest:
        rest = col(rest_names).reshape(n, 3, k_rest)  # channel-major
        sh[:, 1:, :] = rest.transpose(0, 2, 1)
    repairs: list[str] = []
    finite = (np.isfinite(means).all(1) & np.isfinite(log_scales).all(1) & np.isfinite(quats).all(1)
              & np.isfinite(opac) & np.isfinite(sh).all((1, 2)))
    qn = np.linalg.norm(quats.astype(np.float64), axis=1)
    zero_q = finite & (qn < 1e-12)
    keep = finite & ~zero_q
    if (~finite).any():
        repairs.append(f"dropped {int((~finite).sum())} Gaussians with NaN/Inf values")
    if zero_q.any():
        repairs.append(f"dropped {int(zero_q.sum())} Gaussians with a zero quaternion")
    nonunit = keep & (np.abs(qn - 1.0) > 1e-4)
    if nonunit.any():
        repairs.append(f"normalised {int(nonunit.sum())} non-unit quaternions "
                       f"(norms {qn[nonunit].min():.3g}..{qn[nonunit].max():.3g})")
    # rows within 1e-4 of unit length are kept bit-exact (kernels normalise on use anyway)
    quats = np.where(nonunit[:, None], quats / np.where(qn > 0, qn, 1.0)[:, None], quats).astype(np.float32)
    if not keep.any():
        raise DataError(path, "no valid Gaussians left after dropping invalid rows")
    return GaussianPly(means[keep], log_scales[keep], quats[keep], opac[keep], sh[keep], repairs)


def write_gaussian_ply(path, means, log_scales, quats, opacity_logits, sh, normals=True) -> Path:
    """Write Gaussians in the standard 3DGS layout (binary little endian), atomically.

    Arrays may be numpy or torch; sh is (N, K, 3) in the 3DGS sign convention.
    """
    def np32(a):
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        return np.ascontiguousarray(np.asarray(a, dtype=np.float32))

    means, log_scales, quats = np32(means), np32(log_scales), np32(quats)
    opac, sh = np32(opacity_logits).reshape(-1), np32(sh)
    n = means.shape[0]
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3:
        raise ValueError(f"sh must be (N, K, 3) with N={n}, got {sh.shape}")
    k = sh.shape[1]
    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals else []) + ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = [means] + ([np.zeros_like(means)] if normals else []) + [sh[:, 0, :]]
    if k > 1:
        cols.append(sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1))
    cols += [opac[:, None], log_scales, quats]
    data = np.concatenate(cols, axis=1).astype("<f4")
    assert data.shape[1] == len(names)
    header = "ply\nformat binary_little_endian 1.0\ncomment written by kernelight\n"
    header += f"element vertex {n}\n" + "".join(f"property float {nm}\n" for nm in names) + "end_header\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(data.tobytes())
    return path


def read_points_ply(path) -> tuple[np.ndarray, np.ndarray | None]:
    """A point cloud PLY: positions (P,3) float32 and colours (P,3) float32 in [0,1] or None."""
    props = read_vertex_properties(path)
    if not all(k in props for k in ("x", "y", "z")):
        raise DataError(path, "PLY vertex element lacks x, y, z")
    pts = np.stack([props[k] for k in ("x", "y", "z")], 1).astype(np.float32)
    cols = None
    if all(k in props for k in ("red", "green", "blue")):
        c = np.stack([props[k] for k in ("red", "green", "blue")], 1).astype(np.float32)
        cols = c / 255.0 if c.max() > 1.0 else c
    return pts, cols


