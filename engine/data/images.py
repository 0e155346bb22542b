"""Image decoding, area downscaling and RGBA compositing for the dataset readers.

Images come out as float32 numpy arrays in [0, 1]. RGBA images are treated as *straight* alpha in
the file and composited on the background through premultiplied values, so downscaling (a box
filter on premultiplied colour) commutes with compositing.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cameras import downscaled_size
from ..errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".exr", ".bmp", ".tif", ".tiff")


def pick_image_dir(root: Path, images_dir: str | None, downscale: int) -> tuple[Path, int]:
    """The image folder of a COLMAP/LLFF capture and the downscale still to apply to its images.

    ``images_dir`` (relative to ``root``) wins; otherwise ``images_<downscale>/`` when it exists
    (already reduced: nothing left to apply), else ``images/``. Raises DataError if missing.
    """
    extra = downscale
    if images_dir is not None:
        img_dir = root / images_dir
    elif downscale > 1 and (root / f"images_{downscale}").is_dir():
        img_dir, extra = root / f"images_{downscale}", 1
    else:
        img_dir = root / "images"
    if not img_dir.is_dir():
        raise DataError(img_dir, "image folder is missing")
    return img_dir, extra


def pick_image_dir_by_count(root: Path, images_dir: str | None, downscale: int, count: int,
                            what: str) -> tuple[Path, int, int, str]:
    """The image folder holding ``count`` images for an LLFF-style capture.

    Returns ``(folder, factor, extra, reason)``: ``factor`` is the folder's own downscale (N of
    ``images_N/``, 1 for ``images/``), ``extra`` the downscale still to apply (``downscale /
    factor``), ``reason`` one sentence for the log. ``images_dir`` (relative to ``root``) wins.
    Otherwise candidates are ``images_<downscale>/``, ``images/``, then every other ``images_N/``
    (smallest N first) and the first whose image count equals ``count`` is used, so a capture that
    ships only ``images_8/`` (LLFF's own downscaled copies) still loads. A folder ``images_N/``
    with N > downscale is used as is (the images are smaller than asked); with N < downscale,
    N must divide downscale.
    """
    if images_dir is not None:
        d = root / images_dir
        if not d.is_dir():
            raise DataError(d, "image folder is missing")
        return d, 1, downscale, f"{images_dir}/ (given)"
    found = {}
    for d in root.iterdir() if root.is_dir() else ():
        m = re.fullmatch(r"images(?:_(\d{1,3}))?", d.name)
        if m and d.is_dir():
            found[int(m.group(1) or 1)] = d
    order = ([downscale] if downscale in found else []) + ([1] if 1 in found else []) \
        + sorted(k for k in found if k not in (downscale, 1))
    counts = {}
    for k in order:
        counts[k] = len(list_images(found[k]))
        if counts[k] != count:
            continue
        if k <= downscale and downscale % k:
            continue
        extra = downscale // k if k <= downscale else 1
        why = (f"{found[k].name}/ ({count} images, the {what} count)" if k == 1 or k == downscale else
               f"{found[k].name}/: the folder with {count} images, the {what} count"
               + (f"; images/ has {counts[1]}" if 1 in counts else "; there is no images/ folder"))
        return found[k], k, extra, why
    if not found:
        raise DataError(root / "images", "image folder is missing (looked for images/ and images_N/)")
    have = ", ".join(f"{found[k].name}/ has {counts.get(k, len(list_images(found[k])))}" for k in sorted(found))
    raise DataError(root, f"no image folder holds {count} images (the {what} count): {have}")


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (non-recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in IMAGE_EXTS
                  and not p.name.startswith("."))


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file read from its header; DataError if unreadable."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises many types
        raise DataError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None


def image_header(path: Path) -> tuple[int, int, bool]:
    """``(width, height, has_alpha)`` from an image file's header (no decoding): ``has_alpha`` is
    True exactly when :func:`read_image` returns an alpha channel for it. DataError if unreadable."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "RGB"):
                alpha = False
            elif mode == "RGBA":
                alpha = True
            else:
                alpha = "A" in mode or "transparency" in im.info
            return im.size[0], im.size[1], alpha
    except Exception as exc:  # PIL raises many types
        raise DataError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None


def area_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Box-filter (area-average) resize of an (H, W, C) or (H, W) float32 array.

    Integer factors that divide the size exactly use a block mean; other sizes use PIL's exact
    area ``BOX`` filter per channel in float32.
    """
    h, w = img.shape[:2]
    if (h, w) == (out_h, out_w):
        return img
    if h % out_h == 0 and w % out_w == 0:
        fh, fw = h // out_h, w // out_w
        b = img.reshape(out_h, fh, out_w, fw, *img.shape[2:])
        acc = b[:, 0].astype(np.float32, copy=True)  # (out_h, out_w, fw, ...): sum rows of each block
        for i in range(1, fh):
            acc += b[:, i]
        out = acc[:, :, 0].copy()
        for j in range(1, fw):
            out += acc[:, :, j]
        out *= np.float32(1.0 / (fh * fw))
        return out
    from PIL import Image

    chans = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32), mode="F")
                               .resize((out_w, out_h), Image.BOX)) for c in range(chans.shape[-1])], -1)
    return out[..., 0] if img.ndim == 2 else out


@dataclass
class LoadedImage:
    rgb: np.ndarray            # (H, W, 3) float32, composited on the background if it had alpha
    alpha: np.ndarray | None   # (H, W) float32 or None


def read_image(path: Path, expected_size: tuple[int, int] | None = None, downscale: float = 1.0,
               background=(1.0, 1.0, 1.0), out_size: tuple[int, int] | None = None) -> LoadedImage:
    """Decode one image, check its size, downscale it and composite alpha.

    Args:
        path: image file.
        expected_size: ``(width, height)`` the cameras expect at full resolution; a mismatch raises
            :class:`DataError` naming the file and both sizes.
        downscale: divide the size by this factor (sizes per :func:`downscaled_size`).
        background: RGB in [0, 1] used to composite RGBA images.
        out_size: explicit ``(width, height)`` output size (overrides ``downscale``).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / (65535.0 if mode.startswith("I;16") else 1.0)
                arr = np.repeat(arr[..., None], 3, -1)
            else:
                if mode not in ("RGB", "RGBA"):
                    im = im.convert("RGBA" if ("A" in mode or "transparency" in im.info) else "RGB")
                arr = np.asarray(im).astype(np.float32) * np.float32(1.0 / 255.0)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None
    h, w = arr.shape[:2]
    if expected_size is not None and (w, h) != tuple(expected_size):
        raise DataError(path, f"image is {w}x{h} pixels but its camera says {expected_size[0]}x{expected_size[1]}")
    if out_size is None:
        out_size = (downscaled_size(w, 1.0 / downscale), downscaled_size(h, 1.0 / downscale))
    alpha = None
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        prem = arr[..., :3] * alpha[..., None]
        prem = area_resize(prem, out_size[1], out_size[0])
        alpha = area_resize(alpha, out_size[1], out_size[0])
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        rgb = prem + (1.0 - alpha[..., None]) * bg
        rgb = np.clip(rgb, 0.0, 1.0)
    else:
        rgb = area_resize(arr, out_size[1], out_size[0])
    return LoadedImage(np.ascontiguousarray(rgb, dtype=np.float32), alpha)


def read_mask(path: Path, expected_size: tuple[int, int] | None = None,
              out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image -> (H, W) bool: mean of the colour channels > 127 (of 255).

    Downscaling averages the binary mask over each box and keeps pixels covered more than half.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "mask file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA"):
                im = im.convert("RGB")
            arr = np.asarray(im).astype(np.float32)
    except Exception as exc:
        raise DataError(path, f"cannot decode mask ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim == 3:
        arr = arr.mean(-1)
    h, w = arr.shape
    if expected_size is not None and (w, h) != tuple(expected_size):
        raise DataError(path, f"mask is {w}x{h} pixels but its image/camera is {expected_size[0]}x{expected_size[1]}")
    m = (arr > 127).astype(np.float32)
    if out_size is not None and out_size != (w, h):
        m = area_resize(m, out_size[1], out_size[0])
    return m > 0.5


def parallel_map(fn, items, workers: int | None = None, progress: str | None = None):
    """``[fn(x) for x in items]`` in a thread pool (PIL releases the GIL while decoding).

    The first exception raised by ``fn`` propagates unchanged (so DataErrors reach the user).
    """
    items = list(items)
    if not items:
        return []
    workers = workers or min(8, (os.cpu_count() or 2) + 2, len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
