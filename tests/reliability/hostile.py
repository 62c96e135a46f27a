"""The hostile input corpus, generated on the fly (no binary fixtures in the repository).

:func:`write_images` writes every hostile image file into a folder and returns, per name, the file
and what must happen to it: ``("failed", <part of the message>)`` for a file that must be refused,
``("decodes", None)`` for an unusual file that must decode to RGB. :func:`write_good_images`
writes two small ordinary pictures.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG of under 200 bytes whose header declares ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A picture with a few flat rectangles on a gradient (something for the models to segment)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 90)], -1)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width * 2 // 3)), int(rng.integers(0, height * 2 // 3))
        a[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    return a.astype(np.uint8)


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 48x32 (w x h) JPEG whose EXIF Orientation 6 says "rotate 90° clockwise to view"; returns it
    and the upright picture's expected shape reference (32 wide, 48 high after the turn)."""
    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :24] = (250, 10, 10)  # left half red, right half blue as stored
    a[:, 24:] = (10, 10, 250)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(im, "JPEG", quality=95, exif=exif.tobytes()), a


def write_images(folder: Path) -> dict[str, tuple[Path, str, str | None]]:
    """Every hostile image; name -> (path, expected outcome, part of the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(scene(64, 48))
    png = encoded(good, "PNG")
    jpg = encoded(good, "JPEG", quality=90)
    files: dict[str, tuple[bytes | None, str, str | None]] = {
        "empty.png": (b"", "failed", "empty input"),
        "truncated.png": (png[: len(png) // 2], "failed", "truncated or corrupt"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "failed", "truncated or corrupt"),
        "text-named.png": (b"this is a text file, not a picture\n" * 20, "failed", "not a recognised image format"),
        "bomb.png": (bomb_png(), "failed", "decompression bomb"),
        "wide-30000x8.png": (encoded(Image.new("RGB", (30000, 8), (9, 9, 9)), "PNG"), "failed", "aspect ratio"),
        "tall-8x30000.png": (encoded(Image.new("RGB", (8, 30000), (9, 9, 9)), "PNG"), "failed", "aspect ratio"),
        "one-pixel.png": (encoded(Image.new("RGB", (1, 1), (200, 0, 0)), "PNG"), "failed", "minimum"),
        "png-named.jpg": (png, "decodes", None),
        "cmyk.jpg": (encoded(good.convert("CMYK"), "JPEG", quality=95), "decodes", None),
        "16bit.png": (encoded(Image.fromarray((scene(64, 48)[:, :, 0].astype(np.uint16) * 257)), "PNG"),
                      "decodes", None),
        "palette-transparent.png": (_palette_png(), "decodes", None),
        "animated.gif": (_animated(good, "GIF"), "decodes", None),
        "animated.png": (_animated(good, "PNG"), "decodes", None),
        "exif-rotated.jpg": (exif_rotated_jpeg()[0], "decodes", None),
    }
    out: dict[str, tuple[Path, str, str | None]] = {}
    for name, (data, outcome, message) in files.items():
        p = folder / name
        p.write_bytes(data)
        out[name] = (p, outcome, message)
    fifo = folder / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    out["fifo.png"] = (fifo, "failed", "FIFO")
    d = folder / "directory.png"
    d.mkdir(exist_ok=True)
    out["directory.png"] = (d, "failed", "directory")
    return out


def _palette_png() -> bytes:
    im = Image.fromarray(scene(64, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(im, "PNG", transparency=0)


def _animated(first: Image.Image, fmt: str) -> bytes:
    frames = [first, Image.fromarray(255 - np.asarray(first))]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def write_good_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate([(96, 64), (64, 80)]):
        p = folder / f"good-{i}.png"
        Image.fromarray(scene(w, h, seed=10 + i)).save(p)
        paths.append(p)
    return paths
