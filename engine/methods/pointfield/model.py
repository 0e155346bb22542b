"""The networks of the point field: the image encoder and the aggregation kernel (torch modules).

* :class:`Encoder` -- a 3-level CNN feature pyramid (8 / 16 / 32 channels at full, 1/2 and 1/4
  resolution, GPF's widths), trained end to end; :meth:`Encoder.sample` reads the pyramid and the
  image itself at continuous pixel positions (bilinear), 59 values per pixel.
* :class:`Aggregator` -- per point, two heads map the view-blended image features to a geometry
  and a colour feature (``feature_dim`` each); per sample, an attention kernel over the K
  neighbours (inputs: distance, local offset and a 2-frequency encoding of it, neighbour xyz, the
  point's features) gives an SDF (in neighbour radii, added to a geometric prior) and a
  view-dependent colour (degree-3 SH of the view direction).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import nn

#: channels of the pyramid levels (GPF: 8 / 16 / 32)
PYRAMID = (8, 16, 32)
#: values :meth:`Encoder.sample` returns per pixel: the pyramid plus RGB
IMAGE_FEATURES = sum(PYRAMID) + 3
#: positional inputs of the kernel: distance, offset (3), neighbour xyz (3), sin/cos of the offset at 2 frequencies
POS_DIM = 7 + 12
SH_DIM = 16


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=False))


class Encoder(nn.Module):
    """Image -> feature pyramid (module docstring)."""

    def __init__(self):
        super().__init__()
        a, b, c = PYRAMID
        self.l0 = nn.Sequential(_conv(3, a), _conv(a, a))
        self.l1 = nn.Sequential(_conv(a, b, 2), _conv(b, b))
        self.l2 = nn.Sequential(_conv(b, c, 2), _conv(c, c))

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``img (V, 3, H, W)`` in [0, 1] -> [(V, 8, H, W), (V, 16, H/2, W/2), (V, 32, H/4, W/4)] plus the image."""
        x = img * 2 - 1
        f0 = self.l0(x)
        f1 = self.l1(f0)
        f2 = self.l2(f1)
        return [f0, f1, f2, img]

    @staticmethod
    def sample(pyr: list[torch.Tensor], uv: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Bilinear read of every level at pixel positions ``uv (V, M, 2)`` (pixel centres at +0.5) of
        a ``width x height`` image -> ``(V, M, IMAGE_FEATURES)`` (zeros outside)."""
        g = torch.stack([uv[..., 0] / width * 2 - 1, uv[..., 1] / height * 2 - 1], -1)[:, :, None, :]
        g = torch.nan_to_num(g, nan=-2.0, posinf=-2.0, neginf=-2.0)
        outs = [Fn.grid_sample(f, g.to(f.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
                for f in pyr]
        return torch.cat(outs, 1).transpose(1, 2)

    @staticmethod
    def sample_views(pyr: list[torch.Tensor], views: torch.Tensor, uv: torch.Tensor, width: int,
                     height: int) -> torch.Tensor:
        """The same bilinear read, but point ``m`` only in view ``views[m]`` (M,): ``uv (M, 2)`` ->
        ``(M, IMAGE_FEATURES)``. The views of each level are stacked into one tall image with a zero
        row between them, so a tap past a view's edge reads zero exactly as ``padding_mode="zeros"``
        does, and one ``grid_sample`` call covers every (point, view) pair (its backward then costs
        the pairs asked for, not all views x all points)."""
        S = pyr[0].shape[0]
        x = uv[:, 0] / width * 2 - 1
        outs = []
        for f in pyr:
            _, C, h, w = f.shape
            tall = Fn.pad(f, (0, 0, 0, 1)).permute(1, 0, 2, 3).reshape(1, C, S * (h + 1), w)
            vl = uv[:, 1] * (h / height)
            y = (views.to(uv.dtype) * (h + 1) + vl) / (S * (h + 1)) * 2 - 1
            # no tap of a point this far above / below its view is inside it: zero, as per view
            y = torch.where((vl > -0.5) & (vl < h + 0.5), y, torch.full_like(y, -2.0))
            g = torch.nan_to_num(torch.stack([x, y], -1), nan=-2.0, posinf=-2.0, neginf=-2.0)[None, :, None, :]
            outs.append(Fn.grid_sample(tall, g.to(f.dtype), mode="bilinear", padding_mode="zeros",
                                       align_corners=False)[0, :, :, 0])
        return torch.cat(outs, 0).transpose(0, 1)


def sh3(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 3 of unit directions ``d (M, 3)`` -> (M, 16)."""
    x, y, z = d.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.31539156525252005 * (2 * zz - xx - yy),
        -1.0925484305920792 * x * z, 0.5462742152960396 * (xx - yy),
        -0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
        -0.4570457994644658 * y * (4 * zz - xx - yy), 0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
        -0.4570457994644658 * x * (4 * zz - xx - yy), 1.445305721320277 * z * (xx - yy),
        -0.5900435899266435 * x * (xx - 3 * yy)], -1)


def _mlp(cin, hidden, cout, layers=2, last_zero=False):
    mods = []
    c = cin
    for _ in range(layers - 1):
        mods += [nn.Linear(c, hidden), nn.ReLU()]
        c = hidden
    last = nn.Linear(c, cout)
    if last_zero:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    mods.append(last)
    return nn.Sequential(*mods)


class Aggregator(nn.Module):
    """Feature heads + attention kernel + SDF / colour heads (module docstring)."""

    def __init__(self, feature_dim: int = 32, hidden: int = 32):
        super().__init__()
        F, H = int(feature_dim), int(hidden)
        self.feature_dim = F
        self.feat_geo = _mlp(IMAGE_FEATURES, H, F)
        self.feat_col = _mlp(IMAGE_FEATURES, H, F)
        # first layers on [position inputs, point feature], split in two: the feature part is computed
        # once per point and gathered per (sample, neighbour) pair (the same linear map, fewer flops)
        self.geo_pos, self.geo_feat = nn.Linear(POS_DIM, H), nn.Linear(F, H, bias=False)
        self.geo = nn.Sequential(nn.ReLU(), nn.Linear(H, H), nn.ReLU())
        self.att = nn.Linear(H, 1)
        self.col_pos, self.col_feat = nn.Linear(POS_DIM, H), nn.Linear(F, H, bias=False)
        self.col = nn.Sequential(nn.ReLU(), nn.Linear(H, H), nn.ReLU())
        self.sdf = _mlp(H, H, 1, last_zero=True)
        self.rgb = _mlp(2 * H + SH_DIM, H, 3)

    def point_features(self, blended: torch.Tensor) -> torch.Tensor:
        """View-blended image features ``(U, IMAGE_FEATURES)`` -> ``(U, 2 F)`` (geometry, colour)."""
        return torch.cat([self.feat_geo(blended), self.feat_col(blended)], -1)

    def forward(self, x, dirs, nb_pos, feats, loc, nb_valid, nb_logconf, d2, radius: float, center, extent: float,
                shell: float, nb_sh=None, nb_w=None):
        """Per sample ``x (M, 3)``, view direction ``dirs (M, 3)``; neighbours ``nb_pos (M, K, 3)``, their
        rows ``loc (M, K)`` in ``feats (U, 2F)`` (point features), ``nb_valid (M, K)`` bool (at least one per
        sample), ``nb_logconf (M, K)`` log confidence, ``d2 (M, K)`` squared distances; ``nb_sh (M, K, 3 B)``
        (optional) the neighbours' explicit colour SH coefficients, blended with the attention weights,
        evaluated at ``dirs`` and added to the colour logit; ``nb_w (M, K)`` (optional) the weights of that
        blend (rows summing to 1; default the attention weights). Returns ``sdf (M,)`` (in radii) and ``rgb (M, 3)``."""
        F = self.feature_dim
        off = (x[:, None, :] - nb_pos) / radius                       # (M, K, 3), |off| <= 1
        dist = torch.sqrt(d2.clamp_min(1e-12)).clamp(max=radius)[..., None] / radius
        xyz = (nb_pos - center) / extent
        enc = [off * (math.pi * f) for f in (1.0, 2.0)]
        pos = torch.cat([dist, off, xyz] + [torch.sin(e) for e in enc] + [torch.cos(e) for e in enc], -1)
        hg = self.geo(self.geo_pos(pos) + self.geo_feat(feats[:, :F])[loc])     # (M, K, H)
        hc = self.col(self.col_pos(pos) + self.col_feat(feats[:, F:])[loc])
        logit = self.att(hg)[..., 0] + nb_logconf
        logit = logit.masked_fill(~nb_valid, float("-inf"))
        w = torch.softmax(logit, dim=1)                               # (M, K)
        g = (w[..., None] * hg).sum(1)
        c = (w[..., None] * hc).sum(1)
        dmin = torch.where(nb_valid, dist[..., 0], torch.ones_like(dist[..., 0])).amin(1)
        sdf = dmin - shell + self.sdf(g)[:, 0]
        basis = sh3(dirs)
        logit = self.rgb(torch.cat([g, c, basis], -1))
        if nb_sh is not None and nb_sh.shape[-1]:
            B = nb_sh.shape[-1] // 3
            wc = w if nb_w is None else nb_w
            coef = (wc[..., None] * nb_sh).sum(1).reshape(-1, 3, B)     # (M, 3, B)
            logit = logit + (coef * basis[:, None, :B]).sum(-1)
        rgb = torch.sigmoid(logit)
        return sdf, rgb
