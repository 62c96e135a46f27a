"""Editing task: execute one plan step on the previous step's output (checked, retried and
re-planned when ``editing.verify.enabled``)."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from cielr_core.editing.verify import execute_verified, make_judge
from cielr_core.models import ModelUnavailableError
from cielr_core.plan import EditStep
from tasks import keys, runtime
from tasks.images import get_rgb, put_rgb
from tasks.perception import read_scene
from tasks.refs import EditRef, ImageRef, StepRef


@task(name="inpaint-step")
def inpaint_step(image: ImageRef, step: StepRef, settings: runtime.SettingsRef, seed: int,
                 instruction: str | None = None) -> EditRef:
    """Execute one step; with ``editing.verify.enabled`` check it, retry and re-plan (the reasoner,
    with ``instruction``) as :func:`cielr_core.editing.verify.execute_verified` does. The attempts,
    verdicts and the backend's detail go to the step's edit trace beside its mask."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    scene = read_scene(step.ssr, s)
    edit = step.step
    judge, replan, reasoner, note = None, None, None, None
    if s.editing.verify.enabled and edit.status == "ok":
        try:
            judge = make_judge(s)
        except ModelUnavailableError as e:
            note = f"not checked: the judge is unavailable: {e}"
        if judge is not None and s.editing.verify.replan and instruction is not None:
            from tasks.reasoning import _reasoner

            reasoner = _reasoner(s)

            def replan(old: EditStep, why: str) -> EditStep:
                try:
                    return reasoner.replan_step(edit.subtask, instruction, scene, old, why)
                except Exception as e:  # a failed re-plan leaves the step unverified, not failed
                    raise ValueError(f"{type(e).__name__}: {e}") from e
    v = execute_verified(get_rgb(image, s), edit, scene, s, seed, judge=judge, replan=replan)
    if note:
        v.note = note
    result = v.result
    out = put_rgb(result.image, s)
    prefix = _edit_prefix(image, step, s, seed)
    mask_key, trace_key = keys.edit_mask_key(prefix), keys.edit_trace_key(prefix)
    st.put_mask(mask_key, result.mask)
    trace = {"operation": result.operation, "backend": result.backend, "skipped": result.skipped,
             "reason": result.reason, "detail": result.detail, **v.trace()}
    if v.replanned:
        trace["step"] = v.step.model_dump(mode="json")
    if reasoner is not None and reasoner.trace.events:
        trace["replan_trace"] = json.loads(reasoner.trace.to_json_bytes())
    st.put_json(trace_key, trace)
    return EditRef(image=out, mask_key=mask_key, skipped=result.skipped, backend=result.backend,
                   verified=v.verified, trace_key=trace_key, replanned_step=v.step if v.replanned else None)


def inpaint_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(_edit_prefix(p["image"], p["step"], s, p["seed"]))


def _edit_prefix(image: ImageRef, step: StepRef, s, seed: int) -> str:
    return keys.edit_prefix(image.sha, keys.step_digest(step.step.model_dump(mode="json"), step.ssr.digest), s, seed)
