"""Radiance RGBE reader: round trips through an independent test encoder, orientation, header, errors.

``rgbe_encode`` / ``rle_plane`` / ``write_rgbe`` below are a deliberately separate implementation of
the format (float -> RGBE with ``frexp``, flat or RLE scanlines), also used by
``tests/engine/geometry/test_sh_projection.py`` to write real ``.hdr`` files.
"""
import numpy as np
import pytest

from engine.errors import DataError
from engine.io.hdr import read_hdr

RGBE_HEADER = ("#?RADIANCE", "FORMAT=32-bit_rle_rgbe")


def rgbe_encode(img) -> np.ndarray:
    """Float RGB ``(H, W, 3)`` -> RGBE bytes ``(H, W, 4)``: shared exponent of the largest channel."""
    img = np.asarray(img, dtype=np.float64)
    v = img.max(axis=-1)
    mant, exp = np.frexp(v)                          # v = mant * 2**exp, 0.5 <= mant < 1
    nonzero = v > 1e-32
    scale = np.where(nonzero, mant * 256.0 / np.where(nonzero, v, 1.0), 0.0)   # = 2**(8 - exp)
    out = np.zeros(img.shape[:2] + (4,), dtype=np.uint8)
    out[..., :3] = np.floor(img * scale[..., None])
    out[..., 3] = np.where(nonzero, exp + 128, 0)
    return out


def rle_plane(plane: bytes) -> bytes:
    """Run-length code one byte plane: runs of >= 3 equal bytes (<= 127), literal spans (<= 128)."""
    out, i, n = bytearray(), 0, len(plane)
    while i < n:
        r = 1
        while i + r < n and r < 127 and plane[i + r] == plane[i]:
            r += 1
        if r >= 3:
            out += bytes((128 + r, plane[i]))
            i += r
            continue
        j = i  # literal span up to the start of the next run of 3
        while j < n and j - i < 128 and not (j + 2 < n and plane[j] == plane[j + 1] == plane[j + 2]):
            j += 1
        out += bytes((j - i,)) + plane[i:j]
        i = j
    return bytes(out)


def write_rgbe(path, img, rle="rle", header=RGBE_HEADER, bottom_up=False) -> None:
    """Write float RGB ``img`` as a Radiance file.

    ``rle``: ``"rle"`` (new RLE scanlines where the width allows), ``"flat"``, or ``"mixed"``
    (alternate rows). ``bottom_up``: write ``+Y H +X W`` with the bottom row first.
    """
    rgbe = rgbe_encode(img)
    h, w = rgbe.shape[:2]
    data = bytearray(("\n".join(header) + "\n\n" + f"{'+Y' if bottom_up else '-Y'} {h} +X {w}\n").encode())
    rows = rgbe[::-1] if bottom_up else rgbe
    for y, row in enumerate(rows):
        use_rle = 8 <= w <= 32767 and (rle == "rle" or (rle == "mixed" and y % 2 == 0))
        if use_rle:
            data += b"\x02\x02" + w.to_bytes(2, "big")
            for c in range(4):
                data += rle_plane(row[:, c].tobytes())
        else:
            data += row.tobytes()
    with open(path, "wb") as f:
        f.write(bytes(data))


def assert_rgbe_close(back, img):
    """Equal within RGBE precision: per pixel, |error| <= max channel / 256; black pixels exact.

    (A zero channel of a non-black pixel reads back as ``0.5 * 2**(E - 136)``, within the bound.)
    """
    img = np.asarray(img, dtype=np.float64)
    assert back.shape == img.shape and back.dtype == np.float32
    vmax = img.max(axis=-1, keepdims=True)
    assert (np.abs(back - img) <= vmax / 256.0).all()
    assert (back[(img == 0).all(axis=-1)] == 0).all()


def _test_image(h, w, seed=0):
    """High dynamic range noise with constant blocks (RLE runs) and black pixels."""
    g = np.random.default_rng(seed)
    img = g.random((h, w, 3)) * 10.0 ** g.uniform(-3, 3, (h, w, 1))
    img[: h // 3, : w // 2] = [0.25, 0.5, 1.0]       # long runs in every plane
    img[h // 2, :] = 0.0                             # a black row
    img[-1, ::3] = 0.0                               # scattered black pixels
    img[1, :, 1] = 0.0                               # a zero channel next to non-zero ones
    return img.astype(np.float32)


def test_encoder_emits_runs_and_literals():
    assert rle_plane(bytes([5] * 4 + [1, 2, 3] + [9] * 200)) == bytes([132, 5, 3, 1, 2, 3, 255, 9, 128 + 73, 9])
    distinct = bytes(range(256)) + bytes(range(44))
    assert rle_plane(distinct) == (bytes([128]) + distinct[:128] + bytes([128]) + distinct[128:256]
                                   + bytes([44]) + distinct[256:])


@pytest.mark.parametrize("rle", ["rle", "flat", "mixed"])
@pytest.mark.parametrize("shape", [(13, 300), (9, 8), (6, 5)])   # width 5: too narrow for RLE, always flat
def test_roundtrip(tmp_path, rle, shape):
    img = _test_image(*shape)
    write_rgbe(tmp_path / "m.hdr", img, rle=rle)
    back = read_hdr(tmp_path / "m.hdr")
    assert_rgbe_close(back, img)
    # the decoder is exact: (m + 0.5) * 2**(e - 136) of the encoded bytes
    rgbe = rgbe_encode(img).astype(np.float64)
    expect = np.where(rgbe[..., 3:] > 0, (rgbe[..., :3] + 0.5) * 2.0 ** (rgbe[..., 3:] - 136), 0.0)
    np.testing.assert_array_equal(back, expect.astype(np.float32))


def test_rle_file_is_compressed(tmp_path):
    img = np.ones((16, 256, 3), np.float32)
    write_rgbe(tmp_path / "rle.hdr", img)
    write_rgbe(tmp_path / "flat.hdr", img, rle="flat")
    assert (tmp_path / "rle.hdr").stat().st_size < (tmp_path / "flat.hdr").stat().st_size / 10
    np.testing.assert_array_equal(read_hdr(tmp_path / "rle.hdr"), read_hdr(tmp_path / "flat.hdr"))


@pytest.mark.parametrize("rle", ["rle", "flat"])
def test_bottom_up_orientation_is_flipped(tmp_path, rle):
    img = _test_image(7, 24, seed=1)
    write_rgbe(tmp_path / "top.hdr", img, rle=rle)
    write_rgbe(tmp_path / "bottom.hdr", img, rle=rle, bottom_up=True)
    assert (tmp_path / "bottom.hdr").read_bytes().split(b"\n")[3] == b"+Y 7 +X 24"
    np.testing.assert_array_equal(read_hdr(tmp_path / "bottom.hdr"), read_hdr(tmp_path / "top.hdr"))
    assert_rgbe_close(read_hdr(tmp_path / "bottom.hdr"), img)


@pytest.mark.parametrize("header", [
    ("#?RADIANCE", "# written by a test", "EXPOSURE=2.5", "SOFTWARE=kernelight tests",
     "FORMAT=32-bit_rle_rgbe", "PIXASPECT=1.0"),
    ("#?RGBE", "FORMAT=32-bit_rle_rgbe"),
    ("FORMAT=32-bit_rle_rgbe",),                     # no magic: accepted because of the FORMAT line
    ("#?RADIANCE",),                                 # no FORMAT: RGBE is the default
])
def test_header_variables_are_skipped(tmp_path, header):
    img = _test_image(5, 16, seed=2)
    write_rgbe(tmp_path / "m.hdr", img, header=header)
    assert_rgbe_close(read_hdr(tmp_path / "m.hdr"), img)     # EXPOSURE is not applied


def _write_raw(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_wrong_magic(tmp_path):
    p = _write_raw(tmp_path, "bad.hdr", b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match=r"bad\.hdr.*not a Radiance"):
        read_hdr(p)
    p = _write_raw(tmp_path, "other.hdr", b"#?OTHERFORMAT\n\n-Y 2 +X 2\n" + bytes(16))
    with pytest.raises(DataError, match=r"other\.hdr.*not a Radiance"):
        read_hdr(p)
    p = _write_raw(tmp_path, "empty.hdr", b"")
    with pytest.raises(DataError, match=r"empty\.hdr.*not a Radiance"):
        read_hdr(p)
    with pytest.raises(DataError, match=r"missing\.hdr.*no such file"):
        read_hdr(tmp_path / "missing.hdr")


def test_xyze_and_unknown_formats_are_refused(tmp_path):
    img = _test_image(4, 8)
    write_rgbe(tmp_path / "xyz.hdr", img, header=("#?RADIANCE", "FORMAT=32-bit_rle_xyze"))
    with pytest.raises(DataError, match=r"xyz\.hdr.*32-bit_rle_xyze.*not supported"):
        read_hdr(tmp_path / "xyz.hdr")
    write_rgbe(tmp_path / "odd.hdr", img, header=("#?RADIANCE", "FORMAT=16-bit_whatever"))
    with pytest.raises(DataError, match=r"odd\.hdr.*unsupported Radiance FORMAT"):
        read_hdr(tmp_path / "odd.hdr")


@pytest.mark.parametrize("rle", ["rle", "flat"])
def test_truncated(tmp_path, rle):
    img = _test_image(20, 64, seed=3)
    write_rgbe(tmp_path / "full.hdr", img, rle=rle)
    data = (tmp_path / "full.hdr").read_bytes()
    pixels = data.index(b"+X 64\n") + len(b"+X 64\n")
    for cut in (len(data) - 1, pixels + (len(data) - pixels) // 2, pixels + 3, pixels):
        p = _write_raw(tmp_path, "cut.hdr", data[:cut])
        with pytest.raises(DataError, match=r"cut\.hdr.*truncated"):
            read_hdr(p)
    # cut inside the header / resolution line
    for cut, what in ((12, "not terminated"), (pixels - 3, "resolution line")):
        p = _write_raw(tmp_path, "cut.hdr", data[:cut])
        with pytest.raises(DataError, match=rf"cut\.hdr.*{what}"):
            read_hdr(p)


@pytest.mark.parametrize("line, problem", [
    (b"-Y four +X 8", "bad resolution line"),
    (b"-Y 4", "bad resolution line"),
    (b"Y 4 X 8", "bad resolution line"),
    (b"-Y 0 +X 8", "empty image"),
    (b"-Y 4 -X 8", "unsupported image orientation"),
    (b"+X 8 -Y 4", "unsupported image orientation"),
])
def test_bad_resolution_line(tmp_path, line, problem):
    p = _write_raw(tmp_path, "res.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + line + b"\n" + bytes(4 * 32))
    with pytest.raises(DataError, match=rf"res\.hdr.*{problem}"):
        read_hdr(p)


def test_corrupt_rle(tmp_path):
    head = b"#?RADIANCE\n\n-Y 1 +X 8\n"
    # run-length header with the wrong width
    p = _write_raw(tmp_path, "w.hdr", head + b"\x02\x02\x00\x09" + bytes([136, 1]) * 4)
    with pytest.raises(DataError, match=r"w\.hdr.*width 9, expected 8"):
        read_hdr(p)
    # a run longer than the plane
    p = _write_raw(tmp_path, "run.hdr", head + b"\x02\x02\x00\x08" + bytes([137, 1]) + bytes([136, 1]) * 3)
    with pytest.raises(DataError, match=r"run\.hdr.*run overruns the R plane"):
        read_hdr(p)
    # a literal span longer than the plane
    p = _write_raw(tmp_path, "lit.hdr", head + b"\x02\x02\x00\x08" + bytes([9, *range(9)]) + bytes([136, 1]) * 3)
    with pytest.raises(DataError, match=r"lit\.hdr.*literal span overruns the R plane"):
        read_hdr(p)
    # a zero literal count
    p = _write_raw(tmp_path, "zero.hdr", head + b"\x02\x02\x00\x08" + bytes([0]) + bytes([136, 1]) * 4)
    with pytest.raises(DataError, match=r"zero\.hdr.*literal count 0"):
        read_hdr(p)
    # a valid file decodes: R=1 run, G literal, B run of 0, E=128 -> (1.5, m + 0.5, 0.5) / 256
    ok = head + b"\x02\x02\x00\x08" + bytes([136, 1, 8, *range(8), 136, 0, 136, 128])
    back = read_hdr(_write_raw(tmp_path, "ok.hdr", ok))
    np.testing.assert_array_equal(back[0, :, 1], (np.arange(8) + 0.5) / 256)
    assert (back[0, :, 0] == 1.5 / 256).all() and (back[0, :, 2] == 0.5 / 256).all()


def test_write_hdr_roundtrip_and_images_io(tmp_path):
    """Our writer (flat RGBE) -> our reader, also through engine.io.images (which must not hand
    .hdr to imageio: without FreeImage it writes a TIFF under that name)."""
    from engine.io.hdr import encode_hdr, write_hdr
    from engine.io.images import read_image, write_image

    img = _test_image(9, 13, seed=3)
    img[0, 0] = [np.inf, -1.0, np.nan]               # not representable: written as black
    p = write_hdr(tmp_path / "w.hdr", img)
    assert p.read_bytes().startswith(b"#?RADIANCE\n")
    back = read_hdr(p)
    assert back[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert_rgbe_close(back[1:], img[1:])
    # the exact same bytes as the test encoder's flat layout
    planes = rgbe_encode(img[1:])
    assert encode_hdr(img[1:]).endswith(planes.tobytes())
    write_image(tmp_path / "i.hdr", img[1:])
    assert (tmp_path / "i.hdr").read_bytes().startswith(b"#?RADIANCE")
    assert_rgbe_close(read_image(tmp_path / "i.hdr"), img[1:])
    grey = np.linspace(0, 5, 12, dtype=np.float32).reshape(3, 4)
    assert_rgbe_close(read_hdr(write_hdr(tmp_path / "g.hdr", grey)), np.repeat(grey[..., None], 3, 2))
    (tmp_path / "bad.hdr").write_bytes(b"not a radiance file\n")
    with pytest.raises(DataError, match="bad.hdr"):
        read_image(tmp_path / "bad.hdr")
    with pytest.raises(ValueError, match="encode_hdr"):
        encode_hdr(np.zeros((2, 2, 4)))


def test_exr_is_written_for_real_or_refused(tmp_path):
    """imageio without an OpenEXR plugin writes a TIFF under a .exr name: write_image refuses that
    and leaves nothing behind."""
    from engine.io.images import write_image

    img = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    p = tmp_path / "x.exr"
    try:
        write_image(p, img)
    except ValueError as exc:
        assert "OpenEXR" in str(exc) and "x.exr" in str(exc)
        assert list(tmp_path.iterdir()) == []
    else:
        assert p.read_bytes()[:4] == b"\x76\x2f\x31\x01"      # the OpenEXR magic number
