"""Runs that tell the truth: exit codes 0/1/2 and the flow run's final state (read back from the
Prefect API, where an automation would see it), the missing-model check before the first row, the
allowed-roots hint, the live display under a pseudo-terminal, SIGTERM, run names and results
written per chunk.

Real parts only: the CLI in-process (typer's runner) or as a subprocess under a real pty, Prefect's
engine and the session's test API, tiny random-weight models. Rows that need no model (invalid
ones) keep most of these tests cheap.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cielr_core.manifest import write_manifest
from cli.main import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _outside_manifest(tmp_path: Path, ciebench_dir: Path) -> Path:
    """A manifest in its own folder whose 3 images live elsewhere (outside the default allowed root)."""
    rows = [{"image_id": f"cie-{i}", "image_uri": str(ciebench_dir / str(i) / f"{i}.png"),
             "instruction": "remove the object that tells the time"} for i in (1, 2, 3)]
    (tmp_path / "m").mkdir()
    return Path(write_manifest(rows, str(tmp_path / "m" / "manifest.parquet")))


def _flow_run(uri: str):
    """The edit-dataset flow run that wrote ``uri`` (runs/<flow_run_id>/results.parquet), from the API."""
    from prefect.client.orchestration import get_client

    run_id = re.search(r"/runs/([0-9a-f-]{36})/results\.parquet$", uri).group(1)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def _rows(uri: str) -> list[dict]:
    return pq.read_table(uri).to_pylist()


def test_a_missing_model_stops_the_run_before_any_row_with_one_message_and_exit_2(
        prefect_harness, ciebench_dir, tmp_path, monkeypatch):
    """The default profile, offline (the suite sets HF_HUB_OFFLINE=1), an empty HF cache, 3 rows."""
    manifest = _outside_manifest(tmp_path, ciebench_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    store2 = tmp_path / "store2"
    t0 = time.monotonic()
    result = runner.invoke(app, ["run", str(manifest), "--store", str(store2), "--allow-root", str(ciebench_dir)])
    elapsed = time.monotonic() - t0
    print(f"missing-model run ended in {elapsed:.1f} s")  # reported, never asserted
    assert result.exit_code == 2, result.output
    out = result.output
    assert "Traceback" not in out
    assert out.count("model(s) this run needs are not available") == 1
    assert out.count("sam2 model 'facebook/sam2.1-hiera-large' is not available") == 1
    assert "`hf download facebook/sam2.1-hiera-large`" in out and "CIELR_PERCEPTION__SAM2__MODEL__PATH" in out
    assert "`hf download google/owlv2-base-patch16-ensemble`" in out and "CIELR_PERCEPTION__OWLV2__MODEL__PATH" in out
    # no row was attempted: nothing loaded, stored or written for any row
    assert not (store2 / "runs").exists() and not list(store2.glob("images/*")), list(store2.rglob("*"))[:10]

    # the flow checks too (a deployment has no CLI in front of it): Failed before any row, never retried
    from cielr_core.preflight import ModelsUnavailable
    from flows.edit_dataset import edit_dataset, results_uri

    cfg = {"limits": {"allowed_input_roots": [str(ciebench_dir)]}}
    state = edit_dataset(manifest_uri=str(manifest), store=str(store2), config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelsUnavailable, match="sam2 model 'facebook/sam2.1-hiera-large' is not available"):
        results_uri(state)
    assert not (store2 / "runs").exists()


def test_the_missing_model_check_names_each_kinds_own_setting(tiny_models_dir, tmp_path, monkeypatch):
    from cielr_core import preflight
    from cielr_core.config import load_settings
    from tasks.options import is_transient

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    s = load_settings(profile="default", overrides={"editing": {"remove_backend": "lama"}})
    with pytest.raises(preflight.ModelsUnavailable) as e:
        preflight.check_models(s)
    assert not is_transient(e.value), "a missing model is never retried"
    msg = str(e.value)
    for kind, setting in (("sam2", "CIELR_PERCEPTION__SAM2__MODEL__PATH"), ("owlv2", "CIELR_PERCEPTION__OWLV2__MODEL__PATH"),
                          ("depth", "CIELR_PERCEPTION__DEPTH__MODEL__PATH"), ("llm", "CIELR_LLM__MODEL__PATH"),
                          ("inpaint", "CIELR_EDITING__MODEL__PATH"), ("lama", "CIELR_EDITING__LAMA__MODEL__PATH"),
                          ("instruct", "CIELR_EDITING__INSTRUCT__MODEL__PATH")):
        line = next(ln for ln in msg.splitlines() if ln.startswith(f"  - {kind} model"))
        assert setting in line and "hf download" in line, line
        assert all(other not in line for other in ("OWLV2", "SAM2") if other not in setting), line
    assert "`hf download ardiantovn/big-lama big-lama.pt`" in msg
    # the tiny profile's models are paths: the fix is `cielr models tiny`; present, nothing is missing
    tiny = load_settings(profile="tiny", overrides={"models_dir": str(tmp_path / "none")})
    assert all("cielr models tiny" in m for m in preflight.missing_models(tiny))
    assert preflight.missing_models(load_settings(profile="tiny", overrides={"models_dir": str(tiny_models_dir)})) == []


@pytest.mark.slow
def test_cielr_run_under_a_terminal_shows_the_live_progress(prefect_harness, tiny_models_dir, ciebench_dir, tmp_path):
    """`cielr run` in a real pseudo-terminal on a manifest whose 3 rows are all outside the allowed
    roots: said at the start with the way out; the rich display (rows done of total, counts) on
    stderr, Prefect's log lines in the log file, the results URI alone on stdout's last line; exit 1,
    and the flow run Failed in the API (what an automation fires on), its message counting the rows."""
    import pty

    from prefect.settings import PREFECT_API_URL

    manifest = _outside_manifest(tmp_path, ciebench_dir)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "CIELR_MODELS_DIR": str(tiny_models_dir),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "160"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", str(manifest), "--store", str(tmp_path / "s"),
                             "--profile", "tiny"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        screen += chunk
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=600) == 1, screen.decode(errors="replace")[-3000:]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert "3/3 rows" in text and "failed 3" in text and "ok 0" in text, text[-3000:]
    assert "log: " + str(tmp_path / "cache" / "cielr" / "logs") in text
    assert "Beginning flow run" not in text, "Prefect's log lines go to the log file, not over the display"
    logs = list((tmp_path / "cache" / "cielr" / "logs").glob("cielr-*.log"))
    assert logs and "Beginning flow run" in logs[0].read_text()
    uri = stdout.strip().splitlines()[-1]
    assert uri.endswith("/results.parquet")
    assert "note: 3 of 3 rows reference images outside the allowed input roots" in text
    assert f"--allow-root {ciebench_dir}" in text, text[-3000:]
    rows = _rows(uri)
    assert [r["status"] for r in rows] == ["invalid"] * 3
    assert all("--allow-root DIR" in r["error"] and "limits.allowed_input_roots" in r["error"] for r in rows)
    run = _flow_run(uri)
    assert run.state.type.value == "FAILED", run.state
    assert "3 invalid of 3 rows" in run.state.message and uri in run.state.message
    assert run.name.startswith("manifest.parquet "), run.name


def test_sigterm_stops_the_run_keeps_finished_rows_and_cancels_the_rest(prefect_harness, tiny_models_dir,
                                                                        ciebench_dir, tmp_path):
    """A real SIGTERM to this process when the first row has finished: the run stops, the finished row
    is kept, the rows not started end `cancelled`, results are written per chunk and assembled, and
    the flow run ends Cancelled. Task runs carry the image id, chunk subflows their rows."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterName

    from flows.edit_dataset import edit_dataset, results_uri
    from tasks import progress

    tag = uuid.uuid4().hex[:8]
    images = tmp_path / "images"
    images.mkdir()
    good = images / "good.png"
    good.write_bytes((ciebench_dir / "1" / "1.png").read_bytes())
    rows = [{"image_id": f"gone-{tag}", "image_uri": str(images / "gone.png"), "instruction": "remove the cup"},
            {"image_id": f"a-{tag}", "image_uri": str(good), "instruction": "remove the cup"},
            {"image_id": f"b-{tag}", "image_uri": str(good), "instruction": "remove the clock"}]
    manifest = write_manifest(rows, str(images / "manifest.parquet"))
    store = tmp_path / "store"

    class KillOnFirstRow:
        sent = False

        def row_finished(self, row):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = {"models_dir": str(tiny_models_dir), "orchestration": {"retry_delay_s": 0.0}}
    with progress.listening(KillOnFirstRow()):
        state = edit_dataset(manifest_uri=manifest, store=str(store), profile="tiny", config=cfg, chunk_size=1,
                             return_state=True)
    assert state.type.value == "CANCELLED", state
    assert "SIGTERM" in state.message
    uri = results_uri(state)
    got = _rows(uri)
    assert [r["image_id"] for r in got] == [r["image_id"] for r in rows]
    assert got[0]["status"] == "failed" and "no such file" in got[0]["error"]  # finished before the signal: kept
    assert [r["status"] for r in got[1:]] == ["cancelled", "cancelled"], got
    assert "SIGTERM" in got[1]["error"]
    parts = sorted(p.name for p in (Path(uri).parent / "parts").iterdir())
    assert parts == ["chunk-00000.parquet", "chunk-00001.parquet", "chunk-00002.parquet"]
    assert progress.stop_requested() is None, "the stop request ends with the run"
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or \
        not getattr(signal.getsignal(signal.SIGTERM), "__module__", "").startswith("tasks.")

    # a cancellation in Prefect (what the UI's Cancel button sets) stops the run the same way
    from prefect.runtime import flow_run
    from prefect.states import Cancelling

    class CancelOnFirstRow:
        sent = False
        run_id = None

        def run_started(self, total, rejected, name):
            self.run_id = flow_run.id  # the edit-dataset run (rows finish inside chunk subflows)

        def row_finished(self, row):
            if not self.sent:
                self.sent = True
                with get_client(sync_client=True) as client:
                    client.set_flow_run_state(self.run_id, Cancelling(message="cancelled by the test"), force=True)
                deadline = time.monotonic() + 60
                while progress.stop_requested() is None and time.monotonic() < deadline:
                    time.sleep(0.1)  # the run's cancellation watch polls the API

    with progress.listening(CancelOnFirstRow()):
        state = edit_dataset(manifest_uri=manifest, store=str(store), profile="tiny", config=cfg, chunk_size=1,
                             return_state=True)
    assert state.type.value == "CANCELLED" and "cancelled in Prefect" in state.message, state
    assert [r["status"] for r in _rows(results_uri(state))] == ["failed", "cancelled", "cancelled"]

    with get_client(sync_client=True) as client:
        named = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"load-image[gone-{tag}]"])))
        assert len(named) == 2, "task runs are named after their image (one load in each of the two runs)"
        chunk = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["chunk 0: rows 0-0"])))
        assert chunk, "chunk subflows say which rows they hold"


@pytest.mark.slow
def test_cielr_run_exits_1_for_a_corrupt_image_among_good_ones_and_0_when_every_row_is_ok(
        prefect_harness, tiny_models_dir, ciebench_dir, tmp_path, monkeypatch):
    """Two good (small) photos and one truncated PNG: exit 1, the results URI still the last line,
    the flow run Failed in the API counting the failed row. The two good rows again (cached): exit 0,
    the flow run Completed."""
    from PIL import Image

    monkeypatch.setenv("CIELR_MODELS_DIR", str(tiny_models_dir))
    d = tmp_path / "in"
    d.mkdir()
    rows = []
    for i in (1, 2):
        Image.open(ciebench_dir / str(i) / f"{i}.png").convert("RGB").resize((128, 96)).save(d / f"g{i}.png")
        rows.append({"image_id": f"good-{i}", "image_uri": str(d / f"g{i}.png"), "instruction": "remove the cup"})
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    (d / "bad.png").write_bytes(buf.getvalue()[:60])  # truncated after the header
    bad = {"image_id": "corrupt", "image_uri": str(d / "bad.png"), "instruction": "remove the cup"}
    mixed = write_manifest([rows[0], bad, rows[1]], str(d / "mixed.parquet"))
    good = write_manifest(rows, str(d / "good.parquet"))
    store = str(tmp_path / "store")

    res = runner.invoke(app, ["run", mixed, "--store", store, "--profile", "tiny"])
    assert res.exit_code == 1, res.output
    uri = res.stdout.strip().splitlines()[-1]
    assert uri.endswith("/results.parquet"), res.stdout
    by_id = {r["image_id"]: r for r in _rows(uri)}
    assert by_id["corrupt"]["status"] == "failed" and by_id["corrupt"]["failed_stage"] == "load"
    assert {by_id[f"good-{i}"]["status"] for i in (1, 2)} <= {"ok", "no_target"}
    run = _flow_run(uri)
    assert run.state.type.value == "FAILED", run.state
    assert "1 failed" in run.state.message and "of 3 rows" in run.state.message, run.state.message

    res = runner.invoke(app, ["run", good, "--store", store, "--profile", "tiny"])
    assert res.exit_code == 0, res.output
    uri = res.stdout.strip().splitlines()[-1]
    assert {r["status"] for r in _rows(uri)} <= {"ok", "no_target"}
    assert _flow_run(uri).state.type.value == "COMPLETED"
