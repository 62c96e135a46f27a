"""`evaluate`: a benchmark through edit_dataset, then the paper's metrics and a report.

    benchmark (e.g. ciebench:/data/ciebench) -> manifest in the store -> edit_dataset (cached stages
    are re-used) -> one evaluate-sample task per edited sample -> metrics.parquet -> report.md,
    report.html and Prefect artifacts, all in one report folder ``eval/<run_id>/``.

A sample whose edit failed (or whose row was invalid) is a failed sample: it is in
metrics.parquet with its error and counts as a failure in the aggregates; it is never dropped.
One sample per input (no best-of-k).
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from cielr_core.canonical import sha256_bytes
from cielr_core.config import ProfileName
from flows.edit_dataset import BAD_STATUSES, edit_dataset, failed_fraction_message, results_uri as dataset_results_uri
from flows.inflight import run_in_flight, window
from tasks import keys, runtime
from tasks.evaluation import edit_checks, evaluate_cache_key, evaluate_sample, from_jsonable
from tasks.gpu import gpu_slot
from tasks.options import bind, outcome

THUMB = 160


def _manifest_in_store(st, rows: list[dict[str, Any]]) -> str:
    """The benchmark's manifest, content-addressed in the store (so re-runs share one)."""
    import os
    import tempfile

    from cielr_core.manifest import write_manifest

    with tempfile.TemporaryDirectory() as d:
        path = write_manifest(rows, os.path.join(d, "manifest.parquet"))
        with open(path, "rb") as f:
            data = f.read()
    key = keys.eval_manifest_key(sha256_bytes(data))  # every column counts (seed, mask, reference text)
    if not st.exists(key):
        st.put_bytes(key, data)
    return st.uri_for(key)


def _sample_view(st, res: dict[str, Any], sample: dict[str, Any]) -> tuple[dict[str, str | None], list, dict]:
    """What the report shows of one edited sample: thumbnails (before, after, the predicted mask, the
    GT mask target_iou compares it with, the SSR overlay), the plan's steps with their reasons, and
    links to the full files."""
    from cielr_core import report
    from cielr_core.benchmarks import load_gt_mask
    from cielr_core.run_index import plan_steps
    from tasks.run_outputs import file_url

    before = st.get_png(keys.image_key(res["image_sha256"]))
    h, w = before.shape[:2]
    images = {"before": report.thumbnail_data_uri(before, THUMB),
              "after": report.thumbnail_data_uri(st.get_bytes(st.key_for(res["edited_uri"])), THUMB),
              "mask": report.thumbnail_data_uri(st.get_mask(st.key_for(res["mask_uri"])), THUMB, mask=True)}
    links = {"mask": file_url(res["mask_uri"])}
    if sample.get("mask_uri"):
        images["gt_mask"] = report.thumbnail_data_uri(load_gt_mask(sample["mask_uri"], size=(w, h)), THUMB, mask=True)
        links["GT mask"] = file_url(sample["mask_uri"])
    if res.get("overlay_uri"):
        images["overlay"] = report.thumbnail_data_uri(st.get_bytes(st.key_for(res["overlay_uri"])), THUMB)
        links["SSR overlay"] = file_url(res["overlay_uri"])
    steps = plan_steps(st.get_bytes(st.key_for(res["plan_uri"]))) if res.get("plan_uri") else []
    return images, steps, links


@flow(name="evaluate")
def evaluate(
    benchmark: str,
    store: str | None = None,
    profile: ProfileName | None = None,
    config: dict[str, Any] | None = None,
    limit: int | None = None,
    results_uri: str | None = None,
    protocol: Literal["masked", "smartedit"] | None = None,
) -> str:
    """Evaluate ``benchmark`` ("ciebench:PATH", "smartedit:PATH" or "magicbrush:PATH"). Re-uses
    ``results_uri`` (a results.parquet of an earlier edit_dataset run) if given, else runs
    edit_dataset (whose finished stages come from the cache). Returns the report folder's URI.

    Args:
        benchmark: The benchmark and its folder: ciebench:PATH, smartedit:PATH or magicbrush:PATH.
        store: Artifact store URL for the cache, the outputs and the report (a path, file:// or
            s3://bucket/prefix). Empty: the configured store.url.
        profile: Config profile: default (real model ids), tiny (toy random-weight models, offline)
            or paper (the paper's protocol). Empty: CIELR_PROFILE, else default.
        config: Settings to apply over the profile, as the YAML config file would (nested
            sections, e.g. {"eval": {"lpips_net": "vgg"}}); CIELR_* variables still win.
        limit: Evaluate only the first N samples. Empty: every sample.
        results_uri: The results.parquet of an earlier edit_dataset run to score instead of
            editing again. Empty: run edit_dataset (finished stages come from the cache).
        protocol: masked (metrics outside the edited region at native resolution) or smartedit
            (the published resize-and-zero protocol). Empty: eval.protocol from the config.
    """
    from cielr_core.benchmarks import load_benchmark

    logger = get_run_logger()
    bench = load_benchmark(benchmark)
    rows = list(bench)[: limit if limit is not None else None]
    cfg = dict(config or {})
    if protocol:
        cfg["eval"] = {**cfg.get("eval", {}), "protocol": protocol}
    settings = runtime.resolve(profile, cfg, store)
    roots = list(settings.limits.allowed_input_roots)
    if bench.root and bench.root not in roots:
        cfg["limits"] = {**cfg.get("limits", {}), "allowed_input_roots": roots + [bench.root]}
        settings = runtime.resolve(profile, cfg, store)
    st = runtime.store(settings)
    st.check()
    logger.info("%s", bench.summary())
    if results_uri is None:
        manifest_uri = _manifest_in_store(st, rows)
        # a Failed edit_dataset (too many failed rows) still wrote its results: they are scored as failures
        results_uri = dataset_results_uri(edit_dataset(manifest_uri=manifest_uri, store=store, profile=profile,
                                                       config=cfg, return_state=True))
    results = {r["image_id"]: r for r in st.get_table(st.key_for(results_uri)).to_pylist()}

    sd = runtime.settings_ref(settings)
    task = bind(evaluate_sample, settings, cache_key=evaluate_cache_key)
    thumbs: dict[str, dict[str, str | None]] = {}
    plans: dict[str, list[dict[str, Any]]] = {}
    links: dict[str, dict[str, str]] = {}
    def score(sample: dict[str, Any]) -> dict[str, Any]:
        """The metrics row of one sample (its evaluate-sample task run), or its failure."""
        res = results.get(sample["image_id"])
        base = {"image_id": sample["image_id"], "instruction": sample["instruction"],
                "reference_text": sample.get("reference_text"),
                "edit_status": res["status"] if res else "missing",
                "edited_uri": res.get("edited_uri") if res else None,
                **edit_checks(st, res)}
        if res is None or res["status"] in BAD_STATUSES:
            return {**base, "status": "failed", "error": (res or {}).get("error") or "no result row for this sample"}
        state = task(sample=sample, result=res, settings=sd, return_state=True)
        try:
            metrics = outcome(state)
        except Exception as e:  # noqa: BLE001 - a failed sample is a row, not the end of the run
            return {**base, "status": "failed", "error": f"evaluate: {type(e).__name__}: {e}"}
        return {**base, "status": "ok", "error": None, **from_jsonable(metrics)}

    def scoring_failed(sample: dict[str, Any], e: BaseException) -> dict[str, Any]:
        return {"image_id": sample["image_id"], "instruction": sample["instruction"],
                "reference_text": sample.get("reference_text"), "edit_status": "missing", "edited_uri": None,
                "status": "failed", "error": f"evaluate: {type(e).__name__}: {e}"}

    # up to orchestration.max_in_flight samples scored at once (their CLIP / DINO features batched
    # when eval.batching is on: cielr_core.metrics.learned), rows in benchmark order; one GPU slot
    # (per worker) for all samples: tasks.gpu
    with gpu_slot(settings):
        metric_rows = run_in_flight(score, rows, window(settings), on_error=scoring_failed)
    for sample, row in zip(rows, metric_rows):
        if row["status"] != "ok":
            continue
        try:
            iid = sample["image_id"]
            thumbs[iid], plans[iid], links[iid] = _sample_view(st, results[iid], sample)
        except Exception as e:  # noqa: BLE001 - thumbnails are a convenience
            logger.warning("no thumbnails for %s: %s", sample["image_id"], e)

    run_id = str(flow_run.id or uuid.uuid4())
    prefix = keys.eval_prefix(run_id)
    from cielr_core.metrics import metrics_table

    st.put_table(keys.eval_key(prefix, "metrics"), metrics_table(metric_rows), overwrite=False)
    from cielr_core import report

    meta = {"benchmark": benchmark, "samples": len(rows), "results_uri": results_uri,
            "protocol": settings.eval.protocol, "profile": settings.profile, "run_id": run_id,
            "rejected": [f"{r['source']}: {r['error']}" for r in bench.rejected]}
    title = f"CIELR evaluation: {benchmark}"
    md = report.render_markdown(metric_rows, meta=meta, title=title, plans=plans, links=links)
    html = report.render_html(metric_rows, meta=meta, thumbnails=thumbs, title=title, plans=plans)
    st.put_bytes(keys.eval_key(prefix, "report_md"), md.encode(), overwrite=False)
    st.put_bytes(keys.eval_key(prefix, "report_html"), html.encode(), overwrite=False)
    create_markdown_artifact(markdown=md, key="evaluate-report", description=f"evaluation of {benchmark}")
    table = [{k: r.get(k) for k in ("image_id", "status", "psnr", "ssim", "lpips", "clip", "target_iou", "idcs",
                                    "verified", "error")}
             for r in metric_rows[:500]]
    create_table_artifact(table=[{k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in t.items()}
                                 for t in table], key="evaluate-metrics", description="per-sample metrics")
    uri = st.uri_for(prefix)
    logger.info("report: %s", uri)
    from tasks.refs import ResultRow

    edited = [ResultRow(image_id=r["image_id"], image_uri="", instruction="",
                        status=results[r["image_id"]]["status"] if r["image_id"] in results else "failed")
              for r in rows]
    failed = failed_fraction_message(edited, settings.orchestration.max_failed_fraction)
    if failed:
        logger.error("edits failed: %s; report in %s", failed, uri)
        return Failed(message=f"edits: {failed}; report in {uri}", data=uri)
    return uri
