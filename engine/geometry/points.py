"""Point clouds to start a point-based method from (GPF's neural points, Gaussians): three sources.

* :func:`dataset_points` -- what the capture came with: COLMAP ``points3D``, the ``points3d.ply``
  of a NeRF-synthetic folder, nerfstudio's ``ply_file_path`` (all read by the dataset readers), or
  else a ``.ply`` beside the data (:data:`PLY_NAMES`).
* :func:`depth_points` -- fusion of a trained run's depth: every view of ``cameras`` is rendered
  (``method.render(cameras, i)``: ``depth`` is the expected depth along the unit ray, normalised by
  ``alpha``), pixels with ``alpha > alpha_threshold`` are back-projected to ``o + depth * d``, and
  the union is voxel-downsampled and cleaned of statistical outliers with open3d.
* :func:`engine.geometry.mvs.mvs_points` (source ``mvs``) -- the carved hull carved further where
  a plane sweep finds the photo-consistent surface behind it (see that module).
* :func:`carved_points` -- carving from masks / alpha: a voxel grid over the dataset's scene box
  keeps a voxel when, in every training view where its centre projects inside the image, the pixel
  is covered (alpha or mask >= ``coverage_threshold``), and at least ``min_views`` views see it
  (a voxel outside every view says nothing). By default only the hull's surface voxels are
  returned (kept voxels with an empty or outside 6-neighbour), since a point field lives on the
  surface; colours are the mean of the pixels a voxel projects to in the views that see it (no
  occlusion reasoning: a rough start that training refines).

Each returns a :class:`PointCloud` (float32 points and colours in [0, 1], the source's name and
what was done), or raises :class:`NoPoints` (a :class:`~engine.errors.KernelightError`, one line
saying why) when the source gives nothing usable: no points, all non-finite, nothing rendered
opaque, every voxel carved away or outside every view. :func:`points_from` picks a source
(``auto``: the dataset's points if it has any, else carving), :func:`write_points_ply` writes the
standard ``x y z red green blue`` PLY (float32 + uint8) and :func:`read_points` reads one back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

from ..errors import KernelightError

__all__ = ["PointCloud", "NoPoints", "PLY_NAMES", "dataset_points", "depth_points", "carved_points",
           "points_from", "write_points_ply", "read_points", "cap_points", "fill_depth", "SOURCES"]

#: Point files looked for beside a dataset that brought no points (first found wins).
PLY_NAMES = ("points3D.ply", "points3d.ply", "sparse_pc.ply", "sparse/0/points3D.ply", "points.ply")
#: Names accepted by :func:`points_from`.
SOURCES = ("auto", "dataset", "run", "carve", "mvs")


class NoPoints(KernelightError):
    """A point source gave no usable points (the message says which and why)."""


@dataclass
class PointCloud:
    """Points and where they came from.

    Fields:
        points: (P, 3) float32 world positions (finite).
        colors: (P, 3) float32 in [0, 1], or None.
        source: ``dataset`` | ``run`` | ``carve``.
        detail: one line: the file, run or grid the points came from.
        stats: counts along the way (raw, after downsampling, after outlier removal, ...).
    """

    points: np.ndarray
    colors: np.ndarray | None
    source: str
    detail: str
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def describe(self) -> str:
        return f"{len(self)} points from {self.source} ({self.detail})"


def _finite(points, colors, what: str):
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    if len(pts) == 0:
        raise NoPoints(f"{what}: no points")
    ok = np.isfinite(pts).all(1)
    if not ok.any():
        raise NoPoints(f"{what}: all {len(pts)} points have NaN or infinite coordinates")
    cols = None if colors is None else np.clip(np.nan_to_num(np.asarray(colors, np.float32).reshape(-1, 3)), 0, 1)
    return pts[ok], (None if cols is None else cols[ok]), int((~ok).sum())


def cap_points(pc: PointCloud, max_points: int | None, seed: int = 0) -> PointCloud:
    """At most ``max_points`` points (a seeded random subset, in the original order)."""
    if max_points is None or len(pc) <= max_points:
        return pc
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    keep = np.sort(np.random.default_rng(seed).choice(len(pc), int(max_points), replace=False))
    stats = dict(pc.stats, before_cap=len(pc))
    return PointCloud(pc.points[keep], None if pc.colors is None else pc.colors[keep], pc.source, pc.detail, stats)


# ------------------------------------------------------------------------------------ dataset
def dataset_points(ds, root: Path | None = None) -> PointCloud:
    """The points a dataset brought (``ds.points``), else a PLY of :data:`PLY_NAMES` beside it."""
    root = Path(root if root is not None else ds.root)
    what = f"dataset {root}"
    if ds.points is not None and int(ds.points.shape[0]) > 0:
        cols = None if ds.point_colors is None else ds.point_colors.cpu().numpy()
        pts, cols, bad = _finite(ds.points.cpu().numpy(), cols, what)
        name = {"colmap": "COLMAP points3D", "blender": "points3d.ply", "nerfstudio": "ply_file_path"}.get(
            ds.format, f"{ds.format} points")
        return PointCloud(pts, cols, "dataset", f"{name} of {root}", {"read": len(pts) + bad, "non_finite": bad})
    for name in PLY_NAMES:
        f = root / name
        if f.is_file():
            from ..io.ply import read_points_ply

            p, c = read_points_ply(f)
            pts, cols, bad = _finite(p, c, str(f))
            return PointCloud(pts, cols, "dataset", str(f), {"read": len(pts) + bad, "non_finite": bad})
    raise NoPoints(f"{what}: the dataset has no points (no COLMAP points3D, no {', '.join(PLY_NAMES)})")


# ------------------------------------------------------------------------------------ depth
def _voxel_default(points: np.ndarray) -> float:
    ext = np.percentile(points, 99.5, axis=0) - np.percentile(points, 0.5, axis=0)
    return float(max(np.linalg.norm(ext), 1e-9) / 512)


@torch.no_grad()
def depth_points(method, cameras, *, alpha_threshold: float = 0.5, voxel: float | None = None,
                 nb_neighbors: int = 20, std_ratio: float = 2.0, stride: int = 1, views: int | None = None,
                 label: str = "run", progress=None) -> PointCloud:
    """Fuse the depth maps ``method`` renders for every camera of ``cameras`` (module docstring).

    Args:
        method: a :class:`engine.methods.base.Method` (``engine.load(run)``).
        cameras: :class:`engine.cameras.Cameras` to render (the run's training views).
        alpha_threshold: a pixel is back-projected when its opacity exceeds this.
        voxel: voxel size of the downsampling (default: 1/512 of the fused points' box diagonal);
            0 keeps every point.
        nb_neighbors, std_ratio: open3d ``remove_statistical_outlier`` (``nb_neighbors`` 0 skips it).
        stride: use every ``stride``-th pixel per axis.
        views: render at most this many views, evenly spaced over ``cameras`` (default all).
        progress: optional callable ``(done, total)``.
    Colours: ``rgb / alpha`` of the render (the colour of the surface, unmixed from the background).
    """
    import open3d as o3d

    if not 0.0 <= alpha_threshold < 1.0:
        raise ValueError(f"alpha_threshold must be in [0, 1), got {alpha_threshold}")
    pts_all, col_all = [], []
    if len(cameras) == 0:
        raise NoPoints(f"{label}: no cameras to render depth from")
    which = list(range(len(cameras)))
    if views is not None and views < len(which):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        which = sorted({int(round(x)) for x in np.linspace(0, len(cameras) - 1, int(views))})
    n_views = len(which)
    for done, i in enumerate(which):
        out = method.render(cameras, i)
        depth = out["depth"].float().cpu()
        alpha = out["alpha"].float().cpu()
        o, d = cameras.generate_rays(i)
        o, d = o.cpu(), d.cpu()
        if stride > 1:
            depth, alpha, o, d = (t[::stride, ::stride] for t in (depth, alpha, o, d))
        m = (alpha > alpha_threshold) & torch.isfinite(depth) & (depth > 0)
        p = o[m] + d[m] * depth[m][:, None]
        rgb = out["rgb"].float().cpu()
        if stride > 1:
            rgb = rgb[::stride, ::stride]
        c = (rgb[m] / alpha[m][:, None].clamp_min(1e-6)).clamp(0, 1)
        pts_all.append(p.numpy())
        col_all.append(c.numpy())
        if progress is not None:
            progress(done + 1, n_views)
    pts = np.concatenate(pts_all).astype(np.float64)
    cols = np.concatenate(col_all).astype(np.float64)
    ok = np.isfinite(pts).all(1)
    pts, cols = pts[ok], cols[ok]
    stats = {"views": n_views, "back_projected": int(len(pts))}
    if len(pts) == 0:
        raise NoPoints(f"{label}: no pixel of the {n_views} rendered views has alpha > {alpha_threshold} "
                       "and a finite depth (an empty or untrained model?)")
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pc.colors = o3d.utility.Vector3dVector(cols)
    vox = _voxel_default(pts) if voxel is None else float(voxel)
    if vox > 0:
        pc = pc.voxel_down_sample(vox)
    stats["voxel"] = vox
    stats["after_voxel"] = len(pc.points)
    if nb_neighbors > 0 and len(pc.points) > nb_neighbors:
        pc, _ = pc.remove_statistical_outlier(nb_neighbors=int(nb_neighbors), std_ratio=float(std_ratio))
    stats["after_outliers"] = len(pc.points)
    if len(pc.points) == 0:
        raise NoPoints(f"{label}: outlier removal left no points")
    return PointCloud(np.asarray(pc.points, np.float32), np.asarray(pc.colors, np.float32), "run",
                      f"depth of {label}, {n_views} views, alpha > {alpha_threshold}, voxel {vox:.4g}", stats)


# ------------------------------------------------------------------------------------ carving
def surface_voxels(occ: torch.Tensor) -> torch.Tensor:
    """The occupied voxels of ``occ (X, Y, Z) bool`` with at least one of their 6 neighbours empty
    (outside the grid counts as empty)."""
    dims = occ.shape
    pad = torch.nn.functional.pad(occ[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]
    inner = torch.ones_like(occ)
    for ax in range(3):
        for s in (0, 2):
            sl = [slice(1, -1)] * 3
            sl[ax] = slice(s, s + dims[ax])
            inner &= pad[tuple(sl)] > 0
    return occ & ~inner


@torch.no_grad()
def hull_volume(ds, *, resolution: int = 128, coverage_threshold: float = 0.5, min_views: int | None = None,
                split: str = "train") -> dict:
    """The visual hull of ``split``'s masks / alpha as a voxel grid (module docstring, carving).

    ``resolution`` voxels along the box's longest side (cubic voxels); ``min_views`` (default a
    quarter of the views, at least 1) views must see a voxel for it to be kept. Returns ``keep
    (X*Y*Z,)`` bool (row-major over ``dims``), ``grid (X*Y*Z, 3)`` voxel centres, ``seen`` (views per
    voxel), ``colour_sum (X*Y*Z, 3)``, ``dims``, ``voxel`` and ``stats``; raises :class:`NoPoints`
    when nothing is left.
    """
    from ..train.init_points import split_coverage

    sp = ds.split(split)
    what = f"dataset {ds.root}"
    cov = split_coverage(sp)
    if cov is None:
        raise NoPoints(f"{what}: the {split} split has no alpha or masks to carve from")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    box = ds.scene_box.double().reshape(2, 3)
    size = (box[1] - box[0]).clamp_min(1e-12)
    vox = float(size.max()) / resolution
    dims = [max(1, int(round(float(s) / vox))) for s in size]
    axes = [box[0, k] + (torch.arange(dims[k], dtype=torch.float64) + 0.5) * (float(size[k]) / dims[k])
            for k in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).float()
    n = grid.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    seen = torch.zeros(n, dtype=torch.int32)
    csum = torch.zeros(n, 3, dtype=torch.float32)
    cams = sp.cameras
    H, W = cov.shape[1:]
    alive = torch.arange(n)            # voxels not carved yet: only these are projected
    for i in range(len(cams)):
        uv, z = cams.project(grid[alive], i)
        u, v = uv[:, 0].floor(), uv[:, 1].floor()
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & torch.isfinite(uv).all(1)
        loc = torch.nonzero(inside).squeeze(1)
        idx = alive[loc]
        ui, vi = u[loc].long(), v[loc].long()
        covered = cov[i, vi, ui] >= coverage_threshold
        keep[idx[~covered]] = False
        seen[idx] += 1
        csum[idx] += sp.images[i, vi, ui].float()
        alive = alive[keep[alive]]
    need = max(1, len(cams) // 4) if min_views is None else int(min_views)
    visible = seen >= need
    carved = int((~keep).sum())
    stats = {"voxels": n, "dims": dims, "voxel": vox, "carved": carved}
    keep &= visible
    stats["inside_hull"] = int(keep.sum())
    if not bool(keep.any()):
        if carved == 0:
            raise NoPoints(f"{what}: no voxel of the scene box projects into at least {need} of the "
                           f"{len(cams)} {split} views (cameras do not look at the box?)")
        raise NoPoints(f"{what}: carving removed every voxel ({carved} of {n} fall outside the masks/alpha "
                       f"in some view at coverage threshold {coverage_threshold}; the rest are seen by fewer "
                       f"than {need} views)")
    return {"keep": keep, "grid": grid, "seen": seen, "colour_sum": csum, "dims": dims, "voxel": vox,
            "stats": stats, "views": len(cams)}


def carved_points(ds, *, resolution: int = 128, coverage_threshold: float = 0.5, min_views: int | None = None,
                  surface_only: bool = True, split: str = "train") -> PointCloud:
    """Carve the dataset's scene box with the masks / alpha of ``split`` (:func:`hull_volume`): the
    surface voxels of the hull (``surface_only``), else all of its voxels, coloured by the mean of
    the views that see them."""
    hv = hull_volume(ds, resolution=resolution, coverage_threshold=coverage_threshold, min_views=min_views,
                     split=split)
    keep, dims, vox, stats = hv["keep"], hv["dims"], hv["voxel"], dict(hv["stats"])
    if surface_only:
        keep = surface_voxels(keep.reshape(dims)).reshape(-1)
        stats["surface"] = int(keep.sum())
    pts = hv["grid"][keep].numpy()
    cols = (hv["colour_sum"][keep] / hv["seen"][keep, None].float()).numpy()
    return PointCloud(pts, np.clip(cols, 0, 1), "carve",
                      f"{'surface of the ' if surface_only else ''}visual hull, {dims[0]}x{dims[1]}x{dims[2]} voxels "
                      f"of {vox:.4g}, {hv['views']} {split} views", stats)


# ------------------------------------------------------------------------------------ choose
def points_from(source: str = "auto", *, dataset=None, method=None, cameras=None, run_label: str = "run",
                voxel: float | None = None, max_points: int | None = None, seed: int = 0,
                carve_resolution: int = 128, alpha_threshold: float = 0.5, views: int | None = None,
                progress=None, sweep: bool = False) -> PointCloud:
    """Points from ``source`` (``auto`` | ``dataset`` | ``run`` | ``carve`` | ``mvs``).

    ``mvs``: the carved hull carved further, down to the photo-consistent surface a plane sweep finds
    (:func:`engine.geometry.mvs.mvs_points`; needs masks/alpha like carving).

    ``auto``: the dataset's points if it has any, else (``sweep=True``) the swept hull, else carving,
    else (when a run is given) its depth. ``method`` is a Method or a zero-argument callable
    returning one (loaded only when its depth is needed). ``voxel`` (> 0) also downsamples dataset
    and carved points (open3d ``voxel_down_sample``); ``max_points`` caps the result (seeded random
    subset). When every source tried fails, :class:`NoPoints` lists each reason.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    hull = ["mvs", "carve"] if sweep else ["carve"]
    tries = {"auto": ["dataset"] + hull + (["run"] if method is not None else [])}.get(source, [source])
    reasons = []
    for s in tries:
        try:
            if s == "run":
                if method is None or cameras is None:
                    raise NoPoints("--from run needs a trained run (and the cameras of its dataset)")
                model = method() if callable(method) and not hasattr(method, "render") else method
                pc = depth_points(model, cameras, voxel=voxel, alpha_threshold=alpha_threshold, label=run_label,
                                  views=views, progress=progress)
            elif s == "dataset":
                if dataset is None:
                    raise NoPoints("no dataset to read points from")
                pc = dataset_points(dataset)
            elif s == "mvs":
                if dataset is None:
                    raise NoPoints("no dataset to sweep")
                from .mvs import mvs_points

                pc = mvs_points(dataset, resolution=carve_resolution, progress=progress)
            else:
                if dataset is None:
                    raise NoPoints("no dataset to carve from")
                pc = carved_points(dataset, resolution=carve_resolution)
        except NoPoints as exc:
            reasons.append(f"{s}: {exc}")
            continue
        if s != "run" and voxel:
            pc = _downsample(pc, voxel)
        pc.stats["tried"] = tries[: tries.index(s) + 1]
        return cap_points(pc, max_points, seed)
    raise NoPoints("no points from any source: " + "; ".join(reasons))


def _downsample(pc: PointCloud, voxel: float) -> PointCloud:
    import open3d as o3d

    o = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pc.points.astype(np.float64)))
    if pc.colors is not None:
        o.colors = o3d.utility.Vector3dVector(pc.colors.astype(np.float64))
    o = o.voxel_down_sample(float(voxel))
    cols = np.asarray(o.colors, np.float32) if pc.colors is not None else None
    return PointCloud(np.asarray(o.points, np.float32), cols, pc.source, pc.detail + f", voxel {voxel:g}",
                      dict(pc.stats, before_voxel=len(pc)))


# ------------------------------------------------------------------------------------ depth maps
def fill_depth(depth: torch.Tensor, times: int) -> torch.Tensor:
    """Depth maps ``(V, H, W)`` of splatted points with every ``inf`` pixel next to a covered one set
    to the nearest (smallest) depth of its 3x3 neighbourhood, ``times`` times over: a ray through a
    gap of the splatted disks, or just past the cloud's silhouette, still gets a depth (the point
    field's samples, the plane sweep's hull depth) instead of none."""
    d = depth
    for _ in range(int(times)):
        big = torch.where(torch.isfinite(d), d, torch.full_like(d, 1e30))
        nb = -Fn.max_pool2d(-big[:, None], 3, stride=1, padding=1)[:, 0]
        d = torch.where(torch.isfinite(d), d, torch.where(nb < 1e29, nb, d))
    return d



# ------------------------------------------------------------------------------------ files
def write_points_ply(path, pc: PointCloud, comment: str | None = None) -> Path:
    """Standard point PLY: ``x y z`` float32 and ``red green blue`` uint8 (grey 128 without colours)."""
    from ..io.ply import write_ply

    p = pc.points.astype(np.float32)
    c = pc.colors if pc.colors is not None else np.full((len(p), 3), 128 / 255, np.float32)
    c8 = np.clip(np.round(np.asarray(c) * 255), 0, 255).astype(np.uint8)
    vert = {"x": p[:, 0], "y": p[:, 1], "z": p[:, 2], "red": c8[:, 0], "green": c8[:, 1], "blue": c8[:, 2]}
    comments = ["written by kernelight points", f"source {pc.source}"] + ([comment] if comment else [])
    return write_ply(path, vert, comments=[c.replace("\n", " ") for c in comments])


def read_points(path) -> PointCloud:
    """A point PLY (e.g. from ``kernelight points``) as a :class:`PointCloud` (source ``file``)."""
    from ..io.ply import read_points_ply

    p, c = read_points_ply(path)
    pts, cols, bad = _finite(p, c, str(path))
    return PointCloud(pts, cols, "file", str(path), {"read": len(pts) + bad, "non_finite": bad})
