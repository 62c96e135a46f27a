"""Evaluation task: every metric of one edited sample against its ground truth."""

from __future__ import annotations

import math
import threading
from typing import Any

from prefect import task

from cielr_core.canonical import sha256_json
from tasks import keys, runtime

_judges_lock = threading.Lock()
_judges: dict[str, tuple[Any, Any, str | None]] = {}


def idcs_judges(s) -> tuple[Any, Any, str | None]:
    """(vlm, llm, reason-if-missing) for IDCS, made once per process."""
    from cielr_core.metrics import make_idcs_judges
    from cielr_core.models import ModelUnavailableError

    key = sha256_json([s.eval.vlm.digest(), s.llm.digest(), s.models_dir, s.eval.vlm.base_url, s.llm.base_url])
    with _judges_lock:
        if key not in _judges:
            try:
                vlm, llm = make_idcs_judges(s)
                _judges[key] = (vlm, llm, None)
            except ModelUnavailableError as e:
                _judges[key] = (None, None, f"model unavailable: {e}")
        return _judges[key]


@task(name="evaluate-sample")
def evaluate_sample(sample: dict[str, Any], result: dict[str, Any], settings: runtime.SettingsRef) -> dict[str, Any]:
    """Metrics of one sample (``sample``: benchmark row with mask_uri / reference_text; ``result``:
    its results.parquet row). Returns a JSON-able metric row (``inf`` as the string "inf")."""
    from cielr_core.benchmarks import load_gt_mask
    from cielr_core.metrics import evaluate_sample as metrics_of
    from cielr_core.metrics import row_to_jsonable

    s = runtime.settings(settings)
    st = runtime.store(s)
    before = st.get_png(keys.image_key(result["image_sha256"]))
    after = st.get_png(st.key_for(result["edited_uri"]))
    edited_mask = st.get_mask(st.key_for(result["mask_uri"]))
    gt = load_gt_mask(sample["mask_uri"]) if sample.get("mask_uri") else None
    vlm, llm, why = idcs_judges(s)
    row = metrics_of(before, after, gt, edited_mask, sample["instruction"], sample.get("reference_text"),
                     settings=s, vlm=vlm, llm=llm, idcs_missing_reason=why)
    return row_to_jsonable(row)


def edit_checks(st, result: dict[str, Any] | None) -> dict[str, Any]:
    """The edit judge's outcome of one results.parquet row, for its metrics row: ``verified`` (the
    row's own column: True all checked steps accepted, False one stayed rejected after its retries,
    None not checked) and the per-step counts of its trace.json (``steps_verified``,
    ``steps_rejected``, ``steps_unchecked``, ``steps_replanned``, ``judge_calls``; ``None`` when
    there is no edit or its trace cannot be read)."""
    from cielr_core.report import STEP_CHECK_COLUMNS, step_check_counts

    out: dict[str, Any] = {"verified": (result or {}).get("verified"), **dict.fromkeys(STEP_CHECK_COLUMNS)}
    if not result or result.get("status") not in ("ok", "no_target") or not result.get("trace_uri"):
        return out
    try:
        trace = st.get_json(st.key_for(result["trace_uri"]))
    except Exception:  # noqa: BLE001 - the counts are a summary; the sample's metrics do not depend on them
        return out
    out.update(step_check_counts(trace.get("edits")))
    return out


def evaluate_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    sample, result = p["sample"], p["result"]
    return keys.eval_cache_key([
        result["edited_uri"], result["mask_uri"], result["image_sha256"], sample.get("mask_uri"),
        sample.get("reference_text"), sample["instruction"],
    ], s)


def from_jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Undo ``row_to_jsonable`` for the float metrics ("inf" -> inf)."""
    out = dict(row)
    for k, v in row.items():
        if v in ("inf", "-inf"):
            out[k] = math.inf if v == "inf" else -math.inf
    return out
