"""The dynamic batchers: batched results equal batch-1 results for every batched model (tiny real
architectures with random weights, CPU), requests from concurrent callers share one forward, and a
caller's exception reaches that caller only."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from cielr_core import batching

ATOL = 1e-4


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three real photos of different sizes (skimage's samples, made small)."""
    from skimage import data

    out = []
    for name, size in (("astronaut", (96, 80)), ("coffee", (112, 72)), ("chelsea", (96, 80))):
        out.append(np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)))
    return out


def _concurrently(fn, items) -> list:
    """fn(item) from one thread per item, all released at once."""
    out: list = [None] * len(items)
    gate = threading.Barrier(len(items))

    def go(i):
        gate.wait()
        try:
            out[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001
            out[i] = e

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(items))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


# -- the batcher itself ----------------------------------------------------------------------------
def test_concurrent_requests_share_one_call_and_keys_stay_apart():
    calls: list[list] = []

    def fn(items):
        calls.append(list(items))
        time.sleep(0.01)
        return [x * 10 for x in items]

    b = batching.DynamicBatcher(fn, max_batch=8, max_wait_ms=200, name="t")
    items = list(range(6))
    out = _concurrently(lambda x: b.submit(x, key=x % 2), items)
    assert out == [x * 10 for x in items]
    for c in calls:
        assert len({x % 2 for x in c}) == 1, f"a batch mixed keys: {c}"
    assert max(len(c) for c in calls) > 1, f"no two requests shared a call: {calls}"
    assert sum(n * k for n, k in b.stats().items()) == len(items)


def test_one_bad_request_fails_its_caller_only():
    def fn(items):
        if any(x < 0 for x in items):
            raise ValueError(f"negative input in {items}")
        return [x + 1 for x in items]

    b = batching.DynamicBatcher(fn, max_batch=8, max_wait_ms=200, name="t")
    out = _concurrently(b.submit, [1, 2, -3, 4])
    assert out[0] == 2 and out[1] == 3 and out[3] == 5
    assert isinstance(out[2], ValueError) and "[-3]" in str(out[2])


def test_batching_rule():
    assert batching.enabled("auto", "cuda:0") and not batching.enabled("auto", "cpu")
    assert batching.enabled("on", "cpu") and not batching.enabled("off", "cuda")
    with pytest.raises(ValueError, match="batching must be"):
        batching.enabled("sometimes", "cpu")


# -- each model: batched == batch 1 -------------------------------------------------------------------
def test_sam2_encoder_batched_equals_set_image(tiny_settings, photos):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from cielr_core.perception import Perceiver

    model = Perceiver(tiny_settings).sam2_model()
    pred = SAM2ImagePredictor(model)
    batch = batching.batcher_for("sam2-encoder-test", model, lambda ims: batching.sam2_encode(model, ims),
                                 max_batch=8, max_wait_ms=200)
    two = [photos[0], photos[1]]  # two sizes: SAM2 resizes each to its square input
    feats = _concurrently(batch.submit, two)
    assert max(batch.stats()) > 1
    for im, f in zip(two, feats):
        pred.set_image(im)
        assert tuple(f.orig_hw) == tuple(pred._orig_hw[0])
        np.testing.assert_allclose(f.image_embed.numpy(), pred._features["image_embed"].numpy(), atol=ATOL)
        for a, b in zip(f.high_res_feats, pred._features["high_res_feats"]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=ATOL)
    # the mask decoder runs on installed features as on its own: same masks
    p2 = SAM2ImagePredictor(model)
    batching.install_sam2_features(p2, feats[0])
    pred.set_image(photos[0])
    pts = np.array([[20.0, 30.0]])
    m1, s1, _ = pred.predict(point_coords=pts, point_labels=np.array([1]))
    m2, s2, _ = p2.predict(point_coords=pts, point_labels=np.array([1]))
    np.testing.assert_allclose(s1, s2, atol=ATOL)
    assert (m1 != m2).mean() < 0.01


def test_owlv2_batched_equals_batch_one(tiny_settings, photos):
    from cielr_core.perception import Perceiver, label

    p = Perceiver(tiny_settings)
    model, processor = p.owlv2_model()
    queries = p.queries()
    kw = dict(score_threshold=0.0, nms_iou=0.5, top_k=2)  # threshold 0: every random-weight box compared
    batched = batching.owlv2_detect(model, processor, photos, queries, **kw)
    for im, b in zip(photos, batched):
        one = label.detect(model, processor, im, queries, **kw)
        assert len(one) == len(b) > 0
        assert one.labels == b.labels
        np.testing.assert_allclose(one.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(one.scores, b.scores, atol=ATOL)


def test_depth_batched_equals_batch_one(tiny_settings, photos):
    from cielr_core.perception import Perceiver
    from cielr_core.perception.depth import predict_depth

    model, processor = Perceiver(tiny_settings).depth_model()
    same = [photos[0], photos[2]]  # the processor keeps the aspect ratio: one size per batch
    for im, d in zip(same, batching.depth_predict(model, processor, same)):
        np.testing.assert_allclose(d, predict_depth(model, processor, im), atol=ATOL, rtol=1e-4)


def test_clip_and_dino_batched_equal_batch_one(tiny_settings, photos):
    from cielr_core.metrics import models as mm

    clip, cproc = mm.get_clip(tiny_settings)
    dino, dproc = mm.get_dino(tiny_settings)
    cb = batching.clip_image_embeds(clip, cproc, photos)
    db = batching.dino_cls(dino, dproc, photos)
    for i, im in enumerate(photos):
        np.testing.assert_allclose(cb[i], batching.clip_image_embeds(clip, cproc, [im])[0], atol=ATOL)
        np.testing.assert_allclose(db[i], batching.dino_cls(dino, dproc, [im])[0], atol=ATOL)


def test_inpaint_batched_equals_batch_one(tiny_settings, photos):
    from cielr_core.editing.inpainters import make_inpainter

    inp = make_inpainter("diffusers", tiny_settings)
    pipe = inp.pipeline()
    reqs = []
    for i, im in enumerate((photos[0], photos[2])):
        img = np.asarray(Image.fromarray(im).resize((64, 64)))
        mask = np.zeros((64, 64), bool)
        mask[16 + 4 * i:40, 8:48] = True
        reqs.append(batching.InpaintRequest(img, mask, prompt=f"a red ball {i}", seed=7 + i))
    kw = dict(steps=2, guidance_scale=inp.guidance_scale, strength=inp.strength)
    batched = batching.inpaint_batch(pipe, reqs, **kw)
    for r, b in zip(reqs, batched):
        one = batching.inpaint_batch(pipe, [r], **kw)[0]
        assert b.shape == one.shape == (64, 64, 3)
        np.testing.assert_allclose(b, one, atol=1e-3)
    with pytest.raises(ValueError, match="same-size buckets"):
        small = batching.InpaintRequest(reqs[0].image[:32, :32], reqs[0].mask[:32, :32], "x", 0)
        batching.inpaint_batch(pipe, [reqs[0], small], **kw)


def test_perceiver_stages_batched_across_threads_equal_unbatched(tiny_settings, photos):
    """perception.batching on (CPU here): segment / detect / depth called from one thread per image
    share batched forwards, and give what the unbatched stages give, within float tolerance."""
    from cielr_core.perception import Perceiver

    off = Perceiver(tiny_settings)
    on_settings = tiny_settings.model_copy(deep=True)
    on_settings.perception.batching = "on"
    on_settings.perception.max_batch_wait_ms = 200.0
    on = Perceiver(on_settings)
    assert on.batching and not off.batching
    batching.clear()
    same = [photos[0], photos[2]]  # one size, so depth batches them too
    for stage in ("segment", "detect", "depth"):
        got = _concurrently(getattr(on, stage), same)
        for im, g in zip(same, got):
            assert not isinstance(g, Exception), g
            want = getattr(off, stage)(im)
            if stage == "segment":
                assert g.masks.shape == want.masks.shape
                np.testing.assert_allclose(g.scores, want.scores, atol=1e-3)
                assert (g.masks != want.masks).mean() < 0.01
            elif stage == "detect":
                assert g.labels == want.labels
                np.testing.assert_allclose(g.scores, want.scores, atol=ATOL)
                np.testing.assert_allclose(g.boxes, want.boxes, atol=1e-2)
            else:
                np.testing.assert_allclose(g, want, atol=ATOL, rtol=1e-4)
    seen = batching.stats()
    for name in ("sam2-encoder", "owlv2", "depth"):
        assert max(seen[name]) > 1, f"{name} never batched: {seen}"


def test_inpainter_batched_across_threads_equals_unbatched(tiny_settings, photos):
    """editing.batching on (CPU here): concurrent inpaint calls share pipeline calls and give what
    one call at a time gives (uint8 outputs, within one level)."""
    from cielr_core.editing.inpainters import make_inpainter

    off = make_inpainter("diffusers", tiny_settings)
    on_settings = tiny_settings.model_copy(deep=True)
    on_settings.editing.batching = "on"
    on_settings.editing.max_batch_wait_ms = 200.0
    on = make_inpainter("diffusers", on_settings)
    assert on.batching and not off.batching
    off.steps = on.steps = 2
    same = [photos[0], photos[2]]
    masks = []
    for i, im in enumerate(same):
        m = np.zeros(im.shape[:2], bool)
        m[10 + 5 * i:50, 12:60] = True
        masks.append(m)
    batching.clear()
    got = _concurrently(lambda i: on.inpaint(same[i], masks[i], prompt=f"a ball {i}", seed=3 + i), [0, 1])
    assert max(batching.stats()["inpaint:2:%s:%s" % (on.guidance_scale, on.strength)]) == 2
    for i, g in enumerate(got):
        assert not isinstance(g, Exception), g
        want = off.inpaint(same[i], masks[i], prompt=f"a ball {i}", seed=3 + i)
        assert g.shape == want.shape
        assert np.abs(g.astype(int) - want.astype(int)).max() <= 1
