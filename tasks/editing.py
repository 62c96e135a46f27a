"""Editing task: execute one plan step on the previous step's output."""

from __future__ import annotations

from typing import Any

from prefect import task

from cielr_core.editing import execute_step
from cielr_core.plan import EditStep
from storage import sha256_json
from tasks import keys, runtime
from tasks.images import get_rgb, put_rgb
from tasks.perception import read_scene


@task(name="inpaint-step")
def inpaint_step(image: dict[str, Any], step: dict[str, Any], settings: runtime.SettingsRef, seed: int) -> dict:
    s = runtime.settings(settings)
    st = runtime.store(s)
    scene = read_scene(step["ssr"], settings)
    edit = EditStep.model_validate(step["step"])
    result = execute_step(get_rgb(image, s), edit, scene, s, seed=seed)
    out = put_rgb(result.image, s)
    prefix = f"edit/{image['sha']}/{_step_digest(step)}/{keys.editing_digest(s, seed)}"
    st.put_mask(f"{prefix}/mask.png", result.mask)
    return {"image": out, "mask_key": f"{prefix}/mask.png", "skipped": result.skipped, "backend": result.backend}


def inpaint_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"edit-{p['image']['sha']}-{_step_digest(p['step'])}-{keys.editing_digest(s, p['seed'])}"


def _step_digest(step: dict[str, Any]) -> str:
    """The step and the SSR version whose masks it refers to."""
    return sha256_json([step["step"], step["ssr"]["digest"]])
