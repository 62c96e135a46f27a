"""What tasks hand each other: small typed references to artifacts in the store, never the data.

Each is a frozen pydantic model, so Prefect persists it as JSON (cached results survive a restart
and are read back as the same model) and a reader sees which fields a stage returns. The result
row of one image is a model too: ``results.parquet``'s schema is derived from it.
"""

from __future__ import annotations

import types
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from cielr_core.plan import EditStep


class Ref(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageRef(Ref):
    """A decoded RGB image in the store, under the digest of its pixels."""

    sha: str
    key: str
    width: int
    height: int


class SegmentRef(Ref):
    """SAM2's masks of one image."""

    key: str
    n_masks: int


class DetectionsRef(Ref):
    """OWLv2's detections on one image."""

    key: str
    n_detections: int


class DepthRef(Ref):
    """DepthAnything's depth map of one image."""

    key: str


class SSRRef(Ref):
    """One SSR version: its folder (ssr.json, masks/, overlay.png for v0) and its digest."""

    prefix: str
    digest: str
    n_objects: int


class Decomposition(Ref):
    """The instruction's sub-tasks, the objects it names (``query_objects``: they join the
    detector's query set before each sub-task's first assessment) and the decomposition's trace."""

    subtasks: list[str]
    trace_key: str
    query_objects: list[str] = []


class StepRef(Ref):
    """The plan step of one sub-task, the SSR version its object ids refer to, and its trace."""

    step: EditStep
    ssr: SSRRef
    trace_key: str


class EditRef(Ref):
    """One executed step: the image it produced, the region allowed to differ, how it ran, whether
    a judge accepted it (None: not checked), its edit trace, and the step as re-planned (if it was)."""

    image: ImageRef
    mask_key: str
    skipped: bool
    backend: str | None = None
    verified: bool | None = None
    trace_key: str | None = None
    replanned_step: EditStep | None = None


class Outputs(Ref):
    """An image's outputs, written under one content-addressed prefix."""

    prefix: str
    status: Literal["ok", "no_target"]
    n_steps: int
    n_edited_steps: int
    verified: bool | None = None
    edited_uri: str
    mask_uri: str
    overlay_uri: str
    ssr_uri: str
    plan_uri: str
    trace_uri: str


class StageCount(Ref):
    """Task runs of one stage for one image, and how many of them were cache hits."""

    hits: int
    calls: int


# Stages of the per-image DAG, in order (results.parquet has a timing column t_<stage> for each).
STAGES = ("load", "segment", "detect", "depth", "merge", "decompose", "reason", "inpaint", "finalize")


class ResultRow(BaseModel):
    """One row of results.parquet: every manifest row ends in one, good or bad."""

    model_config = ConfigDict(extra="forbid")

    image_id: str
    image_uri: str
    instruction: str
    # cancelled: the run was stopped (SIGTERM, a Prefect cancellation) before this row finished;
    # a re-run completes it (results written before this status existed read the same)
    status: Literal["ok", "no_target", "failed", "invalid", "cancelled"]
    error: str | None = None
    failed_stage: str | None = None
    seed: int | None = None
    image_sha256: str | None = None
    edited_uri: str | None = None
    mask_uri: str | None = None
    overlay_uri: str | None = None
    ssr_uri: str | None = None
    plan_uri: str | None = None
    trace_uri: str | None = None
    n_steps: int | None = None
    n_edited_steps: int | None = None
    verified: bool | None = None
    cache_hits: int | None = None
    task_runs: int | None = None
    cached_stages: dict[str, StageCount] | None = None
    seconds: float | None = None
    t_load: float | None = None
    t_segment: float | None = None
    t_detect: float | None = None
    t_depth: float | None = None
    t_merge: float | None = None
    t_decompose: float | None = None
    t_reason: float | None = None
    t_inpaint: float | None = None
    t_finalize: float | None = None


_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
STAGE_COUNT_TYPE = pa.map_(pa.string(), pa.struct([("hits", pa.int64()), ("calls", pa.int64())]))


def _arrow_type(annotation) -> pa.DataType:
    import typing

    base = annotation
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # X | None
        base = next(a for a in typing.get_args(base) if a is not type(None))
    if typing.get_origin(base) is dict:
        return STAGE_COUNT_TYPE
    if typing.get_origin(base) is Literal:
        return pa.string()
    return _ARROW[base]


def result_schema() -> pa.Schema:
    """results.parquet's schema, field for field from :class:`ResultRow` (cached_stages: a map of
    stage -> struct<hits, calls>)."""
    return pa.schema([(name, _arrow_type(f.annotation)) for name, f in ResultRow.model_fields.items()])


def results_table(rows: list[ResultRow]) -> pa.Table:
    data = []
    for r in rows:
        d = r.model_dump(mode="json")
        if d["cached_stages"] is not None:
            d["cached_stages"] = [(k, v) for k, v in d["cached_stages"].items()]
        data.append(d)
    return pa.Table.from_pylist(data, schema=result_schema())


assert all(f"t_{s}" in ResultRow.model_fields for s in STAGES)
