"""Reasoning on constructed scenes: hand-made masks and labels, an LLM double at the protocol
boundary (``ScriptedLLM`` from test_reasoning: answers from a script, validated like a backend),
and a perceiver double for semantic updates (``ScriptedModelsPerceiver`` from test_perception: the
real Perceiver with scripted model outputs). Each test pins one way the loop could pick the wrong
object, or none: stale relations, an optional step failing the image, verdicts before reasons,
segmentation presets that do not stack, instruction nouns missing from the query set.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_perception import ScriptedModelsPerceiver, disc
from test_reasoning import RGB, A, R, ScriptedLLM, make_scene, settings

from cielr_core.perception import Detections
from cielr_core.reasoning import REASONING_CODE_VERSION, InvalidAnswerError, Reasoner, Trace
from cielr_core.reasoning.llm import grammar_schema
from cielr_core.reasoning.prompting import available_versions, load_prompts
from cielr_core.reasoning.schemas import (
    assessment_schema,
    decomposition_schema,
    reason_schema,
    spatial_code_schema,
)
from cielr_core.relations import builtin_disagreements, builtin_relations, with_attributes
from cielr_core.ssr import SSR, Scene, load_scene, make_object, save_scene
from storage import ArtifactStore


# ------------------------------------------------------------------------------------------------
# reason before verdict
def _objects_with_properties(js: dict):
    """Every object schema in a JSON schema (its $defs and itself) that declares properties."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node:
                out.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(js)
    return out


ALL_SCHEMAS = [
    ("decompose", lambda: decomposition_schema(4)),
    ("decompose, tight", lambda: decomposition_schema(2, 16)),
    ("assess", lambda: assessment_schema()),
    ("assess, tight", lambda: assessment_schema(16)),
    ("spatial_code", lambda: spatial_code_schema()),
    ("spatial_code, tight", lambda: spatial_code_schema(16)),
    ("reason", lambda: reason_schema([0, 3], 40, 30)),
    ("reason, no objects", lambda: reason_schema([], 40, 30)),
]


@pytest.mark.parametrize("name,make", ALL_SCHEMAS, ids=[n for n, _ in ALL_SCHEMAS])
def test_every_answer_schema_puts_reason_first(name, make):
    """Defect 3: each answer shape (every variant of the reason call included) declares ``reason``
    first and requires it, in the JSON schema endpoints get and in the grammar the in-process
    backend decodes with, so the model writes its reasoning before need / status / operation."""
    schema = make()
    for js in (schema.model_json_schema(), grammar_schema(schema)):
        answers = [o for o in _objects_with_properties(js) if "reason" in o["properties"]]
        assert answers, f"{name}: no answer shape has a reason"
        for o in answers:
            assert next(iter(o["properties"])) == "reason", f"{name}: {list(o['properties'])}"
            assert "reason" in o.get("required", []), name
    # and the placements (sub-objects without reasoning) are the only shapes without one
    others = [o for o in _objects_with_properties(schema.model_json_schema()) if "reason" not in o["properties"]]
    assert all({"relation"} <= set(o["properties"]) for o in others), others


@pytest.mark.parametrize("version", [v for v in available_versions() if v != "1"])
def test_prompt_examples_show_reason_first_and_the_version_moved_on(version):
    assert settings().reasoning.prompt_version != "1"
    prompts = load_prompts(version)
    for name in ("decompose", "assess", "reason", "spatial_code"):
        text = prompts[name].template
        examples = re.findall(r'\{"[a-z_]+":', text)
        answer_examples = [e for e in examples if not e.startswith(('{"relation"', '{"attribute_name"'))]
        assert answer_examples and all(e == '{"reason":' for e in answer_examples), (name, answer_examples)
    assert '"query_objects"' in prompts["decompose"].template
    # the old wording stays as it was (cached traces of version 1 keep meaning what they meant)
    assert re.search(r'\{"need":', load_prompts("1")["assess"].template)
    s1 = settings(prompt_version="1")
    assert s1.reasoning.digest(REASONING_CODE_VERSION) != settings().reasoning.digest(REASONING_CODE_VERSION)


def test_the_model_sees_and_answers_reason_first():
    """Through the loop: the assess / reason prompts the LLM double receives show reason-first
    examples, and the JSON it is asked to match lists reason first."""
    llm = ScriptedLLM([("assess", A("none")), ("reason", R(ids=[0]))])
    Reasoner(settings(), llm).plan_step("remove the cup", "remove the cup", RGB, make_scene())
    for call in llm.calls:
        assert '{"reason":' in call["messages"][1]["content"]
        js = call["schema"].model_json_schema()
        shapes = [o for o in _objects_with_properties(js) if "reason" in o["properties"]]
        assert all(next(iter(o["properties"])) == "reason" for o in shapes)
    assert json.loads(json.dumps(A("none")))  # the double's answers are plain JSON
    llm.done()




# ------------------------------------------------------------------------------------------------
# constructed scenes through the loop
FH, FW = 40, 120
FRUIT_RGB = np.zeros((FH, FW, 3), np.uint8)


class SceneRecordingTrace(Trace):
    """Test double: the real Trace that also keeps every Scene it is asked to record, so tests can
    check each SSR version with its masks."""

    def __init__(self):
        super().__init__()
        self.scenes = []

    def ssr(self, scene_or_ssr, **kw):
        if isinstance(scene_or_ssr, Scene):
            self.scenes.append(scene_or_ssr)
        super().ssr(scene_or_ssr, **kw)


def fruit_scene() -> tuple[Scene, list]:
    """Three fruits, left to right, all 'unknown' (nothing in the vocabulary matched them)."""
    masks = [disc((FH, FW), 20, 20, 8), disc((FH, FW), 60, 20, 7), disc((FH, FW), 100, 20, 6)]
    objs = {i: make_object(i, m, depth=0.5) for i, m in enumerate(masks)}
    return Scene(SSR(image_sha256="b" * 64, width=FW, height=FH, objects=objs), dict(enumerate(masks))), masks


def fruit_perceiver(masks) -> ScriptedModelsPerceiver:
    from cielr_core import masks as M

    return ScriptedModelsPerceiver(
        detections=Detections([M.bbox(m) for m in masks], [0.9, 0.8, 0.7], ["orange", "lemon", "lemon"],
                              candidates=[[("orange", 0.9), ("mandarin orange", 0.6)], [("lemon", 0.8)],
                                          [("lemon", 0.7), ("lime", 0.3)]]))


def test_relabelled_scene_never_shows_stale_relations_in_any_version_or_store(tmp_path):
    """Defect 1 through the loop: relations computed while every fruit is 'unknown'
    (label_count 3), then a semantic update relabels them orange / lemon / lemon. Every SSR
    version the trace records, the scene the loop ends with and its stored ssr.json describe the
    new labels: 'the only orange' is answerable (its label_count is 1)."""
    scene, masks = fruit_scene()
    perceiver = fruit_perceiver(masks)

    def pick_single_orange(messages, schema):
        view = json.loads(messages[1]["content"].split("SSR (version ")[1].split(":", 1)[1].split("\n\n")[0])
        only = [o["id"] for o in view["objects"] if o["attributes"].get("label_count") == 1
                and o["label"] == "orange"]
        return R(ids=only, prompt="", reason="the only orange")

    llm = ScriptedLLM([
        ("assess", A("spatial", "count the fruit per kind")),
        ("assess", A("semantic", "the fruit are unlabelled", ["ripe orange", "yellow lemon"])),
        ("assess", A("none")),
        ("reason", pick_single_orange),
    ])
    tr = SceneRecordingTrace()
    step, final = Reasoner(settings(), llm, updater=perceiver.update_semantic, trace=tr).plan_step(
        "remove the only orange", "remove the only orange", FRUIT_RGB, scene)
    assert step.target_ids == [0]
    assert [e["reason"] for e in tr.of_type("ssr")] == ["input", "spatial-builtin", "semantic"]
    assert len(tr.scenes) == 3 and tr.scenes[1].ssr.objects[0].attributes["label_count"] == 3
    for sc in tr.scenes + [final]:
        assert builtin_disagreements(sc) == [], sc.ssr.version
    assert final.ssr.objects[0].attributes["label_count"] == 1
    views = [e["ssr"] for e in json.loads(tr.to_json_bytes())["events"] if e["type"] == "ssr"]
    assert [o["attributes"].get("label_count") for o in views[-1]["objects"]] == [1, 2, 2]
    st = ArtifactStore(str(tmp_path / "store"))
    save_scene(st, "chain/x", final)
    assert builtin_disagreements(load_scene(st, "chain/x")) == []
    llm.done()


class CopyingUpdater:
    """Test double for perception's update_semantic that behaves like a careless implementation:
    it relabels object 1 as 'orange' and keeps every old attribute (built-in relations
    included)."""

    def __init__(self):
        self.calls = []

    def __call__(self, rgb, scene, extra_queries, sam2_overrides=None):
        self.calls.append((list(extra_queries), sam2_overrides))
        objs = dict(scene.ssr.objects)
        objs[1] = objs[1].model_copy(update={"label": "orange"})
        data = scene.ssr.model_dump(mode="python")
        data["objects"] = {k: v.model_dump(mode="python") for k, v in objs.items()}
        data["version"] = scene.ssr.version + 1
        return Scene(SSR.model_validate(data), scene.masks)


def test_the_loop_refreshes_relations_whatever_the_updater_returns():
    scene, _ = fruit_scene()
    scene = with_attributes(scene, builtin_relations(scene), update="spatial-builtin")
    llm = ScriptedLLM([("assess", A("semantic", queries=["ripe orange"])), ("assess", A("none")),
                       ("reason", R(ids=[1]))])
    tr = SceneRecordingTrace()
    _, final = Reasoner(settings(), llm, updater=CopyingUpdater(), trace=tr).plan_step("s", "i", FRUIT_RGB, scene)
    assert final.ssr.objects[1].label == "orange" and final.ssr.objects[1].attributes["label_count"] == 1
    assert all(builtin_disagreements(sc) == [] for sc in tr.scenes + [final])
    llm.done()


# ------------------------------------------------------------------------------------------------
# an optional step that fails does not fail the image
def test_invalid_sufficiency_answers_are_recorded_and_the_loop_reasons_on():
    """Defect 2: the assessment stays invalid through every re-ask; the trace records it and the
    loop reasons with the SSR it has (only the final target answer is required)."""
    llm = ScriptedLLM([("assess", "not json")] * 3 + [("reason", R(ids=[0]))])
    r = Reasoner(settings(max_invalid_retries=2), llm)
    step, final = r.plan_step("remove the cup", "remove the cup", RGB, make_scene())
    assert step.status == "ok" and step.target_ids == [0] and final.ssr.version == 0
    notes = [n for n in r.trace.of_type("note") if n["what"] == "optional step failed"]
    assert len(notes) == 1 and notes[0]["call_name"] == "assess" and "not valid JSON" in notes[0]["error"]
    assert [e["call_name"] for e in r.trace.of_type("llm_call")] == ["assess"] * 3 + ["reason"]
    llm.done()


def test_invalid_spatial_code_answers_are_recorded_and_the_loop_reasons_on():
    llm = ScriptedLLM([("assess", A("spatial")), ("assess", A("spatial"))]
                      + [("spatial_code", "{broken")] * 3 + [("assess", A("none")), ("reason", R(ids=[2]))])
    s = settings(max_invalid_retries=2)
    s.reasoning.sandbox.isolation = "python-only"  # the double never runs code; no OS layer needed
    r = Reasoner(s, llm)
    step, _ = r.plan_step("s", "i", RGB, make_scene())
    assert step.target_ids == [2]
    runs = r.trace.of_type("sandbox")
    assert len(runs) == 1 and runs[0]["ok"] is False
    llm.done()


def test_the_final_answer_stays_required():
    llm = ScriptedLLM([("assess", A("none"))] + [("reason", "nonsense")] * 3)
    with pytest.raises(InvalidAnswerError):
        Reasoner(settings(max_invalid_retries=2), llm).plan_step("s", "i", RGB, make_scene())
    llm.done()


def test_an_invalid_decomposition_falls_back_to_the_instruction_as_one_subtask():
    llm = ScriptedLLM([("decompose", "no json here")] * 3 + [("assess", A("none")), ("reason", R(ids=[0]))])
    r = Reasoner(settings(max_invalid_retries=2), llm)
    plan = r.plan("remove the cup", RGB, make_scene())
    assert [s.subtask for s in plan.steps] == ["remove the cup"] and plan.steps[0].target_ids == [0]
    assert any(n["what"] == "optional step failed" and n["call_name"] == "decompose"
               for n in r.trace.of_type("note"))
    llm.done()


# ------------------------------------------------------------------------------------------------
# finer / coarser stack
class RecordingUpdater:
    """Test double for update_semantic: returns the scene unchanged in content but as a new version
    (so the loop's version chain moves), recording the queries and SAM2 overrides of each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, rgb, scene, extra_queries, sam2_overrides=None):
        self.calls.append((list(extra_queries), sam2_overrides))
        return Scene(scene.ssr.model_copy(update={"version": scene.ssr.version + 1}), scene.masks)


def test_finer_twice_moves_two_steps_and_stops_at_the_bound():
    """Defect 5: each 'finer' moves one step further from the config's SAM2 settings (twice the
    points a side each time, thresholds lowered again), up to reasoning.max_segmentation_steps."""
    upd = RecordingUpdater()
    finer = A("semantic", "objects are merged", segmentation="finer")
    llm = ScriptedLLM([("assess", finer)] * 3 + [("reason", R(ids=[0]))])
    s = settings(max_iterations=3, max_segmentation_steps=2)
    r = Reasoner(s, llm, updater=upd)
    _, final = r.plan_step("s", "i", RGB, make_scene())
    sam = s.perception.sam2
    assert [c[1] for c in upd.calls] == [
        {"points_per_side": sam.points_per_side * 2, "pred_iou_thresh": round(sam.pred_iou_thresh - 0.1, 4),
         "stability_score_thresh": round(sam.stability_score_thresh - 0.05, 4)},
        {"points_per_side": sam.points_per_side * 4, "pred_iou_thresh": round(sam.pred_iou_thresh - 0.2, 4),
         "stability_score_thresh": round(sam.stability_score_thresh - 0.1, 4)},
    ]  # the third request is past the bound: nothing re-segmented
    assert final.ssr.provenance["segmentation_level"] == 2
    bound = [n for n in r.trace.of_type("note") if n["what"] == "segmentation bound reached"]
    assert len(bound) == 1 and bound[0]["level"] == 2 and bound[0]["request"] == "finer"
    llm.done()


def test_coarser_after_finer_goes_back_to_the_config_settings():
    upd = RecordingUpdater()
    llm = ScriptedLLM([("assess", A("semantic", segmentation="finer")), ("assess", A("semantic", segmentation="coarser")),
                       ("assess", A("semantic", segmentation="coarser")), ("reason", R(ids=[0]))])
    s = settings(max_iterations=3)
    Reasoner(s, llm, updater=upd).plan_step("s", "i", RGB, make_scene())
    sam = s.perception.sam2
    assert [c[1]["points_per_side"] for c in upd.calls] == [sam.points_per_side * 2, sam.points_per_side,
                                                            sam.points_per_side // 2]
    assert upd.calls[1][1]["pred_iou_thresh"] == sam.pred_iou_thresh  # back at the config's own values
    llm.done()


# ------------------------------------------------------------------------------------------------
# the query set: instruction nouns, recorded with every label candidate
def test_instruction_objects_join_the_query_set_and_the_trace_records_it():
    """The decomposition's query_objects are detector queries: a whiteboard (not in LVIS) is asked
    for before the first assessment; the trace records the whole query set once and every label
    candidate in each SSR version."""
    scene, masks = fruit_scene()
    perceiver = fruit_perceiver(masks)
    llm = ScriptedLLM([
        ("decompose", {"reason": "one edit", "subtasks": ["remove the orange"],
                       "query_objects": ["orange", "whiteboard"]}),
        ("assess", A("none")),
        ("reason", R(ids=[0])),
    ])
    tr = SceneRecordingTrace()
    r = Reasoner(settings(), llm, updater=perceiver.update_semantic, trace=tr)
    plan = r.plan("remove the orange", FRUIT_RGB, scene)
    assert plan.steps[0].target_ids == [0]
    assert perceiver.detect_queries[0][-1] == "whiteboard" and "orange" in perceiver.detect_queries[0]
    assert [e["reason"] for e in tr.of_type("ssr")] == ["input", "input", "semantic-instruction"]
    assert "orange" in llm.calls[1]["messages"][1]["content"]  # the assessment sees the new labels
    data = json.loads(tr.to_json_bytes())
    qs = [e for e in data["events"] if e["type"] == "note" and e["what"] == "query set"]
    assert qs and qs[-1]["queries"][-1] == "whiteboard" and len(qs[-1]["queries"]) == 1199
    assert qs[-1]["vocabulary"]["name"] == "lvis"
    last = [e for e in data["events"] if e["type"] == "ssr"][-1]["ssr"]["objects"]
    assert last[0]["label_candidates"] == [["orange", 0.9], ["mandarin orange", 0.6]]
    assert last[2]["label_candidates"] == [["lemon", 0.7], ["lime", 0.3]]
    for sc, ev in zip(tr.scenes, [e for e in data["events"] if e["type"] == "ssr"]):
        for o in ev["ssr"]["objects"]:
            cands = sc.ssr.objects[o["id"]].label_candidates
            assert o.get("label_candidates", []) == [[c.label, round(c.score, 3)] for c in cands]
    llm.done()


def test_query_objects_already_in_the_query_set_change_nothing():
    scene, masks = fruit_scene()
    perceiver = fruit_perceiver(masks)
    llm = ScriptedLLM([("decompose", {"reason": "r", "subtasks": ["remove the orange"], "query_objects": ["orange"]}),
                       ("assess", A("none")), ("reason", R(ids=[0]))])
    tr = SceneRecordingTrace()
    Reasoner(settings(), llm, updater=perceiver.update_semantic, trace=tr).plan("x", FRUIT_RGB, scene)
    assert perceiver.detect_queries == [] and [e["reason"] for e in tr.of_type("ssr")] == ["input", "input"]
    llm.done()
