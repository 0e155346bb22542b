"""COLMAP sparse model parsing (binary and text): cameras, images, points3D.

Only what the readers need is kept: per-image 2D observations are skipped (but validated for
length in binary files). Every problem raises :class:`DataError` naming the file, e.g. a
truncated binary file reports the byte offset and the record being read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

# model id -> (name, number of params); the ids and counts of COLMAP's camera_models.h
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, model-specific


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) wxyz, world-to-camera
    tvec: np.ndarray  # (3,)
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray      # (P, 3) float64
    colors: np.ndarray      # (P, 3) uint8
    errors: np.ndarray      # (P,) float64
    folder: Path


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise DataError(path, f"cannot read file ({exc})") from None
        self.pos = 0

    def read(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DataError(self.path, f"truncated binary file: needed {size} bytes for {what} at byte {self.pos}, "
                            f"but the file has {len(self.data)} bytes")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n: int, what: str):
        if self.pos + n > len(self.data):
            raise DataError(self.path, f"truncated binary file: {what} needs {n} bytes at byte {self.pos}, "
                            f"but the file has {len(self.data)} bytes")
        self.pos += n

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DataError(self.path, f"truncated binary file: unterminated {what} at byte {self.pos}")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def count(self, what: str, limit: int) -> int:
        (n,) = self.read("Q", f"the number of {what}")
        if n > limit:
            raise DataError(self.path, f"corrupt binary file: claims {n} {what}, more than the file can hold")
        return n

    def finish(self):
        if self.pos != len(self.data):
            raise DataError(self.path, f"corrupt binary file: {len(self.data) - self.pos} unexpected bytes after the last record")


MAX_IMAGE_SIDE = 1 << 20


def _check_camera(path: Path, where: str, cam: ColmapCamera) -> ColmapCamera:
    if not (0 < cam.width <= MAX_IMAGE_SIDE and 0 < cam.height <= MAX_IMAGE_SIDE):
        raise DataError(path, f"{where}: camera {cam.id} has an invalid image size {cam.width}x{cam.height}")
    if not np.isfinite(cam.params).all():
        raise DataError(path, f"{where}: camera {cam.id} has non-finite parameters {cam.params.tolist()}")
    return cam


def _check_image(path: Path, where: str, im: ColmapImage) -> ColmapImage:
    n = float(np.linalg.norm(im.qvec)) if np.isfinite(im.qvec).all() else float("nan")
    if not (np.isfinite(n) and n > 1e-12) or not np.isfinite(im.tvec).all():
        raise DataError(path, f"{where}: image {im.id} ({im.name!r}) has an invalid pose "
                        f"(qvec {im.qvec.tolist()}, tvec {im.tvec.tolist()})")
    return im


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    out = {}
    for k in range(r.count("cameras", len(r.data) // 24)):
        cam_id, model_id, w, h = r.read("iiQQ", f"camera {k}")
        if model_id not in CAMERA_MODELS:
            raise DataError(path, f"camera {cam_id}: unknown camera model id {model_id} "
                            f"(known: {', '.join(f'{i}={n}' for i, (n, _) in CAMERA_MODELS.items())})")
        name, n = CAMERA_MODELS[model_id]
        params = np.array(r.read("d" * n, f"camera {cam_id} params"), dtype=np.float64)
        out[cam_id] = _check_camera(path, f"camera record {k}", ColmapCamera(cam_id, name, int(w), int(h), params))
    r.finish()
    return out


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(path)
    out = {}
    for k in range(r.count("images", len(r.data) // 64)):
        vals = r.read("idddddddi", f"image record {k}")
        name = r.cstring(f"image {vals[0]} name")
        (n2d,) = r.read("Q", f"image {vals[0]} point count")
        r.skip(24 * n2d, f"image {vals[0]} 2D points")
        out[vals[0]] = _check_image(path, f"image record {k}",
                                    ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name))
    r.finish()
    return out


def read_points_binary(path: Path):
    r = _Reader(path)
    n = r.count("points", len(r.data) // 43)
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    err = np.empty(n, dtype=np.float64)
    for k in range(n):
        vals = r.read("QdddBBBdQ", f"point record {k}")
        if not all(np.isfinite(vals[1:4])):
            raise DataError(path, f"point record {k}: point {vals[0]} has non-finite coordinates {list(vals[1:4])}")
        xyz[k] = vals[1:4]
        rgb[k] = vals[4:7]
        err[k] = vals[7]
        r.skip(8 * vals[8], f"point {vals[0]} track")
    r.finish()
    return xyz, rgb, err


def _text_lines(path: Path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read file ({exc})") from None
    return [(i + 1, ln) for i, ln in enumerate(lines) if not ln.lstrip().startswith("#")]


def _parse(path: Path, lineno: int, tokens, types, what: str):
    try:
        return [t(x) for t, x in zip(types, tokens)]
    except ValueError:
        raise DataError(path, f"line {lineno}: malformed {what}: {' '.join(tokens)[:120]!r}") from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    out = {}
    for lineno, ln in _text_lines(path):
        tok = ln.split()
        if not tok:
            continue
        if len(tok) < 4:
            raise DataError(path, f"line {lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'")
        cam_id, model, w, h = _parse(path, lineno, tok[:4], (int, str, int, int), "camera")
        if model not in MODEL_IDS:
            raise DataError(path, f"line {lineno}: unknown camera model {model!r} (known: {', '.join(MODEL_IDS)})")
        n = MODEL_IDS[model][1]
        if len(tok) - 4 != n:
            raise DataError(path, f"line {lineno}: camera model {model} needs {n} params, got {len(tok) - 4}")
        params = np.array(_parse(path, lineno, tok[4:], [float] * n, "camera params"))
        out[cam_id] = _check_camera(path, f"line {lineno}", ColmapCamera(cam_id, model, w, h, params))
    return out


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    out = {}
    lines = _text_lines(path)
    i = 0
    while i < len(lines):
        lineno, ln = lines[i]
        tok = ln.split()
        if not tok:
            i += 1
            continue
        if len(tok) < 10:
            raise DataError(path, f"line {lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        vals = _parse(path, lineno, tok[:9], [int] + [float] * 7 + [int], "image")
        name = ln.split(None, 9)[9].strip()
        out[vals[0]] = _check_image(path, f"line {lineno}",
                                    ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name))
        i += 2  # the next line holds the 2D points (possibly empty)
    return out


def read_points_text(path: Path):
    xyz, rgb, err = [], [], []
    for lineno, ln in _text_lines(path):
        tok = ln.split()
        if not tok:
            continue
        if len(tok) < 8:
            raise DataError(path, f"line {lineno}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK...'")
        v = _parse(path, lineno, tok[:8], [int, float, float, float, int, int, int, float], "point")
        if not all(0 <= c <= 255 for c in v[4:7]):
            raise DataError(path, f"line {lineno}: point colour {v[4:7]} is outside 0..255")
        if not all(np.isfinite(v[1:4])):
            raise DataError(path, f"line {lineno}: point {v[0]} has non-finite coordinates {v[1:4]}")
        xyz.append(v[1:4])
        rgb.append(v[4:7])
        err.append(v[7])
    return (np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
            np.asarray(err, dtype=np.float64))


def find_model_folder(root: Path) -> Path | None:
    """The folder holding cameras.bin|txt: ``sparse/0``, ``sparse``, ``colmap/sparse/0`` or root."""
    for cand in (root / "sparse" / "0", root / "sparse", root / "colmap" / "sparse" / "0", root):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    return None


def read_model(folder: Path) -> ColmapModel:
    """Read a sparse model folder, preferring ``.bin`` over ``.txt`` files. points3D is optional."""
    folder = Path(folder)
    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    readers = {".bin": (read_cameras_binary, read_images_binary, read_points_binary),
               ".txt": (read_cameras_text, read_images_text, read_points_text)}[ext]
    for name in ("cameras", "images"):
        if not (folder / f"{name}{ext}").is_file():
            raise DataError(folder / f"{name}{ext}", "file is missing from the COLMAP model")
    cameras = readers[0](folder / f"cameras{ext}")
    images = readers[1](folder / f"images{ext}")
    pfile = folder / f"points3D{ext}"
    if pfile.is_file():
        xyz, rgb, err = readers[2](pfile)
    else:
        xyz, rgb, err = np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0)
    for im in images.values():
        if im.camera_id not in cameras:
            raise DataError(folder / f"images{ext}", f"image {im.name!r} refers to camera {im.camera_id}, "
                            f"which is not in cameras{ext}")
    return ColmapModel(cameras, images, xyz, rgb, err, folder)


def write_model_text(model: ColmapModel, folder: Path) -> None:
    """Write cameras.txt, images.txt (without 2D points) and points3D.txt (without tracks)."""
    from ..io.atomic import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "cameras.txt") as f:
        f.write("# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n")
        for c in model.cameras.values():
            f.write(f"{c.id} {c.model} {c.width} {c.height} " + " ".join(repr(float(p)) for p in c.params) + "\n")
    with atomic_write(folder / "images.txt") as f:
        f.write("# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for im in model.images.values():
            vals = " ".join(repr(float(v)) for v in (*im.qvec, *im.tvec))
            f.write(f"{im.id} {vals} {im.camera_id} {im.name}\n\n")
    with atomic_write(folder / "points3D.txt") as f:
        f.write("# POINT3D_ID X Y Z R G B ERROR TRACK[]\n")
        for k in range(model.points.shape[0]):
            x, y, z = (repr(float(v)) for v in model.points[k])
            r, g, b = (int(v) for v in model.colors[k])
            f.write(f"{k + 1} {x} {y} {z} {r} {g} {b} {float(model.errors[k])!r}\n")
