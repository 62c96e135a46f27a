"""Editing task: execute one plan step on the previous step's output (checked, retried and
re-planned when ``editing.verify.enabled``)."""

from __future__ import annotations

from typing import Any

from prefect import task

from cielr_core.pipeline import edit_step
from tasks import keys, runtime
from tasks.images import get_rgb, put_rgb
from tasks.perception import read_scene
from tasks.refs import EditRef, ImageRef, StepRef


@task(name="inpaint-step")
def inpaint_step(image: ImageRef, step: StepRef, settings: runtime.SettingsRef, seed: int,
                 instruction: str | None = None) -> EditRef:
    """Execute one step; with ``editing.verify.enabled`` check it, retry and re-plan (the reasoner,
    with ``instruction``) as :func:`cielr_core.pipeline.edit_step` does. The attempts, verdicts and the
    backend's detail go to the step's edit trace beside its mask."""
    from tasks.reasoning import _reasoner

    s = runtime.settings(settings)
    st = runtime.store(s)
    done = edit_step(get_rgb(image, s), step.step, read_scene(step.ssr, s), s, seed, instruction=instruction,
                     new_reasoner=lambda: _reasoner(s))
    out = put_rgb(done.image, s)
    prefix = _edit_prefix(image, step, s, seed)
    mask_key, trace_key = keys.edit_mask_key(prefix), keys.edit_trace_key(prefix)
    st.put_mask(mask_key, done.mask)
    st.put_json(trace_key, done.trace)
    return EditRef(image=out, mask_key=mask_key, skipped=done.skipped, backend=done.backend,
                   verified=done.verified, trace_key=trace_key, replanned_step=done.replanned_step)


def inpaint_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(_edit_prefix(p["image"], p["step"], s, p["seed"]))


def _edit_prefix(image: ImageRef, step: StepRef, s, seed: int) -> str:
    return keys.edit_prefix(image.sha, keys.step_digest(step.step.model_dump(mode="json"), step.ssr.digest), s, seed)
