"""The reasoner sees the image: set-of-mark pictures (SSR ids drawn on the image) with every LLM
call of the loop when ``reasoning.show_image`` is on; through the OpenAI-compatible backend the
request carries the picture as an image content part (checked by a local test endpoint).

Doubles: ``ImageRecordingLLM`` (answers from a script like test_reasoning's ScriptedLLM and
records the image each call received) and test_reasoning's ``RecordingUpdateSemantic``.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Literal

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, Field
from test_reasoning import (
    A,
    ChatServer,
    H,
    R,
    RecordingUpdateSemantic,
    ScriptedLLM,
    W,
    make_scene,
    openai_llm,
    settings,
)

from cielr_core.config import load_settings
from cielr_core.reasoning import Reasoner, make_llm
from cielr_core.reasoning.vision import VISION_NOTE, set_of_marks


class Look(BaseModel):
    """A schema with no free text (random weights may split a multi-byte character in a string)."""

    colour: Literal["red", "green", "blue"]
    n: int = Field(ge=0, le=9)


RNG_RGB = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


class ImageRecordingLLM(ScriptedLLM):
    """Test double: a ScriptedLLM that also records the image (or None) each call received."""

    def __init__(self, script):
        super().__init__(script)
        self.images = []

    def complete(self, messages, schema, *, image=None, call_name=""):
        self.images.append(image)
        return super().complete(messages, schema, image=image, call_name=call_name)


def test_set_of_marks_draws_each_id_on_its_object_and_nothing_elsewhere():
    sc = make_scene()
    img = set_of_marks(RNG_RGB, sc)
    assert img.shape == RNG_RGB.shape and img.dtype == np.uint8
    changed = np.any(img != RNG_RGB, axis=2)
    for oid in sc.ssr.ids:
        x, y = (round(v) for v in sc.ssr.objects[oid].centroid)
        assert changed[max(0, y - 2): y + 3, max(0, x - 2): x + 3].any(), oid  # its id is written there
    near = np.zeros((H, W), bool)
    for oid in sc.ssr.ids:
        x0, y0, x1, y1 = sc.ssr.objects[oid].bbox
        near[max(0, y0 - 8): y1 + 8, max(0, x0 - 8): x1 + 8] = True
    assert not changed[~near].any()  # the picture is the photo away from the objects


def test_every_call_of_the_loop_sees_the_current_ssr_drawn_on_the_image():
    sc = make_scene()
    upd = RecordingUpdateSemantic()
    llm = ImageRecordingLLM([
        ("decompose", {"reason": "r", "subtasks": ["remove the orange"]}),
        ("assess", A("semantic", queries=["ripe orange"])),
        ("assess", A("none")),
        ("reason", R(ids=[3])),
    ])
    plan = Reasoner(settings(show_image=True), llm, updater=upd).plan("remove the orange", RNG_RGB, sc)
    assert plan.steps[0].target_ids == [3]
    assert all(im is not None for im in llm.images)
    before = set_of_marks(RNG_RGB, sc)
    assert np.array_equal(llm.images[0], before) and np.array_equal(llm.images[1], before)
    assert not np.array_equal(llm.images[2], before)  # the new object 3 is drawn from then on
    assert np.array_equal(llm.images[2], llm.images[3])
    assert all(VISION_NOTE in c["messages"][0]["content"] for c in llm.calls)
    llm.done()
    # off by default: text only, as in the paper
    llm2 = ImageRecordingLLM([("assess", A("none")), ("reason", R(ids=[0]))])
    Reasoner(settings(), llm2).plan_step("s", "i", RNG_RGB, sc)
    assert llm2.images == [None, None] and VISION_NOTE not in llm2.calls[0]["messages"][0]["content"]


@pytest.fixture()
def chat_server():
    srv = ChatServer()
    yield srv
    srv.close()


def test_openai_compatible_endpoint_receives_the_marked_image_on_every_call(chat_server):
    answers = iter([{"reason": "r", "subtasks": ["remove the cup"]}, A("none"), R(ids=[0])])
    chat_server.script = [(200, lambda body: json.dumps(next(answers)), 0) for _ in range(3)]
    llm, s = openai_llm(chat_server.url)
    s = s.model_copy(update={"reasoning": s.reasoning.model_copy(update={"show_image": True})})
    sc = make_scene()
    plan = Reasoner(s, llm).plan("remove the cup", RNG_RGB, sc)
    assert plan.steps[0].target_ids == [0] and len(chat_server.requests) == 3
    want = set_of_marks(RNG_RGB, sc)
    for req in chat_server.requests:
        msgs = req["body"]["messages"]
        assert VISION_NOTE in msgs[0]["content"]
        parts = msgs[-1]["content"]
        assert parts[0]["type"] == "text" and parts[1]["type"] == "image_url"
        url = parts[1]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        assert np.array_equal(got, want)  # lossless: the endpoint sees exactly the marked picture


# ------------------------------------------------------------------------------------------------
# in-process vision-language backend: a tiny random-weight Qwen2.5-VL made locally
@pytest.fixture(scope="module")
def tiny_vlm_settings(session_tmp):
    from conftest import tiny_family

    tiny_family(session_tmp, "qwen2.5-vl")
    return load_settings(profile="tiny", overrides={
        "models_dir": str(session_tmp / "models"),
        "llm": {"model": {"id": "tiny/qwen2.5-vl", "path": "${models_dir}/qwen2.5-vl"}, "max_new_tokens": 600},
        "reasoning": {"max_invalid_retries": 0, "max_iterations": 1, "show_image": True}})


def test_tiny_qwen25_vl_sees_the_image_under_the_grammar(tiny_vlm_settings):
    import torch

    s = tiny_vlm_settings
    llm = make_llm(s.llm, s)
    lm = llm._load()
    assert type(lm.model).__name__ == "Qwen2_5_VLForConditionalGeneration" and lm.processor is not None
    msgs = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "pick"}]
    a, b = RNG_RGB, 255 - RNG_RGB
    call = llm.complete(msgs, Look, image=a, call_name="pick")
    assert isinstance(call.parsed, Look) and "vision tokens" in call.extra["image"]
    assert "<|image_pad|>" in call.extra["prompt"]
    text_only = llm.complete(msgs, Look, call_name="pick")
    assert call.tokens["prompt"] > text_only.tokens["prompt"]  # the image's tokens are in the prompt
    # the pixels reach the model: another image, other logits for the same prompt
    _, enc_a, vis_a = llm._render_with_image(lm, msgs, a)
    _, _, vis_b = llm._render_with_image(lm, msgs, b)
    with torch.inference_mode():
        la = lm.model(input_ids=enc_a["input_ids"], **vis_a).logits[0, -1]
        lb = lm.model(input_ids=enc_a["input_ids"], **vis_b).logits[0, -1]
    assert not torch.allclose(la, lb)
    assert llm.complete(msgs, Look, image=a).raw == call.raw  # greedy: deterministic


def test_tiny_qwen25_vl_in_the_loop_with_marks(tiny_vlm_settings):
    """End to end with random weights: every call gets the set-of-mark picture; the loop either
    plans over existing ids or stops with a clear InvalidAnswerError."""
    from cielr_core.reasoning import InvalidAnswerError, Trace

    s = tiny_vlm_settings
    tr = Trace()
    sc = make_scene()
    try:
        step, _ = Reasoner(s, make_llm(s.llm, s), trace=tr).plan_step("remove the cup", "remove the cup", RNG_RGB, sc)
        assert set(step.target_ids) <= set(sc.ssr.ids)
    except InvalidAnswerError:
        pass
    calls = tr.of_type("llm_call")
    assert calls and all("vision tokens" in (c["backend"] or {}).get("image", "") for c in calls)
