"""Reasoning: the loop (driven by a scripted LLM double at the protocol boundary), built-in spatial
relations, the sandbox (hostile payloads), the OpenAI-compatible backend against a real local HTTP
server, the in-process transformers backend with a tiny random-weight Qwen2, and `cielr plan`.

Test doubles are named as such: ``ScriptedLLM`` (answers from a script, validated like a backend
does) and ``RecordingUpdateSemantic`` (stands in for perception's ``update_semantic``: it adds a
fixed object to the scene and records its arguments).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from conftest import tiny_family
from pydantic import BaseModel, Field

from cielr_core.config import SandboxConfig, load_settings
from cielr_core.plan import EditPlan
from cielr_core.reasoning import (
    REASONING_CODE_VERSION,
    AnswerParseError,
    InvalidAnswerError,
    LLMCall,
    LLMError,
    Reasoner,
    Trace,
    builtin_relations,
    make_llm,
    parse_answer,
)
from cielr_core.reasoning import sandbox as SB
from cielr_core.reasoning.llm import grammar_schema
from cielr_core.reasoning.schemas import reason_schema
from cielr_core.ssr import SSR, Scene, make_object

SECRET = "sk-cielr-test-SECRET-0123456789"
H, W = 30, 40


# ------------------------------------------------------------------------------------------------
# scene: cup (top left, small, far), plate (bottom right, large), apple (on the plate, nearest)
def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def make_scene() -> Scene:
    masks = {0: _rect(2, 8, 2, 8), 1: _rect(12, 29, 14, 38), 2: _rect(16, 22, 20, 28)}
    objs = {
        0: make_object(0, masks[0], label="cup", score=0.9, depth=0.2),
        1: make_object(1, masks[1], label="plate", score=0.8, depth=0.5),
        2: make_object(2, masks[2], label="apple", score=0.7, depth=0.9),
    }
    ssr = SSR(image_sha256="a" * 64, width=W, height=H, objects=objs)
    return Scene(ssr=ssr, masks=masks)


RGB = np.zeros((H, W, 3), np.uint8)


def settings(**reasoning):
    overrides: dict[str, Any] = {"reasoning": reasoning} if reasoning else {}
    overrides["llm"] = {"api_key": SECRET}
    return load_settings(profile="default", overrides=overrides)


# ------------------------------------------------------------------------------------------------
# test doubles
class ScriptedLLM:
    """Test double for the LLM protocol: answers come from a script of ``(call_name, raw)`` pairs
    (``raw`` may be a callable of the messages and schema); each answer is validated against the
    call's schema like a real backend does (``AnswerParseError`` when invalid)."""

    def __init__(self, script: list[tuple[str, Any]]):
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def complete(self, messages, schema, *, image=None, call_name=""):
        assert self.script, f"unexpected extra LLM call {call_name!r}"
        expected, raw = self.script.pop(0)
        assert call_name == expected, f"expected call {expected!r}, got {call_name!r}"
        self.calls.append({"call_name": call_name, "messages": messages, "schema": schema})
        if callable(raw):
            raw = raw(messages, schema)
        if not isinstance(raw, str):
            raw = json.dumps(raw)
        tokens = {"prompt": sum(len(m["content"].split()) for m in messages), "completion": len(raw.split())}
        try:
            parsed = parse_answer(raw, schema)
        except ValueError as e:
            raise AnswerParseError(str(e), raw=raw, latency_s=0.001, tokens=tokens) from None
        return LLMCall(parsed=parsed, raw=raw, latency_s=0.001, tokens=tokens, extra={"backend": "scripted"})

    def done(self):
        assert not self.script, f"script not used up: {self.script}"


class RecordingUpdateSemantic:
    """Test double for perception's ``update_semantic``: adds an 'orange' object (rows 2-8,
    cols 30-36) with the next free id and records every call's queries and SAM2 overrides."""

    def __init__(self):
        self.calls: list[tuple[list[str], Any]] = []

    def __call__(self, rgb, scene: Scene, extra_queries, sam2_overrides=None) -> Scene:
        assert rgb.shape == (H, W, 3)
        self.calls.append((list(extra_queries), sam2_overrides))
        new_id = max(scene.ssr.objects) + 1
        m = _rect(2, 8, 30, 36)
        objs = dict(scene.ssr.objects)
        objs[new_id] = make_object(new_id, m, label="orange", score=0.6, depth=0.4)
        ssr = scene.ssr.model_copy(update={"objects": objs})
        return Scene(ssr=SSR.model_validate(ssr.model_dump()), masks={**scene.masks, new_id: m})


def A(need="none", reason="ok", queries=(), segmentation="keep"):
    return {"need": need, "reason": reason, "queries": list(queries), "segmentation": segmentation}


def R(status="ok", operation="remove", ids=(), prompt="", reason="because", placement=None):
    if status == "no_target":
        return {"status": status, "reason": reason}
    if operation == "add":
        return {"status": status, "reason": reason, "operation": operation, "prompt": prompt, "placement": placement}
    return {"status": status, "reason": reason, "operation": operation, "target_ids": list(ids), "prompt": prompt}


def enum_ids(schema) -> list[int]:
    defs = grammar_schema(schema)["$defs"]
    ids = defs["Remove"]["properties"]["target_ids"]["items"]["enum"]
    assert defs["Change"]["properties"]["target_ids"]["items"]["enum"] == ids
    assert defs["AnchorPlacement"]["properties"]["object_id"]["enum"] == ids
    return ids


# ------------------------------------------------------------------------------------------------
# built-in relations (hand-computed)
def test_builtin_relations_exact():
    rel = builtin_relations(make_scene())
    # centroids: cup (5, 5), plate (26, 20.5), apple (24, 19); areas 36, 408, 48
    assert [rel[i]["x_rank"] for i in (0, 1, 2)] == [0, 2, 1]
    assert [rel[i]["y_rank"] for i in (0, 1, 2)] == [0, 2, 1]
    assert [rel[i]["size_rank"] for i in (0, 1, 2)] == [2, 0, 1]
    assert [rel[i]["depth_rank"] for i in (0, 1, 2)] == [2, 1, 0]
    assert rel[0]["is_leftmost"] and rel[0]["is_topmost"] and rel[0]["is_smallest"]
    assert rel[1]["is_largest"] and rel[1]["is_rightmost"] and rel[1]["is_bottommost"]
    assert rel[2]["is_nearest_to_camera"] and rel[0]["is_farthest_from_camera"]
    assert "is_largest" not in rel[0]
    assert rel[1]["contains"] == [2] and rel[2]["inside"] == [1]
    assert rel[0]["contains"] == [] and rel[0]["inside"] == []
    assert rel[0]["nearest_object"] == 2 and rel[0]["nearest_distance_px"] == round(float(np.hypot(19, 14)), 1)
    assert rel[2]["nearest_object"] == 1 and rel[1]["nearest_object"] == 2
    assert [rel[i]["horizontal"] for i in (0, 1, 2)] == ["left", "center", "center"]
    assert [rel[i]["vertical"] for i in (0, 1, 2)] == ["top", "bottom", "middle"]
    assert all(rel[i]["label_count"] == 1 and rel[i]["x_rank_in_label"] == 0 for i in (0, 1, 2))


def test_builtin_relations_count_per_label():
    sc = make_scene()
    m = _rect(2, 6, 12, 16)
    objs = dict(sc.ssr.objects)
    objs[3] = make_object(3, m, label="cup", depth=0.1)
    sc2 = Scene(ssr=sc.ssr.model_copy(update={"objects": objs}), masks={**sc.masks, 3: m})
    rel = builtin_relations(sc2)
    assert rel[0]["label_count"] == 2 and rel[3]["label_count"] == 2
    assert rel[0]["x_rank_in_label"] == 0 and rel[3]["x_rank_in_label"] == 1
    assert rel[0]["size_rank_in_label"] == 0 and rel[3]["size_rank_in_label"] == 1  # 36 > 16


# ------------------------------------------------------------------------------------------------
# the loop, one branch per test
def test_decompose():
    llm = ScriptedLLM([("decompose", {"reason": "one edit", "subtasks": ["  remove the cup ", "recolor the apple red"]})])
    r = Reasoner(settings(), llm)
    assert r.decompose("remove the cup and make the apple red", make_scene()) == [
        "remove the cup", "recolor the apple red"]
    msgs = llm.calls[0]["messages"]
    assert msgs[0]["role"] == "system" and "remove the cup and make the apple red" in msgs[1]["content"]
    assert '"label":"cup"' in msgs[1]["content"] and "masks/" not in msgs[1]["content"]  # never storage paths
    llm.done()


def test_sufficient_at_once():
    sc = make_scene()
    llm = ScriptedLLM([("assess", A("none")), ("reason", R(ids=[0], prompt="empty table"))])
    upd = RecordingUpdateSemantic()
    r = Reasoner(settings(), llm, updater=upd)
    step, final = r.plan_step("remove the cup", "remove the cup", RGB, sc)
    assert step.status == "ok" and step.operation == "remove" and step.target_ids == [0]
    assert step.ssr_digest == sc.ssr.digest() and final is sc
    assert upd.calls == []
    assert enum_ids(llm.calls[-1]["schema"]) == [0, 1, 2]
    assert [e["call_name"] for e in r.trace.of_type("llm_call")] == ["assess", "reason"]
    llm.done()


def test_semantic_update_calls_updater_with_queries():
    sc = make_scene()
    upd = RecordingUpdateSemantic()
    llm = ScriptedLLM([
        ("assess", A("semantic", "no citrus is labelled", ["orange", "orange", " lemon "], "finer")),
        ("assess", A("none")),
        ("reason", lambda m, s: R(operation="replace", ids=[3], prompt="a ripe banana")),
    ])
    s = settings()
    r = Reasoner(s, llm, updater=upd)
    step, final = r.plan_step("replace the orange with a banana", "replace the orange with a banana", RGB, sc)
    sam = s.perception.sam2
    assert upd.calls == [(["orange", "lemon"], {
        "points_per_side": sam.points_per_side * 2,
        "pred_iou_thresh": round(sam.pred_iou_thresh - 0.1, 4),
        "stability_score_thresh": round(sam.stability_score_thresh - 0.05, 4)})]
    assert final.ssr.version == 1 and final.ssr.provenance["parent"] == sc.ssr.digest()
    assert step.target_ids == [3] and step.ssr_digest == final.ssr.digest()
    assert enum_ids(llm.calls[-1]["schema"]) == [0, 1, 2, 3]  # the new object is now a valid id
    assert "orange" in llm.calls[1]["messages"][1]["content"]  # second assessment sees the update
    assert [e["reason"] for e in r.trace.of_type("ssr")] == ["input", "semantic"]
    llm.done()


def test_builtin_spatial_then_sufficient_without_sandbox():
    sc = make_scene()
    llm = ScriptedLLM([
        ("assess", A("spatial", "which object is leftmost")),
        ("assess", A("none")),
        ("reason", R(ids=[0])),
    ])
    r = Reasoner(settings(), llm)
    step, final = r.plan_step("remove the leftmost object", "remove the leftmost object", RGB, sc)
    assert final.ssr.version == 1 and final.ssr.objects[0].attributes["is_leftmost"] is True
    assert '"x_rank":0' in llm.calls[1]["messages"][1]["content"]
    assert r.trace.of_type("sandbox") == []
    assert step.target_ids == [0]
    llm.done()


CODE_OK = [
    "import numpy as np",
    "result = {}",
    "for o in ssr['objects']:",
    "    m = masks[o['id']]",
    "    result[o['id']] = {'fill_ratio': round(float(m.sum()) / (m.shape[0] * m.shape[1]), 4)}",
]


def test_sandboxed_code_when_builtins_insufficient():
    sc = make_scene()
    llm = ScriptedLLM([
        ("assess", A("spatial", "need relative areas")),
        ("assess", A("spatial", "still need the fraction of the image each covers")),
        ("spatial_code", {"reason": "fill ratio", "code_lines": CODE_OK}),
        ("assess", A("none")),
        ("reason", R(ids=[1])),
    ])
    r = Reasoner(settings(), llm)
    _step, final = r.plan_step("remove what covers most of the image", "x", RGB, sc)
    runs = r.trace.of_type("sandbox")
    assert len(runs) == 1 and runs[0]["ok"] and runs[0]["code"] == "\n".join(CODE_OK)
    assert final.ssr.objects[1].attributes["fill_ratio"] == round(408 / (H * W), 4)
    assert final.ssr.objects[1].attributes["size_rank"] == 0  # built-ins kept
    assert final.ssr.version == 2
    assert [e["reason"] for e in r.trace.of_type("ssr")] == ["input", "spatial-builtin", "spatial-code"]
    llm.done()


def test_refused_code_is_reasked_and_failed_code_is_reported():
    sc = make_scene()
    llm = ScriptedLLM([
        ("assess", A("spatial")),
        ("assess", A("spatial")),
        ("spatial_code", {"reason": "x", "code_lines": ["import os", "result = {}"]}),
        ("spatial_code", {"reason": "x", "code_lines": ["result = {0: {'a': 1 / 0}}"]}),
        ("assess", A("none")),
        ("reason", R(status="no_target", operation=None, reason="nothing fits")),
    ])
    r = Reasoner(settings(), llm)
    step, _ = r.plan_step("s", "i", RGB, sc)
    retry = llm.calls[3]["messages"]
    assert "refused" in retry[-1]["content"] and "'os'" in retry[-1]["content"]
    runs = r.trace.of_type("sandbox")
    assert len(runs) == 1 and not runs[0]["ok"] and "ZeroDivisionError" in runs[0]["error"]
    assert "ZeroDivisionError" in llm.calls[4]["messages"][1]["content"]  # the failure is in the history
    assert step.status == "no_target"
    llm.done()


def test_sandbox_disabled_stops_chain():
    llm = ScriptedLLM([("assess", A("spatial")), ("assess", A("spatial")), ("reason", R(ids=[2]))])
    r = Reasoner(settings(allow_sandbox=False), llm)
    step, _ = r.plan_step("s", "i", RGB, make_scene())
    assert step.target_ids == [2] and r.trace.of_type("sandbox") == []
    llm.done()


def test_iteration_bound_reached():
    upd = RecordingUpdateSemantic()
    llm = ScriptedLLM([("assess", A("semantic", queries=["orange"]))] * 2 + [("reason", R(ids=[4]))])
    r = Reasoner(settings(max_iterations=2), llm, updater=upd)
    step, final = r.plan_step("s", "i", RGB, make_scene())
    assert len(upd.calls) == 2 and final.ssr.version == 2 and sorted(final.ssr.objects) == [0, 1, 2, 3, 4]
    assert any(e["what"] == "iteration bound reached" for e in r.trace.of_type("note"))
    assert step.target_ids == [4]
    llm.done()


def test_invalid_json_then_valid():
    llm = ScriptedLLM([("assess", "this is not JSON"), ("assess", A("none")), ("reason", R(ids=[0]))])
    r = Reasoner(settings(), llm)
    step, _ = r.plan_step("s", "i", RGB, make_scene())
    calls = r.trace.of_type("llm_call")
    assert calls[0]["error"].startswith("the answer is not valid JSON") and calls[0]["raw"] == "this is not JSON"
    second = llm.calls[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "this is not JSON"}
    assert "not valid JSON" in second[-1]["content"]
    assert calls[1]["error"] is None and calls[1]["attempt"] == 1
    assert step.target_ids == [0]
    llm.done()


def test_nonexistent_id_rejected_then_fails_clearly():
    llm = ScriptedLLM([("assess", A("none"))] + [("reason", R(ids=[99]))] * 3)
    r = Reasoner(settings(max_invalid_retries=2), llm)
    with pytest.raises(InvalidAnswerError) as ei:
        r.plan_step("remove the cup", "i", RGB, make_scene())
    msg = str(ei.value)
    assert "'reason'" in msg and "3 attempt" in msg and "remove.target_ids.0: Input should be 0, 1 or 2" in msg
    assert ei.value.attempts == 3
    assert [e["attempt"] for e in r.trace.of_type("llm_call") if e["call_name"] == "reason"] == [0, 1, 2]
    llm.done()


def test_inconsistent_answer_reasked():
    add_no_placement = R(operation="add", prompt="a vase")
    add_ok = R(operation="add", prompt="a vase", placement={"relation": "on", "object_id": 1, "size_fraction": 0.3})
    llm = ScriptedLLM([("assess", A("none")), ("reason", add_no_placement), ("reason", add_ok)])
    r = Reasoner(settings(), llm)
    step, _ = r.plan_step("add a vase on the plate", "i", RGB, make_scene())
    assert "placement" in llm.calls[2]["messages"][-1]["content"]
    assert step.operation == "add" and step.placement.object_id == 1 and step.placement.relation == "on"
    llm.done()


def test_no_target():
    llm = ScriptedLLM([("assess", A("none")), ("reason", R(status="no_target", operation=None, reason="no dog"))])
    step, _ = Reasoner(settings(), llm).plan_step("remove the dog", "remove the dog", RGB, make_scene())
    assert step.status == "no_target" and step.reason == "no dog" and step.target_ids == []
    llm.done()


def test_multi_step_plan():
    llm = ScriptedLLM([
        ("decompose", {"reason": "one edit", "subtasks": ["remove the cup", "add a pear near the apple"]}),
        ("assess", A("none")), ("reason", R(ids=[0])),
        ("assess", A("none")),
        ("reason", R(operation="add", prompt="a pear", placement={"relation": "near", "object_id": 2})),
    ])
    plan = Reasoner(settings(), llm).plan("remove the cup, then add a pear near the apple", RGB, make_scene())
    assert isinstance(plan, EditPlan) and [s.subtask for s in plan.steps] == ["remove the cup",
                                                                              "add a pear near the apple"]
    assert plan.steps[0].target_ids == [0] and plan.steps[1].placement.object_id == 2
    llm.done()


def test_single_pass_skips_updates():
    upd = RecordingUpdateSemantic()
    llm = ScriptedLLM([("decompose", {"reason": "one edit", "subtasks": ["remove the cup"]}), ("reason", R(ids=[0]))])
    plan = Reasoner(settings(mode="single_pass"), llm, updater=upd).plan("remove the cup", RGB, make_scene())
    assert upd.calls == [] and plan.steps[0].target_ids == [0]
    llm.done()


def test_trace_has_every_call_and_no_secret():
    upd = RecordingUpdateSemantic()
    llm = ScriptedLLM([
        ("decompose", {"reason": "one edit", "subtasks": ["remove the orange"]}),
        ("assess", A("semantic", queries=["orange"])),
        ("assess", "{broken"),
        ("assess", A("none")),
        ("reason", R(ids=[3])),
    ])
    s = settings()
    tr = Trace()
    Reasoner(s, llm, updater=upd, trace=tr).plan("remove the orange", RGB, make_scene())
    data = json.loads(tr.to_json_bytes())
    calls = [e for e in data["events"] if e["type"] == "llm_call"]
    assert [c["call_name"] for c in calls] == ["decompose", "assess", "assess", "assess", "reason"]
    for c in calls:
        assert c["messages"] and c["raw"] is not None and "latency_s" in c and "tokens" in c
    assert calls[2]["error"] and calls[2]["parsed"] is None
    assert calls[4]["parsed"]["target_ids"] == [3]
    ssrs = [e for e in data["events"] if e["type"] == "ssr"]
    assert [e["version"] for e in ssrs] == [0, 0, 1] and all(len(e["digest"]) == 64 for e in ssrs)
    assert SECRET not in tr.to_json_bytes().decode()
    # the last guard: a secret that somehow reached the trace is masked on serialisation
    tr.note("leak", text=f"key={SECRET}")
    assert SECRET not in tr.to_json_bytes().decode()
    assert s.reasoning.digest(REASONING_CODE_VERSION) != settings().reasoning.model_copy(
        update={"prompt_version": "1"}).digest(REASONING_CODE_VERSION)  # the default is now "2"


def test_unknown_prompt_version_is_clear():
    with pytest.raises(ValueError, match="prompt version '9'.*available: 1"):
        Reasoner(settings(prompt_version="9"), ScriptedLLM([]))


def test_grammar_schema_bounds_strings_and_keeps_enums():
    g = grammar_schema(reason_schema([1, 4], W, H))
    remove = g["$defs"]["Remove"]["properties"]
    assert remove["reason"]["pattern"].startswith("^") and "maxLength" not in remove["reason"]
    assert remove["target_ids"]["items"]["enum"] == [1, 4] and remove["target_ids"]["minItems"] == 1
    assert g["$defs"]["NoTarget"]["properties"]["status"]["const"] == "no_target"
    empty = grammar_schema(reason_schema([], W, H))
    assert sorted(empty["$defs"]) == ["Add", "BoxPlacement", "NoTarget"]  # nothing to point at
    num = grammar_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert num["properties"]["n"]["minimum"] == -(10**9) and num["properties"]["n"]["maximum"] == 10**9


def test_reason_schema_makes_only_consistent_steps():
    S = reason_schema([1, 4], W, H)
    for bad in ({"status": "ok", "reason": "", "operation": "remove", "target_ids": []},
                {"status": "ok", "reason": "", "operation": "replace", "target_ids": [1], "prompt": ""},
                {"status": "ok", "reason": "", "operation": "add", "prompt": "a vase"},
                {"status": "ok", "reason": "", "operation": "add", "prompt": "a vase",
                 "placement": {"relation": "on", "object_id": 7}},
                {"status": "ok", "reason": "", "operation": "add", "prompt": "a vase", "placement": {"relation": "box"}},
                {"status": "no_target", "reason": "", "operation": "remove"},
                {"status": "ok", "reason": "", "operation": "remove", "target_ids": [2]}):
        with pytest.raises(ValueError):
            parse_answer(json.dumps(bad), S)
    ok = parse_answer(json.dumps(R(operation="add", prompt="a vase",
                                   placement={"relation": "box", "box": [1, 2, 10, 12]})), S)
    assert ok.root.placement.box == [1, 2, 10, 12]


# ------------------------------------------------------------------------------------------------
# sandbox
FAST = SandboxConfig(cpu_seconds=1, memory_mb=512, wall_timeout_s=10, max_output_bytes=20_000, max_open_files=32)


@pytest.mark.parametrize("code, why", [
    ("import os\nresult = {}", "import of 'os'"),
    ("import subprocess", "import of 'subprocess'"),
    ("import socket", "import of 'socket'"),
    ("from numpy import load", "import of 'load'"),
    ("result = {0: {'x': open('/etc/passwd').read()}}", "use of 'open'"),
    ("f = open", "use of 'open'"),
    ("x = ().__class__.__bases__[0].__subclasses__()", "underscore"),
    ("x = getattr((), 'mro')", "use of 'getattr'"),
    ("x = __import__('os')", "underscore"),
    ("x = eval('1')", "use of 'eval'"),
    ("exec('import os')", "use of 'exec'"),
    ("x = '{0.__class__}'", "'__'"),
    ("x = '{0.real}'.format(1)", "attribute 'format'"),
    ("x = np.fromfile('/etc/passwd')", "attribute 'fromfile'"),
    ("x = np.ctypeslib", "attribute 'ctypeslib'"),
    ("class A:\n    pass", "ClassDef"),
    ("def f():\n    yield 1", "Yield"),
    ("with np.errstate():\n    pass", "With"),
    ("global x", "Global"),
    ("x = masks.__class__", "underscore"),
    ("import numpy as _np", "alias"),
])
def test_sandbox_refuses_statically(code, why, tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr(SB, "_spawn", lambda *a, **k: spawned.append(a))
    with pytest.raises(SB.SandboxRefused) as ei:
        SB.run_code(code, make_scene(), FAST)
    assert why in ei.value.reason and ei.value.reason.startswith("refused")
    assert spawned == []  # never run, not even in a child


def test_sandbox_runs_valid_code_in_a_child():
    res = SB.run_code("\n".join(CODE_OK) + "\nresult[2]['pid_free'] = True", make_scene(), FAST)
    assert res.attributes[0] == {"fill_ratio": 0.03} and res.attributes[2]["pid_free"] is True


@pytest.mark.parametrize("code, why", [
    ("while True:\n    pass", "CPU time limit of 1 s"),
    ("a = np.ones((40000, 40000))", "MemoryError"),
    ("a = [0] * (10 ** 10)", "MemoryError"),
    ("result = {0: {'s': 'x' * 10 ** 6}}", "exceeds the limit of 20000 bytes"),
    ("result = {9: {'a': 1}}", "not in the SSR"),
    ("result = {0: {'Bad Name': 1}}", "must match"),
    ("result = [1, 2]", "result must be a dict"),
    ("raise ValueError('boom')", "ValueError: boom"),
])
def test_sandbox_runtime_limits(code, why):
    with pytest.raises(SB.SandboxError) as ei:
        SB.run_code(code, make_scene(), FAST)
    assert why in ei.value.reason


def test_sandbox_wall_timeout():
    cfg = FAST.model_copy(update={"cpu_seconds": 30, "wall_timeout_s": 1.0})
    t0 = time.perf_counter()
    with pytest.raises(SB.SandboxError, match="wall-clock timeout"):
        SB.run_code("while True:\n    pass", make_scene(), cfg)
    assert time.perf_counter() - t0 < 8


@pytest.mark.parametrize("code, why", [
    # the child's own layers, with code the static check would refuse (run through _spawn directly)
    ("x = open('/etc/passwd').read()", "NameError"),
    ("x = np.fromfile('/etc/passwd', dtype=np.uint8)", "denied|SystemError"),  # numpy's C code mangles the denial
    ("np.save('/tmp/cielr-sandbox-escape.npy', np.zeros(3))", "denied"),
    ("import os", "ImportError"),
    (("for c in ().__class__.__base__.__subclasses__():\n"
      "    if c.__name__ == '_wrap_close':\n"
      "        c.__init__.__globals__['system']('touch /tmp/cielr-sandbox-escape')\n"), "denied"),
    (("for c in ().__class__.__base__.__subclasses__():\n"
      "    if c.__name__ == '_wrap_close':\n"
      "        c.__init__.__globals__['fork']()\n"), "denied"),
])
def test_sandbox_child_layers_deny_escapes(code, why):
    for p in ("/tmp/cielr-sandbox-escape", "/tmp/cielr-sandbox-escape.npy"):
        if os.path.exists(p):
            os.remove(p)
    with pytest.raises(SB.SandboxError) as ei:
        SB._spawn(code, make_scene(), FAST)
    assert re.search(why, ei.value.reason), ei.value.reason
    assert not os.path.exists("/tmp/cielr-sandbox-escape") and not os.path.exists("/tmp/cielr-sandbox-escape.npy")


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible backend against a real local HTTP server
class ChatServer:
    """A chat-completions server on 127.0.0.1 answering from a script of (status, content, delay)."""

    def __init__(self):
        self.script: list[tuple[int, Any, float]] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, content, delay = outer.script.pop(0) if outer.script else (500, "script empty", 0)
                if delay:
                    time.sleep(delay)
                if status == 200:
                    if callable(content):
                        content = content(body)
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}],
                               "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"error": {"message": str(content)}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def chat_server():
    srv = ChatServer()
    yield srv
    srv.close()


class Small(BaseModel):
    label: str = Field(max_length=20)
    n: int = Field(ge=0, le=9)


def openai_llm(url, **llm):
    from cielr_core.reasoning.openai_backend import OpenAILLM

    s = load_settings(profile="default", overrides={"llm": {"backend": "openai", "base_url": url, "api_key": SECRET,
                                                             "model": {"id": "qwen-test"}, "max_retries": 3, **llm}})
    return OpenAILLM(s.llm, backoff_s=0.01), s


def test_openai_backend_wire_format(chat_server):
    chat_server.script = [(200, '{"label": "cup", "n": 2}', 0)]
    llm, _ = openai_llm(chat_server.url)
    call = llm.complete([{"role": "user", "content": "hi"}], Small, image=np.zeros((4, 5, 3), np.uint8))
    assert call.parsed == Small(label="cup", n=2) and call.tokens == {"prompt": 11, "completion": 7}
    req = chat_server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == f"Bearer {SECRET}"
    rf = req["body"]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["properties"]["n"]["maximum"] == 9
    assert rf["json_schema"]["name"] == "Small"
    content = req["body"]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "hi"} and content[1]["image_url"]["url"].startswith("data:image/png")
    assert req["body"]["model"] == "qwen-test" and req["body"]["temperature"] == 0.0


def test_openai_backend_retries_429_and_5xx(chat_server):
    chat_server.script = [(429, "slow down", 0), (500, "oops", 0), (503, "busy", 0), (200, '{"label": "a", "n": 1}', 0)]
    llm, _ = openai_llm(chat_server.url)
    assert llm.complete([{"role": "user", "content": "x"}], Small).parsed.n == 1
    assert len(chat_server.requests) == 4


def test_openai_backend_retries_timeouts(chat_server):
    chat_server.script = [(200, '{"label": "late", "n": 1}', 1.5), (200, '{"label": "b", "n": 3}', 0)]
    llm, _ = openai_llm(chat_server.url, timeout_s=0.4)
    assert llm.complete([{"role": "user", "content": "x"}], Small).parsed.label == "b"
    assert len(chat_server.requests) == 2


def test_openai_backend_400_not_retried(chat_server):
    chat_server.script = [(400, "bad schema", 0), (200, '{"label": "a", "n": 1}', 0)]
    llm, _ = openai_llm(chat_server.url)
    with pytest.raises(LLMError) as ei:
        llm.complete([{"role": "user", "content": "x"}], Small)
    assert ei.value.status == 400 and not ei.value.transient and "bad schema" in str(ei.value)
    assert len(chat_server.requests) == 1 and SECRET not in str(ei.value)


def test_openai_backend_gives_up_transiently(chat_server):
    chat_server.script = [(502, "down", 0)] * 4
    llm, _ = openai_llm(chat_server.url)
    with pytest.raises(LLMError) as ei:
        llm.complete([{"role": "user", "content": "x"}], Small)
    assert ei.value.transient and "4 attempt" in str(ei.value) and len(chat_server.requests) == 4


def test_openai_backend_unreachable_is_transient():
    llm, _ = openai_llm("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(LLMError) as ei:
        llm.complete([{"role": "user", "content": "x"}], Small)
    assert ei.value.transient


def test_openai_backend_in_the_loop_keeps_key_out_of_trace(chat_server):
    answers = iter([{"reason": "one edit", "subtasks": ["remove the cup"]}, A("none"), "not json", R(ids=[0])])
    def answer(body):
        a = next(answers)
        return a if isinstance(a, str) else json.dumps(a)

    chat_server.script = [(200, answer, 0) for _ in range(4)]
    llm, s = openai_llm(chat_server.url)
    assert type(make_llm(s.llm, s)).__name__ == "OpenAILLM"
    tr = Trace()
    plan = Reasoner(s, llm, trace=tr).plan("remove the cup", RGB, make_scene())
    assert plan.steps[0].target_ids == [0]
    reason_schema_sent = chat_server.requests[-1]["body"]["response_format"]["json_schema"]["schema"]
    assert reason_schema_sent["$defs"]["Remove"]["properties"]["target_ids"]["items"]["enum"] == [0, 1, 2]
    blob = tr.to_json_bytes().decode()
    assert SECRET not in blob and len(tr.of_type("llm_call")) == 4


# ------------------------------------------------------------------------------------------------
# in-process transformers backend, tiny random-weight Qwen2 made locally
@pytest.fixture(scope="module")
def tiny_llm_settings(session_tmp):
    tiny_family(session_tmp, "qwen2")
    return load_settings(profile="tiny", overrides={
        "models_dir": str(session_tmp / "models"), "llm": {"max_new_tokens": 600},
        "reasoning": {"max_invalid_retries": 0, "max_iterations": 1}})


class Pick(BaseModel):
    status: str = Field(pattern="^(ok|no_target)$")
    ids: list[int] = Field(max_length=3)  # unbounded ints: the grammar bounds them
    word: str = Field(max_length=12)
    n: int = Field(ge=0, le=99)


def test_tiny_qwen_tokenizer_and_chat_template(session_tmp):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_family(session_tmp, "qwen2")
    tok = AutoTokenizer.from_pretrained(d)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = AutoModelForCausalLM.from_pretrained(d)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(tok)
    assert tok.decode(tok("é ☃ {}").input_ids) == "é ☃ {}"  # byte-level: any text round-trips


def test_tiny_qwen_constrained_decoding_is_schema_valid(tiny_llm_settings):
    s = tiny_llm_settings
    llm = make_llm(s.llm, s)
    assert type(llm).__name__ == "TransformersLLM"
    msgs = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "pick"}]
    call = llm.complete(msgs, Pick, call_name="pick")
    assert isinstance(call.parsed, Pick) and Pick.model_validate(json.loads(call.raw)) == call.parsed
    assert call.extra["prompt"].startswith("<|im_start|>system\nAnswer in JSON.<|im_end|>")
    assert call.tokens["prompt"] > 0 and call.tokens["completion"] > 0 and call.latency_s > 0
    # the SSR-dependent schema: ids can only come from the enum (random weights fill the bounded
    # strings to their limits, hence the larger token budget)
    big = tiny_llm_settings.llm.model_copy(update={"max_new_tokens": 1200})
    rs = reason_schema([3, 5], W, H)
    call2 = make_llm(big, tiny_llm_settings).complete(msgs, rs, call_name="reason")
    assert list(json.loads(call2.raw))[:2] == ["reason", "status"]  # schema order: the reasoning first
    a = call2.parsed.root
    assert set(getattr(a, "target_ids", [])) <= {3, 5}
    assert getattr(getattr(a, "placement", None), "object_id", None) in (None, 3, 5)
    # greedy decoding is deterministic
    assert llm.complete(msgs, Pick).raw == call.raw


def test_tiny_qwen_reasoner_mechanics(tiny_llm_settings):
    """Random weights cannot reason: the loop must either complete with a valid plan over existing
    ids or stop with a clear InvalidAnswerError; every answer it decoded is grammar-valid JSON."""
    s = tiny_llm_settings
    tr = Trace()
    r = Reasoner(s, make_llm(s.llm, s), updater=RecordingUpdateSemantic(), trace=tr)
    sc = make_scene()
    try:
        step, final = r.plan_step("remove the cup", "remove the cup", RGB, sc)
    except InvalidAnswerError as e:
        assert e.call_name in ("assess", "reason", "spatial_code") and "attempt" in str(e)
        print(f"tiny loop stopped: {e}")
    else:
        assert set(step.target_ids) <= set(final.ssr.ids) and step.ssr_digest == final.ssr.digest()
        print(f"tiny loop completed: {step.model_dump_json()}")
    calls = tr.of_type("llm_call")
    assert calls and all(c["rendered_prompt"].startswith("<|im_start|>system") for c in calls)
    for c in calls:
        if c["error"] is None or "cut off" not in c["error"]:
            json.loads(c["raw"])  # complete answers are well-formed JSON, whatever their content


# ------------------------------------------------------------------------------------------------
# CLI
def test_cli_plan(tmp_path, chat_server):
    import typer
    import yaml
    from typer.testing import CliRunner

    from cielr_core.masks import encode_mask_png
    from cli.commands import plan as plan_cmd

    sc = make_scene()
    (tmp_path / "masks").mkdir()
    for oid, m in sc.masks.items():
        (tmp_path / "masks" / f"{oid}.png").write_bytes(encode_mask_png(m))
    (tmp_path / "ssr.json").write_bytes(sc.ssr.canonical_json())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"llm": {"backend": "openai", "base_url": chat_server.url, "model": {"id": "q"}}}))
    answers = iter([{"reason": "one edit", "subtasks": ["remove the apple"]}, A("none"), R(ids=[2])])
    chat_server.script = [(200, lambda body: json.dumps(next(answers)), 0) for _ in range(3)]
    app = typer.Typer()
    plan_cmd.register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `plan` a named sub-command
        pass

    trace = tmp_path / "trace.json"
    res = CliRunner().invoke(app, ["plan", str(tmp_path / "ssr.json"), "remove the apple", "--config", str(cfg),
                                   "--trace", str(trace), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["instruction"] == "remove the apple" and out["steps"][0]["target_ids"] == [2]
    assert len(json.loads(trace.read_bytes())["events"]) > 3
    assert (tmp_path / "out" / "trace.json").read_bytes() == trace.read_bytes()
    assert EditPlan.model_validate_json((tmp_path / "out" / "plan.json").read_bytes()).steps[0].target_ids == [2]

    bad = CliRunner().invoke(app, ["plan", str(tmp_path / "nope.json"), "x", "--config", str(cfg)])
    assert bad.exit_code == 2 and "cannot read" in bad.output


def test_transformers_backend_missing_model_is_clear(tmp_path):
    from cielr_core.models import ModelUnavailableError

    s = load_settings(profile="tiny", overrides={"models_dir": str(tmp_path / "none")})
    llm = make_llm(s.llm, s)
    with pytest.raises(ModelUnavailableError, match=r"local path .*qwen2 does not exist \(`cielr models tiny`"):
        llm.complete([{"role": "user", "content": "x"}], Small)
