"""`edit_dataset`: the nightly job over a Parquet manifest.

Rows are validated up front (bad rows reported and skipped) and every model the settings need is
checked once (a missing one stops the run before the first row); valid rows are processed in
chunks, each chunk a subflow, so task states do not pile up in one flow's memory. Each chunk's rows
are written as soon as the chunk ends (``runs/<run_id>/parts/``), so a crash loses no finished row;
at the end every row, good or bad, is in ``runs/<run_id>/results.parquet`` (assembled from the
parts, written atomically, never overwritten) with status, error, output URIs, cache hits and
per-stage timings. Artifacts: a progress bar updated per row, a results table and a markdown summary.

The run ends ``Failed`` (results still written; the state's data is their URI) when the share of
failed / invalid / cancelled rows exceeds ``orchestration.max_failed_fraction``, ``Cancelled`` when it
was stopped (SIGTERM or a Prefect cancellation: rows not finished end ``cancelled``), else
``Completed``. :func:`results_uri` reads the URI from any of these states.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
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
from prefect.states import Cancelled, Failed

from cielr_core.config import ProfileName
from flows import inflight
from flows.pipeline import run_image
from tasks import keys, progress, run_outputs, runtime
from tasks.gpu import gpu_slot
from tasks.manifest import load_manifest
from tasks.options import failure_of
from tasks.refs import ResultRow, results_table
from tasks.stages import Stages, in_worker


def _run_row(stages: Stages, r: dict[str, Any], emit: bool = True) -> ResultRow:
    """One row through the DAG; its end is announced (tasks.progress.row_finished) at once, whatever
    runs the chunk's rows. A row started after a stop request ends ``cancelled`` without work."""
    row = run_image(stages, image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                    seed=r.get("seed"))
    if emit:
        progress.row_finished(row)
    return row


def _run_row_in_worker(r: dict[str, Any], settings: runtime.SettingsRef) -> ResultRow:
    """One row in a worker process: the stage tasks bound there (once per process and run). The flow's
    process announces its end when the result comes back."""
    return _run_row(Stages.for_settings(runtime.settings(settings), settings), r, emit=False)


def _failed_row(r: dict[str, Any], error: str, stage: str) -> ResultRow:
    row = ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                    seed=r.get("seed"), status="failed", error=error, failed_stage=stage)
    progress.row_finished(row)
    return row


def _cancelled_row(r: dict[str, Any], reason: str) -> ResultRow:
    return ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                     seed=r.get("seed"), status="cancelled", error=f"run stopped ({reason}) before this row started")


def _invalid_row(r: dict[str, Any]) -> ResultRow:
    seed = r.get("seed")
    return ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"],
                     seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                     status="invalid", error=r["error"])


@flow(name="edit-dataset-chunk")
def process_chunk(rows: list[dict[str, Any]], settings: runtime.SettingsRef, distributed: bool = False) -> list[ResultRow]:
    progress.sigterm_requests_stop()  # Prefect's engine puts its own handler back when the chunk ends
    s = runtime.settings(settings)
    if not distributed:
        stages = Stages.for_settings(s, settings)
        # up to orchestration.max_in_flight images at once, each its own chain of stage tasks; the
        # chunk holds one GPU slot (per worker) for all of them: tasks.gpu
        with gpu_slot(s):
            return inflight.run_in_flight(lambda r: _run_row(stages, r), rows, inflight.window(s),
                                          on_error=lambda r, e: _failed_row(
                                              r, f"pipeline: {type(e).__name__}: {e}", "pipeline"))
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
        if error is None:
            out.append(f.result())
            progress.row_finished(out[-1])
        else:
            out.append(_failed_row(r, f"{f.state.name}: {error}", "worker"))
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


#: row statuses that make a run's exit code 1 and count towards orchestration.max_failed_fraction
BAD_STATUSES = ("failed", "invalid", "cancelled")


def failed_fraction_message(rows: list[ResultRow], max_fraction: float) -> str | None:
    """Why the run ends Failed (the bad rows counted by status), or None when their share is within
    ``max_fraction``."""
    counts = {k: sum(r.status == k for r in rows) for k in BAD_STATUSES}
    bad = sum(counts.values())
    if not rows or bad / len(rows) <= max_fraction:
        return None
    parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return (f"{parts} of {len(rows)} rows ({bad / len(rows):.0%}; orchestration.max_failed_fraction is "
            f"{max_fraction:g})")


def results_uri(state: Any) -> str:
    """The results.parquet URI of a finished edit-dataset run, whether it ended Completed, Failed (too
    many bad rows) or Cancelled; when it ended without results, the run's own exception is raised."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, str):
        state.result()  # raises what Prefect says about a run without a result
        raise RuntimeError(f"edit-dataset ended {state.name} without results: {state.message}")
    return value


def _dataset_run_name() -> str:
    """Flow runs are named after the manifest and the date: ``manifest.parquet 2026-11-25 13:45``."""
    uri = str((flow_run.parameters or {}).get("manifest_uri") or "manifest")
    name = os.path.basename(uri.rstrip("/")) or uri
    return f"{name} {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


class _RunProgress:
    """The flow's own listener: the progress artifact, updated per finished row."""

    def __init__(self, artifact_id: Any, total: int, logger: Any):
        self.artifact_id, self.total, self.logger = artifact_id, max(1, total), logger
        self.done = 0
        self.lock = threading.Lock()

    def row_finished(self, row: ResultRow) -> None:
        with self.lock:
            self.done += 1
            done = self.done
            update_progress_artifact(self.artifact_id, progress=100.0 * min(done, self.total) / self.total)
        self.logger.info("%s: %s (%d/%d rows done)", row.image_id, row.status, done, self.total)


@contextmanager
def _stop_on_prefect_cancel(every_s: float = 2.0) -> Iterator[None]:
    """Poll this flow run's state; a cancellation (Cancelling) requests a stop like SIGTERM does."""
    run_id = flow_run.id
    done = threading.Event()

    def watch() -> None:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                while not done.wait(every_s):
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.type.value in ("CANCELLING", "CANCELLED"):
                        progress.request_stop("cancelled in Prefect")
                        return
        except Exception:  # noqa: BLE001 - the run goes on without the watch
            logging.getLogger(__name__).debug("cancellation watch stopped", exc_info=True)

    thread = threading.Thread(target=watch, name="cielr-cancel-watch", daemon=True)
    if run_id:
        thread.start()
    try:
        yield
    finally:
        done.set()


def summary_markdown(run_id: str, uri: str, rows: list[ResultRow]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    hits = sum(r.cache_hits or 0 for r in rows)
    calls = sum(r.task_runs or 0 for r in rows)
    lines = [f"# edit_dataset run {run_id}", "", f"results: `{uri}`", "", "| status | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
    lines += ["", f"cache hits: {hits} of {calls} task runs ({(hits / calls * 100) if calls else 0:.1f}%)"]
    failures = [r for r in rows if r.status in BAD_STATUSES]
    if failures:
        lines += ["", "## Failures", "", "| image_id | error |", "|---|---|"]
        for r in failures[:200]:
            err = str(r.error or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {r.image_id} | {err} |")
        if len(failures) > 200:
            lines.append(f"| ... | {len(failures) - 200} more in results.parquet |")
    return "\n".join(lines)


@flow(name="edit-dataset", flow_run_name=_dataset_run_name)
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
    """Edit every row of a manifest; returns the URI of results.parquet (the run ends Failed, with
    that URI as its data, when failed / invalid / cancelled rows exceed
    orchestration.max_failed_fraction; read it with :func:`results_uri` from ``return_state=True``).

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
    if manifest.rows:
        from cielr_core.preflight import check_models

        check_models(settings)  # a missing model stops the run here, once, before any row
    run_id = str(flow_run.id or uuid.uuid4())
    chunk = max(1, chunk_size or settings.orchestration.chunk_size)
    total = len(manifest.rows) + len(manifest.rejected)
    logger.info("manifest %s: %d valid rows, %d rejected; chunks of %d", manifest_uri, len(manifest.rows),
                len(manifest.rejected), chunk)
    for r in manifest.rejected:
        logger.warning("skipping %s", r["error"])
    artifact = create_progress_artifact(progress=0.0, key="edit-dataset-progress",
                                        description=f"edit_dataset over {manifest_uri}")
    results: list[ResultRow] = [_invalid_row(r) for r in manifest.rejected]
    parts: list[str] = []

    def write_part(name: str, rows: list[ResultRow]) -> None:
        key = keys.results_part_key(run_id, name)
        st.put_table(key, results_table(rows), overwrite=False)
        parts.append(key)

    with ExitStack() as stack:
        stack.enter_context(progress.listening(_RunProgress(artifact, total, logger)))
        stack.callback(progress.clear_stop)
        stack.enter_context(progress.stop_on_sigterm())
        stack.enter_context(_stop_on_prefect_cancel())
        progress.run_started(total, len(manifest.rejected), flow_run.name or _dataset_run_name())
        for row in results:
            progress.row_finished(row)
        if results:
            write_part("rejected", results)
        chunk_flow = process_chunk
        if runner == "dask" and manifest.rows:
            chunk_flow = process_chunk.with_options(task_runner=stack.enter_context(dask_runner(settings, dask_address)))
        for i, start in enumerate(range(0, len(manifest.rows), chunk)):
            part = manifest.rows[start:start + chunk]
            stopped = progress.stop_requested()
            if stopped:
                done = [_cancelled_row(r, stopped) for r in part]
                for row in done:
                    progress.row_finished(row)
            else:
                name = f"chunk {i}: rows {start}-{start + len(part) - 1}"
                done = chunk_flow.with_options(flow_run_name=name)(part, ref, distributed=runner == "dask")
            results.extend(done)
            write_part(f"chunk-{i:05d}", done)
            logger.info("%d/%d rows done", len(results), total)
        stopped = progress.stop_requested()
    update_progress_artifact(artifact, progress=100.0)
    key = keys.results_key(run_id)
    import pyarrow as pa

    assembled = pa.concat_tables([st.get_table(k) for k in parts]) if parts else results_table([])
    st.put_table(key, assembled, overwrite=False)
    uri = st.uri_for(key)
    index_uri = run_outputs.write_run_index(st, run_id, results, logger)
    table_rows = [{**r.model_dump(include={"image_id", "status", "error", "cache_hits", "seconds"}),
                   **run_outputs.markdown_links(r)} for r in results[:500]]
    create_table_artifact(table=table_rows, key="edit-dataset-results",
                          description=f"first {len(table_rows)} of {len(results)} rows; all in {uri}"
                                      + (f"; browse them in {index_uri}" if index_uri else ""))
    create_markdown_artifact(markdown=summary_markdown(run_id, uri, results), key="edit-dataset-summary",
                             description="edit_dataset summary")
    logger.info("results: %s", uri)
    if stopped:
        return Cancelled(message=f"stopped ({stopped}); finished rows and the cancelled rest in {uri}", data=uri)
    failed = failed_fraction_message(results, settings.orchestration.max_failed_fraction)
    if failed:
        logger.error("run failed: %s; results in %s", failed, uri)
        return Failed(message=f"{failed}; results in {uri}", data=uri)
    return uri
