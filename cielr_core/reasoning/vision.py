"""Letting the reasoner see the image: set-of-mark pictures of the SSR.

With ``reasoning.show_image`` every LLM call of the loop gets, beside the SSR text, the image with
each SSR object's outline drawn in its colour and its id written at its centroid (set-of-mark
prompting), so attribute-based targets ("the man in red", "the ripest banana") can be told apart
by looking while the answer still names SSR ids. The picture is redrawn for each SSR version (new
objects, new ids). The backend must accept images: an OpenAI-compatible endpoint serving a
vision-language model (image content parts), see :mod:`.openai_backend`.
"""

from __future__ import annotations

import cv2
import numpy as np

from cielr_core.perception.overlay import color_for
from cielr_core.ssr import Scene

# appended to the system message when the image is shown: change it only with a REASONING_CODE_VERSION bump
VISION_NOTE = (
    "You also see the image itself. Each SSR object is outlined on it in its own colour with its id "
    "written at its centre (the same ids as in the SSR). Use what you see (colours, ripeness, clothing, "
    "text, state) together with the SSR, and still answer with SSR ids only."
)


def set_of_marks(rgb: np.ndarray, scene: Scene) -> np.ndarray:
    """uint8 (H, W, 3): ``rgb`` with every object's outline in its colour and its id in a dark box
    at its centroid (smallest objects drawn last, so their ids stay readable)."""
    img = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)).copy()
    h, w = img.shape[:2]
    if (h, w) != (scene.ssr.height, scene.ssr.width):
        raise ValueError(f"image is {w}x{h} but the SSR describes {scene.ssr.width}x{scene.ssr.height}")
    objs = sorted(scene.ssr.objects.values(), key=lambda o: -o.area)
    thick = max(1, round(min(h, w) / 300))
    for o in objs:
        contours, _ = cv2.findContours(scene.masks[o.id].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, color_for(o.id), thick)
    scale = max(0.3, min(h, w) / 700)
    for o in objs:
        text = str(o.id)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = int(min(max(0, o.centroid[0] - tw / 2), max(0, w - tw - 2)))
        y = int(min(max(th + 1, o.centroid[1] + th / 2), h - base - 1))
        cv2.rectangle(img, (max(0, x - 1), max(0, y - th - 1)), (min(w - 1, x + tw + 1), min(h - 1, y + base)),
                      (0, 0, 0), -1)
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color_for(o.id), thick, cv2.LINE_AA)
    return img
