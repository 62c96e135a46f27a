"""Perception: exact rules on synthetic masks, tiny real models through the real loaders, the CLI.

The tiny SAM2 / OWLv2 / DepthAnything checkpoints are written by the real factories into the
session's models dir and read back by ``build_sam2`` / ``from_pretrained``; nothing downloads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cielr_core import masks as M
from cielr_core import models as registry
from cielr_core.config import load_settings
from cielr_core.models import ModelUnavailableError
from cielr_core.perception import (
    Detections,
    Perceiver,
    SegmentResult,
    assemble,
    carry_ids,
    load_vocabulary,
    match_labels,
    merge_groups,
    normalised_median_depth,
    render_overlay,
)
from cielr_core.perception.label import boxes_to_pixels, text_embed_stats
from cielr_core.perception.segment import generator_settings
from cielr_core.ssr import SSR, Scene, load_scene, make_object, save_scene
from storage import ArtifactStore

SHA = "a" * 64
CIEBENCH_ID = "0"


def rect(shape, x0, y0, x1, y1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def perception_models(session_tmp) -> Path:
    from conftest import tiny_family

    for fam in ("sam2", "owlv2", "depth-anything"):
        tiny_family(session_tmp, fam)
    return session_tmp / "models"


@pytest.fixture(scope="session")
def tiny_perception_settings(perception_models):
    return load_settings(profile="tiny", overrides={"models_dir": str(perception_models)})


@pytest.fixture(scope="session")
def photo(ciebench_dir) -> np.ndarray:
    from cielr_core.images import decode_image_file

    return decode_image_file(ciebench_dir / CIEBENCH_ID / f"{CIEBENCH_ID}.png", max_pixels=40_000_000)


@pytest.fixture(scope="session")
def photo_scene(tiny_perception_settings, photo) -> Scene:
    return Perceiver(tiny_perception_settings).perceive(photo)


# --- results codecs ------------------------------------------------------------------------------
def test_segment_result_npz_round_trip_is_exact():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 13)) > 0.5  # width not a multiple of 8: packbits padding
    seg = SegmentResult(masks, [0.9, 0.5, 0.25])
    back = SegmentResult.from_npz_bytes(seg.to_npz_bytes())
    assert back.masks.dtype == bool and np.array_equal(back.masks, masks)
    assert np.allclose(back.scores, [0.9, 0.5, 0.25])
    empty = SegmentResult.from_npz_bytes(SegmentResult.empty(5, 6).to_npz_bytes())
    assert empty.masks.shape == (0, 5, 6)
    with pytest.raises(ValueError):
        SegmentResult(masks, [0.1])


def test_detections_json_round_trip():
    det = Detections([[1.5, 2.0, 10.0, 20.25]], [0.75], ["cup"])
    data = json.loads(json.dumps(det.to_json()))
    back = Detections.from_json(data)
    assert back.labels == ["cup"] and np.allclose(back.boxes, det.boxes) and np.allclose(back.scores, [0.75])
    assert len(Detections.from_json(Detections.empty().to_json())) == 0


def test_vocabulary_builtin_and_file(tmp_path):
    coco = load_vocabulary("coco")
    assert len(coco) == 80 and coco[0] == "person" and "dining table" in coco
    f = tmp_path / "v.txt"
    f.write_text("# comment\nred apple\n\n  lamp \nred apple\n")
    assert load_vocabulary(str(f)) == ["red apple", "lamp"]
    with pytest.raises(ValueError, match="neither a built-in"):
        load_vocabulary(str(tmp_path / "missing.txt"))


# --- matching ------------------------------------------------------------------------------------
def test_match_takes_best_iou_label_and_respects_minimum():
    shape = (20, 20)
    mask = rect(shape, 0, 0, 10, 10)  # area 100
    det = Detections(
        [[0, 0, 10, 5], [0, 0, 10, 10], [0, 0, 20, 20]],  # IoU 0.5, 1.0, 0.25
        [0.9, 0.4, 0.99],
        ["half", "exact", "big"],
    )
    assert match_labels([mask], det, 0.3) == [("exact", pytest.approx(0.4), 1.0)]
    # only the 0.25-IoU box left: below the 0.3 minimum -> unknown, score 0
    only_big = Detections([[0, 0, 20, 20]], [0.99], ["big"])
    assert match_labels([mask], only_big, 0.3) == [("unknown", 0.0, 0.25)]
    assert match_labels([mask], only_big, 0.25)[0][0] == "big"
    # ties in IoU go to the higher detector score
    tie = Detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.2, 0.6], ["low", "high"])
    assert match_labels([mask], tie, 0.3)[0][:2] == ("high", pytest.approx(0.6))
    assert match_labels([mask], Detections.empty(), 0.3) == [("unknown", 0.0, 0.0)]


def test_integral_box_iou_equals_mask_box_iou_exactly():
    from cielr_core.perception.build import box_ious

    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(5, 40, size=2)
        mask = rng.random((h, w)) > 0.6
        boxes = rng.uniform(-5, 45, size=(7, 4))
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 30, size=(7, 2))
        got = box_ious(mask, boxes)
        want = [M.mask_box_iou(mask, b) for b in boxes]
        assert np.allclose(got, want, rtol=0, atol=1e-12)


# --- merging -------------------------------------------------------------------------------------
def test_merge_fragments_of_one_detection_but_not_apart_or_other_label():
    # Changed by the fragments-only merge rule: touching same-label masks merge only as fragments
    # of one instance (matched to the same detection, or one inside the other); the earlier
    # version of this test merged any touching same-label pair.
    shape = (10, 30)
    a = rect(shape, 0, 0, 5, 5)
    touching = rect(shape, 5, 0, 8, 5)  # shares an edge with a
    apart = rect(shape, 20, 0, 25, 5)  # 15 columns away
    assert merge_groups([a, touching, apart], ["chair"] * 3, gap=2, detections=[0, 0, 0]) == [[0, 1], [2]]
    assert merge_groups([a, touching, apart], ["chair"] * 3, gap=2) == [[0], [1], [2]]  # no shared detection
    assert merge_groups([a, touching], ["chair", "table"], gap=2, detections=[0, 0]) == [[0], [1]]
    assert merge_groups([a, touching], ["unknown", "unknown"], gap=2, detections=[None, None]) == [[0], [1]]
    # gap: 2 empty columns between them merge with gap=2, not with gap=1
    near = rect(shape, 7, 0, 9, 5)
    assert merge_groups([a, near], ["cup", "cup"], gap=2, detections=[3, 3]) == [[0, 1]]
    assert merge_groups([a, near], ["cup", "cup"], gap=1, detections=[3, 3]) == [[0], [1]]
    # transitive: a-b touch, b-c touch -> one object
    b = rect(shape, 5, 0, 10, 5)
    c = rect(shape, 10, 0, 15, 5)
    assert merge_groups([a, c, b], ["x"] * 3, gap=0, detections=[1, 1, 1]) == [[0, 1, 2]]


def test_touching_instances_with_their_own_boxes_stay_apart():
    """Defect 4: a pile of three touching oranges, each detected with its own box, is three
    oranges (the leftmost one and the count stay answerable), not one fused object."""
    shape = (30, 70)
    oranges = [disc(shape, 12, 15, 10), disc(shape, 33, 15, 11), disc(shape, 55, 15, 10)]
    assert M.adjacent(oranges[0], oranges[1], 0) and M.adjacent(oranges[1], oranges[2], 0)
    det = Detections([M.bbox(m) for m in oranges], [0.8, 0.9, 0.7], ["orange"] * 3)
    scene = assemble(SegmentResult(np.stack(oranges), [0.9] * 3), det, None, image_sha256=SHA, width=70, height=30)
    assert len(scene.ssr.objects) == 3 and all(o.label == "orange" for o in scene.ssr.objects.values())
    assert all("merged_from" not in o.attributes for o in scene.ssr.objects.values())
    from cielr_core.relations import builtin_relations

    rel = builtin_relations(scene)
    assert all(r["label_count"] == 3 for r in rel.values())
    leftmost = [i for i, r in rel.items() if r["x_rank_in_label"] == 0]
    assert np.array_equal(scene.masks[leftmost[0]], oranges[0])


def test_fragments_of_one_instance_are_merged():
    """Fragments become one object: the seat and back of a chair split by SAM2 (the back alone
    matches no box, but it lies in the chair's box, touches the seat and completes the chair's box);
    and a same-label mask lying inside another (an orange's part mask with its own small box).
    A cup inside the table's box stays a cup: adding it does not make the table's box fit better."""
    shape = (40, 100)
    seat, back = rect(shape, 10, 20, 40, 30), rect(shape, 10, 5, 16, 20)  # touch along y = 20
    orange = disc(shape, 75, 20, 12)
    part = disc(shape, 72, 18, 5) & orange
    det = Detections([[10, 5, 40, 30], [63, 8, 88, 33], M.bbox(part)], [0.7, 0.9, 0.4], ["chair", "orange", "orange"])
    scene = assemble(SegmentResult(np.stack([seat, back, orange, part]), [0.9, 0.8, 0.95, 0.6]), det, None,
                     image_sha256=SHA, width=100, height=40)
    objs = scene.ssr.objects
    assert sorted(o.label for o in objs.values()) == ["chair", "orange"]
    chair = next(i for i, o in objs.items() if o.label == "chair")
    assert np.array_equal(scene.masks[chair], seat | back) and objs[chair].attributes == {"merged_from": 2}
    fruit = next(i for i, o in objs.items() if o.label == "orange")
    assert np.array_equal(scene.masks[fruit], orange) and objs[fruit].attributes == {"merged_from": 2}
    cup = rect(shape, 40, 12, 50, 18)  # seen from above: the cup covers part of the table top
    table = rect(shape, 5, 10, 95, 35) & ~cup
    det2 = Detections([[5, 10, 95, 35]], [0.8], ["dining table"])
    s2 = assemble(SegmentResult(np.stack([table, cup]), [0.9, 0.9]), det2, None, image_sha256=SHA, width=100,
                  height=40)
    assert sorted(o.label for o in s2.ssr.objects.values()) == ["dining table", "unknown"]


def test_assemble_merges_touching_and_keeps_apart_chairs_separate():
    shape = (40, 100)
    left_a = rect(shape, 0, 10, 10, 30)  # 200 px
    left_b = rect(shape, 10, 10, 15, 30)  # touches left_a, 100 px
    right = rect(shape, 80, 10, 90, 30)  # far away, 200 px
    seg = SegmentResult(np.stack([left_a, left_b, right]), [0.8, 0.9, 0.7])
    det = Detections([[0, 10, 15, 30], [80, 10, 90, 30]], [0.6, 0.5], ["chair", "chair"])
    scene = assemble(seg, det, None, image_sha256=SHA, width=100, height=40, match_min_iou=0.3, merge_gap_px=2)
    objs = scene.ssr.objects
    assert len(objs) == 2
    # ids by area, largest first: the merged left chair (300 px) is 0
    assert objs[0].label == "chair" and objs[0].area == 300 and objs[0].bbox == (0, 10, 15, 30)
    assert objs[0].score == pytest.approx(0.6) and objs[0].mask_score == pytest.approx(0.9)
    assert objs[0].attributes == {"merged_from": 2}
    assert objs[1].label == "chair" and objs[1].area == 200 and objs[1].bbox == (80, 10, 90, 30)
    assert objs[1].centroid == (85.0, 20.0) and objs[1].score == pytest.approx(0.5)
    assert np.array_equal(scene.masks[0], left_a | left_b)
    assert objs[0].depth is None


def test_assemble_with_no_masks_is_a_valid_empty_ssr():
    scene = assemble(SegmentResult.empty(8, 9), Detections.empty(), np.zeros((8, 9), np.float32),
                     image_sha256=SHA, width=9, height=8)
    assert scene.ssr.objects == {} and SSR.from_json(scene.ssr.canonical_json()).objects == {}


def test_min_object_area_drops_small_masks():
    shape = (10, 10)
    seg = SegmentResult(np.stack([rect(shape, 0, 0, 1, 2), rect(shape, 3, 3, 8, 8)]), [0.5, 0.5])
    scene = assemble(seg, Detections.empty(), None, image_sha256=SHA, width=10, height=10, min_object_area=3)
    assert [o.area for o in scene.ssr.objects.values()] == [25]


# --- depth ---------------------------------------------------------------------------------------
def test_depth_median_and_per_image_normalisation_exact():
    depth = np.zeros((4, 4), np.float32)
    depth[0, :] = [10, 20, 30, 40]  # min 0, max 40 over the whole map
    near = rect((4, 4), 1, 0, 4, 1)  # values 20, 30, 40 -> median 30 -> 0.75
    far = rect((4, 4), 0, 2, 4, 4)  # all 0 -> 0.0
    mixed = rect((4, 4), 0, 0, 2, 2)  # 10, 20, 0, 0 -> median 5 -> 0.125
    assert normalised_median_depth(depth, [near, far, mixed]) == [0.75, 0.0, 0.125]
    top = rect((4, 4), 3, 0, 4, 1)
    assert normalised_median_depth(depth, [top]) == [1.0]  # the nearest pixel is 1
    assert normalised_median_depth(np.full((4, 4), 3.0), [near]) == [0.5]  # no contrast
    # non-finite values are ignored
    d2 = depth.copy()
    d2[3, 3] = np.nan
    assert normalised_median_depth(d2, [near]) == [0.75]


def test_assemble_attaches_normalised_median_depth():
    depth = np.tile(np.arange(10, dtype=np.float32), (10, 1))  # larger to the right = nearer
    seg = SegmentResult(np.stack([rect((10, 10), 0, 0, 3, 10), rect((10, 10), 6, 0, 10, 5)]), [1, 1])
    scene = assemble(seg, Detections.empty(), depth, image_sha256=SHA, width=10, height=10)
    # object 0 (30 px): columns 0..2 -> median 1 -> 1/9; object 1 (20 px): columns 6..9 -> median 7.5 -> 7.5/9
    assert scene.ssr.objects[0].depth == pytest.approx(1 / 9)
    assert scene.ssr.objects[1].depth == pytest.approx(7.5 / 9)


# --- ids across updates --------------------------------------------------------------------------
def _scene(masks: dict[int, np.ndarray], labels: dict[int, str], version=0, attrs=None) -> Scene:
    h, w = next(iter(masks.values())).shape
    objs = {i: make_object(i, m, label=labels[i], attributes=(attrs or {}).get(i)) for i, m in masks.items()}
    return Scene(SSR(image_sha256=SHA, width=w, height=h, version=version, objects=objs), masks)


def test_carry_ids_keeps_unchanged_objects_and_numbers_new_ones_above():
    shape = (10, 10)
    a, b, c = rect(shape, 0, 0, 3, 3), rect(shape, 5, 5, 9, 9), rect(shape, 0, 6, 2, 9)
    old = _scene({3: a, 7: b}, {3: "unknown", 7: "cup"}, version=2, attrs={3: {"left_of": [7]}})
    # new numbering from assemble: 0 = b (unchanged), 1 = a (relabelled), 2 = c (new)
    new = _scene({0: b, 1: a, 2: c}, {0: "cup", 1: "clock", 2: "pen"})
    out = carry_ids(old, new, version=3)
    assert out.ssr.version == 3
    assert out.ssr.objects[7].label == "cup" and np.array_equal(out.masks[7], b)
    assert out.ssr.objects[3].label == "clock" and out.ssr.objects[3].attributes == {"left_of": [7]}
    assert out.ssr.objects[8].label == "pen" and np.array_equal(out.masks[8], c)
    assert sorted(out.ssr.objects) == [3, 7, 8]


# --- OWLv2 boxes on non-square images ---------------------------------------------------------------
def test_box_scaling_uses_the_padded_square_side():
    # a 200 x 100 (W x H) image is padded to 200 x 200: normalised coords are fractions of 200
    boxes = boxes_to_pixels(np.array([[0.5, 0.25, 0.5, 0.25]]), height=100, width=200)
    assert np.allclose(boxes, [[50, 25, 150, 75]])
    # portrait: 100 x 300 (W x H) -> side 300; a box past the right edge is clipped to the image
    boxes = boxes_to_pixels(np.array([[0.3, 0.5, 0.2, 0.2]]), height=300, width=100)
    assert np.allclose(boxes, [[60, 120, 100, 180]])


def test_processor_pads_bottom_right_so_padded_scaling_recovers_boxes(perception_models):
    """The real Owlv2 processor on a non-square image: a bright rectangle found in its pixel_values,
    mapped back with our scaling, lands where it was drawn; per-axis scaling would not."""
    from transformers import Owlv2Processor

    proc = Owlv2Processor.from_pretrained(perception_models / "owlv2")
    h, w = 120, 300
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = 150, 30, 270, 90
    img[y0:y1, x0:x1] = 255
    pv = proc.image_processor(images=img, return_tensors="pt")["pixel_values"][0].numpy()
    s = pv.shape[-1]
    bright = pv.mean(0) > pv.mean(0).max() - 0.5
    ys, xs = np.nonzero(bright)
    # as a normalised cxcywh box of the model input
    nb = np.array([[(xs.min() + xs.max() + 1) / 2 / s, (ys.min() + ys.max() + 1) / 2 / s,
                    (xs.max() + 1 - xs.min()) / s, (ys.max() + 1 - ys.min()) / s]])
    got = boxes_to_pixels(nb, height=h, width=w)[0]
    tol = 300 / s * 1.5  # about one input pixel of the padded square
    assert np.allclose(got, [x0, y0, x1, y1], atol=tol), got
    cx, cy, bw, bh = nb[0]  # scaling x by W and y by H (ignoring the padding) is off by far more
    naive = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
    assert np.abs(naive - [x0, y0, x1, y1]).max() > 5 * tol


def test_detect_matches_the_models_own_forward_and_hf_postprocessing(tiny_perception_settings, photo):
    """Our one-pass path (cached text embeddings + image embedder + class/box heads) gives the
    same logits and boxes as Owlv2ForObjectDetection.forward, and the same pixel boxes as the
    processor's post-processing given the padded square size."""
    import torch

    p = Perceiver(tiny_perception_settings)
    model, proc = p.owlv2_model()
    rgb = photo[:, :500]  # non-square, 597 x 500
    queries = ["cup", "a red chair"]
    inputs = proc(text=[queries], images=rgb, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**inputs)
    from cielr_core.perception.label import query_embeddings

    q = query_embeddings(model, proc, queries, cache_key="test-forward")
    with torch.inference_mode():
        fmap, _ = model.image_embedder(pixel_values=inputs["pixel_values"])
        feats = fmap.reshape(1, -1, fmap.shape[-1])
        logits = model.class_predictor(feats, q[None], None)[0]
        boxes = model.box_predictor(feats, fmap)
    assert torch.allclose(logits, ref.logits, atol=1e-4)
    assert torch.allclose(boxes, ref.pred_boxes, atol=1e-5)
    side = max(rgb.shape[:2])
    hf = proc.image_processor.post_process_object_detection(ref, threshold=-1.0, target_sizes=[(side, side)])[0]
    ours = boxes_to_pixels(ref.pred_boxes[0].numpy(), height=rgb.shape[0], width=rgb.shape[1])
    clipped = hf["boxes"].numpy().copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, rgb.shape[1])
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, rgb.shape[0])
    assert np.allclose(ours, clipped, atol=1e-2)


def test_detect_embeds_the_vocabulary_once_and_applies_threshold_and_nms(tiny_perception_settings, photo):
    p = Perceiver(tiny_perception_settings)
    det1 = p.detect(photo)
    after_first = text_embed_stats()["computed"]
    det2 = p.detect(photo[::-1].copy())
    assert text_embed_stats()["computed"] == after_first  # no re-embedding of the vocabulary
    p.detect(photo, extra_queries=["the thing that tells the time"])
    assert text_embed_stats()["computed"] == after_first + 1
    h, w = photo.shape[:2]
    for det in (det1, det2):
        assert set(det.labels) <= set(p.vocabulary)
        assert np.all(det.boxes[:, 0] >= 0) and np.all(det.boxes[:, 2] <= w)
        assert np.all(det.boxes[:, 1] >= 0) and np.all(det.boxes[:, 3] <= h)
        assert np.all(det.scores > tiny_perception_settings.perception.owlv2.score_threshold)
        for i in range(len(det)):  # per-label NMS: no two same-label boxes overlap above nms_iou
            for j in range(i + 1, len(det)):
                if det.labels[i] == det.labels[j]:
                    assert M.box_iou(det.boxes[i], det.boxes[j]) <= tiny_perception_settings.perception.owlv2.nms_iou
    strict = load_settings(profile="tiny", overrides={
        "models_dir": tiny_perception_settings.models_dir, "perception": {"owlv2": {"score_threshold": 0.999999}}})
    assert len(Perceiver(strict).detect(photo)) <= len(det1)


# --- SAM2 settings ---------------------------------------------------------------------------------
def test_generator_settings_come_from_config_with_overrides_on_top(tiny_perception_settings):
    cfg = tiny_perception_settings.perception.sam2
    g = generator_settings(cfg)
    assert g["points_per_side"] == cfg.points_per_side and g["crop_n_layers"] == cfg.crop_n_layers
    assert set(g) == {"points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                      "stability_score_offset", "crop_n_layers", "crop_n_points_downscale_factor", "box_nms_thresh",
                      "min_mask_region_area", "use_m2m"}  # crop_n_points_downscale_factor: the paper profile sets it
    g2 = generator_settings(cfg, {"pred_iou_thresh": 0.5, "points_per_side": 2})
    assert g2["pred_iou_thresh"] == 0.5 and g2["points_per_side"] == 2 and g2["use_m2m"] == cfg.use_m2m
    with pytest.raises(ValueError, match="unknown SAM2 generator setting"):
        generator_settings(cfg, {"image_size": 512})
    with pytest.raises(ValueError):
        generator_settings(cfg, {"points_per_side": "many"})


def test_autocast_only_on_cuda_with_a_half_dtype():
    import contextlib

    import torch

    from cielr_core.perception.segment import autocast_context

    assert isinstance(autocast_context("cpu", torch.bfloat16), contextlib.nullcontext)
    assert isinstance(autocast_context("cuda", torch.float32), contextlib.nullcontext)
    ctx = autocast_context("cuda:0", torch.bfloat16)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


# --- tiny models end to end ---------------------------------------------------------------------------
def test_tiny_models_end_to_end_on_a_ciebench_photo(tiny_perception_settings, photo, photo_scene):
    h, w = photo.shape[:2]
    p = Perceiver(tiny_perception_settings)
    seg = p.segment(photo)
    assert seg.masks.shape[1:] == (h, w) and seg.masks.dtype == bool and len(seg) >= 1
    d = p.depth(photo)
    assert d.shape == (h, w) and d.dtype == np.float32 and float(d.std()) > 0
    ssr = photo_scene.ssr
    assert ssr.version == 0 and (ssr.width, ssr.height) == (w, h) and len(ssr.objects) >= 1
    for oid, o in ssr.objects.items():
        assert o.mask == f"masks/{oid}.png" and o.area == M.area(photo_scene.masks[oid])
        assert o.depth is not None and 0.0 <= o.depth <= 1.0
    prov = ssr.provenance
    assert prov["models"]["sam2"]["id"] == "tiny/sam2" and prov["code"]["segment"]
    assert str(tiny_perception_settings.models_dir) not in json.dumps(prov)  # no machine paths
    # the SAM2 overrides reach the generator: a 1-point grid cannot give more masks than points
    one = p.segment(photo, sam2_overrides={"points_per_side": 1})
    assert len(one) <= 1


def test_batched_detect_and_depth_equal_per_image_results(tiny_perception_settings, photo):
    p = Perceiver(tiny_perception_settings)
    a, b, c = photo, photo[:300, :450].copy(), photo[::-1].copy()  # two sizes; a and c share one
    dets = p.detect_many([a, b, c])
    deps = p.depth_many([a, b, c])
    for rgb, det, dep in zip((a, b, c), dets, deps):
        one = p.detect(rgb)
        assert det.labels == one.labels
        assert np.allclose(det.boxes, one.boxes, atol=1e-3) and np.allclose(det.scores, one.scores, atol=1e-5)
        assert dep.shape == rgb.shape[:2] and np.allclose(dep, p.depth(rgb), rtol=1e-4, atol=1e-6)


def test_an_image_where_nothing_is_found_gives_a_valid_empty_ssr(tiny_perception_settings, photo):
    # SAM2's predicted IoU is a sigmoid (< 1), so a threshold of 1 keeps no mask
    scene = Perceiver(tiny_perception_settings).perceive(photo, sam2_overrides={"pred_iou_thresh": 1.0})
    assert scene.ssr.objects == {} and scene.masks == {}
    assert SSR.from_json(scene.ssr.canonical_json()) == scene.ssr
    assert render_overlay(photo, scene).shape == photo.shape


def test_registry_loads_each_model_once(tiny_perception_settings, photo):
    p = Perceiver(tiny_perception_settings)
    p.segment(photo)
    p.detect(photo)
    p.depth(photo)
    before = registry.stats()
    assert before.get("sam2", 0) >= 1 and before.get("owlv2", 0) >= 1 and before.get("depth", 0) >= 1
    q = Perceiver(tiny_perception_settings)  # a second Perceiver and more images load nothing
    q.segment(photo[:200, :300].copy())
    q.detect(photo[:200, :300].copy())
    q.depth(photo[:200, :300].copy())
    p.depth(photo)
    assert registry.stats() == before
    assert p.sam2_model() is q.sam2_model() and p.owlv2_model()[0] is q.owlv2_model()[0]


def test_update_semantic_keeps_ids_and_bumps_version(tiny_perception_settings, photo, photo_scene):
    p = Perceiver(tiny_perception_settings)
    up = p.update_semantic(photo, photo_scene, ["the thing that tells the time"])
    assert up.ssr.version == photo_scene.ssr.version + 1
    assert up.ssr.provenance["parent_version"] == 0
    assert up.ssr.provenance["extra_queries"] == ["the thing that tells the time"]
    old_by_mask = {i: photo_scene.masks[i] for i in photo_scene.ssr.ids}
    for nid in up.ssr.ids:
        same = [i for i, m in old_by_mask.items() if np.array_equal(m, up.masks[nid])]
        if same:
            assert nid == same[0]
        else:
            assert nid > max(photo_scene.ssr.ids)
    up2 = p.update_semantic(photo, up, ["lamp"], sam2_overrides={"points_per_side": 2})
    assert up2.ssr.version == 2 and up2.ssr.provenance["extra_queries"] == ["the thing that tells the time", "lamp"]
    assert up2.ssr.provenance["sam2_overrides"] == {"points_per_side": 2}


def test_ssr_round_trip_through_the_store(tmp_path, photo, photo_scene):
    st = ArtifactStore(str(tmp_path / "store"))
    digest = save_scene(st, "ssr/x/y", photo_scene)
    back = load_scene(st, "ssr/x/y")
    assert back.ssr.digest() == digest == photo_scene.ssr.digest()
    assert back.ssr == photo_scene.ssr
    for oid in photo_scene.ssr.ids:
        assert np.array_equal(back.masks[oid], photo_scene.masks[oid])


def test_render_overlay_colours_masks_and_leaves_the_rest(photo):
    h, w = 60, 80
    rgb = np.full((h, w, 3), 100, np.uint8)
    m = rect((h, w), 40, 30, 80, 60)
    scene = _scene({0: m}, {0: "cup"})
    ov = render_overlay(rgb, scene)
    assert ov.shape == (h, w, 3) and ov.dtype == np.uint8
    assert np.array_equal(ov[:20, :30], rgb[:20, :30])  # far from the object: untouched
    inside = ov[35:40, 72:78].reshape(-1, 3)
    assert np.all(inside != 100)  # blended with the object's colour
    with pytest.raises(ValueError):
        render_overlay(rgb[:10], scene)


# --- missing weights ----------------------------------------------------------------------------------
def test_missing_tiny_weights_name_the_way_out(tmp_path, photo):
    s = load_settings(profile="tiny", overrides={"models_dir": str(tmp_path / "no-models")})
    p = Perceiver(s)
    small = photo[:64, :64].copy()
    for call in (p.segment, p.detect, p.depth):
        with pytest.raises(ModelUnavailableError) as ei:
            call(small)
        msg = str(ei.value)
        assert "cielr models tiny" in msg and "--profile tiny" in msg and str(tmp_path / "no-models") in msg


def test_missing_hub_weights_offline_name_the_model(photo):
    s = load_settings(profile="default", overrides={"perception": {"device": "cpu"}})
    p = Perceiver(s)
    small = photo[:64, :64].copy()
    for call, model_id, setting in ((p.segment, "facebook/sam2.1-hiera-large", "SAM2"),
                                    (p.detect, "google/owlv2-base-patch16-ensemble", "OWLV2"),
                                    (p.depth, "depth-anything/Depth-Anything-V2-Small-hf", "DEPTH")):
        with pytest.raises(ModelUnavailableError) as ei:
            call(small)
        msg = str(ei.value)
        assert model_id in msg and "hf download" in msg and "cielr models tiny" in msg
        # the way out names this model's own setting, not another kind's
        assert f"CIELR_PERCEPTION__{setting}__MODEL__PATH" in msg
        assert not [k for k in ("SAM2", "OWLV2", "DEPTH") if k != setting and f"__{k}__" in msg]
        assert "huggingface-cli" not in msg


def test_every_model_kind_names_its_own_path_setting():
    from cielr_core.models import PATH_SETTING, unavailable_message

    for kind, setting in PATH_SETTING.items():
        msg = unavailable_message(kind, "org/missing-model", None, "not in the cache")
        assert f"{setting}=/path/to/model" in msg and "`hf download org/missing-model`" in msg
        assert sum(other in msg for other in PATH_SETTING.values()) == 1


# --- CLI ----------------------------------------------------------------------------------------------
def test_cli_ssr_writes_ssr_masks_overlay(perception_models, ciebench_dir, tmp_path, monkeypatch, photo_scene):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("CIELR_MODELS_DIR", str(perception_models))
    img = ciebench_dir / CIEBENCH_ID / f"{CIEBENCH_ID}.png"
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["ssr", str(img), "--profile", "tiny", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = (out / "ssr.json").read_bytes()
    digest = res.stdout.strip().splitlines()[-1]
    assert digest == hashlib.sha256(data).hexdigest()
    ssr = SSR.from_json(data)
    assert len(ssr.objects) >= 1
    for o in ssr.objects.values():
        assert (out / o.mask).is_file()
    from PIL import Image

    with Image.open(out / "overlay.png") as im:
        assert im.size == (ssr.width, ssr.height) and im.mode == "RGB"
    # the same photo through the library gives the same SSR (deterministic, same image digest)
    assert digest == photo_scene.ssr.digest()


def test_cli_ssr_default_writes_into_the_store_at_the_task_key(perception_models, ciebench_dir, tmp_path,
                                                                monkeypatch, photo, photo_scene):
    """Without --out the SSR lands where the pipeline's merge-ssr task puts it (tasks.keys.ssr_prefix)."""
    from typer.testing import CliRunner

    from cielr_core.images import image_digest
    from cli.main import app
    from tasks.keys import ssr_prefix

    monkeypatch.setenv("CIELR_MODELS_DIR", str(perception_models))
    monkeypatch.setenv("CIELR_STORE__URL", str(tmp_path / "store"))
    img = ciebench_dir / CIEBENCH_ID / f"{CIEBENCH_ID}.png"
    res = CliRunner().invoke(app, ["ssr", str(img), "--profile", "tiny"])
    assert res.exit_code == 0, res.output
    s = load_settings(profile="tiny")
    prefix = ssr_prefix(image_digest(photo), s)
    st = ArtifactStore(str(tmp_path / "store"))
    scene = load_scene(st, prefix)
    assert scene.ssr.digest() == res.stdout.strip().splitlines()[-1] == photo_scene.ssr.digest()
    assert st.exists(f"{prefix}/overlay.png")


@pytest.mark.parametrize("case", ["not-an-image", "truncated", "missing"])
def test_cli_ssr_refuses_bad_input_clearly(case, perception_models, ciebench_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("CIELR_MODELS_DIR", str(perception_models))
    bad = tmp_path / "bad.png"
    if case == "not-an-image":
        bad.write_bytes(b"not an image at all")
    elif case == "truncated":
        bad.write_bytes((ciebench_dir / CIEBENCH_ID / f"{CIEBENCH_ID}.png").read_bytes()[:2000])
    res = CliRunner().invoke(app, ["ssr", str(bad), "--profile", "tiny", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "error:" in res.output and str(bad) in res.output
    assert not (tmp_path / "o2" / "ssr.json").exists()


# --- constructed scenes (issue 17): hand-made masks, scripted model outputs ------------------------
class ScriptedModelsPerceiver(Perceiver):
    """Test double: a real :class:`Perceiver` (matching, merging, ids, carry-over, provenance all
    real) whose model calls return scripted outputs: ``detect`` answers from ``detections`` (the
    queries it was asked with are recorded), ``depth`` is a constant map, ``segment`` returns
    ``masks`` (scores 0.9). No weights are loaded."""

    def __init__(self, settings=None, *, detections=None, masks=None):
        super().__init__(settings or load_settings(profile="default"))
        self.scripted = detections if detections is not None else Detections.empty()
        self.scripted_masks = masks
        self.detect_queries: list[list[str]] = []
        self.segment_overrides: list = []

    def detect(self, rgb, extra_queries=()):
        self.detect_queries.append(self.queries(extra_queries))
        return self.scripted

    def depth(self, rgb):
        return np.full(rgb.shape[:2], 0.5, np.float32)

    def segment(self, rgb, sam2_overrides=None):
        self.segment_overrides.append(sam2_overrides)
        return SegmentResult(np.stack(self.scripted_masks), [0.9] * len(self.scripted_masks))


def disc(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_semantic_update_recomputes_builtin_relations_never_carries_them():
    """Defect 1: three fruits start 'unknown' with built-in relations computed (label_count 3);
    a semantic update relabels them orange / lemon / lemon with their masks unchanged. Every
    built-in relation must describe the new labels (the orange's label_count is 1, not 3)."""
    from cielr_core.relations import builtin_disagreements, builtin_relations, with_attributes

    shape = (40, 120)
    fruit = [disc(shape, 20, 20, 8), disc(shape, 60, 20, 7), disc(shape, 100, 20, 6)]
    scene = _scene({0: fruit[0], 1: fruit[1], 2: fruit[2]}, {0: "unknown", 1: "unknown", 2: "unknown"})
    scene = with_attributes(scene, builtin_relations(scene), update="spatial-builtin")
    scene.ssr.objects[0].attributes["area_px_by_code"] = 201  # spatial code: mask-only, may be carried
    assert scene.ssr.objects[0].attributes["label_count"] == 3 and builtin_disagreements(scene) == []
    boxes = [M.bbox(m) for m in fruit]
    p = ScriptedModelsPerceiver(detections=Detections(boxes, [0.9, 0.8, 0.7], ["orange", "lemon", "lemon"]))
    rgb = np.zeros((*shape, 3), np.uint8)
    up = p.update_semantic(rgb, scene, ["ripe orange", "yellow lemon"])
    objs = up.ssr.objects
    assert [objs[i].label for i in (0, 1, 2)] == ["orange", "lemon", "lemon"]  # ids kept: masks unchanged
    assert objs[0].attributes["label_count"] == 1
    assert objs[1].attributes["label_count"] == 2 and objs[2].attributes["label_count"] == 2
    assert objs[1].attributes["x_rank_in_label"] == 0 and objs[2].attributes["x_rank_in_label"] == 1
    assert objs[0].attributes["x_rank_in_label"] == 0
    assert objs[0].attributes["area_px_by_code"] == 201
    assert builtin_disagreements(up) == []
    # a scene that never had built-ins gets none from an update (nothing to disagree with)
    plain = _scene({0: fruit[0], 1: fruit[1]}, {0: "unknown", 1: "unknown"})
    up2 = p.update_semantic(rgb, plain, ["ripe orange"])
    assert all("label_count" not in o.attributes for o in up2.ssr.objects.values())


def test_new_objects_after_an_update_get_fresh_relations_for_every_object():
    """Re-segmentation adds an object left of everything: every old object's ranks move, so no
    carried rank may stay (x_rank, is_leftmost, nearest_object ...)."""
    from cielr_core.relations import builtin_disagreements, builtin_relations, with_attributes

    shape = (40, 120)
    a, b = disc(shape, 60, 20, 7), disc(shape, 100, 20, 6)
    scene = _scene({0: a, 1: b}, {0: "cup", 1: "cup"})
    scene = with_attributes(scene, builtin_relations(scene), update="spatial-builtin")
    assert scene.ssr.objects[0].attributes.get("is_leftmost") is True
    new = disc(shape, 15, 20, 5)
    p = ScriptedModelsPerceiver(masks=[a, b, new],
                                detections=Detections([M.bbox(a), M.bbox(b), M.bbox(new)], [0.9] * 3, ["cup"] * 3))
    up = p.update_semantic(np.zeros((*shape, 3), np.uint8), scene, [], sam2_overrides={"points_per_side": 32})
    assert sorted(up.ssr.objects) == [0, 1, 2]
    assert "is_leftmost" not in up.ssr.objects[0].attributes and up.ssr.objects[2].attributes["is_leftmost"]
    assert up.ssr.objects[0].attributes["x_rank"] == 1 and up.ssr.objects[0].attributes["label_count"] == 3
    assert builtin_disagreements(up) == []


def test_code_attributes_cannot_overwrite_builtin_relations():
    from cielr_core.relations import builtin_disagreements, builtin_relations, with_attributes

    shape = (20, 40)
    scene = _scene({0: rect(shape, 0, 0, 5, 5), 1: rect(shape, 20, 0, 30, 10)}, {0: "cup", 1: "cup"})
    scene = with_attributes(scene, builtin_relations(scene), update="spatial-builtin")
    out = with_attributes(scene, {0: {"x_rank": 7, "fill": 0.1}}, update="spatial-code")
    assert out.ssr.objects[0].attributes["x_rank"] == 0 and out.ssr.objects[0].attributes["fill"] == 0.1
    assert out.ssr.provenance["update"]["detail"]["ignored_builtin_names"] == ["x_rank"]
    assert builtin_disagreements(out) == []


def thick_line(shape, p0, p1, width):
    """Pixels within ``width / 2`` of the segment p0-p1 (x, y): a knife, a bat, a bicycle tube."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    (x0, y0), (x1, y1) = p0, p1
    d = np.array([x1 - x0, y1 - y0], float)
    t = np.clip(((xx - x0) * d[0] + (yy - y0) * d[1]) / float(d @ d), 0, 1)
    return np.hypot(xx - (x0 + t * d[0]), yy - (y0 + t * d[1])) <= width / 2


def ring(shape, cx, cy, r, width):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(xx - cx, yy - cy)
    return (d <= r) & (d >= r - width)


def test_matching_fits_thin_diagonal_and_non_convex_objects():
    """A diagonal knife and bat and a wire-frame bicycle fill little of their boxes: the mask/box
    pixel IoU leaves them unknown below 0.3; the mask's own box against the detection box (with
    the mask covered by it) labels them."""
    shape = (120, 200)
    knife = thick_line(shape, (10, 10), (90, 50), 3)
    bat = thick_line(shape, (100, 110), (190, 15), 5)
    wheels = ring(shape, 40, 95, 18, 3) | ring(shape, 100, 95, 18, 3)
    bicycle = wheels | thick_line(shape, (40, 95), (70, 70), 3) | thick_line(shape, (70, 70), (100, 95), 3)
    masks = [knife, bat, bicycle]
    pad = lambda m, k: [b + d for b, d in zip(M.bbox(m), (-k, -k, k, k))]  # a detector's loose box
    det = Detections([pad(knife, 2), pad(bat, 3), pad(bicycle, 2)], [0.5, 0.6, 0.7], ["knife", "baseball bat", "bicycle"])
    for m in masks:
        assert M.mask_box_iou(m, M.bbox(m)) < 0.3  # what the earlier rule saw
    assert [lab for lab, _, _ in match_labels(masks, det, 0.3, rule="mask")] == ["unknown"] * 3
    got = match_labels(masks, det, 0.3)
    assert [lab for lab, _, _ in got] == ["knife", "baseball bat", "bicycle"]
    assert all(q > 0.8 for _, _, q in got)
    # a wheel alone is a small part of the bicycle's box: not labelled bicycle
    wheel = ring(shape, 40, 95, 18, 3)
    assert match_labels([wheel], det, 0.3)[0][0] == "unknown"
    # a mask whose box overlaps the detection box but lies mostly outside it is not covered by it
    outside = rect(shape, 5, 0, 8, 100) | rect(shape, 100, 0, 130, 100)  # a sliver inside, the bulk outside
    box = Detections([[0, 0, 100, 100]], [0.9], ["knife"])
    assert M.box_iou(M.bbox(outside), box.boxes[0]) >= 0.7
    assert match_labels([outside], box, 0.3)[0][0] == "unknown"  # 300 of 3300 pixels inside
    assert match_labels([outside], box, 0.3, min_coverage=0.05)[0][0] == "knife"
    # and end to end: the SSR labels the thin objects
    scene = assemble(SegmentResult(np.stack(masks), [0.9] * 3), det, None, image_sha256=SHA, width=200, height=120)
    assert sorted(o.label for o in scene.ssr.objects.values()) == ["baseball bat", "bicycle", "knife"]


def test_label_candidates_keep_the_top_k_alternatives_with_scores():
    """Per detection the detector's best queries on that patch are kept; a mask collects those of
    every detection it matches, best score first, ``label_candidates`` of them; the LLM sees them."""
    shape = (40, 60)
    clock = disc(shape, 20, 20, 10)
    box = M.bbox(clock)
    det = Detections(
        [box, [b + 1 for b in box], [40, 0, 60, 20]], [0.5, 0.3, 0.9], ["clock", "alarm clock", "kite"],
        candidates=[[("clock", 0.5), ("alarm clock", 0.45), ("watch", 0.2), ("plate", 0.1)],
                    [("alarm clock", 0.3), ("timer", 0.25)],
                    [("kite", 0.9)]])
    scene = assemble(SegmentResult(np.stack([clock]), [0.9]), det, None, image_sha256=SHA, width=60, height=40,
                     label_candidates=3)
    o = scene.ssr.objects[0]
    assert o.label == "clock" and o.score == pytest.approx(0.5)
    assert [(c.label, round(c.score, 3)) for c in o.label_candidates] == [
        ("clock", 0.5), ("alarm clock", 0.45), ("timer", 0.25)]
    view = scene.ssr.llm_view()["objects"][0]
    assert view["label_candidates"] == [["clock", 0.5], ["alarm clock", 0.45], ["timer", 0.25]]
    back = SSR.from_json(scene.ssr.canonical_json())
    assert back == scene.ssr
    # no candidate lists from the detector: the detection's own label and score
    plain = Detections([box], [0.4], ["clock"])
    o2 = assemble(SegmentResult(np.stack([clock]), [0.9]), plain, None, image_sha256=SHA, width=60, height=40)
    assert [(c.label, c.score) for c in o2.ssr.objects[0].label_candidates] == [("clock", pytest.approx(0.4))]
    unknown = assemble(SegmentResult(np.stack([clock]), [0.9]), Detections.empty(), None, image_sha256=SHA,
                       width=60, height=40)
    assert unknown.ssr.objects[0].label_candidates == []
    assert "label_candidates" not in unknown.ssr.llm_view()["objects"][0]
    # round trip of detections with candidates
    assert Detections.from_json(json.loads(json.dumps(det.to_json()))).candidates == det.candidates


def test_detect_keeps_the_top_k_queries_of_each_detection(tiny_perception_settings, photo):
    """Each detection's candidates are its patch's best queries, best first: the first is the
    detection's own label and score, the others score above the threshold, at most k of them."""
    s = load_settings(profile="tiny", overrides={"models_dir": tiny_perception_settings.models_dir,
                                                  "perception": {"owlv2": {"label_candidates": 3}}})
    p = Perceiver(s)
    det = p.detect(photo, extra_queries=["alarm clock"])
    assert len(det) > 0 and det.candidates is not None and len(det.candidates) == len(det)
    for j, cands in enumerate(det.candidates):
        assert 1 <= len(cands) <= 3
        assert cands[0][0] == det.labels[j] and cands[0][1] == pytest.approx(float(det.scores[j]), abs=1e-6)
        assert [c[1] for c in cands] == sorted((c[1] for c in cands), reverse=True)
        assert len({c[0] for c in cands}) == len(cands) and all(c[0] in p.queries(["alarm clock"]) for c in cands)
    assert any(len(c) == 3 for c in det.candidates)  # threshold 0 in the tiny profile: k kept
    scene = p.assemble(p.segment(photo), det, None, image_sha256=SHA, width=photo.shape[1], height=photo.shape[0])
    for o in scene.ssr.objects.values():
        assert (o.label == "unknown") == (o.label_candidates == []) and len(o.label_candidates) <= 3


# --- label recall: the vocabulary and the query set ----------------------------------------------
def test_lvis_is_the_default_vocabulary_and_queries_add_to_it():
    from importlib import resources

    lines = resources.files("cielr_core.data").joinpath("lvis.txt").read_text(encoding="utf-8").splitlines()
    assert len([ln for ln in lines if ln.strip() and not ln.startswith("#")]) == 1203
    lvis = load_vocabulary("lvis")
    assert len(lvis) == 1198 and lvis[0] == "aerosol can" and lvis[-1] == "zucchini"  # 1,203 categories
    for name in ("speaker", "painting", "printer", "tripod", "wall clock", "alarm clock", "airplane"):
        assert name in lvis
    assert "aeroplane" not in lvis  # a synonym, not a query
    assert load_vocabulary("coco")[0] == "person" and len(load_vocabulary("coco")) == 80
    s = load_settings(profile="default")
    assert s.perception.owlv2.vocabulary == "lvis"
    p = Perceiver(s)
    q = p.queries(["whiteboard", "speaker", " bird  beak "])
    assert q[:1198] == lvis and q[1198:] == ["whiteboard", "bird beak"]  # nothing asked twice
    prov = p.provenance()["vocabulary"]
    assert prov["name"] == "lvis" and prov["n"] == 1198


def test_the_vocabulary_content_enters_the_perception_digest(tmp_path):
    from tasks import keys

    f = tmp_path / "vocab.txt"
    f.write_text("cup\nplate\n")
    s = load_settings(profile="default", overrides={"perception": {"owlv2": {"vocabulary": str(f)}}})
    d1, det1 = keys.perception_digest(s), keys.detect_digest(s, None)
    f.write_text("cup\nplate\nwhiteboard\n")  # same path, new content
    import os

    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 1_000_000))
    d2, det2 = keys.perception_digest(s), keys.detect_digest(s, None)
    assert d1 != d2 and det1 != det2
    lvis, coco = (load_settings(profile="default", overrides={"perception": {"owlv2": {"vocabulary": v}}})
                  for v in ("lvis", "coco"))
    assert keys.perception_digest(lvis) != keys.perception_digest(coco)
    assert keys.perception_digest(lvis) == keys.perception_digest(load_settings(profile="default"))
    # a missing file does not break the digest (perception then fails naming the file)
    s_missing = load_settings(profile="default", overrides={"perception": {"owlv2": {"vocabulary": str(tmp_path / "no")}}})
    assert len(keys.perception_digest(s_missing)) == 64
    with pytest.raises(ValueError, match="neither a built-in"):
        Perceiver(s_missing).queries()


def test_the_papers_touching_merge_rule_stays_available():
    """merge_rule="touching" (the paper profile) fuses touching same-label masks, as the paper does."""
    shape = (30, 70)
    oranges = [disc(shape, 12, 15, 10), disc(shape, 33, 15, 11), disc(shape, 55, 15, 10)]
    det = Detections([M.bbox(m) for m in oranges], [0.8, 0.9, 0.7], ["orange"] * 3)
    seg = SegmentResult(np.stack(oranges), [0.9] * 3)
    fused = assemble(seg, det, None, image_sha256=SHA, width=70, height=30, merge_rule="touching")
    assert len(fused.ssr.objects) == 1 and fused.ssr.objects[0].attributes == {"merged_from": 3}
    assert len(assemble(seg, det, None, image_sha256=SHA, width=70, height=30).ssr.objects) == 3
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_groups(oranges, ["orange"] * 3, 2, rule="nearby")


def test_update_semantic_with_nothing_new_returns_the_scene_itself():
    """Queries the scene's query set already holds (vocabulary words, earlier extras) and no SAM2
    change: no detector pass, no new version."""
    shape = (20, 40)
    scene = _scene({0: rect(shape, 0, 0, 10, 10)}, {0: "unknown"})
    p = ScriptedModelsPerceiver(detections=Detections([[0, 0, 10, 10]], [0.9], ["whiteboard"]))
    rgb = np.zeros((*shape, 3), np.uint8)
    assert p.update_semantic(rgb, scene, ["orange", "wall clock"]) is scene  # both in LVIS
    assert p.detect_queries == []
    up = p.update_semantic(rgb, scene, ["whiteboard", "orange"])
    assert up is not scene and up.ssr.objects[0].label == "whiteboard" and up.ssr.version == 1
    assert p.detect_queries[-1][-1] == "whiteboard"
    assert p.update_semantic(rgb, up, ["whiteboard"]) is up  # asked before: in the scene's query set
