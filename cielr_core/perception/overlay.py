"""A picture of an SSR for humans: coloured masks, outlines, and ``id:label`` at each object."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from cielr_core.ssr import Scene


def color_for(object_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour per id (golden-ratio hue steps)."""
    h = (object_id * 0.61803398875) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(rgb: np.ndarray, scene: Scene, *, alpha: float = 0.45) -> np.ndarray:
    """uint8 (H, W, 3) RGB: masks blended in their colours (largest first, so small ones stay
    visible), outlined, and labelled ``id:label`` at the centroid."""
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    h, w = img.shape[:2]
    if (h, w) != (scene.ssr.height, scene.ssr.width):
        raise ValueError(f"image is {w}x{h} but the SSR describes {scene.ssr.width}x{scene.ssr.height}")
    out = img.astype(np.float32).copy()
    objs = sorted(scene.ssr.objects.values(), key=lambda o: -o.area)
    for o in objs:
        m = scene.masks[o.id]
        c = np.array(color_for(o.id), dtype=np.float32)
        out[m] = out[m] * (1 - alpha) + c * alpha
    out = np.clip(out, 0, 255).astype(np.uint8)
    thick = max(1, round(min(h, w) / 400))
    for o in objs:
        contours, _ = cv2.findContours(scene.masks[o.id].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color_for(o.id), thick)
    scale = max(0.35, min(h, w) / 900)
    for o in objs:
        text = f"{o.id}:{o.label}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(min(max(0, o.centroid[0] - tw / 2), max(0, w - tw)))
        y = int(min(max(th, o.centroid[1] + th / 2), h - base))
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out
