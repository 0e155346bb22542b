"""The engine's one PLY module: header validation, 3DGS Gaussians, point clouds, meshes; read and write.

Every PLY file kernelight reads or writes goes through here (3DGS files for ``render``/``view``/
``eval``/``export``, dataset point clouds such as ``points3d.ply``, meshes for ``geodesic``).

Reading
    :func:`read_ply_header` parses the header itself (strictly, at most 1 MiB) and checks it
    against the file size *before* anything is allocated: each element needs at least
    ``count x (minimum row size)`` bytes (binary: the scalar sizes plus the list-count sizes;
    ASCII: two characters per property), so a header claiming 10^12 vertices, a negative or
    non-numeric count, or a ``format`` line without a value fails at once with a one-line
    :class:`~engine.errors.DataError` naming the file. The body is then parsed by
    `plyfile <https://github.com/dranjan/python-plyfile>`_ (memory-mapped for binary files;
    triangle face lists are mapped too, other polygon lists take plyfile's row-by-row path); any
    plyfile error becomes a DataError. Measured on the largest 3DGS file of the shared data
    (playcanvas guitar, 90,854 Gaussians, 6.2 MB, page-cached), plyfile's memory-mapped read of
    the vertex properties takes about the time the former hand-written ``np.frombuffer`` reader
    took (0.41 ms vs 0.49 ms median), so the hand-written body parser was dropped.

Writing
    :func:`write_ply` (any vertex properties, optional triangle faces, binary little endian) and
    :func:`write_gaussian_ply`, atomically (:mod:`engine.io.atomic`). Bodies are written as numpy
    structured arrays (plyfile writes list properties row by row in Python, ~100x slower).

3DGS layout (one ``vertex`` element, float32 properties, pre-activation values):
``x y z [nx ny nz] f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0 scale_1
scale_2 rot_0 rot_1 rot_2 rot_3`` with K = (degree+1)^2 SH coefficients per channel,
``f_rest`` stored channel-major (all of R's higher coefficients, then G's, then B's), ``opacity``
a logit, ``scale_*`` natural-log scales, ``rot_*`` a wxyz quaternion (w first), SH in the 3DGS sign
convention (rgb = SH . basis + 0.5).

Bad 3DGS input gets a clear error (missing properties, wrong element, truncated file) or a stated
repair, reported back in :attr:`GaussianPly.repairs` (the CLI and viewer print them with the
file name):

* rows with a NaN/Inf value, or a position beyond +-1e30, are dropped;
* rows with a log-scale outside ``[-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT]`` = [-30, 30] are **dropped**
  (count and value range reported). A finite but absurd log-scale such as 200 overflows float32
  in ``exp`` (above 88.7) and used to end in "lo/hi: boxes must be finite". Dropping was chosen
  over clamping: a Gaussian clamped to e^30 ~ 1e13 scene units would still cover the whole scene,
  stretch the scene box that frames the default orbit camera, and sit in every ray's BVH path;
  one of e^-30 is invisible. Real trained files stay well inside (the shared data spans
  -19.4 .. 5.6);
* quaternions are normalised (a zero quaternion drops the row).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .atomic import atomic_write

MAX_HEADER_BYTES = 1 << 20
LOG_SCALE_LIMIT = 30.0
POSITION_LIMIT = 1e30
FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_TYPE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
               "f4": "float", "f8": "double"}
_COUNT_RE = re.compile(r"\d{1,30}")


@dataclass
class PlyProperty:
    name: str
    dtype: str                      # numpy code of the value (list items for a list)
    list_count: str | None = None   # numpy code of a list's length prefix; None for scalars


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty]

    def names(self) -> list[str]:
        return [p.name for p in self.properties]

    def has_lists(self) -> bool:
        return any(p.list_count is not None for p in self.properties)


@dataclass
class PlyHeader:
    path: Path
    format: str
    elements: list[PlyElement]
    data_offset: int
    file_size: int
    comments: list[str] = field(default_factory=list)

    def element(self, name: str) -> PlyElement | None:
        return next((e for e in self.elements if e.name == name), None)

    def is_gaussian(self) -> bool:
        """True when the vertex element has the 3DGS properties ``f_dc_0`` and ``opacity``."""
        v = self.element("vertex")
        return v is not None and {"f_dc_0", "opacity"} <= set(v.names())

    def face_count(self) -> int:
        f = self.element("face")
        return 0 if f is None else f.count


def read_ply_header(path) -> PlyHeader:
    """Parse and validate a PLY header (see the module docstring); DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "PLY file not found")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(MAX_HEADER_BYTES)
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise DataError(path, "not a PLY file (missing 'ply' magic line)")
    m = re.search(rb"(^|\n)end_header\r?\n", head)
    if m is None:
        if len(head) >= MAX_HEADER_BYTES:
            raise DataError(path, f"PLY header has no end_header in its first {MAX_HEADER_BYTES} bytes")
        raise DataError(path, "truncated PLY header (no end_header)")
    offset = m.end()
    fmt = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for lineno, raw in enumerate(head[:m.start()].split(b"\n")[1:], start=2):
        try:
            s = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise DataError(path, f"PLY header line {lineno} is not ASCII text: "
                            f"{raw.decode('ascii', 'replace')[:60]!r}") from None
        parts = s.split()
        if not parts:
            continue
        key = parts[0]
        if key in ("comment", "obj_info"):
            comments.append(s[len(key):].strip())
        elif key == "format":
            if len(parts) != 3 or parts[1] not in FORMATS or parts[2] != "1.0":
                raise DataError(path, f"PLY header line {lineno}: expected 'format ascii|binary_little_endian|"
                                f"binary_big_endian 1.0', got {s[:80]!r}")
            if fmt is not None:
                raise DataError(path, f"PLY header line {lineno}: second 'format' line")
            fmt = parts[1]
        elif key == "element":
            if len(parts) != 3 or not _COUNT_RE.fullmatch(parts[2]):
                raise DataError(path, f"PLY header line {lineno}: expected 'element NAME COUNT' with a "
                                f"non-negative integer COUNT, got {s[:80]!r}")
            if any(e.name == parts[1] for e in elements):
                raise DataError(path, f"PLY header line {lineno}: element {parts[1]!r} is declared twice")
            elements.append(PlyElement(parts[1], int(parts[2]), []))
        elif key == "property":
            if not elements:
                raise DataError(path, f"PLY header line {lineno}: property before any element: {s[:80]!r}")
            if len(parts) == 5 and parts[1] == "list":
                if parts[2] not in _PLY_TYPES or parts[3] not in _PLY_TYPES or _PLY_TYPES[parts[2]][0] == "f":
                    raise DataError(path, f"PLY header line {lineno}: bad list property types in {s[:80]!r}")
                prop = PlyProperty(parts[4], _PLY_TYPES[parts[3]], _PLY_TYPES[parts[2]])
            elif len(parts) == 3 and parts[1] in _PLY_TYPES:
                prop = PlyProperty(parts[2], _PLY_TYPES[parts[1]])
            else:
                raise DataError(path, f"PLY header line {lineno}: expected 'property TYPE NAME' or 'property "
                                f"list COUNT_TYPE TYPE NAME' with a PLY type, got {s[:80]!r}")
            if prop.name in elements[-1].names():
                raise DataError(path, f"PLY header line {lineno}: property {prop.name!r} is declared twice "
                                f"in element {elements[-1].name!r}")
            elements[-1].properties.append(prop)
        else:
            raise DataError(path, f"PLY header line {lineno}: unknown keyword {key[:40]!r}")
    if fmt is None:
        raise DataError(path, "PLY header has no 'format' line")
    if not elements:
        raise DataError(path, "PLY header declares no elements")
    for e in elements:
        if not e.properties:
            raise DataError(path, f"PLY element {e.name!r} has no properties")
    # Fail fast on a header the file cannot hold (before anything is allocated).
    left = size - offset
    need = 0
    for e in elements:
        if fmt == "ascii":
            row = 2 * len(e.properties)   # one character and one separator per value, at least
        else:
            row = sum(np.dtype(p.list_count or p.dtype).itemsize for p in e.properties)
        need += e.count * row
        if need - (1 if fmt == "ascii" else 0) > left:
            raise DataError(path, f"truncated PLY or corrupt header: element {e.name!r} claims {e.count} rows "
                            f"(at least {need} bytes of data with the elements before it), but only {left} "
                            "bytes follow the header")
    return PlyHeader(path, fmt, elements, offset, size, comments)


def _triangle_lists(header: PlyHeader) -> dict:
    """plyfile ``known_list_len`` for face lists assumed to be triangles (lets it memory-map them)."""
    out = {}
    for e in header.elements:
        lists = [p.name for p in e.properties if p.list_count is not None]
        if e.name == "face" and lists and all(n in ("vertex_indices", "vertex_index") for n in lists):
            out[e.name] = {n: 3 for n in lists}
    return out


def read_ply(path) -> tuple[PlyHeader, dict[str, dict[str, np.ndarray]]]:
    """Header and every element's properties: ``{element: {property: array}}``.

    Scalar properties are 1-D arrays (for binary files, views of plyfile's copy-on-write file map:
    writing to them never touches the file; a copy of the whole body measured ~15x slower than
    the map on the 6 MB guitar file); list properties are ``(count, k)``
    arrays when every row has the same length k, else 1-D object arrays of 1-D arrays.
    """
    import plyfile

    header = read_ply_header(path)
    path = header.path
    known = _triangle_lists(header) if header.format != "ascii" else {}

    def parse(known_list_len):
        return plyfile.PlyData.read(str(path), mmap="c", known_list_len=known_list_len)

    try:
        try:
            ply = parse(known)
        except plyfile.PlyElementParseError as exc:
            if not known or "unexpected list length" not in str(exc):
                raise
            ply = parse({})   # polygons that are not all triangles: plyfile's row-by-row reader
    except DataError:
        raise
    except (plyfile.PlyParseError, ValueError, TypeError, IndexError, OverflowError, UnicodeError, OSError) as exc:
        msg = str(exc).replace("\n", " ")[:200]
        raise DataError(path, f"malformed PLY data ({msg})") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    for e in header.elements:
        data = ply[e.name].data
        cols = {}
        for p in e.properties:
            col = data[p.name]
            if p.list_count is None:
                cols[p.name] = col if not e.has_lists() else np.array(col)
            elif col.dtype != object:
                cols[p.name] = np.array(col).reshape(len(col), -1)
            else:
                lens = {len(r) for r in col}
                cols[p.name] = (np.stack(list(col)).astype(np.dtype(p.dtype)) if len(lens) == 1 and len(col)
                                else np.array(col))
        out[e.name] = cols
    del ply
    return header, out


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


def read_vertex_properties(path) -> dict[str, np.ndarray]:
    """All scalar properties of the ``vertex`` element, by name (float/ints as stored)."""
    header, elems = read_ply(path)
    v = header.element("vertex")
    if v is None:
        raise DataError(header.path, "PLY has no 'vertex' element")
    if v.has_lists():
        raise DataError(header.path, "list properties in the vertex element are not supported")
    return elems["vertex"]


def read_gaussian_ply(path) -> GaussianPly:
    """Read a standard 3DGS PLY. Errors name the file; repairs are listed in ``.repairs``
    (module docstring: non-finite rows dropped, log-scales clamped to +-30, quaternions normalised)."""
    path = Path(path)
    props = read_vertex_properties(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in props]
    if missing:
        raise DataError(path, f"not a 3DGS PLY: missing vertex properties {', '.join(missing)}")
    rest_names = sorted((k for k in props if re.fullmatch(r"f_rest_\d{1,6}", k)), key=lambda k: int(k[7:]))
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
        with np.errstate(over="ignore", invalid="ignore"):   # float64 beyond float32 -> inf -> dropped
            return np.stack([np.asarray(props[nm], dtype=np.float32) for nm in names], axis=1)

    means = col(["x", "y", "z"])
    log_scales = col(["scale_0", "scale_1", "scale_2"])
    quats = col(["rot_0", "rot_1", "rot_2", "rot_3"])
    opac = col(["opacity"])[:, 0]
    n = means.shape[0]
    if n == 0:
        raise DataError(path, "PLY has no Gaussians (element vertex 0)")
    sh = np.zeros((n, k_rest + 1, 3), dtype=np.float32)
    sh[:, 0, :] = col(["f_dc_0", "f_dc_1", "f_dc_2"])
    if k_rest:
        rest = col(rest_names).reshape(n, 3, k_rest)  # channel-major
        sh[:, 1:, :] = rest.transpose(0, 2, 1)
    repairs: list[str] = []
    finite = (np.isfinite(means).all(1) & np.isfinite(log_scales).all(1) & np.isfinite(quats).all(1)
              & np.isfinite(opac) & np.isfinite(sh).all((1, 2)))
    far = finite & (np.abs(means) > POSITION_LIMIT).any(1)
    finite &= ~far
    wild = finite & (np.abs(log_scales) > LOG_SCALE_LIMIT).any(1)
    with np.errstate(over="ignore", invalid="ignore"):
        qn = np.linalg.norm(quats.astype(np.float64), axis=1)
    zero_q = finite & ~wild & (qn < 1e-12)
    keep = finite & ~wild & ~zero_q
    if (~finite).any():
        repairs.append(f"dropped {int((~finite).sum())} Gaussians with NaN/Inf values"
                       + (f" or positions beyond +-{POSITION_LIMIT:g}" if far.any() else ""))
    if wild.any():
        ls = log_scales[wild]
        big = ls[np.abs(ls) > LOG_SCALE_LIMIT]
        repairs.append(f"dropped {int(wild.sum())} Gaussians with a log-scale outside [-{LOG_SCALE_LIMIT:g}, "
                       f"{LOG_SCALE_LIMIT:g}] (values {float(big.min()):.3g}..{float(big.max()):.3g}; exp of them "
                       "is absurd or overflows float32)")
    if zero_q.any():
        repairs.append(f"dropped {int(zero_q.sum())} Gaussians with a zero quaternion")
    if not keep.any():
        raise DataError(path, "no valid Gaussians left after dropping invalid rows")
    nonunit = keep & (np.abs(qn - 1.0) > 1e-4)
    if nonunit.any():
        repairs.append(f"normalised {int(nonunit.sum())} non-unit quaternions "
                       f"(norms {qn[nonunit].min():.3g}..{qn[nonunit].max():.3g})")
    # rows within 1e-4 of unit length are kept bit-exact (kernels normalise on use anyway)
    with np.errstate(over="ignore", invalid="ignore"):
        quats = np.where(nonunit[:, None], quats / np.where(qn > 0, qn, 1.0)[:, None], quats).astype(np.float32)
    return GaussianPly(means[keep], log_scales[keep], quats[keep], opac[keep], sh[keep], repairs)


def _np32(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def write_gaussian_ply(path, means, log_scales, quats, opacity_logits, sh, normals=True) -> Path:
    """Write Gaussians in the standard 3DGS layout (binary little endian), atomically.

    Arrays may be numpy or torch; sh is (N, K, 3) in the 3DGS sign convention.
    """
    means, log_scales, quats = _np32(means), _np32(log_scales), _np32(quats)
    opac, sh = _np32(opacity_logits).reshape(-1), _np32(sh)
    n = means.shape[0]
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3:
        raise ValueError(f"sh must be (N, K, 3) with N={n}, got {sh.shape}")
    k = sh.shape[1]
    props: dict[str, np.ndarray] = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
    if normals:
        zero = np.zeros(n, np.float32)
        props.update(nx=zero, ny=zero, nz=zero)
    for c in range(3):
        props[f"f_dc_{c}"] = sh[:, 0, c]
    if k > 1:
        rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)   # channel-major
        for i in range(rest.shape[1]):
            props[f"f_rest_{i}"] = rest[:, i]
    props["opacity"] = opac
    for i in range(3):
        props[f"scale_{i}"] = log_scales[:, i]
    for i in range(4):
        props[f"rot_{i}"] = quats[:, i]
    return write_ply(path, props, comments=["written by kernelight"])


def write_ply(path, vertex: dict, faces=None, comments=()) -> Path:
    """Write a binary little-endian PLY atomically.

    ``vertex``: ordered ``{property name: (n,) array}``; each array's dtype picks the PLY type
    (float32, float64, uint8, int32, ...). ``faces``: optional ``(m, 3)`` vertex indices, written as
    ``property list uchar int vertex_indices``.
    """
    names = list(vertex)
    if not names:
        raise ValueError("write_ply needs at least one vertex property")
    cols = [np.asarray(vertex[k]) for k in names]
    n = len(cols[0])
    for k, c in zip(names, cols):
        if c.shape != (n,):
            raise ValueError(f"vertex property {k!r} must have shape ({n},), got {c.shape}")
        if c.dtype.str[1:] not in _TYPE_NAMES:
            raise ValueError(f"vertex property {k!r}: dtype {c.dtype} has no PLY type")
    vdt = np.dtype([(k, "<" + c.dtype.str[1:]) for k, c in zip(names, cols)])
    va = np.empty(n, vdt)
    for k, c in zip(names, cols):
        va[k] = c
    lines = ["ply", "format binary_little_endian 1.0"] + [f"comment {c}" for c in comments]
    lines.append(f"element vertex {n}")
    lines += [f"property {_TYPE_NAMES[vdt[k].str[1:]]} {k}" for k in names]
    fa = None
    if faces is not None:
        F = np.asarray(faces)
        if F.ndim != 2 or F.shape[1] != 3:
            raise ValueError(f"faces must be (m, 3), got {F.shape}")
        if len(F):
            fa = np.empty(len(F), np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
            fa["n"], fa["i"] = 3, F
            lines += [f"element face {len(F)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    with atomic_write(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode("ascii"))
        fh.write(va.tobytes())
        if fa is not None:
            fh.write(fa.tobytes())
    return Path(path)


def read_points_ply(path) -> tuple[np.ndarray, np.ndarray | None]:
    """A point cloud PLY: positions (P,3) float32 and colours (P,3) float32 in [0,1] or None.

    Colours come from ``red green blue``; integer colours are divided by 255 (by 65535 for
    16-bit types), float colours are taken as [0, 1] (or 0..255 when any exceeds 1) and clipped.
    """
    props = read_vertex_properties(path)
    if not all(k in props for k in ("x", "y", "z")):
        raise DataError(path, "PLY vertex element lacks x, y, z")
    with np.errstate(over="ignore", invalid="ignore"):
        pts = np.stack([props[k] for k in ("x", "y", "z")], 1).astype(np.float32)
    cols = None
    if all(k in props for k in ("red", "green", "blue")):
        raw = np.stack([props[k] for k in ("red", "green", "blue")], 1)
        if raw.dtype.kind in "iu":
            cols = raw.astype(np.float32) / (65535.0 if raw.dtype.itemsize > 1 else 255.0)
        else:
            cols = raw.astype(np.float32)
            with np.errstate(invalid="ignore"):
                if np.nanmax(cols, initial=0.0) > 1.0:   # float colours stored as 0..255
                    cols = cols / 255.0
        cols = np.clip(np.nan_to_num(cols), 0.0, 1.0).astype(np.float32)
    return pts, cols


def read_ply_mesh(path) -> tuple[np.ndarray, np.ndarray | None]:
    """A mesh or point cloud PLY -> ``(V (n,3) float64, F (m,3) int64 or None)``.

    Polygons are fan-triangulated in file order; a face index outside ``[0, n)`` is a DataError.
    """
    header, elems = read_ply(path)
    v = elems.get("vertex")
    if v is None or not all(k in v for k in ("x", "y", "z")):
        raise DataError(header.path, "PLY has no vertex element with x, y, z")
    V = np.stack([v[k] for k in ("x", "y", "z")], 1).astype(np.float64)
    if len(V) == 0:
        raise DataError(header.path, "has no vertices")
    fe = elems.get("face")
    if not fe:
        return V, None
    key = next((k for k in ("vertex_indices", "vertex_index") if k in fe), None)
    if key is None:
        raise DataError(header.path, "PLY face element has no vertex_indices list")
    lists = fe[key]
    tris = []
    if lists.dtype != object:   # every row has the same length k
        if lists.shape[1] < 3 and len(lists):
            raise DataError(header.path, f"PLY faces have {lists.shape[1]} vertices (need at least 3)")
        P = lists.astype(np.int64)
        tris = [np.stack([P[:, 0], P[:, j], P[:, j + 1]], 1) for j in range(1, P.shape[1] - 1)]  # fan (0, j, j+1)
    else:   # rows of different lengths: fan each row, keeping file order
        if any(len(r) < 3 for r in lists):
            raise DataError(header.path, "PLY has a face with fewer than 3 vertices")
        tris = [np.asarray([(r[0], r[j], r[j + 1]) for r in lists for j in range(1, len(r) - 1)],
                           dtype=np.int64).reshape(-1, 3)]
    F = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
    if len(F) == 0:
        return V, None
    bad = F[(F < 0) | (F >= len(V))]
    if len(bad):
        raise DataError(header.path, f"PLY face refers to vertex {int(bad[0])}, outside 0..{len(V) - 1}")
    return V, F
