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

import pytest
from test_reasoning import RGB, A, R, ScriptedLLM, make_scene, settings

from cielr_core.reasoning import REASONING_CODE_VERSION
from cielr_core.reasoning.llm import grammar_schema
from cielr_core.reasoning.prompting import available_versions, load_prompts
from cielr_core.reasoning.schemas import (
    assessment_schema,
    decomposition_schema,
    reason_schema,
    spatial_code_schema,
)


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
    from cielr_core.reasoning import Reasoner

    Reasoner(settings(), llm).plan_step("remove the cup", "remove the cup", RGB, make_scene())
    for call in llm.calls:
        assert '{"reason":' in call["messages"][1]["content"]
        js = call["schema"].model_json_schema()
        shapes = [o for o in _objects_with_properties(js) if "reason" in o["properties"]]
        assert all(next(iter(o["properties"])) == "reason" for o in shapes)
    assert json.loads(json.dumps(A("none")))  # the double's answers are plain JSON
    llm.done()


