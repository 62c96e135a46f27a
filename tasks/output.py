"""The last stage of an image: its outputs, written under one content-addressed prefix."""

from __future__ import annotations

from typing import Any

from prefect import task

from cielr_core.pipeline import final_mask, final_plan, final_status, final_verdict
from tasks import keys, runtime
from tasks.refs import EditRef, ImageRef, Outputs, SSRRef, StepRef


@task(name="finalize")
def finalize(
    image: ImageRef, final_image: ImageRef, ssr: SSRRef, instruction: str, steps: list[StepRef],
    edits: list[EditRef | None], decompose_trace: str, settings: runtime.SettingsRef, seed: int,
) -> Outputs:
    """edited.png (the last step's image), mask.png (the union of the executed steps' masks: exactly
    the region allowed to differ), overlay.png and ssr.json (SSR v0), plan.json, trace.json."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    prefix = keys.output_prefix(image.sha, instruction, s, seed)
    done = [e for e in edits if e is not None and not e.skipped]
    plan = final_plan(instruction, [x.step for x in steps],
                      [e.replanned_step if e is not None else None for e in edits])
    mask = final_mask([st.get_mask(e.mask_key) for e in done], (image.height, image.width))
    traces = {"decompose": st.get_json(decompose_trace), "steps": [st.get_json(x.trace_key) for x in steps],
              "edits": [st.get_json(e.trace_key) if e is not None and e.trace_key else None for e in edits]}
    verified = final_verdict([e.verified for e in done])
    st.put_bytes(keys.output_key(prefix, "edited"), st.get_bytes(final_image.key))
    st.put_mask(keys.output_key(prefix, "mask"), mask)
    st.put_bytes(keys.output_key(prefix, "overlay"), st.get_bytes(keys.overlay_key(ssr.prefix)))
    st.put_bytes(keys.output_key(prefix, "ssr"), st.get_bytes(keys.ssr_json_key(ssr.prefix)))
    st.put_bytes(keys.output_key(prefix, "plan"), plan.canonical_json())
    st.put_json(keys.output_key(prefix, "trace"), traces)
    return Outputs(
        prefix=prefix, status=final_status(len(done)), n_steps=len(steps), n_edited_steps=len(done),
        verified=verified,
        **{f"{name}_uri": st.uri_for(keys.output_key(prefix, name)) for name in keys.OUTPUT_FILES},
    )


def finalize_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.output_prefix(p["image"].sha, p["instruction"], s, p["seed"]))
