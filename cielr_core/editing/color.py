"""Recolor that keeps the object: a chroma shift in OKLab, named colours from a table.

``recolor`` used to regenerate the object with the inpainter at strength 1.0, which loses its
identity and texture. Here the object's pixels are converted to OKLab (Ottosson 2020, a
perceptual space whose ``L`` is lightness and whose ``(a, b)`` plane carries hue and chroma) and:

* hue and chroma are set to the target colour's (the chroma scaled, per pixel, by the pixel's
  lightness relative to the region's mean, so shading keeps its colour depth);
* lightness is moved by an AFFINE map ``L' = Lc + s * (L - mean L)``: the region's mean moves
  ``recolor_lightness`` of the way towards the target's lightness (always all the way for an
  achromatic target: white / grey / black), and ``s <= 1`` only shrinks the spread when the map
  would leave ``[L_MIN, L_MAX]``; the centre stops short of the target where needed so that
  ``s >= MIN_SCALE`` (a white target gives a light, still textured object, not a flat white). Lightness structure (texture, shading, edges) is therefore kept
  exactly up to that scale: its correlation with the input's is 1 before 8-bit rounding;
* a pixel whose new colour is outside the sRGB gamut loses chroma (never lightness) until it fits.

Pixels outside the region are the input's, bit for bit. A colour is a name from :data:`COLORS`
(``"red"``, ``"light blue"``, ...) or a hex code (``#rrggbb``); :func:`find_color` picks one out of a
free-text prompt ("make the mug dark green" -> ``dark green``).
"""

from __future__ import annotations

import re

import numpy as np

from cielr_core import masks as M

from .errors import EditingError

# sRGB values of the named colours (CSS Color 4 where CSS has the name; "grey" = "gray").
COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "light gray": (211, 211, 211),
    "light grey": (211, 211, 211),
    "dark gray": (80, 80, 80),
    "dark grey": (80, 80, 80),
    "silver": (192, 192, 192),
    "red": (220, 20, 20),
    "dark red": (139, 0, 0),
    "crimson": (220, 20, 60),
    "maroon": (128, 0, 0),
    "orange": (255, 140, 0),
    "yellow": (255, 215, 0),
    "gold": (212, 175, 55),
    "beige": (245, 245, 220),
    "tan": (210, 180, 140),
    "brown": (139, 69, 19),
    "olive": (128, 128, 0),
    "lime": (50, 205, 50),
    "green": (34, 139, 34),
    "light green": (144, 238, 144),
    "dark green": (0, 100, 0),
    "teal": (0, 128, 128),
    "turquoise": (64, 224, 208),
    "cyan": (0, 200, 220),
    "sky blue": (135, 206, 235),
    "light blue": (173, 216, 230),
    "blue": (30, 80, 220),
    "dark blue": (0, 0, 139),
    "navy": (0, 0, 128),
    "purple": (128, 0, 128),
    "violet": (143, 0, 255),
    "lavender": (181, 126, 220),
    "magenta": (255, 0, 255),
    "pink": (255, 105, 180),
    "light pink": (255, 182, 193),
}

#: hue/chroma of a target below this OKLab chroma counts as achromatic (white, grey, black)
ACHROMATIC_CHROMA = 0.02
L_MIN, L_MAX = 0.0, 1.0
#: the lightness spread (texture, shading) never shrinks below this fraction of the input's
MIN_SCALE = 0.5

_HEX = re.compile(r"#([0-9a-fA-F]{6})\b")


def color_names() -> list[str]:
    return sorted(COLORS)


def resolve_color(color: str) -> tuple[int, int, int]:
    """sRGB of a colour name (case and spacing insensitive; ``-``/``_`` count as spaces) or ``#rrggbb``."""
    s = " ".join(str(color).strip().lower().replace("-", " ").replace("_", " ").split())
    m = _HEX.fullmatch(s) or _HEX.fullmatch(str(color).strip())
    if m:
        h = m.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if s in COLORS:
        return COLORS[s]
    raise EditingError(f"unknown colour {color!r}; use #rrggbb or one of: {', '.join(color_names())}")


def find_color(text: str) -> str | None:
    """The colour a free-text prompt names: a ``#rrggbb`` code, else the longest colour name that
    occurs as whole words (``"a light blue mug"`` -> ``light blue``, not ``blue``); ``None`` if none."""
    if not text:
        return None
    m = _HEX.search(text)
    if m:
        return "#" + m.group(1).lower()
    words = " " + " ".join(re.findall(r"[a-z]+", text.lower().replace("-", " "))) + " "
    best = None
    for name in COLORS:
        if f" {name} " in words and (best is None or len(name) > len(best)):
            best = name
    return best


# -- colour spaces -------------------------------------------------------------------------------
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                [0.2119034982, 0.6806995451, 0.1073969566],
                [0.0883024619, 0.2817188376, 0.6299787005]])
_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                [1.9779984951, -2.4285922050, 0.4505937099],
                [0.0259040371, 0.7827717662, -0.8086757660]])
_M2_INV = np.linalg.inv(_M2)
_M1_INV = np.linalg.inv(_M1)


def linear_to_oklab(rgb: np.ndarray) -> np.ndarray:
    lms = np.asarray(rgb, dtype=np.float64) @ _M1.T
    return np.cbrt(lms) @ _M2.T


def oklab_to_linear(lab: np.ndarray) -> np.ndarray:
    lms_ = np.asarray(lab, dtype=np.float64) @ _M2_INV.T
    return (lms_ ** 3) @ _M1_INV.T


def rgb8_to_oklab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> OKLab (..., 3) float64."""
    return linear_to_oklab(srgb_to_linear(np.asarray(rgb, dtype=np.float64) / 255.0))


def oklab_to_rgb8(lab: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(linear_to_srgb(oklab_to_linear(lab)) * 255.0), 0, 255).astype(np.uint8)


def hue_deg(lab: np.ndarray) -> np.ndarray:
    """OKLab hue angle in degrees [0, 360)."""
    lab = np.asarray(lab, dtype=np.float64)
    return np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360.0


def _fit_gamut(L: np.ndarray, ab: np.ndarray, iters: int = 12) -> np.ndarray:
    """Scale each pixel's (a, b) by the largest t in [0, 1] (bisection) that keeps it in sRGB;
    lightness is never touched (t = 0, a grey of the same L, is always inside for 0 <= L <= 1)."""

    def inside(t: np.ndarray) -> np.ndarray:
        lin = oklab_to_linear(np.concatenate([L[:, None], ab * t[:, None]], axis=1))
        return np.all((lin >= -1e-6) & (lin <= 1 + 1e-6), axis=1)

    t = np.ones(len(L))
    ok = inside(t)
    if ok.all():
        return ab
    lo, hi = np.zeros(len(L)), np.ones(len(L))
    lo[ok] = 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        good = inside(mid)
        lo = np.where(good, mid, lo)
        hi = np.where(good, hi, mid)
    return ab * lo[:, None]


def recolor(rgb: np.ndarray, mask: np.ndarray, color: str | tuple[int, int, int], *,
            lightness: float = 0.5) -> tuple[np.ndarray, dict]:
    """``rgb`` with the pixels of ``mask`` recoloured to ``color``; returns (image, detail).

    ``lightness`` in [0, 1]: how far the region's mean lightness moves towards the target's (1 for
    an achromatic target). ``detail`` records the target (name, sRGB, OKLab hue), the lightness map
    (``L' = center + scale * (L - mean)``) and how many pixels lost chroma to the gamut.
    """
    m = M.as_bool(mask)
    out = np.asarray(rgb).copy()
    target = resolve_color(color) if isinstance(color, str) else tuple(int(v) for v in color)
    t_lab = rgb8_to_oklab(np.array(target, dtype=np.uint8))
    t_chroma = float(np.hypot(t_lab[1], t_lab[2]))
    detail: dict = {"color": color if isinstance(color, str) else None, "target_rgb": list(target),
                    "target_hue_deg": round(float(hue_deg(t_lab)), 2), "space": "oklab"}
    if not m.any():
        return out, detail
    lab = rgb8_to_oklab(out[m])
    L = lab[:, 0]
    mean = float(L.mean())
    k = 1.0 if t_chroma < ACHROMATIC_CHROMA else float(np.clip(lightness, 0.0, 1.0))
    center = mean + k * (float(t_lab[0]) - mean)
    lo, hi = float(L.min()) - mean, float(L.max()) - mean
    # keep at least MIN_SCALE of the lightness spread: the centre stops short of the target if needed
    center = min(center, L_MAX - MIN_SCALE * max(hi, 0.0))
    center = max(center, L_MIN - MIN_SCALE * min(lo, 0.0))
    scale = 1.0
    if hi > 0 and center + hi > L_MAX:
        scale = min(scale, (L_MAX - center) / hi)
    if lo < 0 and center + lo < L_MIN:
        scale = min(scale, (L_MIN - center) / lo)
    scale = max(0.0, scale)
    L2 = center + scale * (L - mean)
    # chroma follows the pixel's lightness relative to the region (shading keeps its depth)
    rel = np.clip(L2 / max(center, 1e-6), 0.0, 1.5)
    ab = np.stack([np.full_like(L2, t_lab[1]), np.full_like(L2, t_lab[2])], axis=1) * rel[:, None]
    fitted = _fit_gamut(L2, ab)
    clipped = int(np.sum(np.any(np.abs(fitted - ab) > 1e-9, axis=1)))
    out[m] = oklab_to_rgb8(np.concatenate([L2[:, None], fitted], axis=1))
    detail.update(lightness_mean=round(mean, 4), lightness_center=round(center, 4),
                  lightness_scale=round(scale, 4), gamut_clipped_px=clipped)
    return out, detail
