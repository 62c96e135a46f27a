"""Reasoning tasks: decompose the instruction, then one assess/update/reason loop per sub-task.

The loop runs inside one task (its LLM calls, semantic updates and sandbox runs are recorded in
the persisted trace); semantic updates re-run perception models in the same worker process.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from cielr_core.reasoning import Reasoner, Trace
from cielr_core.ssr import save_scene
from tasks import keys, runtime
from tasks.images import get_rgb
from tasks.perception import read_scene


def _reasoner(s):
    p = runtime.perceiver(s)
    return Reasoner(s, runtime.llm(s), updater=p.update_semantic, trace=Trace())


@task(name="decompose")
def decompose(ssr: dict[str, Any], instruction: str, settings: runtime.SettingsRef) -> dict:
    s = runtime.settings(settings)
    st = runtime.store(s)
    scene = read_scene(ssr, settings)
    r = _reasoner(s)
    subtasks = r.decompose(instruction, scene)
    prefix = keys.reason_prefix(ssr["digest"], instruction, s)
    st.put_bytes(f"{prefix}/decompose-trace.json", r.trace.to_json_bytes())
    st.put_json(f"{prefix}/subtasks.json", subtasks)
    return {"subtasks": subtasks, "trace_key": f"{prefix}/decompose-trace.json"}


def decompose_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return "decompose-" + keys.reason_prefix(p["ssr"]["digest"], p["instruction"], s).replace("/", "-")


@task(name="reason-step")
def reason_step(
    image: dict[str, Any], ssr: dict[str, Any], subtask: str, instruction: str, settings: runtime.SettingsRef
) -> dict:
    """Assess / update / reason for one sub-task; returns the EditStep and the SSR version it refers to."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    scene = read_scene(ssr, settings)
    r = _reasoner(s)
    step, final = r.plan_step(subtask, instruction, get_rgb(image, s), scene)
    prefix = f"{keys.reason_prefix(ssr['digest'], instruction, s)}/{keys.text_sha(subtask)}"
    final_ref = ssr
    if final.ssr.digest() != ssr["digest"]:
        chain_prefix = f"{ssr['prefix']}/chain/{final.ssr.digest()}"
        save_scene(st, chain_prefix, final)
        final_ref = {"prefix": chain_prefix, "digest": final.ssr.digest(), "n_objects": len(final.ssr.objects)}
    st.put_bytes(f"{prefix}/trace.json", r.trace.to_json_bytes())
    st.put_bytes(f"{prefix}/step.json", step.model_dump_json().encode())
    return {"step": step.model_dump(mode="json"), "ssr": final_ref, "trace_key": f"{prefix}/trace.json"}


def reason_step_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    base = keys.reason_prefix(p["ssr"]["digest"], p["instruction"], s).replace("/", "-")
    return f"reason-{base}-{keys.text_sha(p['subtask'])}"
