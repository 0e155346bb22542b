"""Multi-view stereo points: the visual hull carved further by a plane sweep where the images agree.

The visual hull (:func:`engine.geometry.points.carved_points`) is the tightest shape the masks
allow, but it bulges over every concavity the silhouettes cannot see (the courtyard of DTU's scan24,
the cab and tracks of lego): a point method started on it renders texture smeared over the wrong
surface. This module moves each view's hull depth onto the photo-consistent surface behind it:

1. **Hull depth.** The hull's surface points are splatted into every training view (one voxel
   disks, :func:`shaders.point_depth.splat_depth`); one-pixel gaps are filled by the nearest depth
   of the 3x3 neighbourhood (:func:`engine.geometry.points.fill_depth`, as the point field does). Distances are along unit rays.
2. **Sweep.** For each pixel with a hull depth ``t_h`` the hypotheses are ``t_h + k * step * voxel``
   for ``k`` from ``-2 / step`` to ``behind / step`` (the surface can only lie behind the hull, two
   voxels of slack in front). Each hypothesis is projected into the ``sources`` nearest training
   views; the cost per source is the squared RGB difference, averaged over the covered pixels of a
   ``window x window`` box around the pixel (each at the same offset behind its own hull depth);
   per pixel the mean of the
   ``best`` lowest source costs is kept (a source where the point is occluded or outside the image
   does not count against it).
3. **Winner takes all, when it wins clearly.** The lowest-cost hypothesis replaces ``t_h`` when its
   cost is below ``(1 - min_gain)`` times the median cost over the hypotheses and the minimum is
   unique: every hypothesis more than eight voxels from it costs at least ``unique`` x (median -
   minimum) more; the median must exceed the minimum by a squared RGB difference of 1e-4; and the
   pixel's window must lie inside the mask. Flat (textureless) pixels, which match equally well at
   many depths, keep the hull depth.
4. **Carving (the default, ``fusion="carve"``).** The hull's volume (every voxel inside it, not
   only its surface) is projected into every view. A voxel is removed when at least ``carve_views``
   views (default 8 % of the training views, at least 2) saw through it: it falls on a pixel the
   sweep moved and lies more than ``tol`` voxels in front of that pixel's new depth. The result is
   the surface voxels of what is left, so it keeps the hull's clean, hole-free shell wherever the
   sweep was not sure, and has no stray points in front of the surface: a wrong depth in one or a
   few views carves nothing. Colours are the mean of the views that see a voxel at their depth.
5. **Fusing points instead (``fusion="points"``, session 21).** Every view's depth map is
   back-projected (pixels the masks cover), and a point is kept when at least ``min_consistent`` of
   the ``check_views`` nearest other views see a depth within ``tol`` voxels of its distance at its
   pixel and at most ``max_violations`` of them saw a surface more than ``tol`` voxels behind it;
   the union is voxel-downsampled (open3d) at the hull's voxel size. Colours are the reference
   pixels'. Such a cloud keeps stray points in front of the surface, and a splatted depth map keeps
   the nearest point in each pixel, so its depth maps sit in front again.

Known weakness: a pixel whose window holds one straight edge and nothing else matches all along
the edge's direction (the aperture problem) and can move to a wrong depth; carving needs several
views to agree, which removes most of these. Measured against a 15-minute RayGauss run's depth on
four lego_100 training views (distance along the ray, splatted clouds minus RayGauss; quartiles):
hull -0.139 / -0.050 / -0.013, fused points -0.103 / -0.048 / -0.020, carved -0.037 / -0.014 / +0.002.
The point field trained for 5 minutes from each (README, Point field): lego_100 25.94 (hull),
24.77-25.28 (fused), 26.84 dB (carved); dtu/scan24_400 18.20, 19.58-19.84, 20.52 dB.

Pure torch (``grid_sample``) apart from the splat. Each view is swept over the box around its
covered pixels; every cost computed there is counted in ``stats["cost_evaluations"]`` (hypotheses
x sources x pixels of the box).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as Fn

from .points import NoPoints, PointCloud, fill_depth, hull_volume, surface_voxels

__all__ = ["mvs_points", "hull_depth", "sweep_view"]

#: default share of the training views that must see through a hull voxel to carve it (lego_100, 100
#: views: 5 / 8 / 12 views trained 26.63 / 26.84 / 26.67 dB in 5 minutes; dtu/scan24_400, 42 views:
#: 3 views beat 8)
CARVE_FRACTION = 0.08


@torch.no_grad()
def hull_depth(points: torch.Tensor, cams, voxel: float) -> torch.Tensor:
    """Distance along each pixel's unit ray ``(V, H, W)`` to the splatted ``points``, one-pixel gaps
    filled (:func:`engine.geometry.points.fill_depth`; inf where none)."""
    from shaders.point_depth import splat_depth

    H, W = int(cams.height[0]), int(cams.width[0])
    out = []
    for a in range(0, len(cams), 8):
        c = cams[a:a + 8]
        uv, z = c.project(points)
        rad = voxel * c.fx[:, None].float() / z.clamp_min(1e-12)
        out.append(splat_depth(uv, z, rad, H, W))
    Z = fill_depth(torch.cat(out, 0), 1)
    T = torch.empty_like(Z)
    for i in range(len(cams)):
        _, d = cams.generate_rays(i)
        cosz = (d.float() * cams.c2w[i, :3, 2].float()).sum(-1).clamp_min(1e-6)
        T[i] = Z[i] / cosz
    return T


def _nearest(cams, i: int, n: int) -> torch.Tensor:
    c = cams.c2w[:, :3, 3].float()
    d = (c - c[i]).norm(dim=-1)
    d[i] = float("inf")
    return torch.topk(d, min(n, len(cams) - 1), largest=False).indices


@torch.no_grad()
def sweep_view(i: int, imgs: torch.Tensor, cams, t_hull: torch.Tensor, fg: torch.Tensor, offsets: torch.Tensor,
               sources: int = 4, best: int = 2, window: int = 5, min_gain: float = 0.1, unique: float = 0.1,
               exclude: int = 16, min_contrast: float = 1e-4, interior_only: bool = True):
    """Plane-sweep depth of view ``i`` (module docstring, steps 2-3).

    ``imgs (V, 3, H, W)``, ``t_hull (H, W)`` its hull depth, ``fg (H, W)`` its covered pixels,
    ``offsets (K,)`` world offsets behind the hull; ``unique``, ``exclude``: the best depth must beat
    every depth more than ``exclude`` hypotheses away by ``unique`` x (median - best), and median -
    best must exceed ``min_contrast`` (squared RGB; 1e-4 is a 1 % difference, above 8-bit noise).
    Returns ``(depth (H, W), moved (H, W) bool, evaluations)``: pixels without a finite hull depth keep
    ``inf``; ``evaluations`` counts every (hypothesis, source, pixel) cost computed, over the box of
    the covered pixels plus half a window, uncovered pixels in it included.
    """
    Hf, Wf = t_hull.shape
    H, W = Hf, Wf
    valid_full = fg & torch.isfinite(t_hull)
    if not bool(valid_full.any()):
        return t_hull.clone(), torch.zeros_like(valid_full), 0
    # only the box around the covered pixels (plus half a window) is swept
    ys, xs = valid_full.any(1).nonzero()[:, 0], valid_full.any(0).nonzero()[:, 0]
    r = int(window) // 2
    y0, y1 = max(int(ys[0]) - r, 0), min(int(ys[-1]) + r + 1, Hf)
    x0, x1 = max(int(xs[0]) - r, 0), min(int(xs[-1]) + r + 1, Wf)
    valid = valid_full[y0:y1, x0:x1]
    Hc, Wc = valid.shape
    o, d = cams.generate_rays(i)
    o, d = o.float()[y0:y1, x0:x1], d.float()[y0:y1, x0:x1]
    src = _nearest(cams, i, sources)
    S = len(src)
    th = torch.where(valid, t_hull[y0:y1, x0:x1], torch.zeros(()))
    ref = imgs[i][:, y0:y1, x0:x1]
    costs = []
    big = torch.tensor(1e3)

    def pool(x):
        return Fn.avg_pool2d(x[None, None], window, stride=1, padding=window // 2, count_include_pad=False)[0, 0]

    # a window averages the pixels with a hull depth only (a background pixel has no depth to test)
    vden = pool(valid.float()).clamp_min(1e-6)
    for off in offsets.tolist():
        X = (o + d * (th + off)[..., None]).reshape(-1, 3)
        per = []
        for j in src.tolist():
            uv, z = cams.project(X, j)
            g = torch.stack([uv[:, 0] / W * 2 - 1, uv[:, 1] / H * 2 - 1], -1).float()
            ok = (z > 0) & (g.abs() <= 1).all(-1) & torch.isfinite(g).all(-1)
            g = torch.where(ok[:, None], g, torch.full_like(g, -2.0)).reshape(1, Hc, Wc, 2)
            col = Fn.grid_sample(imgs[j:j + 1], g, mode="bilinear", padding_mode="border", align_corners=False)[0]
            e = torch.where(valid, ((col - ref) ** 2).mean(0), torch.zeros(()))
            e = pool(e) / vden
            okw = pool((ok.reshape(Hc, Wc) & valid).float()) / vden > 0.99
            per.append(torch.where(okw, e, big))
        per = torch.stack(per, 0)
        k = min(int(best), S)
        costs.append(torch.topk(per, k, dim=0, largest=False).values.mean(0))
    C = torch.stack(costs, 0)                                            # (K, H, W)
    cmin, kbest = C.min(0)
    med = C.median(0).values
    # a unique minimum: depths more than ``exclude`` hypotheses from the best must cost clearly more
    # (a flat region or a periodic texture matches at many depths: keep the hull there)
    kk = torch.arange(C.shape[0])[:, None, None]
    far = (kk - kbest[None]).abs() > int(exclude)
    c2 = torch.where(far, C, torch.full_like(C, float("inf"))).min(0).values
    # pixels whose window reaches past the silhouette stay on the hull: it is exact there, and an edge
    # with nothing but flat colour inside matches best where the sources' samples stay off the edge
    interior = vden > 0.99 if interior_only else torch.ones_like(valid)
    moved = (valid & interior & (cmin < (1 - float(min_gain)) * med) & (cmin < big) & (med - cmin > min_contrast)
             & (c2 - cmin > float(unique) * (med - cmin)))
    depth = t_hull.clone()
    depth[y0:y1, x0:x1] = torch.where(moved, th + offsets[kbest], t_hull[y0:y1, x0:x1])
    moved_full = torch.zeros_like(valid_full)
    moved_full[y0:y1, x0:x1] = moved
    return depth, moved_full, int(len(offsets) * S * Hc * Wc)


@torch.no_grad()
def mvs_points(ds, *, resolution: int = 192, max_side: int = 200, sources: int = 4, best: int = 2,
               behind: float = 24.0, step: float = 0.5, window: int = 5, min_gain: float = 0.1,
               check_views: int = 8, min_consistent: int = 2, max_violations: int = 1, tol: float = 1.5,
               unique: float = 0.1, interior_only: bool = True, fusion: str = "carve", carve_views: int | None = None,
               progress=None) -> PointCloud:
    """Hull points moved onto the photo-consistent surface (module docstring).

    ``resolution``: voxels of the hull along the scene box's longest side (also the fusion voxel);
    ``max_side``: images are swept at most this many pixels on their long side; ``behind``: how
    many voxels behind the hull the sweep looks; ``step``: hypothesis spacing in voxels.
    ``fusion``: ``"carve"`` (default) removes from the hull's volume every voxel that at least
    ``carve_views`` views (default 8 % of the training views, at least 2) saw through (a moved
    pixel's depth more than ``tol`` voxels behind it) and returns the surface voxels of what is
    left (step 4 of the module docstring); ``"points"`` back-projects and fuses the depth maps
    (step 5). ``progress``: optional callable ``(done, total)`` over the views.
    """
    import open3d as o3d

    if fusion not in ("carve", "points"):
        raise ValueError(f"fusion must be 'carve' or 'points', got {fusion!r}")

    from ..train.init_points import split_coverage

    hv = hull_volume(ds, resolution=resolution)
    vox, dims = float(hv["voxel"]), hv["dims"]
    on_hull = surface_voxels(hv["keep"].reshape(dims)).reshape(-1)
    hull_pts = hv["grid"][on_hull]
    sp = ds.train
    cams = sp.cameras.to("cpu")
    imgs = sp.images[..., :3].detach().cpu().float().permute(0, 3, 1, 2).clamp(0, 1)
    cov = split_coverage(sp)
    H0, W0 = imgs.shape[2:]
    s = min(1.0, float(max_side) / max(H0, W0))
    h, w = max(1, int(round(H0 * s))), max(1, int(round(W0 * s)))
    if (h, w) != (H0, W0):
        imgs = Fn.interpolate(imgs, size=(h, w), mode="area")
        cams = cams.resized(w, h)
        cov = Fn.interpolate(cov.float().cpu()[:, None], size=(h, w), mode="area")[:, 0]
    fg = cov.float().cpu() >= 0.5
    T = hull_depth(hull_pts, cams, vox)
    offsets = torch.arange(-2.0, float(behind) + 1e-6, float(step)) * vox
    V = len(cams)
    depth = torch.empty_like(T)
    moved_all = torch.zeros(T.shape, dtype=torch.bool)
    moved_n = evals = 0
    for i in range(V):
        depth[i], moved_all[i], n = sweep_view(i, imgs, cams, T[i], fg[i], offsets, sources, best, window, min_gain,
                                        unique=unique, interior_only=interior_only)
        moved_n += int(moved_all[i].sum())
        evals += n
        if progress is not None:
            progress(i + 1, V)
    centres = cams.c2w[:, :3, 3].float()
    base = dict(hv["stats"], hull_points=int(on_hull.sum()), swept_pixels=int((fg & torch.isfinite(T)).sum()),
                moved_pixels=moved_n, cost_evaluations=evals, hypotheses=len(offsets), sweep_size=[w, h])
    if fusion == "carve":
        if carve_views is None:
            carve_views = max(2, int(round(CARVE_FRACTION * V)))
        return _photo_carve(ds, hv, depth, moved_all, imgs, cams, tol, carve_views, base,
                            f"{len(offsets)} depths over {behind:g} voxels, {sources} source views, {w}x{h} px")
    keep_pts, keep_cols = [], []
    for i in range(V):
        o, d = cams.generate_rays(i)
        m = fg[i] & torch.isfinite(depth[i])
        if not bool(m.any()):
            continue
        X = o.float()[m] + d.float()[m] * depth[i][m][:, None]
        cnt = torch.zeros(X.shape[0], dtype=torch.int32)
        viol = torch.zeros(X.shape[0], dtype=torch.int32)
        for j in _nearest(cams, i, check_views).tolist():
            ins, ui, vi, dist = _pixel_of(cams, X, j, w, h, centres)
            dj = torch.where(ins, depth[j, vi, ui], torch.full_like(dist, float("inf")))
            cnt += (ins & ((dist - dj).abs() < float(tol) * vox)).int()
            viol += (ins & (dist < dj - float(tol) * vox)).int()
        k = (cnt >= int(min_consistent)) & (viol <= int(max_violations))
        keep_pts.append(X[k])
        keep_cols.append(imgs[i].permute(1, 2, 0)[m][k])
    if not keep_pts or sum(len(p) for p in keep_pts) == 0:
        raise NoPoints(f"dataset {ds.root}: no swept depth is consistent across {min_consistent} views")
    P = torch.cat(keep_pts).double().numpy()
    Cc = torch.cat(keep_cols).double().numpy()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(P))
    pc.colors = o3d.utility.Vector3dVector(Cc)
    n_consistent = len(P)
    pc = pc.voxel_down_sample(vox)
    stats = dict(base, consistent=n_consistent, after_voxel=len(pc.points))
    return PointCloud(np.asarray(pc.points, np.float32), np.clip(np.asarray(pc.colors, np.float32), 0, 1), "mvs",
                      f"plane sweep behind the visual hull ({len(offsets)} depths over {behind:g} voxels of "
                      f"{vox:.4g}, {sources} source views, {w}x{h} px), {V} views fused, voxel {vox:.4g}", stats)


def _pixel_of(cams, X: torch.Tensor, i: int, w: int, h: int, centres: torch.Tensor):
    """Points ``X (N, 3)`` in view ``i`` (``w x h``): ``inside (N,)`` (in front and in the image), the
    pixel ``ui, vi (N,)`` (clamped) and the distance to the camera centre ``(N,)``."""
    uv, z = cams.project(X, i)
    u, v = uv[:, 0].floor(), uv[:, 1].floor()
    ins = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & torch.isfinite(uv).all(-1)
    ui, vi = u.clamp(0, w - 1).long(), v.clamp(0, h - 1).long()
    return ins, ui, vi, (X - centres[i]).norm(dim=-1)


@torch.no_grad()
def _photo_carve(ds, hv: dict, depth, moved, imgs, cams, tol, carve_views, stats, how) -> PointCloud:
    """Carve the hull's volume ``hv`` (:func:`engine.geometry.points.hull_volume`) with the swept
    depth maps (``mvs_points(fusion="carve")``): a voxel goes when at least ``carve_views`` views saw
    through it, i.e. it projects onto a pixel whose depth was moved by the sweep and lies more than
    ``tol`` voxels in front of that depth. Returns the surface voxels of what is left, coloured by
    the views that see them at their depth."""
    vox, dims = float(hv["voxel"]), hv["dims"]
    inside = hv["keep"].nonzero(as_tuple=True)[0]           # the hull's voxels, flat grid indices
    P = hv["grid"][inside]
    V, h, w = depth.shape
    votes = torch.zeros(len(P), dtype=torch.int32)
    centres = cams.c2w[:, :3, 3].float()
    for i in range(V):
        ins, ui, vi, dist = _pixel_of(cams, P, i, w, h, centres)
        votes += (ins & moved[i, vi, ui] & (dist < depth[i, vi, ui] - float(tol) * vox)).int()
    carved = votes >= int(carve_views)
    keep = hv["keep"].clone()
    keep[inside[carved]] = False
    Q = hv["grid"][surface_voxels(keep.reshape(dims)).reshape(-1)]
    if len(Q) == 0:
        raise NoPoints(f"dataset {ds.root}: carving with the swept depth removed the whole hull")
    csum = torch.zeros(len(Q), 3)
    cnt = torch.zeros(len(Q))
    for i in range(V):
        ins, ui, vi, dist = _pixel_of(cams, Q, i, w, h, centres)
        at = ins & ((dist - depth[i, vi, ui]).abs() < float(tol) * vox)
        csum[at] += imgs[i][:, vi[at], ui[at]].T
        cnt[at] += 1
    cols = torch.where(cnt[:, None] > 0, csum / cnt.clamp_min(1)[:, None], torch.full_like(csum, 0.5))
    n_carved = int(carved.sum())
    stats = dict(stats, carved_by_sweep=n_carved, volume_voxels=len(P), surface=len(Q), carve_views=int(carve_views))
    return PointCloud(Q.numpy(), cols.clamp(0, 1).numpy(), "mvs",
                      f"visual hull carved by a plane sweep ({how}), {V} views, {n_carved} of {len(P)} hull "
                      f"voxels seen through by {carve_views}+ views, voxel {vox:.4g}", stats)
