"""Radiance ``.hdr`` (RGBE) images, read with numpy alone (no imageio plugin, FreeImage or OpenCV).

File layout:

1. A text header of ``\\n``-terminated lines, ended by an empty line. The first line is normally
   the magic ``#?RADIANCE`` (some writers put ``#?RGBE``); files without it are accepted when the
   header has a ``FORMAT=`` line. ``FORMAT=32-bit_rle_rgbe`` is the only pixel format read
   (``32-bit_rle_xyze`` is refused). Comments (``#``) and other variables (``EXPOSURE=``,
   ``SOFTWARE=``, ``PRIMARIES=`` ...) are skipped: pixel values are returned as stored, without
   dividing by ``EXPOSURE``.
2. A resolution line: ``-Y H +X W`` (the standard orientation: the first scanline is the top row,
   pixels left to right) or ``+Y H +X W`` (the first scanline is the bottom row; rows are flipped
   so that row 0 is the top). Other orientations (transposed or mirrored in X) are refused.
3. ``H`` scanlines of ``W`` RGBE pixels, each scanline either

   * run-length encoded ("new" RLE, only for ``8 <= W <= 32767``): the bytes ``2, 2`` then ``W``
     as two bytes big-endian (high byte < 128), then the four byte planes R, G, B, E one after
     the other, each coded as chunks: a count byte ``c > 128`` followed by one byte means
     ``c - 128`` copies of that byte; a count ``0 < c <= 128`` is followed by ``c`` literal bytes;
   * or flat: ``W`` pixels of 4 bytes ``R G B E`` (any scanline not starting with ``2, 2``).

   The pre-1991 "old" RLE (repeat pixels ``1 1 1 n``) is not decoded; such pixels read as flat.

Decoding of a pixel: ``E == 0`` is black, else each channel is ``(M + 0.5) * 2**(E - 136)``.
Truncated or corrupt files raise :class:`engine.errors.DataError` naming the file and the problem.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

_MAGICS = ("#?RADIANCE", "#?RGBE")
_RGBE_FORMAT = "32-bit_rle_rgbe"
_XYZE_FORMAT = "32-bit_rle_xyze"
_MAX_HEADER = 1 << 16  # bytes searched for the end of the header

# _RUN_BYTES[128 v : 128 v + n] is n copies of the byte v (n <= 127): RLE runs become one slice copy.
_RUN_BYTES = np.repeat(np.arange(256, dtype=np.uint8), 128).tobytes()


def read_hdr(path) -> np.ndarray:
    """Read a Radiance RGBE ``.hdr`` file as linear float32 RGB ``(H, W, 3)``, row 0 at the top.

    Raises :class:`engine.errors.DataError` naming the file when it is missing, not a Radiance
    file, in an unsupported format/orientation, truncated or corrupt.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(p, "no such file") from None
    except OSError as exc:
        raise DataError(p, f"cannot read file: {exc}") from exc

    pos = _parse_header(p, data)
    height, width, bottom_up, pos = _parse_resolution(p, data, pos)
    rgbe = _read_scanlines(p, data, pos, height, width)          # (H, 4, W) planes R, G, B, E
    rgb = _rgbe_to_float(rgbe)
    if bottom_up:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


# ----------------------------------------------------------------------------------------------
# Header and resolution line
# ----------------------------------------------------------------------------------------------


def _parse_header(path: Path, data: bytes) -> int:
    """Check the magic / FORMAT of the header; return the offset just after its empty line."""
    if data.startswith(b"\n"):                       # empty header: no magic, no FORMAT
        end = 0
    else:
        end = data.find(b"\n\n", 0, _MAX_HEADER)
        if end < 0:
            if not data.startswith(b"#?"):
                raise DataError(path, "not a Radiance .hdr file (no '#?RADIANCE' magic line)")
            raise DataError(path, "Radiance header is not terminated by an empty line (truncated or corrupt)")
        end += 1                                     # the empty line starts after the first '\n'
    lines = data[:end].decode("latin-1").split("\n")[:-1] if end else []

    has_magic = bool(lines) and lines[0].strip() in _MAGICS
    fmt = None
    for line in lines:
        if line.startswith("FORMAT="):
            fmt = line[len("FORMAT="):].strip()
    if not has_magic and fmt is None:
        first = lines[0][:40] if lines else ""
        raise DataError(path, f"not a Radiance .hdr file (first line {first!r}, expected '#?RADIANCE' "
                        "or a FORMAT= header line)")
    if fmt == _XYZE_FORMAT:
        raise DataError(path, f"Radiance FORMAT={_XYZE_FORMAT} (CIE XYZ) is not supported; convert the "
                        "map to RGB (FORMAT=32-bit_rle_rgbe)")
    if fmt is not None and fmt != _RGBE_FORMAT:
        raise DataError(path, f"unsupported Radiance FORMAT={fmt!r} (expected {_RGBE_FORMAT})")
    return end + 1


def _parse_resolution(path: Path, data: bytes, pos: int) -> tuple[int, int, bool, int]:
    """Parse ``-Y H +X W`` / ``+Y H +X W`` at ``pos``; return ``(H, W, bottom_up, pixel offset)``."""
    end = data.find(b"\n", pos, pos + 128)
    if end < 0:
        raise DataError(path, "missing or malformed resolution line after the header (truncated file?)")
    text = data[pos:end].decode("latin-1")
    tok = text.split()
    axes_ok = (len(tok) == 4 and tok[0] in ("-Y", "+Y", "-X", "+X") and tok[2] in ("-Y", "+Y", "-X", "+X")
               and all(t.isascii() and t.isdigit() for t in tok[1::2]) and tok[0][1] != tok[2][1])
    if not axes_ok:
        raise DataError(path, f"bad resolution line {text[:60]!r} (expected '-Y <height> +X <width>')")
    if tok[0] not in ("-Y", "+Y") or tok[2] != "+X":
        raise DataError(path, f"unsupported image orientation {text!r} (only '-Y H +X W' and '+Y H +X W' "
                        "are read)")
    height, width = int(tok[1]), int(tok[3])
    if height < 1 or width < 1:
        raise DataError(path, f"bad resolution line {text!r}: empty image")
    pos = end + 1
    # Cheapest possible encoding of a scanline: flat (4 bytes a pixel) or RLE (4-byte header, then
    # each plane in runs of <= 127 at 2 bytes a run). Refuse before allocating if even that does
    # not fit, so a corrupt resolution line cannot ask for a huge buffer.
    min_row = 4 * width
    if 8 <= width <= 32767:
        min_row = min(min_row, 4 + 4 * 2 * -(-width // 127))
    if (len(data) - pos) < height * min_row:
        raise DataError(path, f"truncated: {height}x{width} pixels need at least {height * min_row} bytes "
                        f"of pixel data, the file has {len(data) - pos}")
    return height, width, tok[0] == "+Y", pos


# ----------------------------------------------------------------------------------------------
# Scanlines
# ----------------------------------------------------------------------------------------------


def _read_scanlines(path: Path, data: bytes, pos: int, height: int, width: int) -> np.ndarray:
    """Decode the ``height`` scanlines starting at ``data[pos]`` to planes ``(H, 4, W)`` uint8."""
    n = len(data)
    src = memoryview(data)
    runs = memoryview(_RUN_BYTES)
    row_bytes = 4 * width
    out = bytearray(height * row_bytes)   # per row: the R, G, B, E planes, W bytes each
    flat_rows = []                        # rows copied as interleaved RGBE, transposed at the end
    rle_allowed = 8 <= width <= 32767
    o = 0
    for y in range(height):
        if rle_allowed and pos + 4 <= n and data[pos] == 2 and data[pos + 1] == 2 and data[pos + 2] < 128:
            w = (data[pos + 2] << 8) | data[pos + 3]
            if w != width:
                raise DataError(path, f"corrupt scanline {y}: run-length header gives width {w}, "
                                f"expected {width}")
            pos += 4
            # The hot loop: one iteration per chunk, each a single slice copy into `out`.
            for plane in range(4):
                end = o + width
                while o < end:
                    if pos >= n:
                        raise DataError(path, f"truncated in scanline {y} of {height}")
                    count = data[pos]
                    if count > 128:                          # run: count - 128 copies of one byte
                        count -= 128
                        if o + count > end:
                            raise DataError(path, f"corrupt scanline {y}: a run overruns the "
                                            f"{'RGBE'[plane]} plane")
                        if pos + 1 >= n:
                            raise DataError(path, f"truncated in scanline {y} of {height}")
                        v = data[pos + 1] << 7
                        out[o:o + count] = runs[v:v + count]
                        pos += 2
                    else:                                    # literal: count bytes follow
                        if count == 0:
                            raise DataError(path, f"corrupt scanline {y}: literal count 0 in the "
                                            f"{'RGBE'[plane]} plane")
                        if o + count > end:
                            raise DataError(path, f"corrupt scanline {y}: a literal span overruns the "
                                            f"{'RGBE'[plane]} plane")
                        if pos + 1 + count > n:
                            raise DataError(path, f"truncated in scanline {y} of {height}")
                        out[o:o + count] = src[pos + 1:pos + 1 + count]
                        pos += 1 + count
                    o += count
        else:                                                # flat RGBE pixels
            if pos + row_bytes > n:
                raise DataError(path, f"truncated in scanline {y} of {height}")
            out[o:o + row_bytes] = src[pos:pos + row_bytes]
            flat_rows.append(y)
            pos += row_bytes
            o += row_bytes
    planes = np.frombuffer(out, dtype=np.uint8).reshape(height, 4, width)
    if flat_rows:
        idx = np.asarray(flat_rows)
        interleaved = np.frombuffer(out, dtype=np.uint8).reshape(height, width, 4)[idx]
        planes[idx] = interleaved.transpose(0, 2, 1)
    return planes


def _rgbe_to_float(planes: np.ndarray) -> np.ndarray:
    """Planes ``(H, 4, W)`` uint8 (R, G, B, E) -> linear RGB ``(H, W, 3)`` float32."""
    mant = planes[:, :3].transpose(0, 2, 1).astype(np.float32) + 0.5     # (H, W, 3)
    exp = planes[:, 3].astype(np.int32)                                   # (H, W)
    rgb = np.ldexp(mant, (exp - 136)[..., None])
    rgb[exp == 0] = 0.0
    return rgb


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def encode_hdr(img) -> bytes:
    """A Radiance file (header, ``-Y H +X W``, flat RGBE scanlines) of linear RGB ``(H, W, 3)``
    or grey ``(H, W)`` floats. Negative and non-finite values are written as 0; a pixel's shared
    exponent comes from its largest channel (``v = m * 2**e``, ``0.5 <= m < 1``), mantissas are
    ``floor(channel * 256 / 2**e)``, so :func:`read_hdr` returns each channel within 1/256 of the
    pixel's largest one. Flat scanlines (no RLE) are valid Radiance and read by every reader."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"encode_hdr: expected an (H, W, 3) or (H, W) image, got shape {np.shape(img)}")
    a = np.where(np.isfinite(a) & (a > 0), a, 0.0)
    h, w = a.shape[:2]
    big = a.max(axis=2)
    frac, exp = np.frexp(big)                      # big = frac * 2**exp, 0.5 <= frac < 1
    ok = big >= 1e-38                              # below 2**-126 or so: black
    exp = np.clip(exp, -127, 127)
    scale = np.ldexp(256.0, -exp)[..., None]        # 256 / 2**exp
    mant = np.clip(np.floor(a * scale), 0, 255)
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[..., :3] = np.where(ok[..., None], mant, 0).astype(np.uint8)
    out[..., 3] = np.where(ok, exp + 128, 0).astype(np.uint8)
    header = f"#?RADIANCE\nFORMAT={_RGBE_FORMAT}\nSOFTWARE=kernelight\n\n-Y {h} +X {w}\n".encode("ascii")
    return header + out.tobytes()


def write_hdr(path, img) -> Path:
    """Write ``img`` as a Radiance ``.hdr`` file atomically (see :func:`encode_hdr`)."""
    from .atomic import atomic_path

    path = Path(path)
    data = encode_hdr(img)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path
