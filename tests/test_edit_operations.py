"""Edit operations on constructed images: recolor (OKLab chroma shift), move and resize (cut, paste,
fill), LaMa removal, instruction editing, verify-then-retry. Offline, CPU."""

from __future__ import annotations

import numpy as np
import pytest

from cielr_core import masks as M
from cielr_core.config import EditingConfig
from cielr_core.editing import EditingError, execute_step
from cielr_core.editing.color import COLORS, find_color, hue_deg, recolor, resolve_color, rgb8_to_oklab
from cielr_core.plan import EditStep
from cielr_core.ssr import SSR, Scene, make_object

H, W = 90, 120


def box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def scene_of(masks: dict[int, np.ndarray], labels: dict[int, str] | None = None) -> Scene:
    h, w = next(iter(masks.values())).shape
    objects = {i: make_object(i, m, label=(labels or {}).get(i, "thing")) for i, m in masks.items()}
    return Scene(SSR(image_sha256="0" * 64, width=w, height=h, objects=objects), masks)


def textured_object_image(seed=0):
    """Random background; an ellipse 'object' in muted blue with shading (a lightness ramp) and
    texture (noise), so that lightness structure inside the object is something to keep."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    obj = ((yy - 45) / 28.0) ** 2 + ((xx - 60) / 40.0) ** 2 <= 1.0
    shade = 0.45 + 0.5 * (xx - 20) / 80.0 + rng.normal(0, 0.06, (H, W))
    base = np.array([60, 90, 170], np.float64)
    tex = np.clip(base[None, None, :] * shade[..., None], 0, 255).round().astype(np.uint8)
    rgb[obj] = tex[obj]
    return rgb, obj


# -- recolor -------------------------------------------------------------------------------------
def test_colour_table_and_prompt_parsing():
    assert find_color("make the mug light blue please") == "light blue"
    assert find_color("a RED car") == "red"
    assert find_color("paint it #1A2b3C") == "#1a2b3c"
    assert find_color("make it shiny") is None
    assert resolve_color("Dark-Green") == COLORS["dark green"]
    assert resolve_color("#ff8000") == (255, 128, 0)
    with pytest.raises(EditingError, match="unknown colour 'chartreuse-ish'"):
        resolve_color("chartreuse-ish")


@pytest.mark.parametrize("color", ["red", "green", "orange", "purple", "#00c0c0"])
def test_recolor_moves_hue_keeps_lightness_structure_and_outside(color):
    rgb, obj = textured_object_image()
    out, detail = recolor(rgb, obj, color, lightness=0.5)
    assert np.array_equal(out[~obj], rgb[~obj])  # outside: bit for bit
    before, after = rgb8_to_oklab(rgb[obj]), rgb8_to_oklab(out[obj])
    target_hue = float(hue_deg(rgb8_to_oklab(np.array(resolve_color(color), np.uint8))))
    chroma = np.hypot(after[:, 1], after[:, 2])
    h = hue_deg(after[chroma > 0.03])
    diff = np.abs((h - target_hue + 180) % 360 - 180)
    assert len(h) > 0.9 * obj.sum()
    assert np.median(diff) < 3.0, (np.median(diff), detail)
    assert np.percentile(diff, 95) < 8.0
    # the input was blue: its hue was far from the target's (except for the cyan check, still > 25 deg)
    h0 = np.median(hue_deg(before))
    assert abs((h0 - target_hue + 180) % 360 - 180) > 25
    corr = np.corrcoef(before[:, 0], after[:, 0])[0, 1]
    assert corr > 0.99, corr
    assert detail["lightness_scale"] > 0.5


def test_recolor_achromatic_target_moves_lightness_all_the_way_keeping_structure():
    rgb, obj = textured_object_image(1)
    out, detail = recolor(rgb, obj, "white")
    before, after = rgb8_to_oklab(rgb[obj]), rgb8_to_oklab(out[obj])
    assert after[:, 0].mean() > before[:, 0].mean() + 0.2
    assert np.hypot(after[:, 1], after[:, 2]).max() < 0.02  # neutral
    assert np.corrcoef(before[:, 0], after[:, 0])[0, 1] > 0.98
    assert 0.5 <= detail["lightness_scale"] < 1.0  # the spread shrank to stay under white, not to nothing


def test_recolor_step_uses_the_colour_of_the_prompt_without_the_inpainter():
    rgb, obj = textured_object_image(2)
    step = EditStep(subtask="make the mug red", operation="recolor", target_ids=[1], prompt="a red mug")

    class MustNotBeCalled:
        name, follows_prompt, resolution = "test-double/must-not-be-called", True, None

        def inpaint(self, *a, **k):
            raise AssertionError("the chroma recolor must not call the inpainter")

    r = execute_step(rgb, step, scene_of({1: obj}), EditingConfig(), inpainter=MustNotBeCalled())
    assert not r.skipped and r.backend == "color/oklab"
    assert np.array_equal(r.mask, obj)  # no dilation: only the object may change
    assert np.array_equal(r.image[~obj], rgb[~obj])
    assert r.detail["color"] == "red" and r.detail["space"] == "oklab"
    assert (r.image[obj] != rgb[obj]).any()


def test_recolor_without_a_colour_falls_back_to_the_inpainter_and_says_so():
    rgb, obj = textured_object_image(3)
    calls = []

    class Invert:
        name, follows_prompt, resolution = "test-double/invert", True, None

        def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
            calls.append(prompt)
            out = image.copy()
            out[mask] = 255 - out[mask]
            return out

    step = EditStep(subtask="make it look shiny", operation="recolor", target_ids=[1], prompt="a shiny mug")
    r = execute_step(rgb, step, scene_of({1: obj}), EditingConfig(dilate_px=2, feather_px=0), inpainter=Invert())
    assert calls == ["a shiny mug"] and r.backend == "test-double/invert"
    assert "no colour named" in r.detail["recolor"]
    generate = EditingConfig(recolor_mode="generate", dilate_px=0, feather_px=0)
    r = execute_step(rgb, EditStep(subtask="x", operation="recolor", target_ids=[1], prompt="a red mug"),
                     scene_of({1: obj}), generate, inpainter=Invert())
    assert r.backend == "test-double/invert" and calls[-1] == "a red mug"
