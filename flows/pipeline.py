"""One image through the CIELR DAG (Figure 1 of the paper), as Prefect task calls.

    load image -> perceive (segment, detect, depth -> merge SSR v0)
               -> decompose instruction into sub-tasks
               -> for each sub-task j: perceive image_j (cached for j = 0)
                                      -> reason (assess / update SSR / reason targets)
                                      -> inpaint -> image_{j+1}
               -> finalize (edited.png, mask.png, overlay.png, ssr.json, plan.json, trace.json)

Failures are data: any stage error ends this image with status ``failed`` and a message naming
the stage and the cause; the caller moves on to the next image.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prefect import task

from cielr_core.config import Settings
from cielr_core.masks import union
from cielr_core.plan import EditPlan, EditStep
from tasks import keys, runtime
from tasks.editing import inpaint_cache_key, inpaint_step
from tasks.images import load_cache_key, load_image
from tasks.options import bind
from tasks.perception import (
    depth,
    depth_cache_key,
    detect,
    detect_cache_key,
    merge_cache_key,
    merge_ssr,
    segment,
    segment_cache_key,
)
from tasks.reasoning import decompose, decompose_cache_key, reason_step, reason_step_cache_key

STAGES = ("load", "segment", "detect", "depth", "merge", "decompose", "reason", "inpaint", "finalize")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


@task(name="finalize")
def finalize(
    image: dict, final_image: dict, ssr: dict, instruction: str, steps: list[dict], edits: list[dict | None],
    decompose_trace: str, settings: runtime.SettingsRef, seed: int,
) -> dict:
    """Write the image's outputs under one content-addressed prefix."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    prefix = keys.output_prefix(image["sha"], instruction, s, seed)
    # a step re-planned after the edit judge rejected it is recorded as the step that was executed
    plan = EditPlan(instruction=instruction, steps=[
        EditStep.model_validate((e or {}).get("replanned_step") or x["step"]) for x, e in zip(steps, edits)])
    masks = [st.get_mask(e["mask_key"]) for e in edits if e and not e.get("skipped")]
    mask = union(masks, shape=(image["height"], image["width"]))
    traces = {"decompose": st.get_json(decompose_trace), "steps": [st.get_json(x["trace_key"]) for x in steps],
              "edits": [st.get_json(e["trace_key"]) if e and e.get("trace_key") else None for e in edits]}
    st.put_bytes(f"{prefix}/edited.png", st.get_bytes(final_image["key"]))
    st.put_mask(f"{prefix}/mask.png", mask)
    st.put_bytes(f"{prefix}/overlay.png", st.get_bytes(f"{ssr['prefix']}/overlay.png"))
    st.put_bytes(f"{prefix}/ssr.json", st.get_bytes(f"{ssr['prefix']}/ssr.json"))
    st.put_bytes(f"{prefix}/plan.json", plan.canonical_json())
    st.put_json(f"{prefix}/trace.json", traces)
    n_done = sum(1 for e in edits if e and not e.get("skipped"))
    checks = [e.get("verified") for e in edits if e and not e.get("skipped")]
    verified = False if False in checks else (True if checks and all(c is True for c in checks) else None)
    return {
        "prefix": prefix,
        "status": "ok" if n_done else "no_target",
        "n_steps": len(steps),
        "n_edited_steps": n_done,
        "verified": verified,
        **{f"{name}_uri": st.uri_for(f"{prefix}/{name}.{ext}") for name, ext in
           (("edited", "png"), ("mask", "png"), ("overlay", "png"), ("ssr", "json"), ("plan", "json"), ("trace", "json"))},
    }


def finalize_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return "final-" + keys.output_prefix(p["image"]["sha"], p["instruction"], s, p["seed"]).replace("/", "-")


@dataclass
class Stages:
    """The stage tasks bound to one run's settings (cache keys, result storage, retries, tags)."""

    load: Any
    segment: Any
    detect: Any
    depth: Any
    merge: Any
    decompose: Any
    reason: Any
    inpaint: Any
    finalize: Any

    @classmethod
    def for_settings(cls, s: Settings) -> "Stages":
        return cls(
            load=bind(load_image, s, cache_key=load_cache_key),
            segment=bind(segment, s, cache_key=segment_cache_key, gpu=True),
            detect=bind(detect, s, cache_key=detect_cache_key, gpu=True),
            depth=bind(depth, s, cache_key=depth_cache_key, gpu=True),
            merge=bind(merge_ssr, s, cache_key=merge_cache_key),
            decompose=bind(decompose, s, cache_key=decompose_cache_key, gpu=True),
            reason=bind(reason_step, s, cache_key=reason_step_cache_key, gpu=True),
            inpaint=bind(inpaint_step, s, cache_key=inpaint_cache_key, gpu=True),
            finalize=bind(finalize, s, cache_key=finalize_cache_key),
        )


class _Runner:
    def __init__(self) -> None:
        self.timings: dict[str, float] = defaultdict(float)
        self.cached_by_stage: dict[str, int] = defaultdict(int)
        self.calls_by_stage: dict[str, int] = defaultdict(int)
        self.cached = 0
        self.calls = 0

    def __call__(self, stage: str, task: Any, **params: Any) -> Any:
        t0 = time.perf_counter()
        state = task(**params, return_state=True)
        self.timings[stage] += time.perf_counter() - t0
        self.calls += 1
        self.calls_by_stage[stage] += 1
        if state.name == "Cached":
            self.cached += 1
            self.cached_by_stage[stage] += 1
        if not state.is_completed():
            try:
                state.result(raise_on_failure=True)
            except BaseException as e:  # noqa: BLE001
                raise StageFailed(stage, e) from e
            raise StageFailed(stage, RuntimeError(f"ended in state {state.name}: {state.message}"))
        return state.result()


def perceive(run: _Runner, stages: Stages, image: dict, sd: dict) -> dict:
    seg = run("segment", stages.segment, image=image, settings=sd, sam2_overrides=None)
    det = run("detect", stages.detect, image=image, settings=sd, extra_queries=None)
    dep = run("depth", stages.depth, image=image, settings=sd)
    return run("merge", stages.merge, image=image, seg=seg, det=det, dep=dep, settings=sd)


def run_image(
    stages: Stages, settings: Settings, *, image_id: str, image_uri: str, instruction: str, seed: int | None = None
) -> dict[str, Any]:
    """Process one image; always returns a result row (status ok / no_target / failed)."""
    sd = runtime.settings_ref(settings)
    seed = settings.editing.seed if seed is None else int(seed)
    run = _Runner()
    row: dict[str, Any] = {"image_id": image_id, "image_uri": image_uri, "instruction": instruction, "seed": seed}
    t0 = time.perf_counter()
    try:
        image = run("load", stages.load, image_uri=image_uri, settings=sd)
        row["image_sha256"] = image["sha"]
        ssr0 = perceive(run, stages, image, sd)
        dec = run("decompose", stages.decompose, ssr=ssr0, instruction=instruction, settings=sd)
        current, ssr = image, ssr0
        steps: list[dict] = []
        edits: list[dict | None] = []
        for j, subtask in enumerate(dec["subtasks"]):
            if j > 0:  # step j is perceived on the image that step j-1 produced
                ssr = perceive(run, stages, current, sd)
            step = run("reason", stages.reason, image=current, ssr=ssr, subtask=subtask,
                       instruction=instruction, settings=sd)
            steps.append(step)
            edit = None
            if step["step"]["status"] == "ok":
                edit = run("inpaint", stages.inpaint, image=current, step=step, settings=sd, seed=seed,
                           instruction=instruction)
                if not edit["skipped"]:
                    current = edit["image"]
            edits.append(edit)
        out = run("finalize", stages.finalize, image=image, final_image=current, ssr=ssr0, instruction=instruction,
                  steps=steps, edits=edits, decompose_trace=dec["trace_key"], settings=sd, seed=seed)
        row.update(out)
        row["error"] = None if out["status"] == "ok" else "; ".join(
            s["step"].get("reason") or "no target" for s in steps) or "no sub-tasks"
    except StageFailed as e:
        row.update(status="failed", error=str(e), failed_stage=e.stage)
    except Exception as e:  # noqa: BLE001 - a bug between stages must not stop the other rows
        row.update(status="failed", error=f"pipeline: {type(e).__name__}: {e}", failed_stage="pipeline")
    row["cache_hits"] = run.cached
    row["task_runs"] = run.calls
    row["cached_stages"] = ",".join(
        f"{k}:{run.cached_by_stage.get(k, 0)}/{v}" for k, v in run.calls_by_stage.items())
    row["seconds"] = round(time.perf_counter() - t0, 4)
    for stage in STAGES:
        row[f"t_{stage}"] = round(run.timings.get(stage, 0.0), 4)
    return row
