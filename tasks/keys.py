"""The one owner of the store's layout: every key prefix, every artifact key, every Prefect cache key.

Keys are content-addressed: each derives from what determines the artifact (the image's pixel
digest, the instruction's text digest, the stage's config digest with its code version), so a
rerun, a retry, a new nightly run or a run on another machine all find the same results, and
changing only the LLM never re-runs perception. The Prefect cache key of the task that makes an
artifact is derived from that artifact's prefix (:func:`cache_key`), so the two cannot drift.

    images/<image sha>.png                                    decoded input, and every edited image
    seg/<image sha>/<segment digest>/masks.npz                SAM2 masks
    det/<image sha>/<detect digest>/detections.json           OWLv2 detections
    depth/<image sha>/<depth digest>/depth.npy                DepthAnything depth
    ssr/<image sha>/<perception digest>/                      SSR v0: ssr.json, masks/, overlay.png
        .../chain/<ssr digest>/                               later SSR versions of the loop
    reason/<ssr digest>/<instruction sha>/<reasoning digest>/ subtasks.json, decompose-trace.json
        .../<subtask digest>/                                 step.json, trace.json (subtask sha; with the
                                                              instruction's objects, sha of both)
    edit/<image sha>/<step digest>/<editing digest>/          mask.png, edit-trace.json of one executed step
    out/<image sha>/<instruction sha>/<config digest>/        the image's outputs (OUTPUT_FILES)
    plan/<ssr digest>/<instruction+reasoning digest>/         `cielr plan` (plan.json, trace.json)
    runs/<run id>/results.parquet                             one edit_dataset run
    runs/<run id>/index.html                                  its browsable page (links relative)
    eval/manifests/<sha of the manifest bytes>.parquet        a benchmark's manifest
    eval/<run id>/                                            metrics.parquet, report.md, report.html
    prefect/                                                  Prefect's results and cache records

Only this module spells these; ``tests/test_layering.py`` checks that tasks/ and flows/ do not.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cielr_core.canonical import sha256_json
from cielr_core.config import Settings
from cielr_core.vocabulary import merge_queries

# every top-level prefix of the store
PREFIXES = ("images", "seg", "det", "depth", "ssr", "reason", "edit", "out", "plan", "runs", "eval", "prefect")
PREFECT_PREFIX = "prefect"

# what an image's output folder holds: name -> file
OUTPUT_FILES = {
    "edited": "edited.png", "mask": "mask.png", "overlay": "overlay.png",
    "ssr": "ssr.json", "plan": "plan.json", "trace": "trace.json",
}
EVAL_FILES = {"metrics": "metrics.parquet", "report_md": "report.md", "report_html": "report.html"}

# how an output folder is found, in words (for messages)
OUTPUT_LAYOUT = "out/<image sha>/<instruction sha>/<config digest>/"

MAX_CACHE_KEY = 100


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- stage digests: the config that determines each stage's results ---------------------------------
def perception_digest(s: Settings) -> str:
    from cielr_core.perception import (
        ASSEMBLE_CODE_VERSION,
        DEPTH_CODE_VERSION,
        LABEL_CODE_VERSION,
        SEGMENT_CODE_VERSION,
    )

    return s.perception.digest(SEGMENT_CODE_VERSION, LABEL_CODE_VERSION, DEPTH_CODE_VERSION, ASSEMBLE_CODE_VERSION)


def segment_digest(s: Settings, overrides: dict[str, Any] | None) -> str:
    from cielr_core.perception import SEGMENT_CODE_VERSION

    return s.perception.sam2.digest(SEGMENT_CODE_VERSION, s.perception.dtype, overrides or {})


def detect_digest(s: Settings, extra_queries: list[str] | None) -> str:
    from cielr_core.perception import LABEL_CODE_VERSION

    return s.perception.owlv2.digest(LABEL_CODE_VERSION, s.perception.dtype, sorted(extra_queries or []))


def depth_digest(s: Settings) -> str:
    from cielr_core.perception import DEPTH_CODE_VERSION

    return s.perception.depth.digest(DEPTH_CODE_VERSION, s.perception.dtype)


def reasoning_digest(s: Settings) -> str:
    """LLM + loop settings + prompt version + code version; perception settings enter too, since
    semantic updates inside the loop re-run perception models."""
    from cielr_core.reasoning import REASONING_CODE_VERSION

    return sha256_json([s.llm.digest(), s.reasoning.digest(REASONING_CODE_VERSION), perception_digest(s)])


def editing_digest(s: Settings, seed: int) -> str:
    from cielr_core.editing import EDITING_CODE_VERSION

    return s.editing.digest(EDITING_CODE_VERSION, seed)


def eval_digest(s: Settings) -> str:
    from cielr_core.metrics import metrics_digest

    return metrics_digest(s)


# -- images ----------------------------------------------------------------------------------------
def image_key(image_sha: str) -> str:
    return f"images/{image_sha}.png"


# -- perception --------------------------------------------------------------------------------------
def segment_prefix(image_sha: str, s: Settings, overrides: dict[str, Any] | None) -> str:
    return f"seg/{image_sha}/{segment_digest(s, overrides)}"


def segment_key(prefix: str) -> str:
    return f"{prefix}/masks.npz"


def detect_prefix(image_sha: str, s: Settings, extra_queries: list[str] | None) -> str:
    return f"det/{image_sha}/{detect_digest(s, extra_queries)}"


def detect_key(prefix: str) -> str:
    return f"{prefix}/detections.json"


def depth_prefix(image_sha: str, s: Settings) -> str:
    return f"depth/{image_sha}/{depth_digest(s)}"


def depth_key(prefix: str) -> str:
    return f"{prefix}/depth.npy"


def ssr_prefix(image_sha: str, s: Settings) -> str:
    """SSR v0's folder (``ssr.json`` and ``masks/`` inside, as cielr_core.ssr.save_scene lays them)."""
    return f"ssr/{image_sha}/{perception_digest(s)}"


def ssr_chain_prefix(ssr_prefix: str, ssr_digest: str) -> str:
    """A later SSR version (from the reasoning loop's updates), beside the version it grew from."""
    return f"{ssr_prefix}/chain/{ssr_digest}"


def ssr_json_key(ssr_prefix: str) -> str:
    return f"{ssr_prefix}/ssr.json"


def overlay_key(ssr_prefix: str) -> str:
    return f"{ssr_prefix}/overlay.png"


# -- reasoning ---------------------------------------------------------------------------------------
def reason_prefix(ssr_digest: str, instruction: str, s: Settings) -> str:
    return f"reason/{ssr_digest}/{text_sha(instruction)}/{reasoning_digest(s)}"


def subtasks_key(reason_prefix: str) -> str:
    return f"{reason_prefix}/subtasks.json"


def decompose_trace_key(reason_prefix: str) -> str:
    return f"{reason_prefix}/decompose-trace.json"


def step_prefix(reason_prefix: str, subtask: str, query_objects: list[str] | None = None) -> str:
    """One sub-task's reasoning. ``query_objects`` (the decomposition's nouns, which join the
    detector's query set before the first assessment) determine the step too: with any, the folder
    is the digest of the sub-task and the normalised queries; with none, the sub-task's sha."""
    objects = merge_queries(query_objects or [])
    if not objects:
        return f"{reason_prefix}/{text_sha(subtask)}"
    return f"{reason_prefix}/{sha256_json([text_sha(subtask), objects])}"


def step_key(step_prefix: str) -> str:
    return f"{step_prefix}/step.json"


def step_trace_key(step_prefix: str) -> str:
    return f"{step_prefix}/trace.json"


def plan_prefix(ssr_digest: str, instruction: str, s: Settings) -> str:
    """Where `cielr plan` writes: the pipeline's reasoning digest (LLM, loop settings, prompt and code
    versions, perception) over the SSR it reasoned on."""
    return f"plan/{ssr_digest}/{sha256_json([text_sha(instruction), reasoning_digest(s)])}"


def plan_key(plan_prefix: str) -> str:
    return f"{plan_prefix}/plan.json"


def plan_trace_key(plan_prefix: str) -> str:
    return f"{plan_prefix}/trace.json"


# -- editing -----------------------------------------------------------------------------------------
def step_digest(step_json: dict[str, Any], ssr_digest: str) -> str:
    """An executed step: the step and the SSR version whose masks it refers to."""
    return sha256_json([step_json, ssr_digest])


def edit_prefix(image_sha: str, step_digest: str, s: Settings, seed: int) -> str:
    return f"edit/{image_sha}/{step_digest}/{editing_digest(s, seed)}"


def edit_mask_key(edit_prefix: str) -> str:
    return f"{edit_prefix}/mask.png"


def edit_trace_key(edit_prefix: str) -> str:
    """Backend, detail, verification attempts and verdicts of one executed step."""
    return f"{edit_prefix}/edit-trace.json"


# -- outputs -----------------------------------------------------------------------------------------
def output_prefix(image_sha: str, instruction: str, s: Settings, seed: int) -> str:
    d = sha256_json([perception_digest(s), reasoning_digest(s), editing_digest(s, seed)])
    return f"out/{image_sha}/{text_sha(instruction)}/{d}"


def output_key(output_prefix: str, name: str) -> str:
    """``name`` is one of OUTPUT_FILES (edited, mask, overlay, ssr, plan, trace)."""
    return f"{output_prefix}/{OUTPUT_FILES[name]}"


# -- runs and evaluations ----------------------------------------------------------------------------
def results_key(run_id: str) -> str:
    return f"runs/{run_id}/results.parquet"


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


def run_index_key(run_id: str) -> str:
    """The run's browsable page, beside its results.parquet."""
    return f"{run_prefix(run_id)}/index.html"


def run_id_of(key: str) -> str | None:
    """The run id of ``runs/<run id>`` or ``runs/<run id>/results.parquet`` (a key, or the tail of a
    URI); None for anything else."""
    parts = key.strip("/").split("/")
    if parts[-1] == "results.parquet":
        parts = parts[:-1]
    if len(parts) >= 2 and parts[-2] == "runs" and parts[-1] not in ("", ".", ".."):
        return parts[-1]
    return None


def store_root_of_run(uri: str) -> str | None:
    """The store URL holding the run ``uri`` (a results.parquet URI or its run folder, a path or an
    s3:// URL): what comes before ``/runs/<run id>``; None if ``uri`` is not a run's."""
    run_id = run_id_of(uri)
    if run_id is None:
        return None
    tail = f"/{run_prefix(run_id)}"
    base = uri.rstrip("/")
    base = base[: -len("/results.parquet")] if base.endswith("/results.parquet") else base
    if base == tail[1:]:
        return "."
    return base[: -len(tail)] if base.endswith(tail) else None


def results_part_key(run_id: str, part: str) -> str:
    """One part of a run's results, written as soon as its rows finished (``rejected``, ``chunk-00003``);
    results.parquet is assembled from them at the end."""
    return f"runs/{run_id}/parts/{part}.parquet"


def eval_manifest_key(manifest_sha: str) -> str:
    return f"eval/manifests/{manifest_sha}.parquet"


def eval_prefix(run_id: str) -> str:
    return f"eval/{run_id}"


def eval_key(eval_prefix: str, name: str) -> str:
    """``name`` is one of EVAL_FILES (metrics, report_md, report_html)."""
    return f"{eval_prefix}/{EVAL_FILES[name]}"


# -- Prefect cache keys ------------------------------------------------------------------------------
def short_key(key: str) -> str:
    """Cache keys are file names in the result storage: keep them well under file-name limits
    (255 bytes) as ``<first part>-<sha256 of the full key>``; keys of at most MAX_CACHE_KEY
    characters stay as they are."""
    if len(key) <= MAX_CACHE_KEY:
        return key
    return f"{key.split('-', 1)[0]}-{hashlib.sha256(key.encode()).hexdigest()}"


def cache_key(prefix: str) -> str:
    """The Prefect cache key of the task that writes the artifacts under ``prefix``."""
    return short_key(prefix.replace("/", "-"))


def uncacheable_key(stage: str) -> str:
    """A key no other run shares (the task runs, and its result is not re-used)."""
    import uuid

    return f"{stage}-uncacheable-{uuid.uuid4().hex}"


def load_cache_key(uri: str, identity: dict[str, str], s: Settings, decode_code_version: str) -> str:
    """Loading has no prefix before it runs (the content digest is its result): its key is the URI,
    what the filesystem says identifies its content (size, mtime / ETag) and the decoding limits."""
    return short_key("load-" + sha256_json([uri, identity, s.limits.max_image_pixels, s.limits.max_image_bytes,
                                            s.limits.min_image_side, s.limits.max_aspect_ratio,
                                            decode_code_version]))


def eval_cache_key(parts: list[Any], s: Settings) -> str:
    """One sample's metrics: its edited outputs and ground truth (``parts``) and the metrics config."""
    return short_key("eval-" + sha256_json([*parts, eval_digest(s)]))
