"""Decode untrusted image bytes into one normal form: HxWx3 uint8 RGB.

* EXIF orientation is applied (the pixels are turned upright, the tag is then irrelevant).
* Grayscale (1/L), palette (P), alpha (LA/PA/RGBA: composited over white), 16-bit and 32-bit
  integer / float grayscale (scaled to 8 bits), CMYK and YCbCr/LAB are converted to RGB.
* Multi-frame files (GIF, TIFF) give their first frame.
* Anything else fails with :class:`BadImageError`, whose message says what and why: bytes that are
  not an image, truncated or corrupt files, headers declaring more than ``max_pixels`` pixels
  (checked BEFORE decoding, so a decompression bomb never allocates), files over ``max_bytes``.

:func:`image_digest` is a content hash of the decoded pixels (shape + bytes), so the same picture
saved as PNG or as a re-encoded lossless file has the same digest, while a different encoding of
lossy data (JPEG re-compression) of course does not.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage.store import encode_png as _encode_png


class BadImageError(ValueError):
    """The input cannot be used as an image; the message says what and why."""


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> np.ndarray:
    """Decode ``data`` to an HxWx3 uint8 RGB array (see the module docstring for the rules)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImageError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BadImageError("empty input: 0 bytes is not an image")
    if max_bytes is not None and len(data) > max_bytes:
        raise BadImageError(f"image file is {len(data)} bytes, above the {max_bytes}-byte limit (limits.max_image_bytes)")
    with warnings.catch_warnings():
        # We check the pixel count ourselves (below) against our own limit, before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise BadImageError(f"refused a decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise BadImageError(
                f"not a recognised image format ({len(data)} bytes starting {data[:8]!r})"
            ) from e
        except Exception as e:  # noqa: BLE001 - any parser failure on the header is bad input
            raise BadImageError(f"cannot read the image header: {type(e).__name__}: {e}") from e
        with im:
            w, h = im.size
            fmt = im.format or "image"
            if w <= 0 or h <= 0:
                raise BadImageError(f"{fmt} declares an empty size {w}x{h}")
            if w * h > max_pixels:
                raise BadImageError(
                    f"{fmt} is {w}x{h} = {w * h} pixels, above the {max_pixels}-pixel limit "
                    "(limits.max_image_pixels); refused before decoding"
                )
            try:
                im.seek(0)
                im.load()
            except Image.DecompressionBombError as e:
                raise BadImageError(f"refused a decompression bomb: {e}") from e
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
                raise BadImageError(f"{fmt} {w}x{h} is truncated or corrupt: {e}") from e
            except Exception as e:  # noqa: BLE001 - decoder failures on hostile input
                raise BadImageError(f"{fmt} {w}x{h} could not be decoded: {type(e).__name__}: {e}") from e
            try:
                upright = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels as they are
                upright = im
            return _to_rgb(upright)


def decode_image_file(path: str | Path, *, max_pixels: int, max_bytes: int | None = None) -> np.ndarray:
    """:func:`decode_image` on a local file, with a clear error when it cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise BadImageError(f"{p}: {size} bytes, above the {max_bytes}-byte limit (limits.max_image_bytes)")
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise BadImageError(f"{p}: no such file") from e
    except IsADirectoryError as e:
        raise BadImageError(f"{p}: is a directory, not an image") from e
    except PermissionError as e:
        raise BadImageError(f"{p}: permission denied") from e
    try:
        return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except BadImageError as e:
        raise BadImageError(f"{p}: {e}") from e


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = _gray_to_rgb(_high_depth_to_u8(np.asarray(im), mode))
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) or (
        mode in ("L", "RGB") and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        arr = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    else:  # 1, L, P, CMYK, YCbCr, LAB, HSV
        arr = np.asarray(im.convert("RGB"))
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - defensive
        raise BadImageError(f"unsupported image mode {mode!r}")
    return arr


def _high_depth_to_u8(a: np.ndarray, mode: str) -> np.ndarray:
    a = np.asarray(a)
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if 0.0 <= lo and hi <= 1.0:
            scaled = a * 255.0
        elif 0.0 <= lo and hi <= 255.0:
            scaled = a
        else:
            scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if mode == "I" and (a.min() < 0 or a.max() > 65535):
        lo, hi = int(a.min()), int(a.max())
        return (((a - lo) * 255) // max(1, hi - lo)).astype(np.uint8)
    # 16-bit range -> 8-bit: round(v * 255 / 65535) == round(v / 257)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def image_digest(rgb: np.ndarray) -> str:
    """sha256 over the array's shape and pixel bytes (independent of the file encoding)."""
    a = np.ascontiguousarray(rgb)
    if a.dtype != np.uint8:
        raise TypeError(f"image_digest needs a uint8 array, got {a.dtype}")
    h = hashlib.sha256()
    h.update(("x".join(str(d) for d in a.shape) + ":uint8:").encode())
    h.update(a.tobytes())
    return h.hexdigest()


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of an RGB (or gray / RGBA) uint8 array."""
    return _encode_png(rgb)


__all__ = ["BadImageError", "decode_image", "decode_image_file", "image_digest", "encode_png"]
