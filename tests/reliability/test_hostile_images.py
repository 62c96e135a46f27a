"""Hostile images at the library and task level: every file of the generated corpus is refused with a
clear message or decodes to RGB; nothing blocks (FIFO, device), nothing decodes a bomb; a large
image is perceived through a bounded working copy whose results map back to its own size."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cielr_core.config import load_settings
from cielr_core.files import UnreadableFileError, read_regular_file
from cielr_core.images import BadImageError, check_size, decode_image, decode_image_file
from reliability.hostile import exif_rotated_jpeg, write_images

LIMITS = {"max_pixels": 40_000_000, "max_bytes": 100 * 1024 * 1024, "min_side": 32, "max_aspect": 20.0}


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout} s"
    return box


def test_every_corpus_image_is_refused_clearly_or_decodes(tmp_path):
    corpus = write_images(tmp_path / "corpus")
    seen = {}
    for name, (path, outcome, message) in corpus.items():
        box = _in_thread(lambda p=path: decode_image_file(p, **LIMITS))
        if outcome == "failed":
            err = box.get("error")
            assert isinstance(err, BadImageError), (name, box)
            assert message.lower() in str(err).lower() and str(path) in str(err), (name, str(err))
            assert "Traceback" not in str(err)
        else:
            assert "error" not in box, (name, box.get("error"))
            rgb = box["value"]
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        seen[name] = outcome
    assert len(seen) == 17


def test_unusual_encodings_decode_to_the_expected_pixels(tmp_path):
    corpus = write_images(tmp_path / "corpus")
    dec = {n: decode_image_file(p, **LIMITS) for n, (p, o, _) in corpus.items() if o == "decodes"}
    assert dec["png-named.jpg"].shape == (48, 64, 3)  # the format comes from the bytes, not the name
    assert dec["cmyk.jpg"].shape == (48, 64, 3)
    g = dec["16bit.png"]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()  # 16-bit gray scaled to 8 bits
    pal = dec["palette-transparent.png"]
    idx0 = np.asarray(Image.open(corpus["palette-transparent.png"][0])) == 0
    assert idx0.any() and (pal[idx0] == 255).all()  # the transparent palette entry is composited on white
    gif, apng = dec["animated.gif"], dec["animated.png"]
    assert gif.shape == apng.shape == (48, 64, 3)
    assert np.abs(apng.astype(int) - np.asarray(Image.open(corpus["png-named.jpg"][0]).convert("RGB"))).max() == 0
    # EXIF orientation 6: stored 48 wide x 32 high, left half red; upright it is 32 wide x 48 high
    # with the red half on top (a 90° clockwise turn)
    up = dec["exif-rotated.jpg"]
    _, stored = exif_rotated_jpeg()
    assert stored.shape[:2] == (32, 48) and up.shape[:2] == (48, 32)
    assert up[:20, :, 0].mean() > 200 and up[28:, :, 2].mean() > 200


def test_size_rules_come_from_the_header_before_decoding():
    with pytest.raises(BadImageError, match=r"30000x8: aspect ratio 3750.0:1 is above the 20:1 limit \(limits.max_aspect_ratio\)"):
        check_size(30000, 8, min_side=1, max_aspect=20)
    with pytest.raises(BadImageError, match=r"1x1: a side under the 32-pixel minimum \(limits.min_image_side\)"):
        check_size(1, 1, min_side=32, max_aspect=20)
    check_size(640, 32, min_side=32, max_aspect=20)  # exactly at both limits: accepted
    # a header that claims 30000x8 with no pixel data at all: refused for its shape, not as truncated
    from reliability.hostile import bomb_png

    with pytest.raises(BadImageError, match="aspect ratio"):
        decode_image(bomb_png(30000, 8), **LIMITS)


def test_fifo_device_directory_and_size_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2000)
    for path, why in [(fifo, "is a FIFO"), (Path("/dev/zero"), "is a character device"),
                      (link, "is a character device"), (tmp_path, "is a directory"),
                      (big, "2000 bytes, above the 1000-byte limit")]:
        box = _in_thread(lambda p=path: read_regular_file(p, max_bytes=1000))
        assert isinstance(box.get("error"), UnreadableFileError), (path, box)
        assert why in str(box["error"]), str(box["error"])


def test_load_task_reads_regular_files_only(tmp_path):
    """tasks.images.read_uri (what the load-image task calls) on a FIFO, a device and a directory."""
    from tasks.images import read_uri

    s = load_settings(profile="tiny", overrides={"store": {"url": str(tmp_path / "store")}})
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for uri, why in [(str(fifo), "FIFO"), ("/dev/zero", "character device"), (f"file://{tmp_path}", "directory")]:
        box = _in_thread(lambda u=uri: read_uri(u, s))
        assert isinstance(box.get("error"), BadImageError) and why in str(box["error"]), box


def test_large_image_is_perceived_through_a_bounded_copy(tiny_models_dir):
    """A picture twice the working bound, perceived: the models see its half-size copy, and what comes
    back is exactly the half-size picture's result mapped to full size (masks nearest, boxes x2)."""
    from cielr_core.perception import Perceiver
    from cielr_core.perception.working import masks_to_size
    from reliability.hostile import scene

    small = np.kron(scene(36, 24, seed=3), np.ones((2, 2, 1), np.uint8))  # 72 x 48, 2x2 blocks
    big = np.repeat(np.repeat(small, 2, 0), 2, 1)  # 144 x 96: its area-average at 72 wide is `small`
    s = load_settings(profile="tiny", overrides={"models_dir": str(tiny_models_dir),
                                                 "limits": {"max_working_side": 72}})
    p = Perceiver(s)
    few = {"points_per_side": 4}  # a coarse point grid: the mapping is what is tested, not SAM2
    seg_big, seg_small = p.segment(big, few), p.segment(small, few)
    assert seg_big.masks.shape[1:] == (96, 144)
    assert np.array_equal(seg_big.masks, masks_to_size(seg_small.masks, 96, 144))
    det_big, det_small = p.detect(big), p.detect(small)
    assert det_big.labels == det_small.labels and len(det_big.labels) > 0
    np.testing.assert_allclose(det_big.boxes, det_small.boxes * 2, atol=1e-3)
    d = p.depth(big)
    assert d.shape == (96, 144) and np.isfinite(d).all()
    # a 20:1 strip: DepthAnything's processor would round its short side to zero; it is padded instead
    thin = scene(160, 8, seed=6)
    d = p.depth(thin)
    assert d.shape == (8, 160) and np.isfinite(d).all()


def test_lama_runs_a_bounded_copy_of_a_large_crop(tiny_models_dir):
    from cielr_core.editing import lama
    from cielr_core.editing.prep import resize_mask, resize_rgb
    from reliability.hostile import scene

    ckpt = Path(tiny_models_dir) / "lama" / "big-lama.pt"
    img = scene(160, 96, seed=4)
    mask = np.zeros((96, 160), bool)
    mask[30:60, 50:100] = True
    bounded = lama.LamaInpainter(str(ckpt), max_side=80).inpaint(img, mask)
    assert bounded.shape == img.shape
    plain = lama.LamaInpainter(str(ckpt)).inpaint(resize_rgb(img, (80, 48)), resize_mask(mask, (80, 48)))
    assert np.array_equal(bounded, resize_rgb(plain, (160, 96)))
