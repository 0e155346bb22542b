"""Ground-truth renders of the GVGEN training objects, with the engine's own ray caster.

Each view casts one ray per sub-pixel (``supersample`` x ``supersample`` per pixel, box filter)
against the mesh's BVH (:func:`shaders.bvh.closest_hit`), shades the hit with a flat colour under
Lambert lighting (an ambient term plus a key and a fill light fixed in the world, so the colour of a
surface point is the same from every view, which a degree-0 GaussianVolume can represent) and
keeps the hit mask as alpha. Cameras sit on a sphere around the box, looking at its centre, z up,
and are written in the Blender / NeRF-synthetic format (OpenGL camera-to-world matrices).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

AMBIENT = 0.35
KEY = (0.65, (0.35, -0.45, 0.82))    # intensity, direction towards the light (world, z up)
FILL = (0.25, (-0.55, 0.60, -0.10))


def sphere_directions(n: int, z_range=(-0.6, 0.95), offset: float = 0.0) -> np.ndarray:
    """``n`` unit vectors spread evenly (a Fibonacci spiral) over the sphere's band
    ``z_range[0] <= z <= z_range[1]``; ``offset`` in [0, 1) shifts the spiral (another set of views)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = z_range[1] - (z_range[1] - z_range[0]) * i / n
    phi = math.pi * (3 - math.sqrt(5)) * (i + offset * n) + 2 * math.pi * offset
    r = np.sqrt(np.clip(1 - z * z, 0, 1))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def look_at_opengl(eye, target) -> np.ndarray:
    """Camera-to-world 4x4 (OpenGL axes: the camera looks along its -z, +y up) at ``eye`` looking at
    ``target``, with world +z as up."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    back = eye - target
    back /= np.linalg.norm(back)
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, back, eye
    return m


def camera_rig(box, n: int, offset: float, fov_deg: float = 40.0, margin: float = 0.9) -> tuple[np.ndarray, float]:
    """``n`` OpenGL camera-to-world matrices on a sphere around ``box`` (the whole box in view:
    distance so that a sphere of ``margin`` times the box's circumscribed radius fills the field of view; 0.9 still holds every object, whose largest extent is at most 0.85 of the side) and
    the horizontal field of view in radians."""
    box = np.asarray(box, float).reshape(2, 3)
    centre = box.mean(0)
    radius = float(np.linalg.norm(box[1] - box[0]) / 2)
    fov = math.radians(fov_deg)
    dist = radius * margin / math.sin(fov / 2)
    dirs = sphere_directions(n, offset=offset)
    return np.stack([look_at_opengl(centre + dist * d, centre) for d in dirs]), fov


def render_rgba(mesh, colour, c2w_gl: np.ndarray, fov: float, size: int, supersample: int = 2) -> np.ndarray:
    """(V, size, size, 4) float32 straight-alpha RGBA renders of ``mesh`` (a trimesh with vertex
    normals) in flat ``colour`` from the OpenGL cameras ``c2w_gl`` (V, 4, 4)."""
    from shaders.bvh import build_triangle_bvh, closest_hit

    from ...cameras import Cameras

    v = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32)
    f = torch.as_tensor(np.array(mesh.faces), dtype=torch.int64)
    vn = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
    tbvh = build_triangle_bvh(v, f.int())
    S = int(size) * int(supersample)
    focal = 0.5 * S / math.tan(fov / 2)
    cams = Cameras.from_opengl_c2w(torch.as_tensor(c2w_gl, dtype=torch.float32), focal, focal, S / 2, S / 2, S, S)
    col = torch.as_tensor(colour, dtype=torch.float32)
    lights = [(KEY[0], torch.nn.functional.normalize(torch.tensor(KEY[1]), dim=0)),
              (FILL[0], torch.nn.functional.normalize(torch.tensor(FILL[1]), dim=0))]
    out = np.zeros((len(c2w_gl), size, size, 4), np.float32)
    for i in range(len(c2w_gl)):
        o, d = cams.generate_rays(i)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        t, face, uv = closest_hit(tbvh, o, d)
        hit = face >= 0
        fi = face[hit].long()
        tri = f[fi]
        w = torch.stack([1 - uv[hit, 0] - uv[hit, 1], uv[hit, 0], uv[hit, 1]], -1)
        n = torch.nn.functional.normalize((vn[tri] * w[..., None]).sum(1), dim=-1)
        n = torch.where(((n * d[hit]).sum(-1) > 0)[:, None], -n, n)   # face the viewer (two-sided)
        shade = torch.full((n.shape[0],), AMBIENT)
        for k, l in lights:
            shade = shade + k * (n @ l).clamp_min(0)
        rgb = torch.zeros(S * S, 3)
        rgb[hit] = (col[None] * shade[:, None]).clamp(0, 1)
        a = hit.float()
        # box filter over the sub-pixels: premultiplied colour and coverage
        pre = (rgb * a[:, None]).reshape(size, supersample, size, supersample, 3).mean((1, 3))
        alpha = a.reshape(size, supersample, size, supersample).mean((1, 3))
        straight = torch.where(alpha[..., None] > 0, pre / alpha[..., None].clamp_min(1e-8), torch.zeros(()))
        out[i, ..., :3] = straight.clamp(0, 1).numpy()
        out[i, ..., 3] = alpha.numpy()
    return out


def write_blender_split(folder: Path, split: str, images: np.ndarray, c2w_gl: np.ndarray, fov: float) -> None:
    """``folder/split/r_<i>.png`` (RGBA) and ``folder/transforms_<split>.json`` (written last,
    atomically)."""
    from ...io.atomic import atomic_write
    from ...io.images import write_image

    frames = []
    for i, (img, m) in enumerate(zip(images, c2w_gl)):
        write_image(folder / split / f"r_{i}.png", img)
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": [[float(x) for x in row] for row in m]})
    with atomic_write(folder / f"transforms_{split}.json", "w") as fh:
        json.dump({"camera_angle_x": float(fov), "frames": frames}, fh, indent=1)
