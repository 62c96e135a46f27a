"""`edit_dataset`: the nightly job over a Parquet manifest.

Rows are validated up front (bad rows reported and skipped); valid rows are processed in chunks,
each chunk a subflow, so task states do not pile up in one flow's memory. Every row, good or bad,
ends in ``runs/<run_id>/results.parquet`` (written atomically, never overwritten) with status,
error, output URIs, cache hits and per-stage timings. Artifacts: a progress bar during the run, a
results table and a markdown summary.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Iterator, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from cielr_core.config import ProfileName
from flows.pipeline import run_image
from tasks import keys, runtime
from tasks.gpu import gpu_slot
from tasks.manifest import load_manifest
from tasks.options import failure_of
from tasks.refs import ResultRow, results_table
from tasks.stages import Stages, in_worker


def _run_row(stages: Stages, r: dict[str, Any]) -> ResultRow:
    return run_image(stages, image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                     seed=r.get("seed"))


def _run_row_in_worker(r: dict[str, Any], settings: runtime.SettingsRef) -> ResultRow:
    """One row in a worker process: the stage tasks bound there (once per process and run)."""
    return _run_row(Stages.for_settings(runtime.settings(settings), settings), r)


def _failed_row(r: dict[str, Any], error: str, stage: str) -> ResultRow:
    return ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                     seed=r.get("seed"), status="failed", error=error, failed_stage=stage)


def _invalid_row(r: dict[str, Any]) -> ResultRow:
    seed = r.get("seed")
    return ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                     seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                     status="invalid", error=r["error"])


@flow(name="edit-dataset-chunk")
def process_chunk(rows: list[dict[str, Any]], settings: runtime.SettingsRef, distributed: bool = False) -> list[ResultRow]:
    s = runtime.settings(settings)
    if not distributed:
        stages = Stages.for_settings(s, settings)
        with gpu_slot(s):  # the chunk holds one GPU slot (per worker) for all its images: tasks.gpu
            return [_run_row(stages, r) for r in rows]
    gpu = s.orchestration.dask_gpu_per_image
    annotation = nullcontext()
    if gpu > 0:
        import dask

        annotation = dask.annotate(resources={"GPU": gpu})
    with annotation:
        futures = [in_worker.submit(_run_row_in_worker, r, settings) for r in rows]
    out = []
    for r, f in zip(rows, futures):
        f.wait()
        error = failure_of(f.state)
        # a worker that died or a task that crashed fails its row; the chunk goes on
        out.append(f.result() if error is None else _failed_row(r, f"{f.state.name}: {error}", "worker"))
    return out


@contextmanager
def dask_runner(settings, address: str | None) -> Iterator[Any]:
    """A DaskTaskRunner on the given scheduler, or on a LocalCluster started for this run.

    Workers get ``resources={"GPU": n}`` (orchestration.dask_gpus_per_worker) on a LocalCluster;
    with a remote scheduler, start workers with ``--resources GPU=1``. Each image task then asks
    for ``orchestration.dask_gpu_per_image`` GPU, so Dask never places more images on a worker than
    its GPUs allow."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:  # pragma: no cover - extra not installed
        raise RuntimeError("the dask runner needs prefect-dask: pip install 'cielr[dask]'") from e
    orch = settings.orchestration
    cluster = None
    if address is None:
        from distributed import LocalCluster

        kwargs: dict[str, Any] = dict(n_workers=orch.dask_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None)
        if orch.dask_gpu_per_image > 0:
            kwargs["resources"] = {"GPU": orch.dask_gpus_per_worker}
        cluster = LocalCluster(**kwargs)
        address = cluster.scheduler_address
    try:
        yield DaskTaskRunner(address=address)
    finally:
        if cluster is not None:
            cluster.close()


def summary_markdown(run_id: str, uri: str, rows: list[ResultRow]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    hits = sum(r.cache_hits or 0 for r in rows)
    calls = sum(r.task_runs or 0 for r in rows)
    lines = [f"# edit_dataset run {run_id}", "", f"results: `{uri}`", "", "| status | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
    lines += ["", f"cache hits: {hits} of {calls} task runs ({(hits / calls * 100) if calls else 0:.1f}%)"]
    failures = [r for r in rows if r.status in ("failed", "invalid")]
    if failures:
        lines += ["", "## Failures", "", "| image_id | error |", "|---|---|"]
        for r in failures[:200]:
            err = str(r.error or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r.image_id} | {err} |")
        if len(failures) > 200:
            lines.append(f"| ... | {len(failures) - 200} more in results.parquet |")
    return "\n".join(lines)


@flow(name="edit-dataset")
def edit_dataset(
    manifest_uri: str,
    store: str | None = None,
    profile: ProfileName | None = None,
    config: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    limit: int | None = None,
    runner: Literal["default", "dask"] = "default",
    dask_address: str | None = None,
) -> str:
    """Edit every row of a manifest; returns the URI of results.parquet.

    ``runner="dask"`` runs the images of each chunk as tasks on prefect-dask's DaskTaskRunner (a
    LocalCluster, or the scheduler at ``dask_address``); results are the same rows as the default
    (sequential, in-process) runner.

    Args:
        manifest_uri: The manifest to edit: a Parquet file (path or s3:// URL) with columns
            image_id, image_uri, instruction (optional seed, mask_uri, reference_text).
        store: Artifact store URL for the cache and the outputs (a path, file:// or
            s3://bucket/prefix). Empty: the configured store.url.
        profile: Config profile: default (real model ids), tiny (toy random-weight models, offline)
            or paper (the paper's protocol). Empty: CIELR_PROFILE, else default.
        config: Settings to apply over the profile, as the YAML config file would (nested
            sections, e.g. {"orchestration": {"chunk_size": 20}}); CIELR_* variables still win.
        chunk_size: Rows per edit-dataset-chunk subflow. Empty: orchestration.chunk_size (50).
        limit: Edit only the first N rows of the manifest. Empty: every row.
        runner: default (images in flight in this process) or dask (each chunk's images as tasks
            on prefect-dask's DaskTaskRunner); both give the same rows.
        dask_address: With runner dask, the scheduler to use (tcp://host:8786). Empty: a
            LocalCluster of orchestration.dask_workers processes.
    """
    logger = get_run_logger()
    settings = runtime.resolve(profile, config, store)
    ref = runtime.settings_ref(settings)
    st = runtime.store(settings)
    st.check()
    manifest = load_manifest(manifest_uri, settings, limit=limit)
    run_id = str(flow_run.id or uuid.uuid4())
    chunk = max(1, chunk_size or settings.orchestration.chunk_size)
    total = len(manifest.rows) + len(manifest.rejected)
    logger.info("manifest %s: %d valid rows, %d rejected; chunks of %d", manifest_uri, len(manifest.rows),
                len(manifest.rejected), chunk)
    for r in manifest.rejected:
        logger.warning("skipping %s", r["error"])
    results: list[ResultRow] = [_invalid_row(r) for r in manifest.rejected]
    progress = create_progress_artifact(progress=0.0, key="edit-dataset-progress",
                                        description=f"edit_dataset over {manifest_uri}")
    with ExitStack() as stack:
        chunk_flow = process_chunk
        if runner == "dask":
            chunk_flow = process_chunk.with_options(task_runner=stack.enter_context(dask_runner(settings, dask_address)))
        for start in range(0, len(manifest.rows), chunk):
            part = manifest.rows[start:start + chunk]
            results.extend(chunk_flow.with_options(name=f"edit-dataset-chunk-{start // chunk}")(
                part, ref, distributed=runner == "dask"))
            update_progress_artifact(progress, progress=100.0 * len(results) / max(1, total))
            logger.info("%d/%d rows done", len(results), total)
    update_progress_artifact(progress, progress=100.0)
    key = keys.results_key(run_id)
    st.put_table(key, results_table(results), overwrite=False)
    uri = st.uri_for(key)
    table_rows = [r.model_dump(include={"image_id", "status", "error", "edited_uri", "cache_hits", "seconds"})
                  for r in results[:500]]
    create_table_artifact(table=table_rows, key="edit-dataset-results",
                          description=f"first {len(table_rows)} of {len(results)} rows; all in {uri}")
    create_markdown_artifact(markdown=summary_markdown(run_id, uri, results), key="edit-dataset-summary",
                             description="edit_dataset summary")
    logger.info("results: %s", uri)
    return uri
