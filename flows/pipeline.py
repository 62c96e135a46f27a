"""One image through the CIELR DAG (Figure 1 of the paper), as Prefect task calls.

    load image -> perceive (segment, detect, depth -> merge SSR v0)
               -> decompose instruction into sub-tasks and the objects it names (query_objects)
               -> for each sub-task j: perceive image_j (cached for j = 0)
                                      -> reason (query_objects join the detector's queries,
                                                 then assess / update SSR / reason targets)
                                      -> inpaint -> image_{j+1}
               -> finalize (edited.png, mask.png, overlay.png, ssr.json, plan.json, trace.json)

Failures are data: any stage error ends this image with status ``failed`` and a message naming
the stage and the cause; the caller moves on to the next image.
"""

from __future__ import annotations

import time
from typing import Any

from tasks.progress import RunStopped
from tasks.refs import EditRef, ImageRef, ResultRow, SSRRef, StepRef
from tasks.stages import StageFailed, StageRecorder, Stages


def perceive(run: StageRecorder, stages: Stages, image: ImageRef) -> SSRRef:
    sd = stages.ref
    seg = run("segment", stages.segment, image=image, settings=sd, sam2_overrides=None)
    det = run("detect", stages.detect, image=image, settings=sd, extra_queries=None)
    dep = run("depth", stages.depth, image=image, settings=sd)
    return run("merge", stages.merge, image=image, seg=seg, det=det, dep=dep, settings=sd)


def run_image(stages: Stages, *, image_id: str, image_uri: str, instruction: str,
              seed: int | None = None) -> ResultRow:
    """Process one image; always returns a result row (status ok / no_target / failed; cancelled
    when the run was asked to stop before it finished)."""
    sd = stages.ref
    seed = stages.settings.editing.seed if seed is None else int(seed)
    run = StageRecorder(image_id)
    row: dict[str, Any] = {"image_id": image_id, "image_uri": image_uri, "instruction": instruction, "seed": seed}
    t0 = time.perf_counter()
    try:
        image = run("load", stages.load, image_uri=image_uri, settings=sd)
        row["image_sha256"] = image.sha
        ssr0 = perceive(run, stages, image)
        dec = run("decompose", stages.decompose, ssr=ssr0, instruction=instruction, settings=sd, image=image)
        current, ssr = image, ssr0
        steps: list[StepRef] = []
        edits: list[EditRef | None] = []
        for j, subtask in enumerate(dec.subtasks):
            if j > 0:  # step j is perceived on the image that step j-1 produced
                ssr = perceive(run, stages, current)
            step = run("reason", stages.reason, image=current, ssr=ssr, subtask=subtask,
                       instruction=instruction, settings=sd, query_objects=dec.query_objects)
            steps.append(step)
            edit = None
            if step.step.status == "ok":
                edit = run("inpaint", stages.inpaint, image=current, step=step, settings=sd, seed=seed,
                           instruction=instruction)
                if not edit.skipped:
                    current = edit.image
            edits.append(edit)
        out = run("finalize", stages.finalize, image=image, final_image=current, ssr=ssr0, instruction=instruction,
                  steps=steps, edits=edits, decompose_trace=dec.trace_key, settings=sd, seed=seed)
        row.update(out.model_dump(exclude={"prefix"}))
        row["error"] = None if out.status == "ok" else "; ".join(
            s.step.reason or "no target" for s in steps) or "no sub-tasks"
    except RunStopped as e:
        row.update(status="cancelled", error=str(e))
    except StageFailed as e:
        row.update(status="failed", error=str(e), failed_stage=e.stage)
    except Exception as e:  # noqa: BLE001 - a bug between stages must not stop the other rows
        row.update(status="failed", error=f"pipeline: {type(e).__name__}: {e}", failed_stage="pipeline")
    return ResultRow(**row, cache_hits=run.cache_hits, task_runs=run.task_runs, cached_stages=run.cached_stages(),
                     seconds=round(time.perf_counter() - t0, 4), **run.stage_seconds())
