"""Image decoding: every bad-input case fails clearly, every odd-but-valid image is normalised."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cielr_core.images import BadImageError, decode_image, decode_image_file, encode_png, image_digest

MAXPX = 10_000_000


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=24, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


# -- valid inputs ----------------------------------------------------------------------------------
def test_rgb_png_roundtrip_exact():
    a = _rgb()
    out = decode_image(encode_png(a), max_pixels=MAXPX)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, a)


def test_grayscale_becomes_three_equal_channels():
    g = np.random.default_rng(1).integers(0, 256, (10, 12), dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(g, "L"), "PNG"), max_pixels=MAXPX)
    assert out.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_one_bit_image():
    b = np.zeros((8, 8), bool)
    b[2:5, 3:6] = True
    out = decode_image(_save(Image.fromarray(b).convert("1"), "PNG"), max_pixels=MAXPX)
    assert out.shape == (8, 8, 3)
    assert (out[b] == 255).all() and (out[~b] == 0).all()


def test_rgba_is_composited_over_white():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200  # red 200
    a[0, 0, 3] = 255  # opaque
    a[0, 1, 3] = 0  # fully transparent -> white
    a[0, 2, 3] = 128  # half
    out = decode_image(_save(Image.fromarray(a, "RGBA"), "PNG"), max_pixels=MAXPX)
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    r, g, b = (int(v) for v in out[0, 2])
    assert abs(r - (200 * 128 + 255 * 127) / 255) <= 1 and abs(g - 127) <= 1 and g == b


def test_palette_image():
    a = _rgb(16, 16, 2)
    p = Image.fromarray(a).quantize(colors=8)
    expect = np.asarray(p.convert("RGB"))
    out = decode_image(_save(p, "PNG"), max_pixels=MAXPX)
    np.testing.assert_array_equal(out, expect)


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    p.putpixel((1, 1), 1)
    data = _save(p, "PNG", transparency=1)
    out = decode_image(data, max_pixels=MAXPX)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_sixteen_bit_grayscale_scaled_to_eight_bits():
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    out = decode_image(_save(im, "PNG"), max_pixels=MAXPX)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(cmyk, "JPEG", quality=95), max_pixels=MAXPX)
    assert out.shape == (10, 20, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_exif_rotated_jpeg_is_turned_upright():
    # a 30 (w) x 20 (h) image, left half black, right half white, stored with orientation 6
    # (viewer must rotate 90 degrees clockwise): upright it is 20 wide, 30 high.
    a = np.zeros((20, 30, 3), np.uint8)
    a[:, 15:] = 255
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(im, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, max_pixels=MAXPX)
    assert out.shape == (30, 20, 3)
    expect = np.asarray(ImageOps_exif_upright(a, 6))
    assert np.abs(out.astype(int) - expect.astype(int)).mean() < 8
    # the black half ends up on top after a clockwise turn
    assert out[:10].mean() < 40 and out[-10:].mean() > 215


def ImageOps_exif_upright(a: np.ndarray, orientation: int) -> np.ndarray:
    assert orientation == 6
    return np.rot90(a, k=-1)  # clockwise


def test_multi_frame_gif_first_frame():
    f1 = Image.new("RGB", (6, 6), (255, 0, 0))
    f2 = Image.new("RGB", (6, 6), (0, 0, 255))
    data = _save(f1, "GIF", save_all=True, append_images=[f2])
    out = decode_image(data, max_pixels=MAXPX)
    assert out.shape == (6, 6, 3) and out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_digest_is_encoding_independent_and_shape_aware():
    a = _rgb()
    png = decode_image(encode_png(a), max_pixels=MAXPX)
    bmp = decode_image(_save(Image.fromarray(a), "BMP"), max_pixels=MAXPX)
    tif = decode_image(_save(Image.fromarray(a), "TIFF"), max_pixels=MAXPX)
    assert image_digest(png) == image_digest(bmp) == image_digest(tif) == image_digest(a)
    assert len(image_digest(a)) == 64
    # same bytes, different shape -> different digest
    assert image_digest(a.reshape(40, 24, 3)) != image_digest(a)
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert image_digest(b) != image_digest(a)


def test_real_photo_from_ciebench(ciebench_dir):
    p = ciebench_dir / "0" / "0.png"
    out = decode_image_file(p, max_pixels=40_000_000)
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


# -- bad inputs ------------------------------------------------------------------------------------
def test_random_bytes_rejected():
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(BadImageError, match="not a recognised image"):
        decode_image(data, max_pixels=MAXPX)


def test_text_and_empty_rejected():
    with pytest.raises(BadImageError, match="not a recognised image"):
        decode_image(b"hello, I am definitely not a picture\n" * 10, max_pixels=MAXPX)
    with pytest.raises(BadImageError, match="empty"):
        decode_image(b"", max_pixels=MAXPX)


def test_truncated_png_rejected():
    data = encode_png(_rgb(64, 64))
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=MAXPX)


def test_truncated_jpeg_rejected():
    data = _save(Image.fromarray(_rgb(64, 64)), "JPEG")
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=MAXPX)


def test_decompression_bomb_header_refused_before_decoding():
    # A tiny PNG whose header declares 100000 x 100000 pixels (10 gigapixels).
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    assert len(data) < 200
    with pytest.raises(BadImageError, match="(decompression bomb|pixel limit)"):
        decode_image(data, max_pixels=40_000_000)


def test_real_zlib_bomb_above_limit_refused():
    # 5000 x 5000 black image: ~25 MP that compresses to a few kB
    data = _save(Image.new("L", (5000, 5000), 0), "PNG")
    assert len(data) < 100_000
    with pytest.raises(BadImageError, match="pixel limit"):
        decode_image(data, max_pixels=1_000_000)


def test_above_max_pixels_rejected_and_at_limit_accepted():
    data = encode_png(_rgb(100, 100))
    with pytest.raises(BadImageError, match="10000 pixels, above the 9999-pixel limit"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)


def test_above_max_bytes_rejected(tmp_path):
    data = encode_png(_rgb(32, 32))
    with pytest.raises(BadImageError, match="byte limit"):
        decode_image(data, max_pixels=MAXPX, max_bytes=len(data) - 1)
    p = tmp_path / "x.png"
    p.write_bytes(data)
    with pytest.raises(BadImageError, match="byte limit"):
        decode_image_file(p, max_pixels=MAXPX, max_bytes=10)
    with pytest.raises(BadImageError, match="no such file"):
        decode_image_file(tmp_path / "missing.png", max_pixels=MAXPX)


def test_corrupt_png_crc_rejected():
    data = bytearray(encode_png(_rgb(16, 16)))
    # flip a byte inside the IDAT payload
    i = data.index(b"IDAT") + 10
    data[i] ^= 0xFF
    with pytest.raises(BadImageError):
        decode_image(bytes(data), max_pixels=MAXPX)


def test_bad_image_error_is_a_value_error():
    assert issubclass(BadImageError, ValueError)
