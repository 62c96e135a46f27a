"""The per-stage logic of one image, shared by the Prefect tasks (tasks/*.py) and the Python API
(:func:`cielr_core.api.edit`).

Each function is one stage's work on values in memory: segment (SAM2, halving its batch once on
CUDA out-of-memory), assemble SSR version 0, the reasoner every reasoning stage uses (always with
perception's semantic updater: a reasoner without it silently skips semantic updates), one plan
step executed (checked and re-planned when ``editing.verify.enabled``) with its edit trace, and the
image's final plan, mask and verdict. The tasks add what Prefect needs around them (store keys,
cache keys, persistence, retries); the API calls them in the same order as flows/pipeline.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cielr_core.masks import union
from cielr_core.plan import EditPlan, EditStep
from cielr_core.ssr import Scene


def segment_image(perceiver: Any, rgb: np.ndarray, settings: Any, sam2_overrides: dict[str, Any] | None = None,
                  *, on_retry: Callable[[int], None] | None = None):
    """SAM2 masks of ``rgb``; on CUDA out-of-memory once more with half of
    ``perception.sam2.points_per_batch`` (not in the digest: it changes memory, not masks)."""
    from cielr_core.models import halve_batch_on_cuda_oom

    def run(points_per_batch: int | None):
        if points_per_batch is None:
            return perceiver.segment(rgb, sam2_overrides=sam2_overrides)
        return perceiver.segment(rgb, sam2_overrides={**(sam2_overrides or {}), "points_per_batch": points_per_batch})

    return halve_batch_on_cuda_oom(run, settings.perception.sam2.points_per_batch, on_retry=on_retry)


def assemble_ssr(perceiver: Any, seg: Any, det: Any, depth: np.ndarray, *, image_sha256: str, width: int,
                 height: int) -> Scene:
    """Match labels to masks, merge same-label fragments, attach depth: SSR version 0."""
    return perceiver.assemble(seg, det, depth, image_sha256=image_sha256, width=width, height=height, version=0,
                              provenance=perceiver.provenance())


def make_reasoner(settings: Any, llm: Any, perceiver: Any):
    """The reasoner of every reasoning stage: a fresh trace, and perception's semantic updater (the
    instruction's objects and semantic SSR updates re-run the detector through it)."""
    from cielr_core.reasoning import Reasoner, Trace

    return Reasoner(settings, llm, updater=perceiver.update_semantic, trace=Trace())


@dataclass
class StepEdit:
    """One executed plan step: the image it produced, the region allowed to differ, the judge's
    verdict (None: not checked), the edit trace (as trace.json's ``edits`` entries hold it), and the
    step as re-planned after a rejected edit (else None)."""

    image: np.ndarray
    mask: np.ndarray
    skipped: bool
    backend: str | None
    verified: bool | None
    trace: dict[str, Any]
    replanned_step: EditStep | None


def edit_step(rgb: np.ndarray, step: EditStep, scene: Scene, settings: Any, seed: int, *,
              instruction: str | None, new_reasoner: Callable[[], Any]) -> StepEdit:
    """Execute ``step``; with ``editing.verify.enabled`` check it, retry and re-plan (a reasoner from
    ``new_reasoner``, with ``instruction``) as :func:`cielr_core.editing.verify.execute_verified` does."""
    from cielr_core.editing.verify import execute_verified, make_judge
    from cielr_core.models import ModelUnavailableError

    judge, replan, reasoner, note = None, None, None, None
    if settings.editing.verify.enabled and step.status == "ok":
        try:
            judge = make_judge(settings)
        except ModelUnavailableError as e:
            note = f"not checked: the judge is unavailable: {e}"
        if judge is not None and settings.editing.verify.replan and instruction is not None:
            reasoner = new_reasoner()

            def replan(old: EditStep, why: str) -> EditStep:
                try:
                    return reasoner.replan_step(step.subtask, instruction, scene, old, why)
                except Exception as e:  # a failed re-plan leaves the step unverified, not failed
                    raise ValueError(f"{type(e).__name__}: {e}") from e
    v = execute_verified(rgb, step, scene, settings, seed, judge=judge, replan=replan)
    if note:
        v.note = note
    result = v.result
    trace = {"operation": result.operation, "backend": result.backend, "skipped": result.skipped,
             "reason": result.reason, "detail": result.detail, **v.trace()}
    if v.replanned:
        trace["step"] = v.step.model_dump(mode="json")
    if reasoner is not None and reasoner.trace.events:
        trace["replan_trace"] = json.loads(reasoner.trace.to_json_bytes())
    return StepEdit(image=result.image, mask=result.mask, skipped=result.skipped, backend=result.backend,
                    verified=v.verified, trace=trace, replanned_step=v.step if v.replanned else None)


def final_plan(instruction: str, steps: Sequence[EditStep], replanned: Sequence[EditStep | None]) -> EditPlan:
    """The plan as executed: a step re-planned after the judge rejected its edit is recorded as the
    step that ran."""
    return EditPlan(instruction=instruction, steps=[r if r is not None else s for s, r in zip(steps, replanned)])


def final_mask(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """mask.png: the union of the executed steps' masks, exactly the region allowed to differ."""
    return union(list(masks), shape=shape)


def final_verdict(checks: Sequence[bool | None]) -> bool | None:
    """False when the judge rejected any executed step, True when it accepted every one, else None."""
    return False if False in checks else (True if checks and all(c is True for c in checks) else None)


def final_status(n_done: int) -> str:
    return "ok" if n_done else "no_target"


def no_edit_reason(steps: Sequence[EditStep]) -> str:
    """The result row's error of an image that ended without an edit."""
    return "; ".join(s.reason or "no target" for s in steps) or "no sub-tasks"
