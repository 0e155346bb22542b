"""nerfstudio-compatible ``camera_path.json``: keyframe interpolation, writer and reader.

File layout (the fields nerfstudio's ``ns-render camera-path`` reads, plus our keyframes)::

    {
      "camera_type": "perspective",
      "render_height": 480, "render_width": 640,
      "fps": 30, "seconds": 4.0, "smoothness_value": 0.5, "is_cycle": false,
      "camera_path": [ {"camera_to_world": [16 floats, row-major 4x4, OpenGL camera axes],
                        "fov": 50.0,            # vertical field of view, degrees
                        "aspect": 1.333}, ... ],
      "keyframes": [ {"matrix": [16 floats, row-major, OpenGL axes], "fov": 50.0,
                      "aspect": 1.333, "time": 0.0}, ... ]
    }

``camera_to_world`` uses OpenGL camera axes (+x right, +y up, +z backward) like nerfstudio; we
convert to/from our OpenCV cameras with :func:`engine.cameras.opengl_to_opencv_c2w`. Poses are in
the world coordinates of the scene that was viewed (we apply no dataparser transform, so files
written by nerfstudio's viewer for a nerfstudio-processed scene are in *its* normalised frame).
The focal length follows nerfstudio/three.js: ``fy = 0.5 * H / tan(fov / 2)``, ``fx = fy`` (square
pixels), principal point at the image centre.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .cameras import Cameras, opencv_to_opengl_c2w, opengl_to_opencv_c2w, qvec_to_rotmat, rotmat_to_qvec
from .errors import DataError

MAX_RENDER_SIDE = 1 << 15

__all__ = ["interpolate_keyframes", "write_camera_path", "read_camera_path", "camera_path_cameras",
           "focal_from_fov", "fov_from_focal"]


def focal_from_fov(fov_deg: float, height: int) -> float:
    """Focal length in pixels for a vertical field of view in degrees (three.js convention)."""
    return 0.5 * float(height) / math.tan(math.radians(float(fov_deg)) / 2)


def fov_from_focal(fy: float, height: int) -> float:
    """Vertical field of view in degrees for a focal length ``fy`` in pixels."""
    return math.degrees(2 * math.atan(0.5 * float(height) / float(fy)))


def _slerp(q0: torch.Tensor, q1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical linear interpolation of unit quaternions (4,), shortest arc."""
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / q.norm()
    th = math.acos(min(d, 1.0))
    s = math.sin(th)
    return (math.sin((1 - t) * th) / s) * q0 + (math.sin(t * th) / s) * q1


def interpolate_keyframes(c2w, fov_deg, n_frames: int, loop: bool = False):
    """Smooth camera path through K keyframes.

    Positions follow a uniform Catmull-Rom spline through the keyframe centres, orientations
    are slerped, the field of view is linearly interpolated. Each segment between consecutive
    keyframes gets the same time; the first frame is keyframe 0 and (without ``loop``) the last
    frame is keyframe K-1.

    Args:
        c2w: (K, 4, 4) OpenCV camera-to-world keyframes (K >= 1).
        fov_deg: (K,) vertical field of view in degrees.
        n_frames: number of output frames (>= 1).
        loop: close the path (the last keyframe blends back into the first).
    Returns:
        ``(c2w (n_frames, 4, 4) float32 OpenCV, fov (n_frames,) float32 degrees)``.
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    fov = torch.as_tensor(fov_deg, dtype=torch.float64).reshape(-1)
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"keyframes must be (K,4,4), got {tuple(c2w.shape)}")
    K = c2w.shape[0]
    if K == 0 or fov.shape[0] != K:
        raise ValueError(f"need >= 1 keyframe with one fov each, got {K} poses and {fov.shape[0]} fovs")
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    pos = c2w[:, :3, 3]
    quats = rotmat_to_qvec(c2w[:, :3, :3])
    n_seg = K if loop else K - 1
    out_m = torch.zeros(n_frames, 4, 4, dtype=torch.float64)
    out_m[:, 3, 3] = 1
    out_f = torch.zeros(n_frames, dtype=torch.float64)
    if n_seg == 0:
        out_m[:] = c2w[0]
        out_f[:] = fov[0]
        return out_m.float(), out_f.float()

    def P(i):
        return pos[i % K] if loop else pos[min(max(i, 0), K - 1)]

    for f in range(n_frames):
        if loop:
            s = n_seg * f / n_frames
        else:
            s = n_seg * f / max(n_frames - 1, 1)
        i = min(int(math.floor(s)), n_seg - 1)
        t = s - i
        p0, p1, p2, p3 = P(i - 1), P(i), P(i + 1), P(i + 2)
        t2, t3 = t * t, t * t * t
        p = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
        j = (i + 1) % K
        q = _slerp(quats[i], quats[j], t)
        out_m[f, :3, :3] = qvec_to_rotmat(q)
        out_m[f, :3, 3] = p
        out_f[f] = (1 - t) * fov[i] + t * fov[j]
    return out_m.float(), out_f.float()


def _mat16(m: torch.Tensor) -> list[float]:
    return [float(x) for x in m.reshape(16)]


def write_camera_path(path, keyframes_c2w, keyframes_fov, *, width: int, height: int, fps: float = 30.0,
                      seconds: float = 4.0, loop: bool = False) -> Path:
    """Interpolate keyframes and write a nerfstudio-compatible ``camera_path.json`` (atomically).

    Args:
        path: output file.
        keyframes_c2w: (K,4,4) OpenCV camera-to-world keyframes; keyframes_fov: (K,) degrees.
        width, height: render size; fps, seconds: video timing (frames = round(fps * seconds)).
        loop: close the path.
    Returns the path written.
    """
    from .io.atomic import atomic_write_text

    if width < 1 or height < 1 or fps <= 0 or seconds <= 0:
        raise ValueError(f"invalid camera path timing/size: {width}x{height}, fps={fps}, seconds={seconds}")
    kc = torch.as_tensor(keyframes_c2w, dtype=torch.float64)
    kf = torch.as_tensor(keyframes_fov, dtype=torch.float64).reshape(-1)
    n = max(1, int(round(fps * seconds)))
    mats, fovs = interpolate_keyframes(kc, kf, n, loop=loop)
    aspect = width / height
    gl = opencv_to_opengl_c2w(mats.double())
    kgl = opencv_to_opengl_c2w(kc)
    K = kc.shape[0]
    doc = {
        "camera_type": "perspective",
        "render_height": int(height),
        "render_width": int(width),
        "fps": float(fps),
        "seconds": float(seconds),
        "smoothness_value": 0.5,
        "is_cycle": bool(loop),
        "camera_path": [{"camera_to_world": _mat16(gl[i]), "fov": float(fovs[i]), "aspect": aspect}
                        for i in range(n)],
        "keyframes": [{"matrix": _mat16(kgl[i]), "fov": float(kf[i]), "aspect": aspect,
                       "time": (i / max(K - (0 if loop else 1), 1)) * float(seconds)} for i in range(K)],
    }
    return atomic_write_text(Path(path), json.dumps(doc, indent=1))


def read_camera_path(path) -> tuple[Cameras, float]:
    """Read a nerfstudio ``camera_path.json`` -> ``(Cameras (one per frame, OpenCV), fps)``.

    Raises :class:`engine.errors.DataError` naming the file and the field at fault.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not a readable JSON file ({e})") from None
    return camera_path_cameras(doc, source=path)


def camera_path_cameras(doc: dict, source="camera_path.json") -> tuple[Cameras, float]:
    """Cameras from an already parsed camera_path.json document (see :func:`read_camera_path`)."""
    if not isinstance(doc, dict):
        raise DataError(source, "top level must be a JSON object")
    ctype = doc.get("camera_type", "perspective")
    if ctype != "perspective":
        raise DataError(source, f"camera_type {ctype!r} is not supported (only 'perspective')")
    frames = doc.get("camera_path")
    if not isinstance(frames, list) or not frames:
        raise DataError(source, "'camera_path' must be a non-empty list of frames")
    sizes = []
    for key in ("render_height", "render_width"):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
            raise DataError(source, f"'render_height' and 'render_width' must be integers, got {key} = {v!r}")
        sizes.append(int(v))
    H, W = sizes
    if not (1 <= W <= MAX_RENDER_SIDE and 1 <= H <= MAX_RENDER_SIDE):
        raise DataError(source, f"render size {W}x{H} is invalid (1..{MAX_RENDER_SIDE} pixels per side)")
    fps = doc.get("fps", 30.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise DataError(source, f"'fps' must be a number > 0, got {fps!r}")
    fps = float(fps)
    mats, fys = [], []
    for i, fr in enumerate(frames):
        try:
            vals = fr["camera_to_world"]
            if isinstance(vals, (str, bytes, dict)) or any(isinstance(x, (str, bool)) for x in vals):
                raise TypeError("not numbers")
            m = torch.tensor([float(x) for x in vals], dtype=torch.float64)
            fov = fr["fov"]
            if isinstance(fov, (str, bool)):
                raise TypeError("not a number")
            fov = float(fov)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise DataError(source, f"camera_path[{i}] needs 'camera_to_world' (16 numbers) and 'fov'") from None
        if m.numel() == 12:
            m = torch.cat([m, torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)])
        if m.numel() != 16 or not torch.isfinite(m).all():
            raise DataError(source, f"camera_path[{i}].camera_to_world must be 16 finite numbers")
        if not 0 < fov < 180:
            raise DataError(source, f"camera_path[{i}].fov must be in (0, 180) degrees, got {fov}")
        mats.append(m.reshape(4, 4))
        fys.append(focal_from_fov(fov, H))
    c2w = opengl_to_opencv_c2w(torch.stack(mats)).float()
    fy = torch.tensor(fys, dtype=torch.float32)
    return Cameras(fy, fy, W / 2, H / 2, W, H, c2w), fps
