"""The `cielr` commands users run first: doctor, demo, edit, run (argument errors), eval."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from storage import ArtifactStore

runner = CliRunner()


def test_doctor_reports_each_check_with_a_fix(tiny_models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("CIELR_STORE__URL", str(tmp_path / "store"))
    result = runner.invoke(app, ["doctor", "--profile", "tiny"])
    out = result.output
    assert "[ok] SAM2 weights" in out and "[ok] OWLv2 weights" in out and "[ok] store" in out
    assert "GPU" in out
    assert result.exit_code == 0, out  # a missing GPU is only a warning for the tiny profile

    monkeypatch.setenv("CIELR_MODELS_DIR", str(tmp_path / "no-models"))
    result = runner.invoke(app, ["doctor", "--profile", "tiny"])
    assert result.exit_code == 1
    assert "[!!] SAM2 weights" in result.output and "fix: cielr models tiny" in result.output


def _hub_repo(hf_home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """A Hugging Face cache entry as `hf download` leaves it: blobs, a snapshot of links, refs/main."""
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    rev = "b" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    for i, (name, src) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy(src, blob)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(blob)


def test_doctor_reports_the_lama_and_instruction_editing_weights(tiny_models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIELR_STORE__URL", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # tiny profile, weights written: both found at the paths the profile sets
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    out = runner.invoke(app, ["doctor", "--profile", "tiny"]).output
    assert f"[ok] LaMa weights (removal): {tiny_models_dir / 'lama' / 'big-lama.pt'}" in out
    assert f"[ok] instruction-editing weights (transform, global): {tiny_models_dir / 'ip2p'}" in out

    # tiny profile, nothing written: each line names its path and `cielr models tiny`
    none = tmp_path / "no-models"
    monkeypatch.setenv("CIELR_MODELS_DIR", str(none))
    result = runner.invoke(app, ["doctor", "--profile", "tiny"])
    out = result.output
    assert result.exit_code == 1
    # remove_backend auto: a missing LaMa is a warning (removal falls back), not a problem
    assert f"[--] LaMa weights (removal): {none / 'lama' / 'big-lama.pt'} not found" in out
    assert "falls back to SD inpainting, then OpenCV" in out
    assert f"fix: cielr models tiny (editing.lama.model.path: {none / 'lama' / 'big-lama.pt'})" in out
    assert f"[!!] instruction-editing weights (transform, global): {none / 'ip2p'} not found" in out
    assert f"fix: cielr models tiny (editing.instruct.model.path: {none / 'ip2p'})" in out
    # remove_backend lama: LaMa is required, so its absence is a problem
    monkeypatch.setenv("CIELR_EDITING__REMOVE_BACKEND", "lama")
    out = runner.invoke(app, ["doctor", "--profile", "tiny"]).output
    assert f"[!!] LaMa weights (removal): {none / 'lama' / 'big-lama.pt'} not found" in out
    assert "falls back" not in out
    # backends the configuration does not use are not reported: opencv removal, prompt set 2 (no transform/global)
    monkeypatch.setenv("CIELR_EDITING__REMOVE_BACKEND", "opencv")
    monkeypatch.setenv("CIELR_REASONING__PROMPT_VERSION", "2")
    out = runner.invoke(app, ["doctor", "--profile", "tiny"]).output
    assert "LaMa weights" not in out and "instruction-editing weights" not in out
    monkeypatch.delenv("CIELR_EDITING__REMOVE_BACKEND")
    monkeypatch.delenv("CIELR_REASONING__PROMPT_VERSION")

    # default profile, hub ids, empty cache: `hf download <id>` and the setting that points at a local copy
    result = runner.invoke(app, ["doctor"])
    out = result.output
    assert result.exit_code == 1
    assert "[--] LaMa weights (removal): ardiantovn/big-lama (big-lama.pt) not found" in out
    assert "fix: hf download ardiantovn/big-lama big-lama.pt" in out and "CIELR_EDITING__LAMA__MODEL__PATH" in out
    assert "[!!] instruction-editing weights (transform, global): timbrooks/instruct-pix2pix not found" in out
    assert "fix: hf download timbrooks/instruct-pix2pix" in out and "CIELR_EDITING__INSTRUCT__MODEL__PATH" in out

    # default profile, both in the Hugging Face cache: found there
    _hub_repo(tmp_path / "hf", "ardiantovn/big-lama", {"big-lama.pt": tiny_models_dir / "lama" / "big-lama.pt"})
    _hub_repo(tmp_path / "hf", "timbrooks/instruct-pix2pix",
              {p.relative_to(tiny_models_dir / "ip2p").as_posix(): p
               for p in (tiny_models_dir / "ip2p").rglob("*") if p.is_file()})
    out = runner.invoke(app, ["doctor"]).output
    lama = tmp_path / "hf" / "hub" / "models--ardiantovn--big-lama" / "snapshots" / ("b" * 40) / "big-lama.pt"
    assert f"[ok] LaMa weights (removal): {lama}" in out
    assert "[ok] instruction-editing weights (transform, global): timbrooks/instruct-pix2pix" in out


def test_run_refuses_bad_arguments_clearly(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.parquet"), "--runner", "spark"])
    assert result.exit_code == 2 and "--runner must be default or dask" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "nope.parquet"), "--dask-address", "tcp://x:1"])
    assert result.exit_code == 2 and "needs --runner dask" in result.output


@pytest.mark.slow
def test_run_reports_a_missing_manifest(prefect_harness, tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.parquet"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "nope.parquet: no such file" in result.output


@pytest.mark.slow
def test_edit_writes_the_six_outputs(prefect_harness, tiny_models_dir, ciebench_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    image = ciebench_dir / "1" / "1.png"
    out = tmp_path / "out"
    result = runner.invoke(app, ["edit", str(image), "remove the object that tells the time", "--profile", "tiny",
                                 "--store", str(tmp_path / "store"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    for name in ("edited.png", "mask.png", "overlay.png", "ssr.json", "plan.json", "trace.json"):
        assert (out / name).stat().st_size > 0, name
    original = np.asarray(Image.open(image).convert("RGB"))
    edited = np.asarray(Image.open(out / "edited.png").convert("RGB"))
    mask = np.asarray(Image.open(out / "mask.png")).astype(bool)
    assert edited.shape == original.shape and mask.shape == original.shape[:2]
    assert np.array_equal(edited[~mask], original[~mask])


@pytest.mark.slow
def test_demo_runs_end_to_end_and_says_the_edits_are_meaningless(prefect_harness, tiny_models_dir, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "-n", "1"])
    assert result.exit_code == 0, result.output
    uri = result.output.strip().splitlines()[-1]
    assert uri.endswith("results.parquet")
    assert "RANDOM weights" in result.output and "--profile default" in result.output
    st = ArtifactStore(str(tmp_path / "demo" / "store"))
    rows = pq.read_table(io.BytesIO(st.get_bytes(st.key_for(uri)))).to_pylist()
    assert len(rows) == 1 and rows[0]["status"] in ("ok", "no_target"), rows


@pytest.mark.slow
def test_eval_writes_metrics_and_a_report(prefect_harness, tiny_models_dir, ciebench_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    store = tmp_path / "store"
    result = runner.invoke(app, ["eval", "--benchmark", f"ciebench:{ciebench_dir}", "--store", str(store),
                                 "--profile", "tiny", "--limit", "2"])
    assert result.exit_code == 0, result.output
    uri = result.output.strip().splitlines()[-1]
    st = ArtifactStore(str(store))
    prefix = st.key_for(uri)
    rows = pq.read_table(io.BytesIO(st.get_bytes(f"{prefix}/metrics.parquet"))).to_pylist()
    assert [r["image_id"] for r in rows] == ["0", "1"]
    for r in rows:
        if r["status"] == "ok":
            assert r["psnr"] is not None and r["ssim"] is not None and r["target_iou"] is not None
        else:
            assert r["error"]
    html = st.get_bytes(f"{prefix}/report.html").decode()
    md = st.get_bytes(f"{prefix}/report.md").decode()
    assert "<html" in html.lower() and "data:image/png;base64" in html
    assert "psnr" in md.lower()
    # each evaluated sample: its predicted mask beside the GT mask target_iou compares, the SSR overlay,
    # the plan's steps with their reasons (report.md: a plan column, links to the masks and overlay)
    evaluated = [r for r in rows if r["status"] == "ok"]
    assert evaluated
    for alt in ("mask", "GT mask", "SSR overlay"):
        assert html.count(f'alt="{alt}"') == len(evaluated), alt
    assert "target_iou</code> is their IoU" in html and '<ol class="plan">' in html
    assert "| plan (steps and reasons) | files |" in md and md.count("[GT mask](<file://") == len(evaluated)
    # the edit judge's outcome travels from results.parquet and trace.json into every metrics row; the
    # tiny profile does not verify, so every edited sample is "not checked", one not-checked step per edited step
    results_uri = next(ln.split(": ", 1)[1] for ln in md.splitlines() if ln.startswith("- **results_uri**: "))
    results = {r["image_id"]: r for r in pq.read_table(io.BytesIO(st.get_bytes(st.key_for(results_uri)))).to_pylist()}
    edited = 0
    for r in rows:
        assert "verified" in r and r["verified"] is None and results[r["image_id"]]["verified"] is None
        if r["edit_status"] in ("ok", "no_target"):
            assert r["steps_verified"] == 0 and r["steps_rejected"] == 0 and r["judge_calls"] == 0
            assert r["steps_unchecked"] == results[r["image_id"]]["n_edited_steps"]
            edited += r["edit_status"] == "ok"
        else:
            assert r["steps_unchecked"] is None
    assert "## Edit checks" in md and f"verified 0, rejected after retries 0, not checked {edited}" in md
    assert '<table id="edit-checks">' in html and f'id="checks-samples-not_checked">{edited}</td>' in html

    # the same results scored again with both samples in flight and their CLIP image features batched
    # (eval.batching on, a batch of 2 with a long wait so the two samples' crops meet in one forward):
    # the same metrics within float tolerance, and one CLIP forward carried both samples
    import shutil

    from cielr_core import batching
    from flows.evaluate import evaluate

    scored = [r for r in rows if r["clip"] is not None]
    assert len(scored) == 2, [(r["image_id"], r["status"], r["error"]) for r in rows]
    shutil.rmtree(store / "prefect")  # Prefect's cached evaluate-sample results: score afresh
    batching.clear()
    uri2 = evaluate(benchmark=f"ciebench:{ciebench_dir}", store=str(store), profile="tiny", limit=2,
                    results_uri=results_uri, config={"orchestration": {"max_in_flight": 2}, "eval": {
                        "batching": "on", "batch_size": 2, "max_batch_wait_ms": 5000}})
    rows2 = pq.read_table(io.BytesIO(st.get_bytes(f"{st.key_for(uri2)}/metrics.parquet"))).to_pylist()
    assert [r["image_id"] for r in rows2] == ["0", "1"]
    for a, b in zip(rows, rows2):
        for k in ("psnr", "ssim", "lpips", "target_iou"):
            assert a[k] == b[k], (a["image_id"], k)
        assert abs(a["clip"] - b["clip"]) < 1e-3, (a["image_id"], a["clip"], b["clip"])
    assert batching.stats().get("clip-image") == {2: 1}, batching.stats()


@pytest.mark.slow
def test_plan_perceives_an_image_and_writes_plan_and_trace_to_the_store(tiny_models_dir, ciebench_dir, tmp_path,
                                                                       monkeypatch):
    import json

    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    store = tmp_path / "store"
    result = runner.invoke(app, ["plan", str(ciebench_dir / "1" / "1.png"), "remove the object that tells the time",
                                 "--profile", "tiny", "--config", _store_config(tmp_path, store)])
    assert result.exit_code == 0, result.output
    printed = result.stdout[result.stdout.index("{"):]
    plan = json.loads(printed)
    assert plan["instruction"] == "remove the object that tells the time"
    written = list(store.glob("plan/*/*/plan.json"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == plan
    trace = json.loads((written[0].parent / "trace.json").read_text())
    assert trace, "the trace of the LLM calls is written beside the plan"


def _store_config(tmp_path: Path, store: Path) -> str:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"store:\n  url: {store}\n")
    return str(cfg)


# -- profiles: every profile the config defines ----------------------------------------------------
def test_every_config_profile_is_accepted_by_the_cli_deploy_and_the_flows(monkeypatch):
    """The --profile help, `cielr deploy`'s check and the flows' parameter schemas list exactly the
    profiles cielr_core.config defines (the paper profile included), and refuse others."""
    import re

    from prefect.utilities.callables import parameter_schema

    from cielr_core.config import PROFILES
    from deployments import helper
    from flows.edit_dataset import edit_dataset
    from flows.evaluate import evaluate

    assert "paper" in PROFILES
    runner = CliRunner()
    for command in ("edit", "run", "plan", "config show", "deploy"):
        out = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
        assert "config profile: one of " + ", ".join(PROFILES) in re.sub(r"\s+", " ", out), (command, out)

    for flow in (edit_dataset, evaluate):
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        prop = schema["properties"]["profile"]
        enums = [v for alt in prop.get("anyOf", [prop]) for v in alt.get("enum", [])]
        assert enums == list(PROFILES), (flow.name, prop)

    for p in PROFILES:
        assert helper.check_profile(p) == p and helper.DeployOptions(profile=p).profile == p
    with pytest.raises(ValueError, match="choose one of " + ", ".join(PROFILES)):
        helper.DeployOptions(profile="huge")

    # `cielr deploy --profile paper` passes the check and reaches the deploy steps; these are test
    # doubles at the Prefect boundary (the real deploy is tests/test_deployments.py's slow test)
    applied: list = []

    async def pool_double(name, pool_type):
        return "exists"

    async def limit_double(tag, limit):
        return None

    monkeypatch.setattr(helper, "ensure_pool", pool_double)
    monkeypatch.setattr(helper, "ensure_gpu_limit", limit_double)
    monkeypatch.setattr(helper, "apply_deployments", lambda opts: applied.append(opts) or ["edit-dataset/nightly"])
    result = runner.invoke(app, ["deploy", "--manifest", "m.parquet", "--store", "s", "--profile", "paper"])
    assert result.exit_code == 0, result.output
    assert applied[0].profile == "paper" and applied[0].deploy_env()["CIELR_PROFILE"] == "paper"
    bad = runner.invoke(app, ["deploy", "--manifest", "m.parquet", "--store", "s", "--profile", "huge"])
    assert bad.exit_code == 2 and "choose one of " + ", ".join(PROFILES) in bad.output
    assert len(applied) == 1


def test_the_model_libraries_bars_and_warnings_go_to_the_log_file_not_the_terminal(tmp_path):
    """diffusers' "Loading pipeline components..." bar and transformers' warnings print through their
    own handlers, over the live display. In a fresh interpreter (the libraries imported after the log
    file opens, as in a command): their bars are off and their warnings land in the log file while it
    is open, and both are back as they were after logs_back()."""
    import os
    import subprocess
    import sys

    code = ("from cli import live\n"
            "path = live.logs_to_file(False)\n"
            "import transformers.utils.logging as tl, diffusers.utils.logging as dl\n"
            "assert not tl.is_progress_bar_enabled() and not dl.is_progress_bar_enabled()\n"
            "tl.get_logger('transformers.cielr_test').warning('a library warning')\n"
            "live.logs_back()\n"
            "assert tl.is_progress_bar_enabled() and dl.is_progress_bar_enabled()\n"
            "print(path)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], timeout=300,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a library warning" not in done.stderr
    assert "a library warning" in Path(done.stdout.strip().splitlines()[-1]).read_text()
