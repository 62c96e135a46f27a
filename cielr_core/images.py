"""Decode untrusted image bytes into one normal form: HxWx3 uint8 RGB.

* EXIF orientation is applied (the pixels are turned upright, the tag is then irrelevant).
* Grayscale (1/L), palette (P), alpha (LA/PA/RGBA: composited over white), 16-bit and 32-bit
  integer / float grayscale (scaled to 8 bits), CMYK and YCbCr/LAB are converted to RGB.
* Multi-frame files (GIF, TIFF) give their first frame.
* Anything else fails with :class:`BadImageError`, whose message says what and why: bytes that are
  not an image, truncated or corrupt files, headers declaring more than ``max_pixels`` pixels
  (checked BEFORE decoding, so a decompression bomb never allocates), files over ``max_bytes``,
  and (when given) a short side under ``min_side`` or a long side above ``max_aspect`` short sides
  (both also from the header, before decoding: a 30000x8 strip is refused, not padded to a square).
* :func:`decode_image_file` reads regular files only (:mod:`cielr_core.files`: no FIFO, device or
  directory is opened; the size is checked before reading).

:func:`image_digest` is a content hash of the decoded pixels (shape + bytes), so the same picture
saved as PNG or as a re-encoded lossless file has the same digest, while a different encoding of
lossy data (JPEG re-compression) of course does not.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class BadImageError(ValueError):
    """The input cannot be used as an image; the message says what and why."""

    transient = False


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None, min_side: int | None = None,
                 max_aspect: float | None = None) -> np.ndarray:
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
        except Exception as e:
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
            check_size(w, h, min_side=min_side, max_aspect=max_aspect, what=fmt)
            try:
                im.seek(0)
                im.load()
            except Image.DecompressionBombError as e:
                raise BadImageError(f"refused a decompression bomb: {e}") from e
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
                raise BadImageError(f"{fmt} {w}x{h} is truncated or corrupt: {e}") from e
            except Exception as e:
                raise BadImageError(f"{fmt} {w}x{h} could not be decoded: {type(e).__name__}: {e}") from e
            try:
                upright = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels as they are
                upright = im
            return _to_rgb(upright)


def check_size(width: int, height: int, *, min_side: int | None = None, max_aspect: float | None = None,
               what: str = "image") -> None:
    """:class:`BadImageError` when a side is under ``min_side`` pixels or the long side is more than
    ``max_aspect`` times the short one (the header's size, so nothing is decoded for it)."""
    short, long_ = min(width, height), max(width, height)
    if max_aspect is not None and long_ > max_aspect * short:
        raise BadImageError(
            f"{what} is {width}x{height}: aspect ratio {long_ / short:.1f}:1 is above the {max_aspect:g}:1 limit "
            "(limits.max_aspect_ratio); crop or split it"
        )
    if min_side is not None and short < min_side:
        raise BadImageError(
            f"{what} is {width}x{height}: a side under the {min_side}-pixel minimum (limits.min_image_side); "
            "too small to perceive"
        )


def decode_image_file(path: str | Path, *, max_pixels: int, max_bytes: int | None = None,
                      min_side: int | None = None, max_aspect: float | None = None) -> np.ndarray:
    """:func:`decode_image` on a local file, with a clear error when it cannot be read (regular
    files only, size checked before reading: :func:`cielr_core.files.read_regular_file`)."""
    from cielr_core.files import UnreadableFileError, read_regular_file

    p = Path(path)
    try:
        data = read_regular_file(p, max_bytes=max_bytes if max_bytes is not None else 1 << 62)
    except UnreadableFileError as e:
        raise BadImageError(str(e)) from e
    try:
        return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, min_side=min_side,
                            max_aspect=max_aspect)
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


def encode_png(image: Any) -> bytes:
    """Lossless PNG bytes of a PIL image or a uint8 HxW / HxWx1 / HxWx3 / HxWx4 array (bool: 0/255)."""
    if isinstance(image, Image.Image):
        im = image
    else:
        arr = np.asarray(image)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        if arr.dtype != np.uint8:
            raise TypeError(f"PNG images must be uint8 arrays, got {arr.dtype}")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"PNG images must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        im = Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of trusted encoded image bytes (our own PNGs) as stored: no normalisation."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im).copy()


def check_rgb(rgb: Any, *, error: type[Exception] = ValueError) -> np.ndarray:
    """``rgb`` as an array if it is the normal form (HxWx3 uint8, not empty); else ``error``."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise error(f"expected an HxWx3 uint8 RGB image, got shape {a.shape} dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise error(f"the image is empty ({a.shape[1]}x{a.shape[0]})")
    return a


def as_rgb(img: Any) -> np.ndarray:
    """The normal form (HxWx3 uint8) of a PIL image or an array: gray is repeated to 3 channels,
    alpha dropped, floats in 0..1 scaled to 0..255, other values rounded and clipped."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if a.ndim == 2:
        a = _gray_to_rgb(a)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


__all__ = [
    "BadImageError",
    "as_rgb",
    "check_rgb",
    "check_size",
    "decode_image",
    "decode_image_file",
    "decode_png",
    "encode_png",
    "image_digest",
]
