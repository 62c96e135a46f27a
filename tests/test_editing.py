"""Editing: inpainters, mask preparation, step and plan execution (offline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_family

from cielr_core import masks as M
from cielr_core import models as registry
from cielr_core.config import EditingConfig, load_settings
from cielr_core.editing import (
    DiffusersInpainter,
    EditingError,
    Inpainter,
    OpenCVInpainter,
    execute_plan,
    execute_step,
    inpaint_region,
    make_inpainter,
    placement_box,
    step_mask,
)
from cielr_core.editing.prep import crop_box, feather_alpha, model_size
from cielr_core.models import ModelUnavailableError
from cielr_core.plan import EditPlan, EditStep, Placement
from cielr_core.ssr import SSR, Scene, SSRObject, make_object

H, W = 97, 131  # odd on purpose


def rand_rgb(h=H, w=W, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def scene_of(masks: dict[int, np.ndarray], labels: dict[int, str] | None = None) -> Scene:
    h, w = next(iter(masks.values())).shape
    objects = {}
    for i, m in masks.items():
        if m.any():
            objects[i] = make_object(i, m, label=(labels or {}).get(i, "thing"))
        else:  # an empty mask (make_object refuses those): hand-built
            objects[i] = SSRObject(id=i, label="thing", score=0.0, mask=f"masks/{i}.png", bbox=(0, 0, 0, 0),
                                   area=0, centroid=(0.0, 0.0))
    return Scene(SSR(image_sha256="0" * 64, width=w, height=h, objects=objects), masks)


def step(op: str, ids=(1,), **kw) -> EditStep:
    return EditStep(subtask=f"{op} it", operation=op, target_ids=list(ids), **kw)


class InvertingInpainterDouble:
    """Test double: 'inpaints' by inverting the pixels under the mask (makes paste geometry visible)."""

    name = "test-double/invert"
    follows_prompt = True
    resolution = None

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.prompts: list[tuple[str, str, int]] = []

    def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
        self.calls.append((image.copy(), mask.copy()))
        self.prompts.append((prompt, negative_prompt, seed))
        out = image.copy()
        out[mask] = 255 - out[mask]
        return out


CFG_SHARP = EditingConfig(dilate_px=3, feather_px=0, crop_margin=0.5)


# -- tiny diffusers pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_settings_sd(session_tmp):
    tiny_family(session_tmp, "sd-inpaint")
    return load_settings(profile="tiny", overrides={"models_dir": str(session_tmp / "models")})


@pytest.fixture(scope="module")
def tiny_inpainter(tiny_settings_sd):
    return make_inpainter("diffusers", tiny_settings_sd)


def test_tiny_pipeline_loads_through_the_real_class_once(tiny_settings_sd, tiny_inpainter):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = tiny_inpainter.pipeline()
    assert type(pipe) is StableDiffusionInpaintPipeline
    assert pipe.unet.config.in_channels == 9
    assert isinstance(tiny_inpainter, Inpainter)
    loads = registry.stats().get("inpaint", 0)
    again = make_inpainter("diffusers", tiny_settings_sd)
    assert again.pipeline() is pipe
    assert registry.stats().get("inpaint", 0) == loads  # loaded once per process


def test_diffusers_outside_mask_identical_and_size_kept(tiny_settings_sd):
    rgb = rand_rgb()
    obj = box(H, W, 40, 61, 100, 131)  # touches the right border
    r = execute_step(rgb, step("replace", prompt="an orange"), scene_of({1: obj}), tiny_settings_sd, seed=3)
    assert not r.skipped and r.backend == "diffusers/tiny/sd-inpaint"
    assert r.image.shape == rgb.shape and r.image.dtype == np.uint8
    assert np.array_equal(r.mask, M.dilate(obj, tiny_settings_sd.editing.dilate_px))
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])
    assert (r.image[obj] != rgb[obj]).any()


@pytest.mark.parametrize("crop_mode", [True, False])
def test_diffusers_odd_sizes_and_border_masks(tiny_settings_sd, crop_mode):
    s = tiny_settings_sd.model_copy(deep=True)
    s.editing.crop_mode = crop_mode
    for (h, w), m in [((37, 53), box(37, 53, 0, 5, 0, 7)), ((64, 33), box(64, 33, 60, 64, 30, 33)),
                      ((45, 45), np.ones((45, 45), bool))]:
        rgb = rand_rgb(h, w, seed=h)
        img, allowed, crop = inpaint_region(rgb, m, make_inpainter("diffusers", s), s, prompt="x", seed=0)
        assert img.shape == rgb.shape
        assert np.array_equal(img[~allowed], rgb[~allowed])
        x0, y0, x1, y1 = crop
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_seeds_reproducible(tiny_settings_sd):
    rgb = rand_rgb()
    sc = scene_of({1: box(H, W, 30, 60, 30, 70)})
    st = step("replace", prompt="a red apple")
    a = execute_step(rgb, st, sc, tiny_settings_sd, seed=7).image
    b = execute_step(rgb, st, sc, tiny_settings_sd, seed=7).image
    c = execute_step(rgb, st, sc, tiny_settings_sd, seed=8).image
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_recolor_refined_by_a_low_strength_img2img_pass(tiny_settings_sd):
    s = tiny_settings_sd.model_copy(deep=True)
    s.editing.recolor_refine_strength = 0.5
    rgb = rand_rgb()
    obj = box(H, W, 30, 60, 30, 70)
    r = execute_step(rgb, step("recolor", prompt="a green cup"), scene_of({1: obj}), s, seed=1)
    assert r.backend == "color/oklab+diffusers/tiny/sd-inpaint@0.5" and r.prompt == "a green cup"
    assert np.array_equal(r.mask, obj)  # the pass is bounded by the object's own mask, undilated
    assert np.array_equal(r.image[~obj], rgb[~obj])
    plain = execute_step(rgb, step("recolor", prompt="a green cup"), scene_of({1: obj}), tiny_settings_sd, seed=1)
    assert plain.backend == "color/oklab" and not np.array_equal(plain.image, r.image)


# -- NaN / black output: test doubles standing in for a pipeline ----------------------------------
class _Out:
    def __init__(self, images):
        self.images = images
        self.nsfw_content_detected = None


class NaNInFloat16PipelineDouble:
    """Test double for an fp16-overflowing pipeline: NaN output in float16, a gray image in float32."""

    vae_scale_factor = 8

    def __init__(self, dtype: str, nan_in: tuple[str, ...] = ("float16",), black: bool = False):
        self.dtype, self.nan_in, self.black, self.calls = dtype, nan_in, black, 0

    def set_progress_bar_config(self, **_):
        pass

    def __call__(self, prompt, image, mask_image, height, width, num_inference_steps, guidance_scale,
                 generator, output_type, negative_prompt=None, strength=1.0):
        self.calls += 1
        out = np.full((1, height, width, 3), 0.5, np.float32)
        if self.dtype in self.nan_in:
            out[:] = 0.0 if self.black else np.nan
        return _Out(out)


def _double_inpainter(name: str, dtype: str, **kw) -> DiffusersInpainter:
    doubles: dict[str, NaNInFloat16PipelineDouble] = {}

    def loader(dt):
        doubles[dt] = NaNInFloat16PipelineDouble(dt, **kw)
        return doubles[dt]

    inp = DiffusersInpainter(f"test-double/{name}", device="cpu", dtype=dtype, resolution=64, steps=1,
                             loader=loader)
    inp.doubles = doubles
    return inp


def test_nan_output_in_fp16_is_retried_in_fp32():
    inp = _double_inpainter("nan-fp16", "float16")
    rgb = rand_rgb(40, 40)
    m = box(40, 40, 10, 20, 10, 20)
    img, allowed, _ = inpaint_region(rgb, m, inp, CFG_SHARP)
    assert inp.retried_fp32 == 1
    assert inp.doubles["float16"].calls == 1 and inp.doubles["float32"].calls == 1
    assert np.all(img[m] == 128)  # the float32 result (gray 0.5)
    assert np.array_equal(img[~allowed], rgb[~allowed])


def test_nan_output_in_fp32_too_is_a_clear_error():
    inp = _double_inpainter("nan-always", "float16", nan_in=("float16", "float32"))
    with pytest.raises(EditingError, match=r"float16 \(NaN.*again in float32 \(NaN"):
        inp.inpaint(rand_rgb(32, 32), box(32, 32, 0, 8, 0, 8))


def test_black_output_in_fp32_is_a_clear_error():
    inp = _double_inpainter("black-fp32", "float32", nan_in=("float32",), black=True)
    with pytest.raises(EditingError, match="all-black"):
        inp.inpaint(rand_rgb(32, 32), box(32, 32, 0, 8, 0, 8))


# -- OpenCV inpainter ----------------------------------------------------------------------------
def smooth_image(h=96, w=128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 120 + 80 * np.sin(xx / 40.0) * np.cos(yy / 50.0)
    g = 60 + 1.0 * xx
    b = 200 - 0.8 * yy + 20 * np.sin((xx + yy) / 30.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_reconstructs_smooth_image_in_hole(method):
    truth = smooth_image()
    hole = box(96, 128, 38, 58, 50, 74)
    damaged = truth.copy()
    damaged[hole] = 0  # what was there is gone
    out = OpenCVInpainter(method, radius=5).inpaint(damaged, hole)
    err = np.abs(out[hole].astype(float) - truth[hole].astype(float))
    assert err.mean() < 4.0, err.mean()  # grey levels, a smooth field: small error
    assert err.max() < 20.0, err.max()


@pytest.mark.parametrize("dilate,feather", [(0, 0), (4, 3)])
def test_opencv_remove_outside_mask_identical(dilate, feather):
    rgb = rand_rgb()
    obj = box(H, W, 0, 11, 20, 45)  # touches the top border
    cfg = EditingConfig(dilate_px=dilate, feather_px=feather)
    r = execute_step(rgb, step("remove"), scene_of({1: obj}), cfg, seed=0)
    assert r.backend == "opencv/telea" and not r.skipped and r.prompt is None
    assert np.array_equal(r.mask, M.dilate(obj, dilate))
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])
    assert (r.image[obj] != rgb[obj]).any()


def test_operation_prompts_and_seed_reach_the_inpainter():
    rgb = rand_rgb()
    sc = scene_of({1: box(H, W, 10, 20, 10, 20), 2: box(H, W, 50, 60, 50, 60)}, labels={1: "cup", 2: "clock"})
    cfg = EditingConfig(negative_prompt="blurry", remove_prompt="empty table")
    double = InvertingInpainterDouble()
    execute_step(rgb, step("remove", ids=(1, 2)), sc, cfg, seed=5, inpainter=double)
    execute_step(rgb, step("replace", ids=(1,), prompt="an orange"), sc, cfg, inpainter=double)
    execute_step(rgb, step("recolor", ids=(2,)), sc, cfg, inpainter=double)  # no prompt: the sub-task text
    assert double.prompts == [("empty table", "blurry, clock, cup", 5), ("an orange", "blurry", cfg.seed),
                              ("recolor it", "blurry", cfg.seed)]


# -- mask preparation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,region",
    [((97, 131), (40, 50, 60, 71)), ((97, 131), (0, 3, 0, 5)), ((97, 131), (90, 97, 125, 131)),
     ((97, 131), (0, 97, 60, 61)), ((31, 200), (10, 20, 0, 200)), ((1, 1), (0, 1, 0, 1)),
     ((5, 300), (2, 3, 150, 151))],
)
@pytest.mark.parametrize("margin,min_side", [(0.0, 0), (0.5, 0), (0.5, 32), (2.0, 1000)])
def test_crop_box_contains_mask_inside_image(shape, region, margin, min_side):
    h, w = shape
    m = box(h, w, *region)
    x0, y0, x1, y1 = crop_box(m, margin, min_side)
    bx0, by0, bx1, by1 = M.bbox(m)
    assert 0 <= x0 <= bx0 and bx1 <= x1 <= w
    assert 0 <= y0 <= by0 and by1 <= y1 <= h
    side = max(bx1 - bx0, by1 - by0) + 2 * int(np.ceil(margin * max(bx1 - bx0, by1 - by0)))
    side = max(side, min_side)
    assert (x1 - x0) == min(side, w) and (y1 - y0) == min(side, h)  # square where the image allows


def test_crop_box_empty_mask_is_none():
    assert crop_box(np.zeros((5, 5), bool), 0.5) is None


@pytest.mark.parametrize("crop_mode", [True, False])
@pytest.mark.parametrize(
    "shape,region", [((97, 131), (40, 50, 60, 71)), ((97, 131), (0, 4, 0, 6)), ((33, 17), (30, 33, 10, 17))]
)
def test_paste_geometry_exact(crop_mode, shape, region):
    """With no feather the inpainted patch lands exactly on the dilated mask, nowhere else."""
    h, w = shape
    rgb = rand_rgb(h, w, seed=5)
    core = box(h, w, *region)
    cfg = CFG_SHARP.model_copy(update={"crop_mode": crop_mode})
    double = InvertingInpainterDouble()
    img, allowed, crop = inpaint_region(rgb, core, double, cfg)
    assert np.array_equal(allowed, M.dilate(core, 3))
    expected = rgb.copy()
    expected[allowed] = 255 - rgb[allowed]
    assert np.array_equal(img, expected)
    x0, y0, x1, y1 = crop
    seen_img, seen_mask = double.calls[0]
    assert np.array_equal(seen_img, rgb[y0:y1, x0:x1]) and np.array_equal(seen_mask, allowed[y0:y1, x0:x1])
    if not crop_mode:
        assert crop == (0, 0, w, h)


def test_feather_alpha_ramp_and_border():
    h, w = 40, 40
    core = box(h, w, 10, 20, 0, 20)  # touches the left border
    dil = M.dilate(core, 6)
    a = feather_alpha(dil, core, feather_px=4)
    assert np.all(a[~dil] == 0) and np.all(a[core] == 1)
    # dilated columns 0..25: column 21 is 5 px from the first outside column (26), beyond the ramp
    assert a[15, 21] == pytest.approx(1.0)
    assert a[15, 25] == pytest.approx(0.2)  # the last dilated pixel: distance 1 -> 1 / (4 + 1)
    assert a[15, 23] == pytest.approx(0.6)
    assert np.all(a[4:26, 0][dil[4:26, 0]] > 0)  # the image border is not a seam
    assert a[4, 0] == pytest.approx(0.2)  # ...but the mask's own top edge is


def test_feathered_seam_changes_only_the_dilated_mask():
    rgb = rand_rgb()
    core = box(H, W, 40, 50, 60, 71)
    cfg = EditingConfig(dilate_px=5, feather_px=4)
    img, allowed, _ = inpaint_region(rgb, core, InvertingInpainterDouble(), cfg)
    assert np.array_equal(img[~allowed], rgb[~allowed])
    assert np.array_equal(img[core], 255 - rgb[core])
    ring = allowed & ~core
    partial = (img[ring] != rgb[ring]) & (img[ring] != 255 - rgb[ring])
    assert partial.any()  # blended, not a hard paste


def test_model_size_multiples_and_aspect():
    assert model_size(512, 512, 512) == (512, 512)
    assert model_size(131, 97, 64) == (64, 48)
    assert model_size(3, 400, 64) == (8, 64)
    assert all(v % 16 == 0 for v in model_size(1000, 333, 1024, 16))


# -- bad input -----------------------------------------------------------------------------------
def test_empty_mask_skips_with_reason():
    rgb = rand_rgb()
    sc = scene_of({1: np.zeros((H, W), bool)})
    r = execute_step(rgb, step("remove"), sc, CFG_SHARP)
    assert r.skipped and "empty mask" in r.reason and not r.mask.any()
    assert np.array_equal(r.image, rgb)


def test_no_target_step_skips_with_its_reason():
    r = execute_step(rand_rgb(), EditStep(subtask="find the clock", status="no_target", reason="no clock"),
                     None, CFG_SHARP)
    assert r.skipped and r.reason == "no clock"


def test_mask_size_mismatch_names_both_sizes():
    rgb = rand_rgb()
    with pytest.raises(EditingError, match=r"60x40 \(WxH\).*131x97"):
        inpaint_region(rgb, np.ones((40, 60), bool), OpenCVInpainter(), CFG_SHARP)
    sc = scene_of({1: box(40, 60, 0, 5, 0, 5)})
    with pytest.raises(EditingError, match=r"60x40 \(WxH\).*131x97"):
        execute_step(rgb, step("remove"), sc, CFG_SHARP)


def test_unknown_object_and_bad_image_are_errors():
    sc = scene_of({1: box(H, W, 0, 5, 0, 5)})
    with pytest.raises(EditingError, match=r"\[7\].*\[1\]"):
        step_mask(step("remove", ids=(7,)), sc, (H, W))
    with pytest.raises(EditingError, match="uint8 RGB"):
        execute_step(np.zeros((H, W), np.uint8), step("remove"), sc, CFG_SHARP)


def test_prompt_operation_on_opencv_backend_is_skipped():
    cfg = EditingConfig(backend="opencv")
    r = execute_step(rand_rgb(), step("replace", prompt="a cat"), scene_of({1: box(H, W, 0, 5, 0, 5)}), cfg)
    assert r.skipped and "opencv" in r.reason


def test_missing_weights_raise_model_unavailable_with_the_way_out(tmp_path):
    s = load_settings(overrides={"editing": {"model": {"id": "nope/inpaint", "path": str(tmp_path / "absent")}}})
    with pytest.raises(ModelUnavailableError, match="CIELR_EDITING__MODEL__PATH") as e:
        make_inpainter("diffusers", s)
    assert "opencv" in str(e.value) and "cielr models tiny" in str(e.value)
    s = load_settings(overrides={"editing": {"model": {"id": "nobody/no-such-inpaint-model"}}})
    with pytest.raises(ModelUnavailableError, match="hf download nobody/no-such-inpaint-model"):
        make_inpainter("diffusers", s)


def test_unknown_backend():
    with pytest.raises(EditingError, match="backend"):
        make_inpainter("photoshop", CFG_SHARP)


# -- placement (add) -----------------------------------------------------------------------------
ANCHOR = (40, 40, 80, 60)  # x0, y0, x1, y1: 40 x 20


@pytest.mark.parametrize(
    "relation,expected",
    [
        ("on", (50, 35, 70, 45)),  # 20 x 10 (a quarter of the area), centred on the top edge
        ("above", (50, 30, 70, 40)),
        ("below", (50, 60, 70, 70)),
        ("left_of", (20, 50, 40, 60)),
        ("right_of", (80, 50, 100, 60)),
        ("near", (80, 50, 100, 60)),  # more room on the right of x=80 in a 131-wide image
    ],
)
def test_placement_geometry(relation, expected):
    p = Placement(relation=relation, object_id=1, size_fraction=0.25)
    assert placement_box(p, ANCHOR, (H, W)) == expected


def test_placement_box_clip_and_near_left():
    assert placement_box(Placement(relation="box", box=(120.4, 90.6, 200, 200)), None, (H, W)) == (120, 91, 131, 97)
    p = Placement(relation="near", object_id=1, size_fraction=0.25)
    assert placement_box(p, (100, 40, 130, 60), (H, W)) == (85, 50, 100, 60)  # more room on the left
    assert placement_box(Placement(relation="left_of", object_id=1), (0, 40, 30, 60), (H, W))[2] == 0  # empty


def test_add_step_paints_the_placement_region_and_skips_outside():
    rgb = rand_rgb()
    anchor = box(H, W, 40, 60, 40, 80)
    sc = scene_of({1: anchor})
    st = EditStep(subtask="add a cup", operation="add", prompt="a cup",
                  placement=Placement(relation="on", object_id=1))
    region = step_mask(st, sc, (H, W))
    assert M.bbox(region) == (50, 35, 70, 45)
    double = InvertingInpainterDouble()
    r = execute_step(rgb, st, sc, CFG_SHARP, inpainter=double)
    assert np.array_equal(r.mask, M.dilate(region, 3))
    assert np.array_equal(r.image[~r.mask], rgb[~r.mask])
    sc_edge = scene_of({1: box(H, W, 40, 60, 0, 30)})
    st_out = EditStep(subtask="add", operation="add", prompt="a lamp",
                      placement=Placement(relation="left_of", object_id=1))
    r = execute_step(rgb, st_out, sc_edge, CFG_SHARP, inpainter=double)
    assert r.skipped and "outside the image" in r.reason


# -- plans ---------------------------------------------------------------------------------------
def test_plan_chains_steps_and_unions_masks():
    rgb = rand_rgb()
    m1, m2 = box(H, W, 10, 20, 10, 30), box(H, W, 60, 80, 90, 120)
    sc = scene_of({1: m1, 2: m2})
    plan = EditPlan(instruction="x", steps=[
        step("replace", ids=(1,), prompt="a blue cup"),
        EditStep(subtask="nothing here", status="no_target", reason="none found"),
        step("replace", ids=(2,), prompt="a dog"),
    ])
    double = InvertingInpainterDouble()
    seen = []

    def scenes(j, st, current):
        seen.append((j, current.copy()))
        return sc

    res = execute_plan(rgb, plan, scenes, CFG_SHARP, seed=1, inpainter=double)
    assert [r.skipped for r in res.steps] == [False, True, False]
    assert len(res.step_images) == 3 and res.n_edited == 2
    # step 3 received step 1's output (the skipped step passes it through)
    assert np.array_equal(seen[1][1], res.step_images[0])
    assert np.array_equal(res.step_images[1], res.step_images[0])
    manual = execute_step(execute_step(rgb, plan.steps[0], sc, CFG_SHARP, 1, inpainter=double).image,
                          plan.steps[2], sc, CFG_SHARP, 1, inpainter=double).image
    assert np.array_equal(res.image, manual)
    assert np.array_equal(res.mask, M.dilate(m1, 3) | M.dilate(m2, 3))
    assert np.array_equal(res.image[~res.mask], rgb[~res.mask])


def test_plan_with_one_scene_and_opencv_remove():
    rgb = smooth_image()
    sc = scene_of({1: box(96, 128, 10, 20, 10, 20), 2: box(96, 128, 50, 70, 60, 90)})
    plan = EditPlan(instruction="remove both", steps=[step("remove", ids=(1,)), step("remove", ids=(2,))])
    res = execute_plan(rgb, plan, sc, EditingConfig(dilate_px=2, feather_px=2))
    assert res.n_edited == 2 and all(r.backend == "opencv/telea" for r in res.steps)
    assert np.array_equal(res.image[~res.mask], rgb[~res.mask])
    with pytest.raises(EditingError, match="2 steps but 1 scenes"):
        execute_plan(rgb, plan, [sc], EditingConfig())
