"""Checked edits in the evaluation: each sample's judge outcome (``verified``) and per-step counts
go from results.parquet and trace.json into metrics.parquet, and report.md / report.html count
verified, rejected-after-retries and not-checked edits overall and per sample."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from cielr_core.config import EditingConfig
from cielr_core.editing.verify import Verdict, execute_verified
from cielr_core.metrics import metrics_table
from cielr_core.plan import EditStep
from cielr_core.report import aggregate, render_html, render_markdown, step_check_counts
from cielr_core.ssr import SSR, Scene, make_object
from storage import ArtifactStore
from tasks.evaluation import edit_checks


class RejectsFirstJudge:
    """Test double for the Judge protocol: rejects the first ``n_reject`` edits, accepts the rest."""

    name = "test-double/rejects-first"

    def __init__(self, n_reject: int):
        self.n_reject, self.n = n_reject, 0

    def judge(self, before, after, mask, step, labels):
        self.n += 1
        if self.n <= self.n_reject:
            return Verdict(False, f"attempt {self.n}: not red", self.name, 0.1)
        return Verdict(True, "red", self.name, 0.9)


def _edit_traces() -> list[dict | None]:
    """Edit traces as the inpaint-step task writes them (``{operation, backend, skipped, ...,
    **Verified.trace()}``), from real ``execute_verified`` runs of a recolor step (no model)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    obj = np.zeros((48, 64), bool)
    obj[10:30, 20:40] = True
    scene = Scene(SSR(image_sha256="0" * 64, width=64, height=48, objects={1: make_object(1, obj, label="mug")}),
                  {1: obj})
    step = EditStep(subtask="make it red", operation="recolor", target_ids=[1], prompt="a red mug", color="red")
    cfg = EditingConfig(max_attempts=2)

    def replan(old, why):
        return EditStep(subtask=old.subtask, operation="recolor", target_ids=[1], color="dark red", prompt="x")

    def as_task_writes(v):
        r = v.result
        return {"operation": r.operation, "backend": r.backend, "skipped": r.skipped, "reason": r.reason, **v.trace()}

    accepted = execute_verified(rgb, step, scene, cfg, judge=RejectsFirstJudge(0))
    replanned_ok = execute_verified(rgb, step, scene, cfg, judge=RejectsFirstJudge(1), replan=replan)
    rejected = execute_verified(rgb, step, scene, cfg, judge=RejectsFirstJudge(99), replan=replan)
    unchecked = execute_verified(rgb, step, scene, cfg, judge=None)
    skipped = execute_verified(rgb, EditStep(subtask="x", status="no_target", reason="none"), scene, cfg,
                               judge=RejectsFirstJudge(0))
    assert (accepted.verified, replanned_ok.verified, rejected.verified, unchecked.verified) == (True, True, False, None)
    assert rejected.replanned and replanned_ok.replanned and skipped.result.skipped
    return [as_task_writes(v) for v in (accepted, replanned_ok, rejected, unchecked, skipped)] + [None]


def test_step_check_counts_from_real_verification_traces():
    edits = _edit_traces()
    counts = step_check_counts(edits)
    # recolor is deterministic: the second seed repeats the first, so the retries stop after one verdict
    assert counts == {"steps_verified": 2, "steps_rejected": 1, "steps_unchecked": 1, "steps_replanned": 2,
                      "judge_calls": 1 + 2 + 2}
    assert step_check_counts(None) == step_check_counts([]) == dict.fromkeys(counts, 0)


def test_edit_checks_read_the_results_row_and_its_trace(tmp_path):
    st = ArtifactStore(str(tmp_path / "store"))
    edits = _edit_traces()
    st.put_json("out/a/trace.json", {"decompose": {}, "steps": [], "edits": edits[:3]})
    st.put_json("out/b/trace.json", {"decompose": {}, "steps": [], "edits": edits[3:]})
    a = edit_checks(st, {"status": "ok", "verified": False, "trace_uri": st.uri_for("out/a/trace.json")})
    assert a == {"verified": False, "steps_verified": 2, "steps_rejected": 1, "steps_unchecked": 0,
                 "steps_replanned": 2, "judge_calls": 5}
    b = edit_checks(st, {"status": "ok", "verified": None, "trace_uri": st.uri_for("out/b/trace.json")})
    assert (b["verified"], b["steps_unchecked"], b["steps_verified"], b["judge_calls"]) == (None, 1, 0, 0)
    # no edit, or a trace that cannot be read: the verdict column as it is, no counts (never zeros)
    for res in (None, {"status": "failed", "verified": None, "trace_uri": None},
                {"status": "ok", "verified": True, "trace_uri": st.uri_for("out/gone/trace.json")}):
        c = edit_checks(st, res)
        assert c["steps_verified"] is None and c["steps_rejected"] is None and c["judge_calls"] is None
        assert c["verified"] == (res or {}).get("verified")


def _rows():
    """Metric rows as the evaluate flow writes them: one verified, one rejected after retries, one
    not checked, one whose edit failed, one that edited nothing."""
    def checks(v, sv, sr, su, rp=0, calls=0):
        return {"verified": v, "steps_verified": sv, "steps_rejected": sr, "steps_unchecked": su,
                "steps_replanned": rp, "judge_calls": calls}

    return [
        {"image_id": "a", "status": "ok", "edit_status": "ok", "psnr": 30.0, "target_iou": 0.5, **checks(True, 2, 0, 0, 0, 3)},
        {"image_id": "b", "status": "ok", "edit_status": "ok", "psnr": 25.0, "target_iou": 0.2, **checks(False, 1, 1, 0, 1, 4)},
        {"image_id": "c", "status": "ok", "edit_status": "ok", "psnr": 28.0, "target_iou": 0.3, **checks(None, 0, 0, 1)},
        {"image_id": "d", "status": "failed", "edit_status": "failed", "error": "reason: no valid answer",
         "psnr": None, "target_iou": None, **dict.fromkeys(checks(None, 0, 0, 0), None)},
        {"image_id": "e", "status": "ok", "edit_status": "no_target", "psnr": float("inf"), "target_iou": 0.0,
         **checks(None, 0, 0, 0)},
    ]


def test_metrics_parquet_keeps_the_checks_typed(tmp_path):
    table = metrics_table(_rows())
    assert str(table.schema.field("verified").type) == "bool"
    for c in ("steps_verified", "steps_rejected", "steps_unchecked", "steps_replanned", "judge_calls"):
        assert str(table.schema.field(c).type) == "int64", c
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    assert [r["verified"] for r in back] == [True, False, None, None, None]
    assert [r["steps_rejected"] for r in back] == [0, 1, 0, None, 0]
    # a run where nothing was checked (tiny profile: verification off) still types the column bool
    nothing = metrics_table([{"image_id": "x", "verified": None, "steps_verified": None}])
    assert str(nothing.schema.field("verified").type) == "bool"
    assert str(nothing.schema.field("steps_verified").type) == "int64"


def test_report_counts_verified_rejected_and_unchecked_edits_overall_and_per_sample():
    rows = _rows()
    agg = aggregate(rows)
    assert agg["edit_checks"] == {
        "samples": {"verified": 1, "rejected": 1, "not_checked": 1, "no_edit": 2},
        "steps": {"verified": 3, "rejected": 1, "not_checked": 1, "replanned": 1, "judge_calls": 7},
    }
    md = render_markdown(rows, title="r")
    assert ("- **edit checks**, samples: verified 1, rejected after retries 1, not checked 1, no edit 2"
            in md)
    assert ("- **edit checks**, steps: verified 3, rejected after retries 1, not checked 1 "
            "(re-planned 1, judge verdicts 7)") in md
    assert "| samples | 1 | 1 | 1 | 2 |" in md and "| steps | 3 | 1 | 1 | — |" in md
    lines = md.splitlines()
    assert "| image_id | status | psnr | target_iou | edit check | steps verified / rejected / not checked | notes |" \
        in lines
    assert "| a | ok | 30 | 0.5000 | verified | 2 / 0 / 0 |  |" in lines
    assert "| b | ok | 25 | 0.2000 | rejected after retries | 1 / 1 / 0 (1 re-planned) |  |" in lines
    assert "| c | ok | 28 | 0.3000 | not checked | 0 / 0 / 1 |  |" in lines
    assert "| d | failed | FAILED | FAILED | no edit | — | reason: no valid answer |" in lines
    assert "| e | ok | inf | 0 | no edit | 0 / 0 / 0 |  |" in lines

    html = render_html(rows, title="r")
    assert '<table id="edit-checks">' in html
    for k, n in {"verified": 1, "rejected": 1, "not_checked": 1, "no_edit": 2}.items():
        assert f'id="checks-samples-{k}">{n}</td>' in html
    for k, n in {"verified": 3, "rejected": 1, "not_checked": 1}.items():
        assert f'id="checks-steps-{k}">{n}</td>' in html
    samples = html.split('<table id="samples">', 1)[1]
    assert samples.count('class="chk chk-verified"') == 1 and samples.count('class="chk chk-rejected"') == 1
    assert samples.count('class="chk chk-not_checked"') == 1 and samples.count('class="chk chk-no_edit"') == 2
    assert '<div class="small steps">1 / 1 / 0 (1 re-planned)</div>' in samples


def test_rows_without_a_verdict_column_render_as_before():
    rows = [{"image_id": "0", "status": "ok", "psnr": 30.0}, {"image_id": "1", "status": "failed", "psnr": None}]
    assert aggregate(rows)["edit_checks"] is None
    md, html = render_markdown(rows), render_html(rows)
    assert "edit check" not in md and "edit-checks" not in html and "chk-" not in html.split("</style>", 1)[1]
    assert "| image_id | status | psnr | notes |" in md.splitlines()
