"""Edit operations on constructed images: recolor (OKLab chroma shift), move and resize (cut, paste,
fill), LaMa removal, instruction editing, verify-then-retry. Offline, CPU."""

from __future__ import annotations

import numpy as np
import pytest
from test_editing import box, scene_of  # the editing tests' constructed scenes

from cielr_core import masks as M
from cielr_core.config import EditingConfig
from cielr_core.editing import EditingError, execute_step
from cielr_core.editing.color import COLORS, find_color, hue_deg, recolor, resolve_color, rgb8_to_oklab
from cielr_core.plan import EditStep

H, W = 90, 120




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


# -- move / resize -------------------------------------------------------------------------------
BG = np.array([40, 90, 160], np.uint8)


def flat_scene_image(obj_box=(10, 20, 40, 40), seed=0, color=None):
    """A uniform background with a textured (or flat ``color``) rectangle object at ``obj_box``
    (x0, y0, x1, y1); returns (rgb, object mask)."""
    rgb = np.tile(BG, (H, W, 1))
    x0, y0, x1, y1 = obj_box
    obj = box(H, W, y0, y1, x0, x1)
    if color is None:
        rgb[obj] = np.random.default_rng(seed).integers(0, 256, (obj.sum(), 3), dtype=np.uint8)
    else:
        rgb[obj] = color
    return rgb, obj


SHARP = EditingConfig(dilate_px=2, feather_px=0, remove_backend="opencv")


def move(target=1, **placement) -> EditStep:
    from cielr_core.plan import Placement

    return EditStep(subtask="move it", operation="move", target_ids=[target], placement=Placement(**placement))


def test_move_to_a_box_of_the_same_size_is_an_exact_translation():
    rgb, obj = flat_scene_image()
    r = execute_step(rgb, move(relation="box", box=(70, 50, 100, 70)), scene_of({1: obj}), SHARP)
    assert not r.skipped and r.backend == "cut-paste+opencv/telea"
    assert r.detail["from_box"] == [10, 20, 40, 40] and r.detail["to_box"] == [70, 50, 100, 70]
    assert r.detail["shadows"] == "not moved"
    assert np.array_equal(r.image[50:70, 70:100], rgb[20:40, 10:40])  # the object's own pixels, shifted
    hole = M.dilate(obj, 2)
    err = np.abs(r.image[hole].astype(int) - BG.astype(int))
    assert err.max() <= 4 and err.mean() < 1.0  # the vacated area is background (Telea's fill)
    pasted = box(H, W, 50, 70, 70, 100)
    assert np.array_equal(r.mask, hole | pasted)
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


def test_move_relative_to_another_object_keeps_size_and_follows_the_placement_rules():
    rgb, obj = flat_scene_image((10, 10, 30, 24))  # 20 x 14
    anchor = box(H, W, 50, 80, 60, 100)  # x 60..100, y 50..80
    rgb[anchor] = (200, 200, 200)
    sc = scene_of({1: obj, 2: anchor})
    for relation, expected in [("left_of", (40, 66, 60, 80)), ("right_of", (100, 66, 120, 80)),
                               ("on", (70, 43, 90, 57)), ("above", (70, 36, 90, 50))]:
        r = execute_step(rgb, move(relation=relation, object_id=2), sc, SHARP)
        assert r.detail["to_box"] == list(expected), relation
        x0, y0, x1, y1 = expected
        assert np.array_equal(r.image[y0:y1, x0:x1], rgb[10:24, 10:30]), relation
        assert np.array_equal(r.image[~r.mask], rgb[~r.mask])
    with pytest.raises(EditingError, match="relative to itself"):
        execute_step(rgb, move(relation="on", object_id=1), sc, SHARP)


def test_move_clips_at_the_border_and_skips_when_wholly_outside():
    rgb, obj = flat_scene_image()
    r = execute_step(rgb, move(relation="box", box=(105, 75, 135, 95)), scene_of({1: obj}), SHARP)
    assert r.detail["to_box"] == [105, 75, 135, 95]
    assert np.array_equal(r.image[75:90, 105:120], rgb[20:35, 10:25])  # the part inside the image
    r = execute_step(rgb, move(relation="box", box=(200, 200, 230, 220)), scene_of({1: obj}), SHARP)
    assert r.skipped and "outside the image" in r.reason and np.array_equal(r.image, rgb)


def test_resize_twice_about_the_bottom_keeps_the_ground_line():
    color = (230, 40, 30)
    rgb, obj = flat_scene_image((50, 30, 70, 40), color=color)  # 20 x 10, bottom at y = 40
    step = EditStep(subtask="make it bigger", operation="resize", target_ids=[1], scale=2.0, anchor="bottom")
    r = execute_step(rgb, step, scene_of({1: obj}), SHARP)
    assert r.detail["to_box"] == [40, 20, 80, 40]
    assert np.all(r.image[20:40, 40:80] == color)  # the whole new box, exactly the object's colour
    assert np.array_equal(r.mask, M.dilate(obj, 2) | box(H, W, 20, 40, 40, 80))
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


def test_resize_half_about_the_centre_fills_the_ring_with_background():
    color = (230, 40, 30)
    rgb, obj = flat_scene_image((40, 20, 80, 60), color=color)  # 40 x 40
    step = EditStep(subtask="smaller", operation="resize", target_ids=[1], scale=0.5)  # anchor: center
    r = execute_step(rgb, step, scene_of({1: obj}), SHARP)
    assert r.detail["to_box"] == [50, 30, 70, 50] and r.detail["anchor"] == "center"
    assert np.all(r.image[30:50, 50:70] == color)
    ring = obj & ~box(H, W, 30, 50, 50, 70)
    err = np.abs(r.image[ring].astype(int) - BG.astype(int))
    assert err.max() <= 4 and err.mean() < 1.0
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


def test_pasted_edge_is_feathered_inside_and_interior_exact():
    rgb, obj = flat_scene_image((10, 20, 40, 40))
    cfg = SHARP.model_copy(update={"feather_px": 3})
    r = execute_step(rgb, move(relation="box", box=(70, 50, 100, 70)), scene_of({1: obj}), cfg)
    assert np.array_equal(r.image[54:66, 74:96], rgb[24:36, 14:36])  # >= 4 px from the edge: exact
    edge = r.image[50, 70:100].astype(int)
    assert not np.array_equal(edge, rgb[20, 10:40].astype(int))  # the outermost row is blended
    # blended towards the background: the edge row lies between the object's row and the background
    assert np.abs(edge - BG.astype(int)).mean() < np.abs(rgb[20, 10:40].astype(int) - BG.astype(int)).mean()
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


def test_resize_needs_a_scale_and_move_a_placement():
    with pytest.raises(ValueError, match="needs a scale"):
        EditStep(subtask="x", operation="resize", target_ids=[1])
    with pytest.raises(ValueError, match="needs a placement"):
        EditStep(subtask="x", operation="move", target_ids=[1])


# -- plan schema versions ------------------------------------------------------------------------
def test_old_plans_read_as_version_1_and_new_operations_need_version_2():
    import json

    from cielr_core.plan import PLAN_SCHEMA_VERSION, EditPlan, read_plan

    old = {"instruction": "remove the cup", "steps": [
        {"subtask": "remove the cup", "status": "ok", "reason": "", "operation": "remove", "target_ids": [1],
         "prompt": "", "placement": None, "ssr_digest": None}]}
    plan = read_plan(json.dumps(old).encode())
    assert plan.schema_version == 1 and plan.steps[0].operation == "remove"
    new = EditPlan(instruction="x", steps=[EditStep(subtask="s", operation="resize", target_ids=[1], scale=0.5)])
    assert new.schema_version == PLAN_SCHEMA_VERSION == 2
    assert read_plan(new.canonical_json()) == new
    with pytest.raises(ValueError, match="'resize' is not in plan schema version 1"):
        read_plan({**json.loads(new.canonical_json()), "schema_version": 1})
    with pytest.raises(ValueError, match="unknown plan schema_version 9"):
        read_plan({"instruction": "x", "steps": [], "schema_version": 9})


# -- LaMa removal --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lama(session_tmp):
    from conftest import tiny_family

    return tiny_family(session_tmp, "lama") / "big-lama.pt"


def test_pad_to_multiple_reflects_and_keeps_the_original():
    from cielr_core.editing.lama import pad_to_multiple

    a = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    p, (h, w) = pad_to_multiple(a, 8)
    assert p.shape == (8, 8, 3) and (h, w) == (5, 7)
    assert np.array_equal(p[:5, :7], a)
    assert np.array_equal(p[5, :7], a[4]) and np.array_equal(p[:5, 7], a[:, 6])  # symmetric reflection
    same, _ = pad_to_multiple(np.zeros((16, 24), np.uint8), 8)
    assert same.shape == (16, 24)


def test_lama_torchscript_loads_from_a_local_path_and_is_padded_to_its_stride(tiny_lama):
    import torch

    from cielr_core.editing.lama import LamaInpainter, make_lama

    raw = torch.jit.load(str(tiny_lama))
    with pytest.raises(Exception, match="multiples of 8"):  # the module itself refuses unpadded input
        raw(torch.rand(1, 3, 37, 53), torch.ones(1, 1, 37, 53))
    cfg = EditingConfig(lama={"model": {"id": "tiny/lama", "path": str(tiny_lama)}})
    inp = make_lama(cfg)
    assert isinstance(inp, LamaInpainter) and inp.name == "lama/tiny/lama" and inp.follows_prompt is False
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    hole = box(37, 53, 10, 20, 30, 45)
    out = inp.inpaint(rgb, hole)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out[~hole], rgb[~hole])  # the module composites; the padding was cropped away
    assert (out[hole] != rgb[hole]).any()


def test_lama_checkpoint_from_the_hugging_face_cache(tiny_lama, tmp_path, monkeypatch):
    import shutil

    from cielr_core.editing.lama import lama_checkpoint, make_lama
    from cielr_core.models import ModelUnavailableError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--someone--big-lama"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    shutil.copy(tiny_lama, snap / "big-lama.pt")
    assert lama_checkpoint("someone/big-lama", "big-lama.pt") == str(snap / "big-lama.pt")
    inp = make_lama(EditingConfig(lama={"model": {"id": "someone/big-lama"}}))
    out = inp.inpaint(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool))
    assert out.shape == (8, 8, 3)
    with pytest.raises(ModelUnavailableError, match="hf download nobody/no-lama big-lama.pt"):
        lama_checkpoint("nobody/no-lama", "big-lama.pt")
    with pytest.raises(ModelUnavailableError, match="CIELR_EDITING__LAMA__MODEL__PATH"):
        lama_checkpoint(str(tmp_path / "absent.pt"), "big-lama.pt")


def test_remove_uses_lama_undilated_when_available_and_says_so(tiny_lama):
    rgb, obj = textured_object_image(4)
    cfg = EditingConfig(lama={"model": {"id": "tiny/lama", "path": str(tiny_lama)}}, dilate_px=8)
    r = execute_step(rgb, EditStep(subtask="remove it", operation="remove", target_ids=[1]), scene_of({1: obj}), cfg)
    assert r.backend == "lama/tiny/lama" and r.detail["removal"] == "lama/tiny/lama"
    assert "removal_passed_over" not in r.detail and r.prompt is None
    assert np.array_equal(r.mask, obj)  # editing.lama.dilate_px = 0: the paper's best variant
    assert np.array_equal(r.image[~obj], rgb[~obj])


def test_remove_falls_back_to_opencv_and_the_detail_says_why(tmp_path):
    from cielr_core.models import ModelUnavailableError

    rgb, obj = textured_object_image(5)
    cfg = EditingConfig(lama={"model": {"id": "x/lama", "path": str(tmp_path / "none.pt")}}, dilate_px=2)
    r = execute_step(rgb, EditStep(subtask="remove it", operation="remove", target_ids=[1]), scene_of({1: obj}), cfg)
    assert r.backend == "opencv/telea"
    passed = {p["backend"]: p["unavailable"] for p in r.detail["removal_passed_over"]}
    assert set(passed) == {"lama", "diffusers"} and "none.pt" in passed["lama"]
    assert np.array_equal(r.mask, M.dilate(obj, 2))
    with pytest.raises(ModelUnavailableError, match="none.pt"):
        execute_step(rgb, EditStep(subtask="remove it", operation="remove", target_ids=[1]), scene_of({1: obj}),
                     cfg.model_copy(update={"remove_backend": "lama"}))


def test_remove_falls_back_to_sd_inpaint_with_the_background_prompt(session_tmp, tmp_path):
    from conftest import tiny_family

    from cielr_core.config import load_settings

    tiny_family(session_tmp, "sd-inpaint")
    s = load_settings(profile="tiny", overrides={"models_dir": str(session_tmp / "models"),
                                                 "editing": {"lama": {"model": {"path": str(tmp_path / "no.pt")}}}})
    rgb, obj = textured_object_image(6)
    r = execute_step(rgb, EditStep(subtask="remove it", operation="remove", target_ids=[1]), scene_of({1: obj}), s)
    assert r.backend == "diffusers/tiny/sd-inpaint" and r.prompt == s.editing.remove_prompt
    assert [p["backend"] for p in r.detail["removal_passed_over"]] == ["lama"]
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


def test_move_fills_the_hole_with_lama_when_available(tiny_lama):
    rgb, obj = flat_scene_image()
    cfg = EditingConfig(**{**SHARP.model_dump(), "remove_backend": "auto",
                           "lama": {"model": {"id": "tiny/lama", "path": str(tiny_lama)}}})
    r = execute_step(rgb, move(relation="box", box=(70, 50, 100, 70)), scene_of({1: obj}), cfg)
    assert r.backend == "cut-paste+lama/tiny/lama"
    assert np.array_equal(r.mask, obj | box(H, W, 50, 70, 70, 100))  # LaMa: the hole undilated
    assert np.array_equal(r.image[50:70, 70:100], rgb[20:40, 10:40])
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])


# -- reason answers for the new operations (prompt set 3) ----------------------------------------
def _reason(answer, prompt_version="3", mode="single_pass"):
    from test_reasoning import ScriptedLLM, make_scene

    from cielr_core.config import load_settings
    from cielr_core.reasoning import Reasoner

    s = load_settings(profile="default", overrides={"reasoning": {"prompt_version": prompt_version, "mode": mode,
                                                                  "max_invalid_retries": 0}})
    llm = ScriptedLLM([("reason", answer)])
    step, _ = Reasoner(s, llm).plan_step("sub-task", "instruction", None, make_scene())
    return step, llm


@pytest.mark.parametrize("answer,expect", [
    ({"reason": "r", "status": "ok", "operation": "move", "target_ids": [0],
      "placement": {"relation": "left_of", "object_id": 2}},
     {"operation": "move", "target_ids": [0], "placement.relation": "left_of", "placement.object_id": 2}),
    ({"reason": "r", "status": "ok", "operation": "resize", "target_ids": [1], "scale": 1.5, "anchor": "bottom"},
     {"operation": "resize", "scale": 1.5, "anchor": "bottom"}),
    ({"reason": "r", "status": "ok", "operation": "recolor", "target_ids": [2], "color": "dark green",
      "prompt": "a dark green apple"}, {"operation": "recolor", "color": "dark green"}),
    ({"reason": "r", "status": "ok", "operation": "transform", "target_ids": [2], "prompt": "make it rotten"},
     {"operation": "transform", "prompt": "make it rotten", "target_ids": [2]}),
    ({"reason": "r", "status": "ok", "operation": "global", "prompt": "show the room at night"},
     {"operation": "global", "prompt": "show the room at night", "target_ids": []}),
])
def test_reason_answers_of_prompt_set_3_become_plan_steps(answer, expect):
    step, llm = _reason(answer)
    for k, v in expect.items():
        obj = step
        for part in k.split("."):
            obj = getattr(obj, part)
        assert obj == v, (k, obj)
    user = llm.calls[0]["messages"][-1]["content"]
    assert '"operation": "move"' in user and "dark green" in user  # the prompt shows the shapes and colours


def test_prompt_set_2_keeps_the_old_operations():
    from cielr_core.reasoning.llm import InvalidAnswerError

    with pytest.raises(InvalidAnswerError):
        _reason({"reason": "r", "status": "ok", "operation": "global", "prompt": "night"}, prompt_version="2")
    step, _ = _reason({"reason": "r", "status": "ok", "operation": "recolor", "target_ids": [0], "prompt": "a red cup"},
                      prompt_version="2")
    assert step.operation == "recolor" and step.color is None


# -- instruction editing: global and transform -------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ip2p_settings(session_tmp):
    from conftest import tiny_family

    from cielr_core.config import load_settings

    tiny_family(session_tmp, "ip2p")
    return load_settings(profile="tiny", overrides={"models_dir": str(session_tmp / "models")})


def test_global_step_through_a_tiny_instruct_pix2pix_reports_preservation(tiny_ip2p_settings):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from cielr_core import models as registry
    from cielr_core.editing.instruct import make_instruct_editor

    ed = make_instruct_editor(tiny_ip2p_settings)
    assert type(ed.pipeline()) is StableDiffusionInstructPix2PixPipeline  # from_pretrained, the real class
    assert ed.pipeline().unet.config.in_channels == 8
    loads = registry.stats().get("instruct", 0)
    rgb, _ = textured_object_image(7)
    step = EditStep(subtask="night", operation="global", prompt="show the room at night")
    r = execute_step(rgb, step, None, tiny_ip2p_settings, seed=2)
    assert not r.skipped and r.backend == "instruct/tiny/ip2p" and r.prompt == "show the room at night"
    assert r.image.shape == rgb.shape and r.mask.all()
    p = r.detail["preservation"]
    assert p["guaranteed"] is False and 0.0 <= p["changed_fraction"] <= 1.0 and p["mean_abs_diff"] > 0
    assert registry.stats().get("instruct", 0) == loads  # loaded once per process
    again = execute_step(rgb, step, None, tiny_ip2p_settings, seed=2)
    assert np.array_equal(again.image, r.image)


def test_transform_is_bounded_by_the_dilated_mask(tiny_ip2p_settings):
    rgb, obj = textured_object_image(8)
    step = EditStep(subtask="rot", operation="transform", target_ids=[1], prompt="make it rotten")
    r = execute_step(rgb, step, scene_of({1: obj}), tiny_ip2p_settings, seed=0)
    assert r.backend == "instruct/tiny/ip2p" and r.detail["preservation"]["guaranteed"] is True
    assert np.array_equal(r.mask, M.dilate(obj, tiny_ip2p_settings.editing.dilate_px))
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])
    assert (r.image[obj] != rgb[obj]).any()


def test_global_needs_an_instruction_and_no_targets():
    with pytest.raises(ValueError, match="takes no target_ids"):
        EditStep(subtask="x", operation="global", target_ids=[1], prompt="night")
    with pytest.raises(ValueError, match="needs the instruction"):
        EditStep(subtask="x", operation="global")


def test_missing_instruct_model_names_the_way_out(tmp_path):
    from cielr_core.editing.instruct import make_instruct_editor
    from cielr_core.models import ModelUnavailableError

    cfg = EditingConfig(instruct={"model": {"id": "x/ip2p", "path": str(tmp_path / "absent")}})
    with pytest.raises(ModelUnavailableError, match="CIELR_EDITING__INSTRUCT__MODEL__PATH"):
        make_instruct_editor(cfg)


# -- verify, then retry ------------------------------------------------------------------------
class RejectsFirstAttemptJudge:
    """Test double for the Judge protocol: rejects the first ``n_reject`` edits it sees (with a
    reason), accepts the rest, and records what it was shown."""

    name = "test-double/rejects-first"

    def __init__(self, n_reject: int = 1):
        self.n_reject = n_reject
        self.seen: list[tuple[str, np.ndarray]] = []

    def judge(self, before, after, mask, step, labels):
        from cielr_core.editing.verify import Verdict

        self.seen.append((step.operation, after.copy()))
        if len(self.seen) <= self.n_reject:
            return Verdict(False, f"attempt {len(self.seen)}: the region does not show {step.prompt!r}", self.name, 0.1)
        return Verdict(True, "the region shows it", self.name, 0.9)


def test_a_rejected_attempt_is_retried_with_another_seed_and_both_verdicts_are_kept(tiny_ip2p_settings):
    from cielr_core.editing.verify import Judge, execute_verified

    judge = RejectsFirstAttemptJudge()
    assert isinstance(judge, Judge)
    rgb, obj = textured_object_image(9)
    step = EditStep(subtask="rot", operation="transform", target_ids=[1], prompt="make it rotten")
    v = execute_verified(rgb, step, scene_of({1: obj}), tiny_ip2p_settings, seed=5, judge=judge)
    assert v.verified is True and not v.replanned
    assert [a["seed"] for a in v.attempts] == [5, 6]
    assert [a["verdict"]["ok"] for a in v.attempts] == [False, True]
    assert "does not show" in v.attempts[0]["verdict"]["reason"] and v.attempts[0]["verdict"]["judge"] == judge.name
    assert not np.array_equal(judge.seen[0][1], judge.seen[1][1])  # another seed, another edit
    assert np.array_equal(v.result.image, judge.seen[1][1])  # the accepted one is the result


def test_deterministic_rejections_stop_early_then_one_re_plan_with_the_judge_reason():
    from cielr_core.editing.verify import execute_verified

    rgb, obj = textured_object_image(10)
    sc = scene_of({1: obj})
    step = EditStep(subtask="make it red", operation="recolor", target_ids=[1], prompt="a red mug")
    asked = []

    def replan(old, reason):
        asked.append((old.operation, reason))
        return EditStep(subtask=old.subtask, operation="recolor", target_ids=[1], color="dark red", prompt="x")

    cfg = EditingConfig(max_attempts=3)
    v = execute_verified(rgb, step, sc, cfg, judge=RejectsFirstAttemptJudge(n_reject=1), replan=replan)
    assert v.verified is True and v.replanned and v.step.color == "dark red"
    assert asked == [("recolor", "attempt 1: the region does not show 'a red mug'")]
    assert [a.get("verdict") and a["verdict"]["ok"] for a in v.attempts] == [False, None, True]
    assert "deterministic" in v.attempts[1]["note"] and v.attempts[2]["replanned"] is True
    never = execute_verified(rgb, step, sc, cfg, judge=RejectsFirstAttemptJudge(n_reject=99))
    assert never.verified is False and "no re-plan" in never.note
    skipped = execute_verified(rgb, EditStep(subtask="x", status="no_target", reason="none"), sc, cfg,
                               judge=RejectsFirstAttemptJudge())
    assert skipped.verified is None and skipped.attempts == []


def test_clip_judge_scores_the_region_against_the_prompt(tiny_models_dir):
    from cielr_core.config import load_settings
    from cielr_core.editing.verify import ClipJudge, make_judge

    s = load_settings(profile="tiny", overrides={"models_dir": str(tiny_models_dir)})
    judge = make_judge(s)  # auto with no VLM endpoint: CLIP
    assert isinstance(judge, ClipJudge) and judge.name == "clip/tiny/clip"
    rgb, obj = textured_object_image(11)
    step = EditStep(subtask="x", operation="replace", target_ids=[1], prompt="an orange")
    v = judge.judge(rgb, rgb, obj, step, ["mug"])
    assert isinstance(v.score, float) and v.ok == (v.score >= s.editing.verify.clip_threshold)
    assert "an orange" in v.reason
    rm = judge.judge(rgb, rgb, obj, EditStep(subtask="x", operation="remove", target_ids=[1]), ["mug"])
    assert rm.ok is False and "still shows" in rm.reason  # nothing changed: the object is as similar as before


# -- each operation end to end through `cielr edit` (tiny models) ----------------------------------
class OperationScriptLLM:
    """Test double for the LLM protocol, installed as ``tasks.runtime.llm``: ``decompose`` answers one
    sub-task, ``assess`` says the SSR suffices, ``reason`` answers the given operation on the first
    object of the SSR it is shown (a second object anchors a move; with no object, ``global``). Each
    answer is validated against the call's schema as a backend does."""

    def __init__(self, op: str):
        self.op = op
        self.calls: list[str] = []

    def answer(self, call_name, messages):
        import re

        if call_name == "decompose":
            return {"reason": "one edit", "subtasks": [f"{self.op} it"], "query_objects": []}
        if call_name == "assess":
            return {"reason": "enough", "need": "none", "queries": [], "segmentation": "keep"}
        ids = [int(i) for i in re.findall(r'"id":\s*(\d+)', messages[-1]["content"])]
        base = {"reason": "first object", "status": "ok", "operation": self.op}
        if not ids or self.op == "global":
            return {**base, "operation": "global", "prompt": "night scene"}
        t = {"target_ids": [ids[0]]}
        box = {"relation": "box", "box": [0, 0, 24, 24]}
        return {**base, **{
            "remove": {**t, "prompt": "empty table"},
            "replace": {**t, "prompt": "an orange"},
            "recolor": {**t, "color": "red", "prompt": "a red thing"},
            "add": {"prompt": "a cup", "placement": box},
            "move": {**t, "placement": {"relation": "left_of", "object_id": ids[1]} if len(ids) > 1 else box},
            "resize": {**t, "scale": 0.5, "anchor": "bottom"},
            "transform": {**t, "prompt": "make it rotten"},
        }[self.op]}

    def complete(self, messages, schema, *, image=None, call_name=""):
        import json

        from cielr_core.reasoning.llm import LLMCall, parse_answer

        self.calls.append(call_name)
        raw = json.dumps(self.answer(call_name, messages))
        return LLMCall(parsed=parse_answer(raw, schema), raw=raw, latency_s=0.001, tokens={"prompt": 1, "completion": 1},
                       extra={"backend": "scripted"})


EXPECTED_BACKEND = {"remove": "lama/tiny/lama", "replace": "diffusers/tiny/sd-inpaint", "recolor": "color/oklab",
                    "add": "diffusers/tiny/sd-inpaint", "move": "cut-paste+lama/tiny/lama",
                    "resize": "cut-paste+lama/tiny/lama", "transform": "instruct/tiny/ip2p",
                    "global": "instruct/tiny/ip2p"}


def _cielr_edit(op, tiny_models_dir, ciebench_dir, tmp_path, monkeypatch, *extra_env):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app
    from tasks import runtime

    llm = OperationScriptLLM(op)
    monkeypatch.setattr(runtime, "llm", lambda s: llm)
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    for k, v in extra_env:
        monkeypatch.setenv(k, v)
    image = ciebench_dir / "1" / "1.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["edit", str(image), f"please {op} it", "--profile", "tiny",
                                      "--store", str(tmp_path / "store"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(image).convert("RGB"))
    edited = np.asarray(Image.open(out / "edited.png").convert("RGB"))
    mask = np.asarray(Image.open(out / "mask.png")).astype(bool)
    plan = json.loads((out / "plan.json").read_text())
    trace = json.loads((out / "trace.json").read_text())
    return result, original, edited, mask, plan, trace


@pytest.mark.slow
@pytest.mark.parametrize("op", list(EXPECTED_BACKEND))
def test_each_operation_end_to_end_through_cielr_edit(op, prefect_harness, tiny_models_dir, ciebench_dir, tmp_path,
                                                      monkeypatch):
    _result, original, edited, mask, plan, trace = _cielr_edit(op, tiny_models_dir, ciebench_dir, tmp_path,
                                                              monkeypatch)
    assert plan["schema_version"] == 2
    step = plan["steps"][0]
    assert step["operation"] == op, "the tiny SSR must have objects for this test to mean anything"
    edit = trace["edits"][0]
    assert edit["backend"] == EXPECTED_BACKEND[op] and edit["skipped"] is False
    assert edit["verified"] is None and edit["attempts"] == []  # verification is off in the tiny profile
    assert edited.shape == original.shape
    assert np.array_equal(edited[~mask], original[~mask])
    if op == "global":
        assert mask.all() and edit["detail"]["preservation"]["guaranteed"] is False
    else:
        assert not mask.all()


@pytest.mark.slow
def test_verify_through_cielr_edit_retries_a_rejected_attempt(prefect_harness, tiny_models_dir, ciebench_dir,
                                                              tmp_path, monkeypatch):
    import cielr_core.editing.verify as ev  # cielr_core.pipeline.edit_step makes its judge there

    judge = RejectsFirstAttemptJudge()
    monkeypatch.setattr(ev, "make_judge", lambda s: judge)
    result, original, edited, mask, _plan, trace = _cielr_edit(
        "transform", tiny_models_dir, ciebench_dir, tmp_path, monkeypatch, ("CIELR_EDITING__VERIFY__ENABLED", "true"))
    edit = trace["edits"][0]
    assert edit["verified"] is True and len(edit["attempts"]) == 2
    assert [a["verdict"]["ok"] for a in edit["attempts"]] == [False, True]
    assert [a["seed"] for a in edit["attempts"]] == [0, 1]
    assert "verified: yes" in result.output
    assert np.array_equal(edited[~mask], original[~mask])


def test_replan_asks_reason_again_with_the_judge_reason():
    from test_reasoning import ScriptedLLM, make_scene

    from cielr_core.config import load_settings
    from cielr_core.reasoning import Reasoner

    s = load_settings(profile="default")
    llm = ScriptedLLM([("reason", {"reason": "r", "status": "ok", "operation": "remove", "target_ids": [1]})])
    old = EditStep(subtask="remove the cup", operation="remove", target_ids=[0])
    new = Reasoner(s, llm).replan_step("remove the cup", "remove the cup", make_scene(), old, "the cup still shows")
    assert new.target_ids == [1]
    last = llm.calls[0]["messages"][-1]["content"]
    assert "the cup still shows" in last and '"target_ids":[0]' in last
    with pytest.raises(ValueError, match="no replan prompt"):
        Reasoner(load_settings(overrides={"reasoning": {"prompt_version": "2"}}), llm).replan_step(
            "x", "x", make_scene(), old, "why")
