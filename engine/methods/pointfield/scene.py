"""One scene of a point field: its points (with learnable per-point feature residuals and
confidences), its source images and cameras, and the caches derived from them.

Caches (rebuilt whenever the points change: growing, pruning, loading):

* the neighbour grid of the points (:func:`shaders.knn.build_grid`, radius = ``radius`` spacings);
* the point cloud's own depth map in every source view at the encoder's resolution (the z-test of
  the visibility score) and in every training view at full resolution (the depths each training
  ray is sampled around: one or two layers, :meth:`PointScene.depth_layers`), all splatted by
  :func:`shaders.point_depth.splat_depth`.

Every source view's image is kept as uint8 (and alpha / mask where the data has them), so a
checkpoint renders without the dataset.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from ...cameras import Cameras
from ...errors import ConfigError, KernelightError
from ...geometry.points import fill_depth  # noqa: F401  (re-exported: the method and tests use it from here)

CAM_FIELDS = ("fx", "fy", "cx", "cy", "width", "height", "c2w")


class PointFieldError(KernelightError):
    """The points or the images cannot make a point field (one line saying why)."""


def sh_dim(cfg) -> int:
    """Columns of a scene's ``point_sh``: 3 colour channels x ``(point_sh_degree + 1)^2`` (0 when off)."""
    return 3 * (int(cfg.point_sh_degree) + 1) ** 2 if int(cfg.point_sh_degree) >= 0 else 0


def point_spacing(points: torch.Tensor, sample: int = 20000, seed: int = 0) -> float:
    """Median distance from a point to its nearest other point (on a seeded subset of at most ``sample``)."""
    from scipy.spatial import cKDTree

    p = points.detach().cpu().double().numpy()
    if len(p) < 2:
        raise PointFieldError(f"a point field needs at least 2 points, got {len(p)}")
    q = p if len(p) <= sample else p[np.random.default_rng(seed).choice(len(p), sample, replace=False)]
    d, _ = cKDTree(p).query(q, k=2)
    d = d[:, 1]
    d = d[np.isfinite(d) & (d > 0)]
    if len(d) == 0:
        raise PointFieldError(f"all {len(p)} points coincide: no point spacing to scale the field by")
    return float(np.median(d))


def cameras_state(c: Cameras) -> dict:
    st = {k: getattr(c, k).detach().cpu().clone() for k in CAM_FIELDS}
    st["dist"] = None if c.dist is None else c.dist.detach().cpu().clone()
    return st


def cameras_from_state(st: dict) -> Cameras:
    return Cameras(*(st[k] for k in CAM_FIELDS), st.get("dist"))


class PointScene(nn.Module):
    """Points + per-point parameters + source views of one scene (module docstring).

    Parameters: ``point_feat (N, 2F)`` feature residuals (zeros at creation), ``point_conf (N,)``
    confidence logits (Point-NeRF), ``point_sh (N, 3 B)`` explicit colour SH coefficients (zeros at
    creation; ``B = (point_sh_degree + 1)^2``, 0 columns when off). Buffers: ``points (N, 3)``, ``colors (N, 3)``, ``images
    (V, H, W, 3)`` uint8, ``coverage (V, H, W)`` uint8 (alpha or mask, or an empty tensor).
    """

    def __init__(self, name: str, points, colors, images_u8, coverage_u8, cameras: Cameras, spacing: float,
                 log_base: float, near: float, far: float, background, feature_dim: int,
                 coverage_is_mask: bool = False, sh_dim: int = 0):
        super().__init__()
        pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 3)
        self.name = str(name)
        self.register_buffer("points", pts.contiguous())
        cols = torch.full_like(pts, 0.5) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
        self.register_buffer("colors", cols.reshape(-1, 3).contiguous())
        self.register_buffer("images", torch.as_tensor(images_u8, dtype=torch.uint8).contiguous())
        cov = torch.zeros(0, dtype=torch.uint8) if coverage_u8 is None else torch.as_tensor(coverage_u8,
                                                                                            dtype=torch.uint8)
        self.register_buffer("coverage", cov.contiguous())
        self.point_feat = nn.Parameter(torch.zeros(pts.shape[0], 2 * int(feature_dim)))
        self.point_conf = nn.Parameter(torch.zeros(pts.shape[0]))       # sigmoid(0) = 0.5
        self.point_sh = nn.Parameter(torch.zeros(pts.shape[0], int(sh_dim)))  # explicit colour (logit space)
        # learned displacement since the last fold (in point spacings; ``lr_pos``), see :meth:`positions`
        self.point_off = nn.Parameter(torch.zeros(pts.shape[0], 3))
        self.cameras = cameras
        self.spacing = float(spacing)
        self.log_base = float(log_base)
        self.near, self.far = float(near), float(far)
        self.background = torch.as_tensor(background, dtype=torch.float32).reshape(3)
        self.coverage_is_mask = bool(coverage_is_mask)
        self.grown_total = 0
        self.pruned_total = 0
        self._cache: dict = {}

    # ------------------------------------------------------------------ sizes
    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    def image(self, i: int) -> torch.Tensor:
        return self.images[i].float() / 255.0

    def coverage_of(self, i: int) -> torch.Tensor | None:
        return None if self.coverage.numel() == 0 else self.coverage[i].float() / 255.0

    def invalidate(self) -> None:
        self._cache = {}

    def positions(self) -> torch.Tensor:
        """``(N, 3)`` point positions with their learned displacement (differentiable in ``point_off``).
        The caches (grid, depth maps) use ``points``: :meth:`fold_offsets` moves them."""
        return self.points + self.point_off * self.spacing

    @torch.no_grad()
    def fold_offsets(self) -> float:
        """Move ``points`` by the learned displacement, zero it and rebuild the caches; returns the
        median displacement folded, in spacings."""
        if self.point_off.numel() == 0:
            return 0.0
        moved = float(self.point_off.norm(dim=1).median())
        self.points = self.positions().detach().contiguous()
        self.point_off.zero_()
        self.invalidate()
        return moved

    # ------------------------------------------------------------------ geometry caches
    def radius(self, cfg) -> float:
        return float(cfg.radius) * self.spacing

    def grid(self, cfg):
        key = ("grid", self.radius(cfg))
        if key not in self._cache:
            from shaders.knn import build_grid

            self._cache[key] = build_grid(self.points.detach(), self.radius(cfg))
        return self._cache[key]

    def splat(self, cams: Cameras, cfg, chunk_views: int = 8) -> torch.Tensor:
        """Depth maps ``(V, H, W)`` (camera z; inf where no point) of the points in ``cams`` (equal sizes)."""
        from shaders.point_depth import splat_depth

        H, W = int(cams.height[0]), int(cams.width[0])
        out = []
        r_world = float(cfg.splat_radius) * self.spacing
        pts = self.points.detach()
        for a in range(0, len(cams), chunk_views):
            c = cams[a:a + chunk_views]
            uv, z = c.project(pts)
            rad = r_world * c.fx[:, None] / z.clamp_min(1e-12)
            out.append(splat_depth(uv, z, rad, H, W))
        return torch.cat(out, 0) if out else torch.zeros(0, H, W)

    def encoder_size(self, cfg) -> tuple[int, int]:
        H, W = int(self.images.shape[1]), int(self.images.shape[2])
        s = min(1.0, float(cfg.encoder_max_side) / max(H, W))
        return max(1, int(round(W * s))), max(1, int(round(H * s)))

    def source_cameras(self, cfg) -> Cameras:
        key = ("src_cams",) + self.encoder_size(cfg)
        if key not in self._cache:
            w, h = self.encoder_size(cfg)
            self._cache[key] = self.cameras.resized(w, h)
        return self._cache[key]

    def source_images(self, views: torch.Tensor, cfg) -> torch.Tensor:
        """``(S, 3, h, w)`` float images of ``views`` at the encoder's size."""
        w, h = self.encoder_size(cfg)
        img = self.images[views].permute(0, 3, 1, 2).float() / 255.0
        if (h, w) != tuple(img.shape[2:]):
            img = Fn.interpolate(img, size=(h, w), mode="area")
        return img

    def source_depth(self, cfg) -> torch.Tensor:
        key = ("src_depth", self.encoder_size(cfg), float(cfg.splat_radius))
        if key not in self._cache:
            self._cache[key] = self.splat(self.source_cameras(cfg), cfg)
        return self._cache[key]

    def train_layers(self, cfg) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training views' depth layers (:meth:`depth_layers`), cached."""
        key = ("train_layers", float(cfg.splat_radius), int(cfg.depth_fill), int(cfg.depth_layers),
               float(cfg.log_unit), int(cfg.log_steps))
        if key not in self._cache:
            self._cache[key] = self.depth_layers(self.cameras, cfg)
        return self._cache[key]

    def reach(self, cfg) -> float:
        """How far the log samples reach on either side of their centre (world units)."""
        return float(cfg.log_unit) * self.spacing * self.log_base ** (int(cfg.log_steps) - 1)

    @torch.no_grad()
    def depth_layers(self, cams: Cameras, cfg, chunk_views: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Depth maps ``(V, H, W)`` of the point cloud in ``cams`` (equal sizes): the first layer (the
        nearest point, gaps filled ``depth_fill`` times) and, with ``depth_layers`` 2, the second: the
        nearest of the points lying more than the samples' reach behind the first layer at their own
        pixel (filled the same way), kept only where it is that far behind (``inf`` elsewhere; None
        with one layer). A ray through a gap of a nearer surface, where the splatted disks and the
        filling closed the gap, gets samples at the surface behind it too."""
        from shaders.point_depth import splat_depth

        d1 = fill_depth(self.splat(cams, cfg, chunk_views), int(cfg.depth_fill))
        if int(cfg.depth_layers) < 2:
            return d1, None
        gap = self.reach(cfg)
        H, W = int(cams.height[0]), int(cams.width[0])
        r_world = float(cfg.splat_radius) * self.spacing
        pts = self.points.detach()
        out = []
        for a in range(0, len(cams), chunk_views):
            c = cams[a:a + chunk_views]
            uv, z = c.project(pts)
            u, v = uv[..., 0].floor(), uv[..., 1].floor()
            inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & torch.isfinite(uv).all(-1)
            vi = torch.where(inside, v, torch.zeros_like(v)).long()
            ui = torch.where(inside, u, torch.zeros_like(u)).long()
            first = d1[a:a + len(c)]
            own = first[torch.arange(len(c))[:, None].expand_as(vi), vi, ui]
            behind = inside & (z > own + gap)
            rad = r_world * c.fx[:, None] / z.clamp_min(1e-12)
            out.append(splat_depth(uv, torch.where(behind, z, torch.full_like(z, float("inf"))), rad, H, W))
        d2 = fill_depth(torch.cat(out, 0), int(cfg.depth_fill))
        d2 = torch.where(d2 > d1 + gap, d2, torch.full_like(d2, float("inf")))
        return d1, d2

    def nearest_views(self, cams: Cameras, index: int, n: int, exclude: int | None = None) -> torch.Tensor:
        """The ``n`` source views whose centres are nearest camera ``index`` of ``cams`` (``exclude`` left out)."""
        c = cams.c2w[index, :3, 3].to(self.cameras.c2w)
        d = (self.cameras.c2w[:, :3, 3] - c).norm(dim=-1)
        if exclude is not None and self.num_views > 1:
            d = d.clone()
            d[exclude] = float("inf")
        k = min(int(n), self.num_views - (1 if exclude is not None and self.num_views > 1 else 0))
        return torch.topk(d, k, largest=False).indices

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"name": self.name, "points": self.positions().detach().cpu().clone(),
                "colors": self.colors.detach().cpu().clone(),
                "images": self.images.cpu().clone(), "coverage": self.coverage.cpu().clone(),
                "point_feat": self.point_feat.detach().cpu().clone(),
                "point_conf": self.point_conf.detach().cpu().clone(),
                "point_sh": self.point_sh.detach().cpu().clone(),
                "cameras": cameras_state(self.cameras), "spacing": self.spacing, "log_base": self.log_base,
                "near": self.near, "far": self.far, "background": self.background.cpu().clone(),
                "grown_total": self.grown_total, "pruned_total": self.pruned_total,
                "coverage_is_mask": self.coverage_is_mask}

    @classmethod
    def from_state(cls, st: dict, feature_dim: int, sh_dim: int = 0) -> "PointScene":
        if int(st["point_feat"].shape[1]) != 2 * int(feature_dim):
            raise ConfigError(f"checkpoint point features have {int(st['point_feat'].shape[1])} values, the config "
                              f"feature_dim={feature_dim} needs {2 * int(feature_dim)}")
        s = cls(st["name"], st["points"], st["colors"], st["images"],
                st["coverage"] if st["coverage"].numel() else None, cameras_from_state(st["cameras"]),
                st["spacing"], st["log_base"], st["near"], st["far"], st["background"], feature_dim,
                bool(st.get("coverage_is_mask", False)), sh_dim)
        with torch.no_grad():
            s.point_feat.copy_(st["point_feat"])
            s.point_conf.copy_(st["point_conf"])
            sh = st.get("point_sh")
            if sh is not None and sh.shape[1] and sh_dim:
                # a checkpoint of another degree: keep the common (lower) bands of each channel
                b_old, b_new = sh.shape[1] // 3, sh_dim // 3
                b = min(b_old, b_new)
                s.point_sh.view(-1, 3, b_new)[:, :, :b].copy_(sh.reshape(-1, 3, b_old)[:, :, :b])
        s.grown_total, s.pruned_total = int(st.get("grown_total", 0)), int(st.get("pruned_total", 0))
        return s


# ------------------------------------------------------------------------------------ creation
def _hull_filter(points: np.ndarray, colors, split, cov) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Keep points that, in every view where they project inside the image, land within one pixel of
    coverage >= 0.5 (the mask dilated by one pixel: points on the object's surface project onto its
    silhouette's edge pixels)."""
    cov = Fn.max_pool2d(cov.float()[:, None], 3, stride=1, padding=1)[:, 0]
    p = torch.as_tensor(points, dtype=torch.float32)
    keep = torch.ones(len(p), dtype=torch.bool)
    H, W = cov.shape[1:]
    cams = split.cameras
    for i in range(len(cams)):
        uv, z = cams.project(p, i)
        u, v = uv[:, 0].floor(), uv[:, 1].floor()
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & torch.isfinite(uv).all(1)
        loc = inside.nonzero(as_tuple=True)[0]
        bad = cov[i, v[loc].long(), u[loc].long()] < 0.5
        keep[loc[bad]] = False
    k = keep.numpy()
    return points[k], (None if colors is None else colors[k]), int((~k).sum())


def scene_points(ds, cfg, notes: list[str]):
    """The starting points of dataset ``ds`` (``cfg.points``) as a :class:`engine.geometry.points.PointCloud`;
    appends to ``notes`` the line saying which source was used (and any fallback)."""
    from pathlib import Path

    from ...geometry.points import NoPoints, PointCloud, cap_points, points_from, read_points
    from ...train.init_points import split_coverage

    src = cfg.points
    try:
        if src not in ("auto", "dataset", "carve", "mvs"):
            f = Path(src)
            if not f.is_file():
                raise ConfigError(f"option points: {src} is neither auto/dataset/carve/mvs nor a .ply file")
            pc = read_points(f)
        else:
            pc = points_from(src, dataset=ds, carve_resolution=int(cfg.carve_resolution), seed=cfg.seed, sweep=True)
    except NoPoints as exc:
        raise PointFieldError(f"{ds.root}: {exc}. A point field needs points: give the dataset COLMAP points "
                              "or a points.ply beside it, alpha/masks to carve from, or --points FILE.ply "
                              "(e.g. from 'kernelight points RUN --out points.ply' of a RayGauss/shells run)") from None
    tried = pc.stats.get("tried", [])
    fallback = f" (tried {', '.join(tried[:-1])} first: nothing there)" if len(tried) > 1 else ""
    line = f"points: {pc.describe()}{fallback}"
    cov = split_coverage(ds.train) if "train" in ds.splits else None
    if pc.source in ("dataset", "file") and cfg.hull_filter and cov is not None:
        pts, cols, dropped = _hull_filter(pc.points, pc.colors, ds.train, cov.cpu())
        # most points outside the hull: a box-filling initialisation (mic's points3d.ply is 3DGS's
        # uniform random cloud), not a reconstruction of the object: the hull's surface is better
        if len(pts) >= 100 and len(pts) >= 0.1 * len(pc):
            line += f"; {dropped} outside the visual hull of the masks/alpha dropped, {len(pts)} kept"
            pc = PointCloud(pts, cols, pc.source, pc.detail, dict(pc.stats, hull_dropped=dropped))
        else:
            try:
                pc = points_from("mvs", dataset=ds, carve_resolution=int(cfg.carve_resolution), seed=cfg.seed)
            except NoPoints:
                try:
                    pc = points_from("carve", dataset=ds, carve_resolution=int(cfg.carve_resolution), seed=cfg.seed)
                except NoPoints as exc:
                    raise PointFieldError(f"{ds.root}: only {len(pts)} dataset points lie in the visual hull and "
                                          f"carving failed too ({exc})") from None
            line += (f"; only {len(pts)} of them inside the visual hull of the masks/alpha (a box-filling "
                     f"initialisation, not the object), so the hull instead: {pc.describe()}")
    pc = cap_points(pc, int(cfg.max_points), cfg.seed)
    notes.append(line)
    return pc


def check_points(points: np.ndarray, cams: Cameras, what: str) -> None:
    """Refuse clouds no view sees (one line): empty, non-finite, or in front of no camera's image."""
    p = torch.as_tensor(points, dtype=torch.float32)
    if p.shape[0] == 0:
        raise PointFieldError(f"{what}: the point cloud is empty")
    if not bool(torch.isfinite(p).all()):
        raise PointFieldError(f"{what}: the point cloud has NaN or infinite coordinates")
    sub = p if len(p) <= 5000 else p[torch.randperm(len(p), generator=torch.Generator().manual_seed(0))[:5000]]
    uv, z = cams.project(sub)
    W, H = cams.width[:, None].float(), cams.height[:, None].float()
    seen = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    if not bool(seen.any()):
        lo, hi = p.min(0).values.tolist(), p.max(0).values.tolist()
        raise PointFieldError(f"{what}: no point projects into any of the {len(cams)} source views (points span "
                              f"{[round(v, 3) for v in lo]}..{[round(v, 3) for v in hi]}: another scene's or "
                              "another coordinate frame's cloud?)")


def build_scene(ds, cfg, notes: list[str], name: str | None = None, points=None) -> PointScene:
    """A :class:`PointScene` from a loaded dataset (its train split as source views)."""
    if "train" not in ds.splits or len(ds.train) == 0:
        raise PointFieldError(f"{ds.root}: no training images to take features from")
    sp = ds.train
    if points is None:
        pc = scene_points(ds, cfg, notes)
        pts, cols = pc.points, pc.colors
    else:
        pts, cols = points
    check_points(pts, sp.cameras.to("cpu"), f"{ds.root}")
    pts_t = torch.as_tensor(pts, dtype=torch.float32)
    spacing = point_spacing(pts_t, seed=cfg.seed)
    base = cfg.log_base or (1.16 if ds.format == "blender" else 1.2)
    imgs = (sp.images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    cov = None
    if sp.alpha is not None:
        cov = (sp.alpha.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    elif sp.masks is not None:
        cov = sp.masks.detach().cpu().to(torch.uint8) * 255
    near = float(ds.near) if ds.near is not None else 1e-3
    far = float(ds.far) if ds.far is not None else math.inf
    s = PointScene(name or ds.root.name, pts_t, cols, imgs, cov, sp.cameras.to("cpu"), spacing, base, near, far,
                   ds.background, cfg.feature_dim, coverage_is_mask=sp.alpha is None and sp.masks is not None,
                   sh_dim=sh_dim(cfg))
    notes.append(f"scene {s.name}: {s.num_points} points, spacing {spacing:.4g} (neighbour radius "
                 f"{cfg.radius * spacing:.4g}, log samples {cfg.log_unit * spacing:.3g} x {base}^k, k < "
                 f"{cfg.log_steps}), {s.num_views} source views")
    return s
