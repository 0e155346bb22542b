"""Rendering a point field: visibility-aware point features, log sampling around the point cloud's
depth, K-neighbour aggregation into an SDF and a colour, NeuS opacity, the shared compositor.

Per target view (GPF):

1. **Source views**: the ``source_views`` training cameras nearest the target (a training target
   leaves itself out); their images go through the encoder once (:func:`encode_views`).
2. **Point features** (:func:`point_features`), only for the points some sample needs: project
   each point into the source views, read the point cloud's own depth map there (splatted in
   Taichi) at its pixel, visibility ``v = clamp(1 - |z - D(uv)| / z, 0, 1)`` (0 outside the image
   or behind the camera), keep the ``top_views`` most visible views, blend their bilinear pyramid
   features with weights ``softmax(v / T) * v``; two heads make a geometry and a colour feature,
   plus the point's learnable residual.
3. **Samples** (:func:`log_samples`): ``t_c`` = the target's splatted depth at the ray's pixel
   (camera z converted to distance along the unit ray), samples ``t_c -+ unit * base^k`` for
   ``k < log_steps`` and ``t_c``, clamped to the scene's near/far. A pixel no point covers takes the
   nearest depth of its 3x3 neighbourhood (``depth_fill`` times, :func:`engine.geometry.points.fill_depth`); rays
   still without a depth get no samples (background). With ``depth_layers`` 2 (the default) a ray is also
   sampled the same way around the second layer's depth, the nearest point more than the samples' reach
   behind the first layer (:meth:`.scene.PointScene.depth_layers`); the two sets are merged in order of
   distance. The splatted disks and the filling close small gaps of a near surface, and a ray through
   such a gap would otherwise never reach the surface behind it.
4. **Aggregation**: K nearest points within the radius of every sample (:mod:`shaders.knn`);
   samples without any neighbour are empty (SDF = 1 radius, no network call). The attention kernel
   (:class:`.model.Aggregator`) gives SDF and colour per sample. The neighbours' explicit colour
   (``point_sh``, SH of degree ``point_sh_degree``) is blended with weights ``c exp(-(d / sigma)^2)``
   (normalised; ``sigma = point_sh_sigma`` spacings) and added to the colour logit.
5. **Opacity** NeuS-style between consecutive samples: ``alpha_i = clamp((Phi(f_i) - Phi(f_i+1)) /
   Phi(f_i), 0, 1)`` with ``Phi(f) = sigmoid(s f)`` and a learned ``s``; the interval's colour is
   the mean of its ends' colours (the non-empty one if one end is empty); composited front to back
   by :func:`engine.render.volume.composite` (depth = interval midpoints).
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn

from ...render.volume import composite

EMPTY_SDF = 1.0


def encode_views(encoder, scene, cfg, views: torch.Tensor, target=None) -> dict:
    """Encode source ``views`` (S,) of ``scene``: the pyramid, their cameras at encoder size, depth maps.
    ``target`` (3,): the centre of the camera being rendered (for ``view_angle_power``; None = unknown,
    e.g. when exporting features)."""
    imgs = scene.source_images(views, cfg)
    pyr = encoder(imgs)
    cams = scene.source_cameras(cfg)[views]
    return {"pyr": pyr, "cams": cams, "depth": scene.source_depth(cfg)[views], "views": views,
            "size": (int(imgs.shape[3]), int(imgs.shape[2])),
            "target": None if target is None else torch.as_tensor(target, dtype=torch.float32).reshape(3)}


def view_scores(ctx: dict, pts: torch.Tensor, vis: torch.Tensor, power: float) -> torch.Tensor:
    """Score ``(S, U)`` of each source view for each point: its visibility ``vis``, times
    ``((1 + cos a) / 2) ** power`` where ``a`` is the angle at the point between the target camera and
    the source camera (``power`` 0 or no target: the visibility alone, GPF's score)."""
    if not power > 0 or ctx.get("target") is None:
        return vis
    src = ctx["cams"].c2w[:, :3, 3].to(pts)                          # (S, 3)
    to_t = Fn.normalize(ctx["target"].to(pts)[None] - pts, dim=-1)   # (U, 3)
    to_s = Fn.normalize(src[:, None, :] - pts[None], dim=-1)         # (S, U, 3)
    cos = (to_s * to_t[None]).sum(-1).clamp(-1, 1)
    return vis * ((1 + cos) / 2) ** float(power)


def visibility(scene, ctx: dict, pts: torch.Tensor):
    """``uv (S, U, 2)`` and visibility ``(S, U)`` of points ``pts (U, 3)`` in the encoded views."""
    W, H = ctx["size"]
    uv, z = ctx["cams"].project(pts)
    u, v = uv[..., 0], uv[..., 1]
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & torch.isfinite(uv).all(-1)
    ui = torch.where(inside, u, torch.zeros_like(u)).floor().long().clamp(0, W - 1)
    vi = torch.where(inside, v, torch.zeros_like(v)).floor().long().clamp(0, H - 1)
    D = ctx["depth"]
    s = torch.arange(D.shape[0])[:, None].expand_as(ui)
    d = D[s, vi, ui]
    zz = torch.where(inside, z, torch.ones_like(z))
    vis = (1 - (zz - d).abs() / zz).clamp(0, 1)
    vis = torch.where(inside & torch.isfinite(d), vis, torch.zeros_like(vis))
    return uv, vis


def point_features(net, scene, cfg, ctx: dict, pidx: torch.Tensor) -> torch.Tensor:
    """``(U, 2F)`` features of points ``pidx (U,)`` (module docstring, step 2)."""
    from .model import Encoder

    pts = scene.points[pidx]
    with torch.no_grad():
        uv, vis = visibility(scene, ctx, pts)
        vis = view_scores(ctx, pts, vis, float(cfg.view_angle_power))
    T = min(int(cfg.top_views), vis.shape[0])
    top = torch.topk(vis, T, dim=0)                                  # (T, U)
    w = torch.softmax(top.values / float(cfg.vis_temperature), 0) * top.values
    W, H = ctx["size"]
    U = pts.shape[0]
    tv = top.indices.reshape(-1)                                      # (T U,) view of each pair
    tuv = uv[tv, torch.arange(U).repeat(T)]                          # (T U, 2)
    sel = Encoder.sample_views(ctx["pyr"], tv, tuv, W, H).reshape(T, U, -1)
    blended = (w[..., None] * sel).sum(0)                            # (U, C)
    return net.point_features(blended) + scene.point_feat[pidx]


def log_offsets(cfg, scene) -> torch.Tensor:
    """``(2 log_steps + 1,)`` offsets around the centre, ascending (world units)."""
    k = torch.arange(int(cfg.log_steps), dtype=torch.float32)
    pos = float(cfg.log_unit) * scene.spacing * scene.log_base ** k
    return torch.cat([-pos.flip(0), torch.zeros(1), pos])


def log_samples(cfg, scene, t_center: torch.Tensor) -> torch.Tensor:
    """``(R, 2 log_steps + 1)`` sample distances around ``t_center (R,)`` (finite rays only)."""
    t = t_center[:, None] + log_offsets(cfg, scene)[None].to(t_center)
    return t.clamp(min=scene.near, max=scene.far)


def ray_center_depth(depth_map: torch.Tensor, pix: torch.Tensor, dirs: torch.Tensor, c2w: torch.Tensor):
    """Distance along unit rays ``dirs (R, 3)`` to the z-buffer depth at flat pixels ``pix (R,)``."""
    z = depth_map.reshape(-1)[pix]
    cosz = (dirs * c2w[:3, 2][None]).sum(-1).clamp_min(1e-6)
    return z / cosz


def render_rays(net, scene, cfg, ctx: dict, o, d, t_center, log_s, background=None, need_features=None,
                t_center2=None) -> dict:
    """Render rays ``o, d (R, 3)`` around ``t_center (R,)`` (inf = no sample) and, where given and finite,
    around a second depth ``t_center2 (R,)`` too (the second depth layer; the two sets of samples are
    merged in order of distance). Returns the compositor's ``rgb, opacity, depth, depth_sum, weights``
    plus ``cost (R,)`` (samples with neighbours, i.e. kernel evaluations), ``t (R, S)``, ``alpha (R, S-1)``,
    ``pidx`` (points used), ``nearest (R, S)`` distance to the nearest point (inf where none)."""
    from shaders.knn import knn_query

    R = o.shape[0]
    dev = o.device
    S1 = 2 * int(cfg.log_steps) + 1
    S = S1 * (1 if t_center2 is None else 2)
    hit = torch.isfinite(t_center)
    t = torch.zeros(R, S, device=dev)
    real = torch.zeros(R, S, dtype=torch.bool, device=dev)
    if bool(hit.any()):
        t[hit, :S1] = log_samples(cfg, scene, t_center[hit])
        real[hit, :S1] = True
    if t_center2 is not None:
        hit2 = hit & torch.isfinite(t_center2)
        if bool(hit2.any()):
            t[hit2, S1:] = log_samples(cfg, scene, t_center2[hit2])
            real[hit2, S1:] = True
        # in order of distance, the samples a ray does not have last (at its farthest sample)
        t, order = torch.where(real, t, torch.full_like(t, float("inf"))).sort(1)
        real = real.gather(1, order)
        last = torch.where(real, t, torch.full_like(t, -float("inf"))).amax(1)
        t = torch.where(real, t, torch.where(torch.isfinite(last), last, torch.zeros_like(last))[:, None])
    x = o[:, None, :] + t[..., None] * d[:, None, :]                 # (R, S, 3)
    rad = scene.radius(cfg)
    K = int(cfg.k_neighbors)
    sdf = torch.full((R, S), EMPTY_SDF, device=dev)
    rgb = torch.zeros(R, S, 3, device=dev)
    nearest = torch.full((R, S), float("inf"), device=dev)
    pidx = torch.zeros(0, dtype=torch.long, device=dev)
    r_of, s_of = real.nonzero(as_tuple=True)                         # the samples rays have
    if r_of.numel():
        xq = x[r_of, s_of]
        with torch.no_grad():
            idx, d2 = knn_query(scene.grid(cfg), xq.detach(), K, rad)
        idx = idx.long()
        valid = idx >= 0
        anyv = valid.any(1)
        near_d = torch.where(valid[:, 0], d2[:, 0].clamp_min(0).sqrt(), torch.full_like(d2[:, 0], float("inf")))
        nearest[r_of, s_of] = near_d
        m = anyv.nonzero(as_tuple=True)[0]
        if m.numel():
            idx_m, valid_m, d2_m = idx[m], valid[m], d2[m]
            pidx, inv = torch.unique(idx_m[valid_m], return_inverse=True)
            feats = point_features(net, scene, cfg, ctx, pidx)        # (U, 2F)
            loc = torch.zeros_like(idx_m)
            loc[valid_m] = inv
            safe = idx_m.clamp_min(0)
            if float(cfg.lr_pos) > 0:
                # learned positions: offsets and distances from the moved points (differentiable)
                nb_pos = scene.positions()[safe]
                d2_m = ((xq[m][:, None, :] - nb_pos) ** 2).sum(-1)
            else:
                nb_pos = scene.points[safe]
            conf = torch.sigmoid(scene.point_conf[safe])
            logconf = torch.log(conf.clamp_min(1e-6))
            xm = xq[m]
            ray_of = r_of[m]
            pts = scene.points
            center = (pts.amax(0) + pts.amin(0)).detach() / 2
            extent = float((pts.amax(0) - pts.amin(0)).max().clamp_min(1e-9)) / 2
            nb_sh = scene.point_sh[safe] if scene.point_sh.shape[1] else None
            nb_w = None
            if nb_sh is not None and float(cfg.point_sh_sigma) > 0:
                sig2 = (float(cfg.point_sh_sigma) * scene.spacing) ** 2
                lw = (logconf - d2_m.clamp_min(0) / sig2).masked_fill(~valid_m, float("-inf"))
                nb_w = torch.softmax(lw, dim=1)
            s_m, c_m = net(xm, d[ray_of], nb_pos, feats, loc, valid_m, logconf, torch.where(valid_m, d2_m,
                           torch.zeros_like(d2_m)), rad, center, extent, float(cfg.sdf_shell), nb_sh, nb_w)
            flat_r, flat_s = r_of[m], s_of[m]
            sdf = sdf.index_put((flat_r, flat_s), s_m)
            rgb = rgb.index_put((flat_r, flat_s), c_m)
    has = torch.isfinite(nearest)                                      # samples with a neighbour
    s = torch.exp(log_s)
    cdf = torch.sigmoid(s * sdf)
    alpha = ((cdf[:, :-1] - cdf[:, 1:]) / (cdf[:, :-1] + 1e-5)).clamp(0, 1)
    a_has, b_has = has[:, :-1], has[:, 1:]
    wa = a_has.float() / (a_has.float() + b_has.float()).clamp_min(1)
    wb = b_has.float() / (a_has.float() + b_has.float()).clamp_min(1)
    col = wa[..., None] * rgb[:, :-1] + wb[..., None] * rgb[:, 1:]
    tm = (t[:, :-1] + t[:, 1:]) / 2
    valid_iv = (a_has | b_has) & real[:, :-1] & real[:, 1:]
    out = composite(alpha, col, tm, valid_iv, background)
    out.update(cost=has.sum(1).float(), t=t, alpha_s=alpha * valid_iv, pidx=pidx, nearest=nearest, hit=hit)
    return out
