"""Editing task: execute one plan step on the previous step's output."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from cielr_core.editing.verify import execute_verified, make_judge
from cielr_core.models import ModelUnavailableError
from cielr_core.plan import EditStep
from storage import sha256_json
from tasks import keys, runtime
from tasks.images import get_rgb, put_rgb
from tasks.perception import read_scene


@task(name="inpaint-step")
def inpaint_step(image: dict[str, Any], step: dict[str, Any], settings: runtime.SettingsRef, seed: int,
                 instruction: str | None = None) -> dict:
    """Execute one step; with ``editing.verify.enabled`` check it, retry and re-plan (the reasoner,
    with ``instruction``) as :func:`cielr_core.editing.verify.execute_verified` does. The attempts,
    verdicts and the backend's detail go to ``edit-trace.json`` beside the mask."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    scene = read_scene(step["ssr"], settings)
    edit = EditStep.model_validate(step["step"])
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
    prefix = f"edit/{image['sha']}/{_step_digest(step)}/{keys.editing_digest(s, seed)}"
    st.put_mask(f"{prefix}/mask.png", result.mask)
    trace = {"operation": result.operation, "backend": result.backend, "skipped": result.skipped,
             "reason": result.reason, "detail": result.detail, **v.trace()}
    if v.replanned:
        trace["step"] = v.step.model_dump(mode="json")
    if reasoner is not None and reasoner.trace.events:
        trace["replan_trace"] = json.loads(reasoner.trace.to_json_bytes())
    st.put_json(f"{prefix}/edit-trace.json", trace)
    return {"image": out, "mask_key": f"{prefix}/mask.png", "skipped": result.skipped, "backend": result.backend,
            "verified": v.verified, "trace_key": f"{prefix}/edit-trace.json",
            "replanned_step": v.step.model_dump(mode="json") if v.replanned else None}


def inpaint_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"edit-{p['image']['sha']}-{_step_digest(p['step'])}-{keys.editing_digest(s, p['seed'])}"


def _step_digest(step: dict[str, Any]) -> str:
    """The step and the SSR version whose masks it refers to."""
    return sha256_json([step["step"], step["ssr"]["digest"]])
