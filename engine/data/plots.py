"""Dataset pictures with PIL only: image contact sheets and camera-frustum plots."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

SPLIT_COLORS = {"train": (40, 110, 220), "val": (30, 160, 60), "test": (220, 50, 40)}


def contact_sheet(splits: dict, out, max_images: int = 64, thumb: int = 128) -> Path:
    """Write a grid of thumbnails (up to ``max_images``, spread evenly over the splits) to ``out``."""
    from PIL import Image, ImageDraw

    from ..io.atomic import atomic_path

    items = []
    total = sum(len(s) for s in splits.values())
    for name, s in splits.items():
        k = max(1, round(max_images * len(s) / max(total, 1)))
        for i in np.linspace(0, len(s) - 1, min(k, len(s))).round().astype(int).tolist():
            items.append((name, i, s.images[i]))
    items = items[:max_images]
    h, w = items[0][2].shape[:2]
    scale = thumb / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    cols = math.ceil(math.sqrt(len(items)))
    rows = math.ceil(len(items) / cols)
    pad = 14
    sheet = Image.new("RGB", (cols * (tw + 4) + 4, rows * (th + pad + 4) + 4), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for k, (name, i, img) in enumerate(items):
        arr = (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        im = Image.fromarray(arr).resize((tw, th), Image.BOX)
        x, y = 4 + (k % cols) * (tw + 4), 4 + (k // cols) * (th + pad + 4)
        sheet.paste(im, (x, y + pad))
        draw.text((x, y), f"{name} {i}", fill=SPLIT_COLORS.get(name, (220, 220, 220)))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out)


def _up_basis(c2w: torch.Tensor):
    """Orthonormal (e1, e2, up): up = mean camera up (-y in OpenCV axes), else world +z."""
    up = -c2w[:, :3, 1].double().mean(0)
    if up.norm() < 0.3:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    up = up / up.norm()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(up @ helper)) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = helper - (helper @ up) * up
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    return e1, e2, up


def frustum_plot(dataset, splits: dict, out, size: int = 520) -> Path:
    """Write a two-panel PNG: top view (looking down the mean camera up) and side view.

    Each camera is drawn as a frustum (centre to the four image corners at a depth of 8% of the
    scene extent), coloured by split; the scene box is drawn in grey.
    """
    from PIL import Image, ImageDraw

    from ..io.atomic import atomic_path

    all_c2w = torch.cat([s.cameras.c2w for s in splits.values()]).double()
    e1, e2, up = _up_basis(all_c2w)
    lo, hi = dataset.scene_box.double()
    box_pts = torch.stack([torch.stack([lo[0] if i & 1 == 0 else hi[0], lo[1] if i & 2 == 0 else hi[1],
                                        lo[2] if i & 4 == 0 else hi[2]]) for i in range(8)])
    centers = all_c2w[:, :3, 3]
    ext = float(torch.cat([centers, box_pts]).max(0).values.sub(torch.cat([centers, box_pts]).min(0).values).norm())
    depth = 0.08 * ext
    segs = []  # (p0 (3,), p1 (3,), colour)
    edges = [(a, b) for a in range(8) for b in range(8) if a < b and bin(a ^ b).count("1") == 1]
    for a, b in edges:
        segs.append((box_pts[a], box_pts[b], (150, 150, 150)))
    for name, s in splits.items():
        col = SPLIT_COLORS.get(name, (200, 200, 200))
        cams = s.cameras
        for i in range(len(cams)):
            W, H = float(cams.width[i]), float(cams.height[i])
            uv = torch.tensor([[0, 0], [W, 0], [W, H], [0, H]], dtype=torch.float32)
            o, d = cams.pixel_rays(torch.full((4,), i, dtype=torch.long), uv)
            fwd = cams.c2w[i, :3, 2]
            corners = (o + d * (depth / (d @ fwd).clamp_min(1e-3))[:, None]).double()
            c = o[0].double()
            for k in range(4):
                segs.append((c, corners[k], col))
                segs.append((corners[k], corners[(k + 1) % 4], col))
            segs.append((corners[0], corners[1], (0, 0, 0)))  # top edge (image row 0) in black
    img = Image.new("RGB", (2 * size, size + 20), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    views = [("top view (looking down the mean camera up)", e1, e2, -1.0),
             ("side view (up is up)", e1, up, -1.0)]
    for panel, (title, ax, ay, flip) in enumerate(views):
        pts = torch.stack([torch.stack([p0 @ ax, p0 @ ay, p1 @ ax, p1 @ ay]) for p0, p1, _ in segs])
        xs = torch.cat([pts[:, 0], pts[:, 2]])
        ys = torch.cat([pts[:, 1], pts[:, 3]])
        span = max(float(xs.max() - xs.min()), float(ys.max() - ys.min()), 1e-9)
        sc = (size - 40) / span
        cxm, cym = float(xs.max() + xs.min()) / 2, float(ys.max() + ys.min()) / 2
        ox = panel * size + size / 2
        oy = 20 + size / 2
        tf = lambda x, y: (ox + (x - cxm) * sc, oy + flip * (y - cym) * sc)  # noqa: E731
        for (x0, y0, x1, y1), (_, _, col) in zip(pts.tolist(), segs):
            draw.line([tf(x0, y0), tf(x1, y1)], fill=col, width=1)
        draw.text((panel * size + 8, 4), title, fill=(0, 0, 0))
    legend_x = 8
    for name in splits:
        draw.text((legend_x, size + 4), name, fill=SPLIT_COLORS.get(name, (120, 120, 120)))
        legend_x += 50
    if size > 0:
        draw.line([(size, 0), (size, size + 20)], fill=(200, 200, 200))
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return Path(out)
