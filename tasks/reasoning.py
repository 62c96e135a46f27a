"""Reasoning tasks: decompose the instruction, then one assess/update/reason loop per sub-task.

The loop runs inside one task (its LLM calls, semantic updates and sandbox runs are recorded in
the persisted trace); semantic updates re-run perception models in the same worker process.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from cielr_core.pipeline import make_reasoner
from cielr_core.reasoning import Reasoner
from cielr_core.ssr import save_scene
from tasks import keys, runtime
from tasks.images import get_rgb
from tasks.perception import read_scene
from tasks.refs import Decomposition, ImageRef, SSRRef, StepRef


def _reasoner(s) -> Reasoner:
    return make_reasoner(s, runtime.llm(s), runtime.perceiver(s))


@task(name="decompose")
def decompose(ssr: SSRRef, instruction: str, settings: runtime.SettingsRef,
              image: ImageRef | None = None) -> Decomposition:
    """Sub-tasks and the instruction's objects. With ``reasoning.show_image`` on, the call sees
    ``image`` with the SSR's set-of-mark outlines (as ``Reasoner.plan`` does)."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    r = _reasoner(s)
    rgb = get_rgb(image, s) if image is not None and s.reasoning.show_image else None
    subtasks = r.decompose(instruction, read_scene(ssr, s), rgb)
    prefix = keys.reason_prefix(ssr.digest, instruction, s)
    trace_key = keys.decompose_trace_key(prefix)
    st.put_bytes(trace_key, r.trace.to_json_bytes())
    st.put_json(keys.subtasks_key(prefix), subtasks)
    return Decomposition(subtasks=subtasks, trace_key=trace_key, query_objects=list(r.query_objects))


def decompose_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.reason_prefix(p["ssr"].digest, p["instruction"], s))


@task(name="reason-step")
def reason_step(image: ImageRef, ssr: SSRRef, subtask: str, instruction: str, settings: runtime.SettingsRef,
                query_objects: list[str] | None = None) -> StepRef:
    """Assess / update / reason for one sub-task; returns the EditStep and the SSR version it refers to.
    ``query_objects`` (the decomposition's) join the detector's query set before the first assessment."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    r = _reasoner(s)
    objects = list(query_objects or [])
    step, final = r.plan_step(subtask, instruction, get_rgb(image, s), read_scene(ssr, s), query_objects=objects)
    prefix = keys.step_prefix(keys.reason_prefix(ssr.digest, instruction, s), subtask, objects)
    final_ref = ssr
    if final.ssr.digest() != ssr.digest:
        chain_prefix = keys.ssr_chain_prefix(ssr.prefix, final.ssr.digest())
        save_scene(st, chain_prefix, final)
        final_ref = SSRRef(prefix=chain_prefix, digest=final.ssr.digest(), n_objects=len(final.ssr.objects))
    trace_key = keys.step_trace_key(prefix)
    st.put_bytes(trace_key, r.trace.to_json_bytes())
    st.put_bytes(keys.step_key(prefix), step.model_dump_json().encode())
    return StepRef(step=step, ssr=final_ref, trace_key=trace_key)


def reason_step_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.step_prefix(keys.reason_prefix(p["ssr"].digest, p["instruction"], s), p["subtask"],
                                           p.get("query_objects")))
