"""K nearest points within a radius, for many query samples: a uniform grid and a Taichi kernel.

What it computes (matched by the brute-force twin :func:`shaders.knn_ref.knn_reference`)
------------------------------------------------------------------------------------------
For each query ``q`` the ``K`` points ``p_j`` with the smallest ``d2 = |p_j - q|^2`` among those
with ``d2 <= radius^2``, in ascending ``(d2, j)`` order (equal distances: the smaller point index
first, so the result does not depend on the scan order). Outputs ``idx (Q, K) int32`` (``-1``
where fewer than ``K`` points lie within the radius) and ``dist2 (Q, K)`` in the dtype of the
inputs (``+inf`` where ``idx == -1``). ``d2`` is ``dx*dx + dy*dy + dz*dz`` with ``d = p - q``.
Queries with a non-finite coordinate get no neighbours.

The grid (:func:`build_grid`, torch ops)
---------------------------------------
Cell size ``c = radius / cells_per_radius``, origin the points' minimum corner, integer cell
``floor((p - lo) / c)`` per axis. Points are sorted (``torch.sort``, stable) by cell id and
``cell_start[i] .. cell_start[i + 1]`` is cell ``i``'s slice of the sorted points:

* dense (when the box has at most ``max_dense_cells`` cells, default ``max(8 N, 2^20)``): cell id
  ``x + rx (y + ry z)``. A row of cells along x is then one contiguous slice, so the query reads
  each (y, z) row it needs as one range;
* hashed (a large, sparse box): cell id ``hash(x, y, z) mod T`` (the hash grid's primes, uint32
  wrap, ``T`` a power of two >= 2 N). Cells are visited one by one and a point is used only when
  its own cell (stored per sorted point) is the visited cell, so hash collisions never repeat or
  leak a point.

The query kernel (one thread per query)
--------------------------------------
For each (y, z) row of cells the sphere of radius ``b`` (``b^2 = min(radius^2, current K-th
d2)``) reaches, the x-range of cells inside the circle left at that row's y/z distance is scanned;
candidates go into a sorted K-entry register list (insertion, unrolled). Rows the shrinking bound no
longer reaches are skipped. Ranges are widened by 1e-4 of a cell so that a point on a cell face
(rounded into the next cell by the build) is still scanned. Float32 and float64 are supported (kernels built per dtype and K).
"""

import math
from dataclasses import dataclass

import taichi as ti
import torch

from . import runtime

__all__ = ["PointGrid", "build_grid", "knn_query", "knn", "MAX_K", "PRIMES"]

#: Spatial-hash multipliers (the same as :mod:`shaders.hashgrid`).
PRIMES = (1, 2654435761, 805459861)
#: Largest K (the K-list lives in registers, unrolled).
MAX_K = 32

_REAL = {torch.float32: ti.f32, torch.float64: ti.f64}
_CACHE: dict = {}


@dataclass
class PointGrid:
    """Points sorted into a uniform grid (see the module docstring).

    Attributes:
        points: (N, 3) the points in cell order (float32 or float64, on the Taichi device).
        index: (N,) int32 original index of each sorted point.
        cell_start: (C + 1,) int32 first sorted position of each cell (dense) or hash bucket.
        cell_xyz: (N, 3) int32 integer cell of each sorted point (hashed grids; (1, 3) otherwise).
        lo: (3,) grid origin (dtype of the points); cell: cell size; radius: the build radius.
        res: (rx, ry, rz) cells per axis; hashed: whether ids are hashed (C = table size).
    """

    points: torch.Tensor
    index: torch.Tensor
    cell_start: torch.Tensor
    cell_xyz: torch.Tensor
    lo: torch.Tensor
    cell: float
    radius: float
    res: tuple
    hashed: bool

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_cells(self) -> int:
        return int(self.cell_start.shape[0] - 1)


def _hash(c: torch.Tensor, T: int) -> torch.Tensor:
    m = 0xFFFFFFFF
    h = (c[:, 0] * PRIMES[0]) & m
    h = h ^ ((c[:, 1] * PRIMES[1]) & m)
    h = h ^ ((c[:, 2] * PRIMES[2]) & m)
    return h & (T - 1)


def _as_points(x, what: str, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{what}: expected (N, 3), got {tuple(t.shape)}")
    if dtype is None:
        dtype = t.dtype if t.dtype in _REAL else torch.float32
    return t.to(runtime.torch_device(), dtype).contiguous()


def _radius(r, what: str) -> float:
    try:
        v = float(r)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what}: radius must be a finite number > 0, got {r!r}")
    return v


def build_grid(points, radius: float, *, cells_per_radius: int = 1, max_dense_cells: int | None = None,
               hashed: bool | None = None) -> PointGrid:
    """Sort ``points (N, 3)`` into a grid for radius-``radius`` queries.

    ``cells_per_radius``: cell size ``radius / cells_per_radius`` (1 measured fastest here, see
    tools/bench_knn.py). ``hashed``: force the hashed (True) or dense (False) table; default dense
    when the box has at most ``max_dense_cells`` cells. Float64 points stay float64; other dtypes
    become float32. Points must be finite; N may be 0.
    """
    runtime.init()
    pts = _as_points(points, "build_grid: points")
    radius = _radius(radius, "build_grid")
    if int(cells_per_radius) != cells_per_radius or cells_per_radius < 1:
        raise ValueError(f"build_grid: cells_per_radius must be a positive integer, got {cells_per_radius!r}")
    n = pts.shape[0]
    dev = pts.device
    if n and not bool(torch.isfinite(pts.abs().max())):
        raise ValueError("build_grid: points must be finite")
    cell = float(radius) / int(cells_per_radius)
    lo = pts.min(0).values if n else torch.zeros(3, dtype=pts.dtype, device=dev)
    ext = (pts.max(0).values - lo) if n else torch.zeros(3, dtype=pts.dtype, device=dev)
    # cells per axis, computed in float64 so a huge box cannot overflow the integer conversion
    resf = torch.floor(ext.double() / cell) + 1
    if float(resf.max()) > 2 ** 30:
        raise ValueError(f"build_grid: the box spans {resf.tolist()} cells of size {cell:g}; "
                         "use a larger radius (at most 2^30 cells per axis)")
    res = tuple(int(v) for v in resf.tolist())
    ncells = res[0] * res[1] * res[2]
    limit = max(8 * n, 1 << 20) if max_dense_cells is None else int(max_dense_cells)
    use_hash = (ncells > limit or ncells >= 2 ** 31 - 1) if hashed is None else bool(hashed)
    if not use_hash and ncells >= 2 ** 31 - 1:
        raise ValueError(f"build_grid: {ncells} cells do not fit a dense table; use hashed=True")
    ci = torch.floor((pts - lo) / cell).long() if n else torch.zeros((0, 3), dtype=torch.long, device=dev)
    for k in range(3):   # rounding at the top face can land one past the last cell
        ci[:, k].clamp_(0, res[k] - 1)
    if use_hash:
        T = 1 << max(4, math.ceil(math.log2(max(2 * n, 2))))
        key = _hash(ci, T)
        C = T
    else:
        key = ci[:, 0] + res[0] * (ci[:, 1] + res[1] * ci[:, 2])
        C = ncells
    key, order = torch.sort(key, stable=True)
    counts = torch.bincount(key, minlength=C)
    start = torch.zeros(C + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=start[1:])
    return PointGrid(
        points=pts[order].contiguous(),
        index=order.to(torch.int32).contiguous(),
        cell_start=start.to(torch.int32).contiguous(),
        cell_xyz=(ci[order].to(torch.int32).contiguous() if use_hash
                  else torch.zeros((1, 3), dtype=torch.int32, device=dev)),
        lo=lo.contiguous(), cell=cell, radius=float(radius), res=res, hashed=use_hash)


def _kernels(real, K: int, hashed: bool):
    key = (real, K, hashed)
    if key in _CACHE:
        return _CACHE[key]
    big = 1e30 if real == ti.f32 else 1e300

    @ti.func
    def before(d2, j, bd, bj):
        """(d2, j) sorts before (bd, bj)."""
        return (d2 < bd) or (d2 == bd and j < bj)

    @ti.kernel
    def query(q: ti.types.ndarray(), pts: ti.types.ndarray(), index: ti.types.ndarray(),
              start: ti.types.ndarray(), cxyz: ti.types.ndarray(), lo: ti.types.ndarray(),
              cell: real, r2: real, rx: ti.i32, ry: ti.i32, rz: ti.i32,
              out_idx: ti.types.ndarray(), out_d2: ti.types.ndarray()):
        T = start.shape[0] - 1
        inf = ti.cast(ti.math.inf, real)
        pad = ti.cast(1e-4, real)   # cells: rounding of cell membership never hides a point
        for n in range(q.shape[0]):
            qx = ti.cast(q[n, 0], real)
            qy = ti.cast(q[n, 1], real)
            qz = ti.cast(q[n, 2], real)
            bd = ti.Vector([inf] * K, dt=real)
            bj = ti.Vector([-1] * K, dt=ti.i32)
            ok = (ti.abs(qx) < big) and (ti.abs(qy) < big) and (ti.abs(qz) < big)   # False for NaN/inf
            if ok and T > 0:
                r = ti.sqrt(r2)
                gx = (qx - lo[0]) / cell
                gy = (qy - lo[1]) / cell
                gz = (qz - lo[2]) / cell
                rc = r / cell + pad
                # cell ranges in float first (a far query must not overflow the int cast)
                z0 = ti.max(ti.floor(gz - rc), 0.0)
                z1 = ti.min(ti.floor(gz + rc), ti.cast(rz - 1, real))
                y0 = ti.max(ti.floor(gy - rc), 0.0)
                y1 = ti.min(ti.floor(gy + rc), ti.cast(ry - 1, real))
                if z0 <= z1 and y0 <= y1:
                    iz0 = ti.cast(z0, ti.i32)
                    iz1 = ti.cast(z1, ti.i32)
                    iy0 = ti.cast(y0, ti.i32)
                    iy1 = ti.cast(y1, ti.i32)
                    # rows nearest the query first (the K-th distance then shrinks the bound early):
                    # offsets 0, +1, -1, +2, -2, ... around the query's own (clamped) cell
                    czc = ti.min(ti.max(ti.cast(ti.floor(ti.min(ti.max(gz, z0), z1)), ti.i32), iz0), iz1)
                    cyc = ti.min(ti.max(ti.cast(ti.floor(ti.min(ti.max(gy, y0), y1)), ti.i32), iy0), iy1)
                    nz = 2 * ti.max(czc - iz0, iz1 - czc) + 1
                    ny = 2 * ti.max(cyc - iy0, iy1 - cyc) + 1
                    for tz in range(nz):
                        cz = czc + (tz + 1) // 2
                        if tz % 2 == 0:
                            cz = czc - tz // 2
                        if cz < iz0 or cz > iz1:
                            continue
                        # distance (in cells) from the query to slab cz along z
                        fz = ti.max(ti.max(ti.cast(cz, real) - gz, gz - ti.cast(cz + 1, real)) - pad, 0.0)
                        for ty in range(ny):
                            cy = cyc + (ty + 1) // 2
                            if ty % 2 == 0:
                                cy = cyc - ty // 2
                            if cy < iy0 or cy > iy1:
                                continue
                            fy = ti.max(ti.max(ti.cast(cy, real) - gy, gy - ti.cast(cy + 1, real)) - pad, 0.0)
                            dyz = (fy * fy + fz * fz) * cell * cell
                            bound = ti.min(r2, bd[K - 1])
                            if dyz <= bound:
                                e = ti.sqrt(bound - dyz) / cell + pad
                                x0 = ti.max(ti.floor(gx - e), 0.0)
                                x1 = ti.min(ti.floor(gx + e), ti.cast(rx - 1, real))
                                if x0 <= x1:
                                    ix0 = ti.cast(x0, ti.i32)
                                    ix1 = ti.cast(x1, ti.i32)
                                    nc = 1
                                    if ti.static(hashed):
                                        nc = ix1 - ix0 + 1
                                    for t in range(nc):
                                        s = 0
                                        s_end = 0
                                        cx = ix0 + t
                                        if ti.static(hashed):
                                            h = (ti.cast(cx, ti.u32) * ti.u32(PRIMES[0])) \
                                                ^ (ti.cast(cy, ti.u32) * ti.u32(PRIMES[1])) \
                                                ^ (ti.cast(cz, ti.u32) * ti.u32(PRIMES[2]))
                                            b = ti.cast(h & ti.cast(T - 1, ti.u32), ti.i32)
                                            s = start[b]
                                            s_end = start[b + 1]
                                        else:
                                            row = rx * (cy + ry * cz)
                                            s = start[row + ix0]
                                            s_end = start[row + ix1 + 1]
                                        for i in range(s, s_end):
                                            use = True
                                            if ti.static(hashed):
                                                use = cxyz[i, 0] == cx and cxyz[i, 1] == cy and cxyz[i, 2] == cz
                                            if use:
                                                dx = ti.cast(pts[i, 0], real) - qx
                                                dy = ti.cast(pts[i, 1], real) - qy
                                                dz = ti.cast(pts[i, 2], real) - qz
                                                d2 = dx * dx + dy * dy + dz * dz
                                                j = index[i]
                                                if d2 <= r2 and before(d2, j, bd[K - 1], bj[K - 1]):
                                                    # sorted insertion, unrolled (registers only)
                                                    for u in ti.static(range(K - 1, 0, -1)):
                                                        if before(d2, j, bd[u - 1], bj[u - 1]):
                                                            bd[u] = bd[u - 1]
                                                            bj[u] = bj[u - 1]
                                                        elif before(d2, j, bd[u], bj[u]):
                                                            bd[u] = d2
                                                            bj[u] = j
                                                    if before(d2, j, bd[0], bj[0]):
                                                        bd[0] = d2
                                                        bj[0] = j
            for u in ti.static(range(K)):
                out_idx[n, u] = bj[u]
                out_d2[n, u] = bd[u]

    _CACHE[key] = query
    return query


def knn_query(grid: PointGrid, queries, k: int, radius: float | None = None):
    """The ``k`` nearest grid points within ``radius`` (default: the grid's) of each query.

    ``queries``: (Q, 3), converted to the dtype of the grid's points. Returns
    ``(idx (Q, k) int32, dist2 (Q, k))`` on the device of ``queries`` (module docstring). Any
    radius works; one larger than the grid's scans more cells.
    """
    runtime.init()
    if int(k) != k or not 1 <= k <= MAX_K:
        raise ValueError(f"knn_query: k must be an integer in [1, {MAX_K}], got {k!r}")
    k = int(k)
    r = grid.radius if radius is None else _radius(radius, "knn_query")
    out_dev = torch.as_tensor(queries).device
    q = _as_points(queries, "knn_query: queries", grid.points.dtype)
    nq = q.shape[0]
    idx = torch.empty((nq, k), dtype=torch.int32, device=q.device)
    d2 = torch.empty((nq, k), dtype=q.dtype, device=q.device)
    if nq:
        kern = _kernels(_REAL[q.dtype], k, grid.hashed)
        n_start = grid.cell_start if grid.num_points else torch.zeros(1, dtype=torch.int32, device=q.device)
        pts = grid.points if grid.num_points else torch.zeros((1, 3), dtype=q.dtype, device=q.device)
        ind = grid.index if grid.num_points else torch.zeros(1, dtype=torch.int32, device=q.device)
        rr = float(r) * float(r)
        with runtime.runtime_lock:
            kern(q, pts, ind, n_start, grid.cell_xyz, grid.lo, grid.cell, rr,
                 grid.res[0], grid.res[1], grid.res[2], idx, d2)
    return idx.to(out_dev), d2.to(out_dev)


def knn(points, queries, k: int, radius: float, **grid_options):
    """:func:`build_grid` then :func:`knn_query`: ``(idx (Q, k) int32, dist2 (Q, k))``."""
    return knn_query(build_grid(points, radius, **grid_options), queries, k)
