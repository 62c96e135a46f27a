"""Evaluation reports: an aggregate table, per-sample rows and metric histograms, as markdown and
as one standalone HTML page (thumbnails as base64 data URIs, histograms as inline SVG).

Pure functions: they take the per-sample metric rows (a list of dicts or a ``pyarrow.Table``, e.g.
``metrics.parquet``) and, for thumbnails, the image bytes / arrays the caller passes in. No store,
no Prefect.

A row is one sample: ``image_id``, ``status`` (``"ok"`` = evaluated; anything else, e.g.
``failed``, ``invalid``, ``no_target``, is a failed sample; a row without ``status`` counts as
ok), optional ``error`` and ``instruction``, and the metric columns (float, ``inf`` or ``None``).
``status`` is the sample's EVALUATION status: ``ok`` when its metrics were computed. An edit that
ended ``no_target`` but was still scored (nothing edited: ``target_iou`` 0) is ``ok`` here; keep
the edit's own status in another column (e.g. ``edit_status``).
Honest aggregates:

* a failed sample is never dropped: every aggregate row says ``n/N`` (values over all samples)
  and how many samples failed; for the bounded metrics in :data:`WORST` a second mean counts
  every failed sample at the worst value (``target_iou`` 0, ``idcs`` 1);
* a metric that is ``None`` in an ok row is *missing* (model unavailable / undefined), counted
  apart, never as zero;
* infinite values (PSNR of a pixel-identical region) are counted in ``n_inf`` and left out of the
  mean / median / std of the finite values (an ``inf`` mean would hide every other sample);
* best-of-k is off; with ``best_of=k`` rows sharing an ``image_id`` are reduced to the best value
  per metric and every output says so (``best of k per metric, selected after scoring``).

Checked edits: rows that carry ``verified`` (the edit judge's outcome of the sample, as in
results.parquet: True / False / ``None``) and the per-step counts of :data:`STEP_CHECK_COLUMNS`
(from trace.json's ``edits``, :func:`step_check_counts`) get an "Edit checks" summary (samples and
steps: verified, rejected after retries, not checked; samples with no edit -- failed, invalid,
missing or ``no_target`` in ``edit_status`` -- counted apart) and per-sample columns. Rows without
``verified`` render as before.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# metric -> higher is better (kept here too so the report needs no model imports)
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip": True, "target_iou": True, "idcs": True,
                    "l1": False, "l2": False, "clip_i": True, "dino": True}
METRIC_ORDER = ("psnr", "ssim", "lpips", "clip", "target_iou", "idcs", "l1", "l2", "clip_i", "dino")
WORST = {"target_iou": 0.0, "idcs": 1.0}
OK_STATUSES = ("ok",)


# the edit judge's per-step counts of one sample (metrics.parquet columns, int; None: no edit / no trace)
STEP_CHECK_COLUMNS = ("steps_verified", "steps_rejected", "steps_unchecked", "steps_replanned", "judge_calls")
CHECK_LABELS = {"verified": "verified", "rejected": "rejected after retries", "not_checked": "not checked",
                "no_edit": "no edit"}
NO_EDIT_STATUSES = ("failed", "invalid", "missing", "no_target")


def step_check_counts(edits: Any) -> dict[str, int]:
    """Per-sample counts from a trace.json's ``edits`` (one edit trace per plan step as
    ``cielr_core.editing.verify`` records it -- ``verified``, ``replanned``, ``attempts`` with their
    verdicts -- or ``None`` for a step that was not executed): of the executed steps (skipped ones
    left out), how many a judge accepted (``steps_verified``), how many stayed rejected after every
    seed and the re-plan (``steps_rejected``), how many were not checked (``steps_unchecked``:
    verification off, or no judge); how many were re-planned, and how many verdicts were given."""
    out = dict.fromkeys(STEP_CHECK_COLUMNS, 0)
    for e in edits or []:
        if not isinstance(e, Mapping) or e.get("skipped"):
            continue
        v = e.get("verified")
        out["steps_verified" if v is True else "steps_rejected" if v is False else "steps_unchecked"] += 1
        out["steps_replanned"] += bool(e.get("replanned"))
        out["judge_calls"] += sum(1 for a in e.get("attempts") or [] if isinstance(a, Mapping) and a.get("verdict"))
    return out


def check_category(row: Mapping[str, Any]) -> str:
    """A sample's edit check: ``verified``, ``rejected`` (a step stayed rejected after its retries),
    ``not_checked`` or ``no_edit`` (its edit failed, was invalid, is missing, or edited nothing)."""
    v = row.get("verified")
    if v is True:
        return "verified"
    if v is False:
        return "rejected"
    return "no_edit" if row.get("edit_status") in NO_EDIT_STATUSES else "not_checked"


def edit_checks(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``{"samples": {verified, rejected, not_checked, no_edit}, "steps": {verified, rejected,
    not_checked, replanned, judge_calls} or None}``; ``None`` when no row carries ``verified``."""
    if not any("verified" in r for r in rows):
        return None
    samples = dict.fromkeys(CHECK_LABELS, 0)
    for r in rows:
        samples[check_category(r)] += 1
    steps = None
    if any(r.get(c) is not None for r in rows for c in STEP_CHECK_COLUMNS):
        tot = {c: sum(int(r.get(c) or 0) for r in rows) for c in STEP_CHECK_COLUMNS}
        steps = {"verified": tot["steps_verified"], "rejected": tot["steps_rejected"],
                 "not_checked": tot["steps_unchecked"], "replanned": tot["steps_replanned"],
                 "judge_calls": tot["judge_calls"]}
    return {"samples": samples, "steps": steps}


def _steps_cell(r: Mapping[str, Any]) -> str:
    """``verified / rejected / not checked`` steps of one sample, ``—`` without counts."""
    vals = [r.get(c) for c in STEP_CHECK_COLUMNS[:3]]
    if all(v is None for v in vals):
        return "—"
    cell = " / ".join(str(int(v or 0)) for v in vals)
    if r.get("steps_replanned"):
        cell += f" ({int(r['steps_replanned'])} re-planned)"
    return cell


def _checks_lines(checks: dict[str, Any]) -> list[str]:
    """The summary sentences of :func:`edit_checks` (shared by markdown and HTML)."""
    s = checks["samples"]
    lines = ["samples: " + ", ".join(f"{CHECK_LABELS[k]} {s[k]}" for k in CHECK_LABELS)]
    if checks["steps"]:
        t = checks["steps"]
        lines.append("steps: " + ", ".join(f"{CHECK_LABELS[k]} {t[k]}" for k in ("verified", "rejected", "not_checked"))
                     + f" (re-planned {t['replanned']}, judge verdicts {t['judge_calls']})")
    return lines


# -- rows ------------------------------------------------------------------------------------------
def as_rows(rows: Any) -> list[dict[str, Any]]:
    """A list of dicts from a list of dicts or a ``pyarrow.Table``."""
    if hasattr(rows, "to_pylist"):
        return list(rows.to_pylist())
    return [dict(r) for r in rows]


def is_ok(row: Mapping[str, Any]) -> bool:
    st = row.get("status")
    return st is None or st in OK_STATUSES


def metric_columns(rows: list[dict[str, Any]], metrics: Iterable[str] | None = None) -> list[str]:
    if metrics is not None:
        return list(metrics)
    present = {k for r in rows for k in r}
    return [m for m in METRIC_ORDER if m in present]


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        if v in ("inf", "Infinity", "+inf"):
            return math.inf
        if v in ("-inf", "-Infinity"):
            return -math.inf
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def select_best_of(rows: list[dict[str, Any]], k: int, metrics: list[str]) -> list[dict[str, Any]]:
    """One row per ``image_id``: per metric, the best value among that image's ok rows (at most
    ``k`` rows are considered, in order). An image none of whose rows is ok stays failed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("image_id")), []).append(r)
    out = []
    for grp in groups.values():
        grp = grp[:k]
        ok = [r for r in grp if is_ok(r)]
        if not ok:
            base = dict(grp[0])
            base["best_of_n"] = len(grp)
            out.append(base)
            continue
        best = dict(ok[0])
        for m in metrics:
            vals = [v for v in (_num(r.get(m)) for r in ok) if v is not None]
            if vals:
                best[m] = max(vals) if HIGHER_IS_BETTER.get(m, True) else min(vals)
        best["best_of_n"] = len(grp)
        out.append(best)
    return out


def aggregate(rows: Any, metrics: Iterable[str] | None = None, *, best_of: int | None = None) -> dict[str, Any]:
    """Aggregates over all samples. Returns ``{"n_samples", "n_ok", "n_failed", "status_counts",
    "best_of", "label", "metrics": [{metric, n, n_values, n_finite, n_inf, n_missing, n_failed,
    mean, median, std, min, max, mean_failed_as_worst}, ...], "failures": [{image_id, status,
    error}], "edit_checks": see :func:`edit_checks`}``. ``mean`` etc. are over the finite values
    (``None`` if there are none)."""
    rows = as_rows(rows)
    mets = metric_columns(rows, metrics)
    if best_of:
        rows = select_best_of(rows, int(best_of), mets)
    n = len(rows)
    ok_rows = [r for r in rows if is_ok(r)]
    status_counts: dict[str, int] = {}
    for r in rows:
        st = r.get("status") or "ok"
        status_counts[st] = status_counts.get(st, 0) + 1
    failures = [{"image_id": r.get("image_id"), "status": r.get("status"), "error": r.get("error")}
                for r in rows if not is_ok(r)]
    out_metrics = []
    for m in mets:
        vals = [_num(r.get(m)) for r in ok_rows]
        present = [v for v in vals if v is not None]
        finite = np.array([v for v in present if math.isfinite(v)], dtype=np.float64)
        n_inf = sum(1 for v in present if not math.isfinite(v))
        entry: dict[str, Any] = {
            "metric": m,
            "higher_is_better": HIGHER_IS_BETTER.get(m),
            "n": n,
            "n_values": len(present),
            "n_finite": int(finite.size),
            "n_inf": n_inf,
            "n_missing": len(vals) - len(present),
            "n_failed": n - len(ok_rows),
            "mean": float(finite.mean()) if finite.size else None,
            "median": float(np.median(finite)) if finite.size else None,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "mean_failed_as_worst": None,
        }
        if m in WORST and n and entry["n_missing"] == 0 and n_inf == 0:
            total = float(finite.sum()) + WORST[m] * (n - len(ok_rows))
            entry["mean_failed_as_worst"] = total / n
        out_metrics.append(entry)
    return {
        "n_samples": n,
        "n_ok": len(ok_rows),
        "n_failed": n - len(ok_rows),
        "status_counts": status_counts,
        "best_of": int(best_of) if best_of else None,
        "label": best_of_label(best_of),
        "metrics": out_metrics,
        "failures": failures,
        "edit_checks": edit_checks(rows),
    }


def best_of_label(best_of: int | None) -> str:
    if not best_of:
        return "one sample per input (no best-of-k)"
    return (f"BEST OF {int(best_of)} per metric, selected after scoring (optimistic; the published protocol, "
            "not our default)")


# -- formatting ------------------------------------------------------------------------------------
def fmt(v: Any, digits: int = 4) -> str:
    """A metric value for a table: ``—`` missing, ``inf``, integers as such, else ``digits`` decimals
    (2 from 100 up)."""
    f = _num(v)
    if f is None:
        return "—"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == int(f) and abs(f) < 1e9:
        return str(int(f))
    return f"{f:.2f}" if abs(f) >= 100 else f"{f:.{digits}f}"


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _arrow(m: str) -> str:
    hib = HIGHER_IS_BETTER.get(m)
    return "" if hib is None else (" ↑" if hib else " ↓")


def _agg_table_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["metric", "values (of N)", "mean", "median", "std", "min", "max", "inf", "missing", "failed",
            "mean, failed = worst"]
    body = []
    for e in agg["metrics"]:
        body.append([
            e["metric"] + _arrow(e["metric"]), f"{e['n_values']}/{e['n']}", fmt(e["mean"]), fmt(e["median"]),
            fmt(e["std"]), fmt(e["min"]), fmt(e["max"]), str(e["n_inf"]), str(e["n_missing"]), str(e["n_failed"]),
            fmt(e["mean_failed_as_worst"]) if e["metric"] in WORST else "n/a",
        ])
    return head, body


def _sample_cells(r: dict[str, Any], mets: list[str]) -> list[str]:
    ok = is_ok(r)
    cells = [str(r.get("image_id")), str(r.get("status") or "ok")]
    for m in mets:
        cells.append(fmt(r.get(m)) if ok else "FAILED")
    return cells


def _missing_note(r: dict[str, Any]) -> str:
    mr = r.get("missing_reasons")
    if isinstance(mr, str):
        try:
            mr = json.loads(mr)
        except json.JSONDecodeError:
            return mr
    if isinstance(mr, dict) and mr:
        return "; ".join(f"{k}: {v}" for k, v in sorted(mr.items()))
    return ""


# -- markdown --------------------------------------------------------------------------------------
def render_markdown(rows: Any, *, title: str = "Evaluation report", metrics: Iterable[str] | None = None,
                    best_of: int | None = None, meta: Mapping[str, Any] | None = None,
                    max_sample_rows: int | None = None, plans: Mapping[str, list[dict[str, Any]]] | None = None,
                    links: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The report as markdown: summary, aggregate table, failures, per-sample table. ``plans``
    (image_id -> the plan's steps as dicts, see :func:`plan_step_text`) adds a column with each
    step and its reason; ``links`` (image_id -> {label: URL}, e.g. mask, GT mask, SSR overlay) a
    column of links to the sample's files."""
    rows = as_rows(rows)
    mets = metric_columns(rows, metrics)
    agg = aggregate(rows, mets, best_of=best_of)
    sample_rows = select_best_of(rows, best_of, mets) if best_of else rows
    lines = [f"# {title}", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- **{_md_cell(k)}**: {_md_cell(v)}")
    lines += [
        f"- **samples**: {agg['n_samples']} (ok {agg['n_ok']}, failed {agg['n_failed']})",
        "- **status counts**: " + ", ".join(f"{k} {v}" for k, v in sorted(agg["status_counts"].items())),
        f"- **selection**: {agg['label']}",
    ]
    checks = agg["edit_checks"]
    if checks:
        lines += [f"- **edit checks**, {line}" for line in _checks_lines(checks)]
    lines.append("")
    if checks:
        lines += ["## Edit checks", "",
                  ("A judge checks every step's edit; a rejected edit is retried with other seeds, then re-planned "
                   "once. *rejected after retries*: a step stayed rejected; *not checked*: verification off or no "
                   "judge; *no edit*: the edit failed or edited nothing."), ""]
        head = ["", "verified", "rejected after retries", "not checked", "no edit"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        s_ = checks["samples"]
        lines.append(f"| samples | {s_['verified']} | {s_['rejected']} | {s_['not_checked']} | {s_['no_edit']} |")
        if checks["steps"]:
            t = checks["steps"]
            lines.append(f"| steps | {t['verified']} | {t['rejected']} | {t['not_checked']} | — |")
            lines.append("")
            lines.append(f"Steps re-planned: {t['replanned']}; judge verdicts given: {t['judge_calls']}.")
        lines.append("")
    lines += [
        "## Aggregates",
        "",
        ("Means over finite values; `inf` counted apart; `missing` = model unavailable or undefined "
         "(never zero); failed samples are counted, not dropped."),
        "",
    ]
    head, body = _agg_table_rows(agg)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for b in body:
        lines.append("| " + " | ".join(_md_cell(c) for c in b) + " |")
    lines.append("")
    if agg["failures"]:
        lines += [f"## Failed samples ({len(agg['failures'])})", ""]
        for f in agg["failures"]:
            lines.append(f"- `{_md_cell(f['image_id'])}` ({f['status']}): {_md_cell(f.get('error') or '')}")
        lines.append("")
    lines += ["## Samples", ""]
    head = ["image_id", "status"] + mets + (["edit check", "steps verified / rejected / not checked"] if checks else [])
    head += (["plan (steps and reasons)"] if plans is not None else []) + (["files"] if links is not None else [])
    head += ["notes"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    shown = sample_rows if max_sample_rows is None else sample_rows[:max_sample_rows]
    for r in shown:
        note = (r.get("error") or "") if not is_ok(r) else _missing_note(r)
        check = [CHECK_LABELS[check_category(r)], _steps_cell(r)] if checks else []
        iid = str(r.get("image_id"))
        if plans is not None:
            check.append("; ".join(f"{i}. {plan_step_text(st)}" for i, st in enumerate(plans.get(iid) or [], 1)) or "—")
        if links is not None:
            check.append(" ".join(f"[{label}](<{url}>)" for label, url in (links.get(iid) or {}).items()) or "—")
        lines.append("| " + " | ".join(_md_cell(c) for c in _sample_cells(r, mets) + check + [note]) + " |")
    if len(shown) < len(sample_rows):
        lines.append(f"\n({len(sample_rows) - len(shown)} more rows in metrics.parquet)")
    lines.append("")
    return "\n".join(lines)


# -- images ----------------------------------------------------------------------------------------
def thumbnail_data_uri(img: Any, size: int = 160, *, mask: bool = False) -> str | None:
    """A ``data:image/...;base64,`` URI of a thumbnail (longest side ``size``) from encoded image
    bytes, an array (HxW or HxWx3, bool masks allowed) or a PIL image; a data URI it made before is
    returned as it is. ``None`` if ``img`` is ``None`` or cannot be decoded (the page shows a
    placeholder)."""
    from PIL import Image

    if img is None:
        return None
    if isinstance(img, str):  # already a thumbnail (a data URI this function made)
        return img if img.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) else None
    try:
        if isinstance(img, (bytes, bytearray, memoryview)):
            im = Image.open(io.BytesIO(bytes(img)))
            im.load()
        elif isinstance(img, Image.Image):
            im = img
        else:
            a = np.asarray(img)
            if a.dtype == bool:
                a = a.astype(np.uint8) * 255
            elif a.dtype != np.uint8:
                a = np.clip(a * (255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            im = Image.fromarray(a)
        im = im.convert("L" if mask else "RGB")
        im.thumbnail((size, size), Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        if mask:
            im.save(buf, format="PNG", optimize=True)
            kind = "png"
        else:
            im.save(buf, format="JPEG", quality=80)
            kind = "jpeg"
    except Exception:  # noqa: BLE001 - a broken thumbnail must not break the report
        return None
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- plans ---------------------------------------------------------------------------------------------
def plan_step_text(s: Mapping[str, Any]) -> str:
    """One plan step in a line: ``remove objects [3]: prompt (why: reason)``."""
    if s.get("status") != "ok" or not s.get("operation"):
        head = "no target"
    else:
        ids = ", ".join(str(i) for i in s.get("target_ids") or [])
        head = str(s["operation"]) + (f" objects [{ids}]" if ids else "") + (f": {s['prompt']}" if s.get("prompt") else "")
    return head + (f" (why: {s['reason']})" if s.get("reason") else "")


def plan_steps_html(steps: Iterable[Mapping[str, Any]]) -> str:
    """A plan's steps as an ordered list: operation, targets and prompt; the sub-task; the reason."""
    esc = html.escape
    items = []
    for s in steps:
        if s.get("status") != "ok" or not s.get("operation"):
            head = '<span class="op">no target</span>'
        else:
            ids = ", ".join(str(i) for i in s.get("target_ids") or [])
            head = f'<span class="op">{esc(str(s["operation"]))}</span>' + (f" objects [{esc(ids)}]" if ids else "")
            if s.get("prompt"):
                head += f": {esc(str(s['prompt']))}"
        item = f"<li>{head}"
        if s.get("subtask"):
            item += f'<div class="small">sub-task: {esc(str(s["subtask"]))}</div>'
        if s.get("reason"):
            item += f'<div class="reason">why: {esc(str(s["reason"]))}</div>'
        items.append(item + "</li>")
    return '<ol class="plan">' + "".join(items) + "</ol>" if items else ""


# -- histograms ------------------------------------------------------------------------------------
def histogram_svg(values: Iterable[Any], *, title: str = "", bins: int = 10, width: int = 320,
                  height: int = 160) -> str:
    """An inline SVG histogram of the finite values; infinite values get their own bar ``inf``
    and missing ones (``None``) are stated in the caption."""
    vals = [_num(v) for v in values]
    n_missing = sum(1 for v in vals if v is None)
    present = [v for v in vals if v is not None]
    finite = np.array([v for v in present if math.isfinite(v)], dtype=np.float64)
    n_inf = len(present) - finite.size
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(finite, bins=bins, range=(lo, hi))
    else:
        counts, edges = np.zeros(0, dtype=int), np.array([0.0, 1.0])
    bars = list(counts.tolist()) + ([n_inf] if n_inf else [])
    pad_l, pad_b, pad_t = 28, 30, 18
    plot_w, plot_h = width - pad_l - 6, height - pad_b - pad_t
    top = max(bars) if bars else 0
    bw = plot_w / max(len(bars), 1)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)} histogram">'),
             f'<text x="{width / 2:.1f}" y="12" text-anchor="middle" font-size="11">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 6}" y2="{pad_t + plot_h}" stroke="#444"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" font-size="9">{top}</text>']
    for i, c in enumerate(bars):
        h = 0 if top == 0 else plot_h * c / top
        x = pad_l + i * bw
        is_inf = n_inf and i == len(bars) - 1
        color = "#c77" if is_inf else "#4a7ab5"
        label = "inf" if is_inf else f"{edges[i]:.3g}–{edges[i + 1]:.3g}"
        parts.append(f'<rect x="{x + 1:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(bw - 2, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{html.escape(label)}: {c}</title></rect>')
    if finite.size:
        parts.append(f'<text x="{pad_l}" y="{pad_t + plot_h + 12}" font-size="9">{edges[0]:.3g}</text>')
        parts.append(f'<text x="{pad_l + bw * len(counts):.1f}" y="{pad_t + plot_h + 12}" text-anchor="end" '
                     f'font-size="9">{edges[-1]:.3g}</text>')
    if n_inf:
        parts.append(f'<text x="{pad_l + bw * (len(bars) - 0.5):.1f}" y="{pad_t + plot_h + 12}" '
                     f'text-anchor="middle" font-size="9">inf</text>')
    caption = f"{finite.size} finite" + (f", {n_inf} inf" if n_inf else "") + (f", {n_missing} missing/failed" if n_missing else "")
    parts.append(f'<text x="{width / 2:.1f}" y="{height - 4}" text-anchor="middle" font-size="9">{caption}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- HTML ------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;
vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fde8e8}.label{font-weight:bold;color:#a33}.hist{display:inline-block;margin:4px}
img.thumb{display:block;max-width:160px;max-height:160px;outline:1px solid #bbb}.missing{color:#888}.small{font-size:11px;color:#555}
th.notes,td.notes{min-width:260px}ol.plan{margin:4px 0 0;padding-left:18px;font-size:12px}
ol.plan .reason{color:#555}.steps{margin-top:3px;font-variant-numeric:tabular-nums}
.chk{display:inline-block;padding:1px 6px;border-radius:8px;font-size:12px;white-space:nowrap}
.chk-verified{background:#dff3df;color:#1d5e1d}.chk-rejected{background:#fbe0c8;color:#8a3b00}
.chk-not_checked{background:#eee;color:#555}.chk-no_edit{background:#fff;color:#888;border:1px dashed #bbb}
"""


IMAGE_KINDS = {"before": "before", "after": "after", "mask": "mask", "gt_mask": "GT mask", "overlay": "SSR overlay"}


def render_html(rows: Any, *, images: Mapping[str, Mapping[str, Any]] | None = None,
                title: str = "Evaluation report", metrics: Iterable[str] | None = None,
                best_of: int | None = None, meta: Mapping[str, Any] | None = None, thumb_size: int = 160,
                max_sample_rows: int | None = None,
                thumbnails: Mapping[str, Mapping[str, Any]] | None = None,
                plans: Mapping[str, list[dict[str, Any]]] | None = None) -> str:
    """One standalone HTML page. ``images`` (or its alias ``thumbnails``) maps ``image_id`` ->
    ``{"before", "after", "mask", "gt_mask", "overlay"}`` (each encoded bytes, an array, a PIL
    image, a data URI from :func:`thumbnail_data_uri` or ``None``; ``mask`` is the predicted mask,
    ``gt_mask`` the ground truth ``target_iou`` compares it with, ``overlay`` the SSR overlay; the
    GT mask and overlay columns appear when some sample has one); thumbnails are embedded as data
    URIs, so the page needs no other file. ``plans``: image_id -> the plan's steps (dicts with
    ``operation``, ``target_ids``, ``prompt``, ``subtask``, ``reason``), shown with the instruction."""
    if thumbnails:
        images = {**(thumbnails or {}), **(images or {})}
    rows = as_rows(rows)
    mets = metric_columns(rows, metrics)
    agg = aggregate(rows, mets, best_of=best_of)
    sample_rows = select_best_of(rows, best_of, mets) if best_of else rows
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>", "<ul>"]
    for k, v in (meta or {}).items():
        out.append(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>")
    out.append(f'<li><b>samples</b>: <span id="n-samples">{agg["n_samples"]}</span> (ok <span id="n-ok">'
               f'{agg["n_ok"]}</span>, failed <span id="n-failed">{agg["n_failed"]}</span>)</li>')
    out.append("<li><b>status counts</b>: " + esc(", ".join(f"{k} {v}" for k, v in sorted(agg["status_counts"].items())))
               + "</li>")
    cls = ' class="label"' if best_of else ""
    out.append(f"<li><b>selection</b>: <span{cls}>{esc(agg['label'])}</span></li>")
    checks = agg["edit_checks"]
    if checks:
        for line in _checks_lines(checks):
            out.append(f"<li><b>edit checks</b>, {esc(line)}</li>")
    out.append("</ul>")
    if checks:
        out.append("<h2>Edit checks</h2><p class=small>A judge checks every step's edit; a rejected edit is retried "
                   "with other seeds, then re-planned once. <i>rejected after retries</i>: a step stayed rejected; "
                   "<i>not checked</i>: verification off or no judge; <i>no edit</i>: the edit failed or edited "
                   "nothing.</p>")
        out.append('<table id="edit-checks"><tr><th></th>' + "".join(
            f'<th><span class="chk chk-{k}">{esc(v)}</span></th>' for k, v in CHECK_LABELS.items()) + "</tr>")
        s_ = checks["samples"]
        out.append("<tr><td>samples</td>" + "".join(
            f'<td class="num" id="checks-samples-{k}">{s_[k]}</td>' for k in CHECK_LABELS) + "</tr>")
        if checks["steps"]:
            t = checks["steps"]
            out.append("<tr><td>steps</td>" + "".join(
                f'<td class="num" id="checks-steps-{k}">{t[k]}</td>' for k in ("verified", "rejected", "not_checked"))
                + '<td class="num missing">—</td></tr>')
        out.append("</table>")
        if checks["steps"]:
            out.append(f"<p class=small>Steps re-planned: {checks['steps']['replanned']}; judge verdicts given: "
                       f"{checks['steps']['judge_calls']}.</p>")

    out.append("<h2>Aggregates</h2><p class=small>Means over finite values; <code>inf</code> counted apart; "
               "<i>missing</i> = model unavailable or undefined (never zero); failed samples are counted, not "
               "dropped.</p>")
    head, body = _agg_table_rows(agg)
    out.append('<table id="aggregates"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
    for b in body:
        out.append("<tr>" + f"<td>{esc(b[0])}</td>" + "".join(f'<td class="num">{esc(c)}</td>' for c in b[1:]) + "</tr>")
    out.append("</table>")

    out.append("<h2>Histograms</h2><div>")
    for m in mets:
        out.append('<div class="hist">' + histogram_svg([r.get(m) if is_ok(r) else None for r in sample_rows],
                                                         title=m + _arrow(m)) + "</div>")
    out.append("</div>")

    if agg["failures"]:
        out.append(f"<h2>Failed samples ({len(agg['failures'])})</h2><ul>")
        for f in agg["failures"]:
            out.append(f"<li><code>{esc(str(f['image_id']))}</code> ({esc(str(f['status']))}): "
                       f"{esc(str(f.get('error') or ''))}</li>")
        out.append("</ul>")

    out.append("<h2>Samples</h2>")
    kinds = [k for k in IMAGE_KINDS if k in ("before", "after", "mask")
             or any((v or {}).get(k) is not None for v in (images or {}).values())]
    if "gt_mask" in kinds:
        out.append("<p class=small><i>mask</i>: the region the edit changed; <i>GT mask</i>: the benchmark's target "
                   "region; <code>target_iou</code> is their IoU.</p>")
    cols = ["image_id", "status"] + [IMAGE_KINDS[k] for k in kinds] + [m + _arrow(m) for m in mets]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    if checks:
        head += '<th>edit check<div class="small">steps verified / rejected / not checked</div></th>'
    out.append('<table id="samples"><tr>' + head + '<th class="notes">instruction / notes</th></tr>')
    shown = sample_rows if max_sample_rows is None else sample_rows[:max_sample_rows]
    for r in shown:
        iid = str(r.get("image_id"))
        ok = is_ok(r)
        imgs = (images or {}).get(iid, {}) or {}
        cells = [f"<td><code>{esc(iid)}</code></td>", f"<td>{esc(str(r.get('status') or 'ok'))}</td>"]
        for kind in kinds:
            uri = thumbnail_data_uri(imgs.get(kind), thumb_size, mask=(kind in ("mask", "gt_mask")))
            cells.append(f'<td><img class="thumb" alt="{esc(IMAGE_KINDS[kind])}" src="{uri}"></td>' if uri
                         else '<td class="missing">—</td>')
        for m in mets:
            v = r.get(m)
            if not ok:
                cells.append('<td class="num">FAILED</td>')
            elif _num(v) is None:
                cells.append('<td class="num missing">—</td>')
            else:
                cells.append(f'<td class="num">{esc(fmt(v))}</td>')
        if checks:
            cat = check_category(r)
            cells.append(f'<td><span class="chk chk-{cat}">{esc(CHECK_LABELS[cat])}</span>'
                         f'<div class="small steps">{esc(_steps_cell(r))}</div></td>')
        note = esc(str(r.get("instruction") or ""))
        if plans is not None and plans.get(iid):
            note += plan_steps_html(plans[iid])
        extra = (r.get("error") or "") if not ok else _missing_note(r)
        if extra:
            note += f'<div class="small">{esc(str(extra))}</div>'
        cells.append(f'<td class="notes">{note}</td>')
        out.append(f'<tr class="{"ok" if ok else "failed"}">' + "".join(cells) + "</tr>")
    out.append("</table>")
    if len(shown) < len(sample_rows):
        out.append(f"<p>({len(sample_rows) - len(shown)} more rows in metrics.parquet)</p>")
    out.append("</body></html>")
    return "\n".join(out)
