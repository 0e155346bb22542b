"""Image and video IO through imageio, with atomic writes.

Images in memory are float32 arrays/tensors in [0, 1], shape (H, W, C) (C = 1, 3 or 4) or (H, W).
``read_image`` returns exactly that; ``write_image`` accepts that (or uint8) and writes PNG/JPEG
(8-bit, clipped), ``.npy`` (float32, lossless), ``.hdr`` (Radiance RGBE, :mod:`.hdr`) or
``.exr`` (float; only where imageio has a real OpenEXR plugin, else a clear error). Videos: ``.mp4`` (H.264 via imageio-ffmpeg) or ``.gif`` (Pillow).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .atomic import atomic_path

_LDR = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _to_numpy(img) -> np.ndarray:
    try:
        import torch

        if torch.is_tensor(img):
            img = img.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(img)


def to_uint8(img) -> np.ndarray:
    """Float [0,1] (or uint8) image -> uint8, clipped and rounded."""
    arr = _to_numpy(img)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_decode_error(path, exc: BaseException) -> DataError:
    """One line for an image that imageio/PIL cannot decode. Their own text is not passed on: for an
    unknown format imageio lists plugins to install (opencv, pyav), which would not help."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    kind = "empty file" if not head else ("looks like text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head)
                                          else "unknown format or corrupt data")
    return DataError(path, f"not a readable image ({kind}; expected PNG, JPEG or another format Pillow decodes; "
                     f"{type(exc).__name__})")


def read_image(path) -> np.ndarray:
    """Read an image file as float32 in [0, 1] (LDR) or linear float (.npy/.exr/.hdr).

    Raises DataError naming the file when it is missing or cannot be decoded (``.npy`` through
    :func:`engine.io.npy.load_npy`: numeric arrays only, never pickles).
    """
    import imageio.v3 as iio

    path = Path(path)
    if not path.exists():
        raise DataError(path, "image file not found")
    if path.suffix.lower() == ".npy":
        from .npy import load_npy

        arr = load_npy(path)
    elif path.suffix.lower() == ".hdr":
        from .hdr import read_hdr   # not imageio: it has no Radiance reader without FreeImage,
                                    # and its OpenCV plugin reads .hdr as 8-bit
        return read_hdr(path)
    else:
        try:
            arr = iio.imread(path)
        except Exception as exc:  # imageio raises many types
            raise image_decode_error(path, exc) from None
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32)


def write_image(path, img) -> Path:
    """Write an image atomically; the format follows the extension."""
    path = Path(path)
    ext = path.suffix.lower()
    arr = _to_numpy(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        if ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, arr.astype(np.float32))
        elif ext in _LDR:
            import imageio.v3 as iio

            data = to_uint8(arr)
            if ext in (".jpg", ".jpeg") and data.ndim == 3 and data.shape[2] == 4:
                data = data[..., :3]
            iio.imwrite(tmp, data, extension=ext)
        elif ext == ".hdr":
            from .hdr import encode_hdr

            Path(tmp).write_bytes(encode_hdr(arr))
        elif ext == ".exr":
            import imageio.v3 as iio

            iio.imwrite(tmp, arr.astype(np.float32), extension=ext)
            # without an OpenEXR plugin (FreeImage, OpenCV) imageio falls back to a TIFF writer and
            # would leave a TIFF under the .exr name: refuse instead (the temp file is removed)
            with open(tmp, "rb") as f:
                if f.read(4) != b"\x76\x2f\x31\x01":
                    raise ValueError(f"{path}: no OpenEXR writer is installed (imageio would write a TIFF "
                                     "under this name); use .hdr (Radiance) or .npy for float images")
        else:
            raise ValueError(f"{path}: unsupported image extension {ext!r} (use .png, .jpg, .npy, .exr, .hdr)")
    return path


def write_video(path, frames, fps: float = 30.0) -> Path:
    """Write frames (iterable of (H,W,3) float [0,1] or uint8) as .mp4 or .gif, atomically."""
    path = Path(path)
    ext = path.suffix.lower()
    frames = [to_uint8(f) for f in frames]
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    with atomic_path(path) as tmp:
        if ext == ".gif":
            from PIL import Image

            ims = [Image.fromarray(f) for f in frames]
            ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:],
                        duration=max(1, int(round(1000.0 / fps))), loop=0)
        elif ext == ".mp4":
            import imageio.v2 as iio2

            h, w = frames[0].shape[:2]
            # H.264 with yuv420p needs even sizes: pad by edge replication if needed
            ph, pw = h % 2, w % 2
            with iio2.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                 macro_block_size=1, pixelformat="yuv420p") as writer:
                for f in frames:
                    if ph or pw:
                        f = np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge")
                    writer.append_data(f)
        else:
            raise ValueError(f"{path}: unsupported video extension {ext!r} (use .mp4 or .gif)")
    return path


def colormap(values, vmin=None, vmax=None, name: str = "turbo") -> np.ndarray:
    """Map a (H, W) array to (H, W, 3) float colours (for depth/alpha maps); NaN/inf -> black."""
    v = _to_numpy(values).astype(np.float64)
    finite = np.isfinite(v)
    lo = np.min(v[finite]) if vmin is None and finite.any() else (vmin or 0.0)
    hi = np.max(v[finite]) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    x = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    # Turbo colormap polynomial approximation (Mikhailov 2019), accurate to a few 1e-3
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    out = np.clip(np.stack([r, g, b], -1), 0, 1)
    out[~finite] = 0
    return out.astype(np.float32)
