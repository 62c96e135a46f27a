"""edit_dataset / edit_image end to end on the real Prefect engine, with tiny real models.

Real parts only: Prefect's engine and API (the session's test harness), moto's S3 server reached by
s3fs, tiny random-weight SAM2 / OWLv2 / DepthAnything / Qwen2 / SD-inpaint loaded by their real
classes. Random weights make the edits meaningless, so these tests check the orchestration:
statuses, outputs, caching, retries, failure isolation, resume.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cielr_core import models
from cielr_core.manifest import write_manifest
from cli.commands.demo import write_demo_inputs
from storage import ArtifactStore
from tasks import runtime

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGE_NAMES = ("segment", "detect", "depth", "merge")


def _config(tiny_models_dir: Path, **extra) -> dict:
    cfg = {"models_dir": str(tiny_models_dir), "orchestration": {"retry_delay_s": 0.0, "retry_jitter_factor": 0.0}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _rows(store: ArtifactStore, uri: str) -> list[dict]:
    return pq.read_table(io.BytesIO(store.get_bytes(store.key_for(uri)))).to_pylist()


def _stage_counts(row: dict) -> dict[str, tuple[int, int]]:
    """The cached_stages map column -> {'segment': (1, 1), 'detect': (0, 1)}  (cached, calls)."""
    return {name: (c["hits"], c["calls"]) for name, c in (row.get("cached_stages") or [])}


def _fresh_process_state() -> None:
    """What a new worker process would have: no models loaded, no stage objects built."""
    models.clear()
    runtime.reset()


@pytest.fixture(scope="module")
def bench3(tmp_path_factory, ciebench_dir):
    folder = tmp_path_factory.mktemp("bench3")
    manifest, rows = write_demo_inputs(folder, str(ciebench_dir), 3)
    return folder, manifest, rows


@pytest.fixture(scope="module")
def cold_run(prefect_harness, tiny_models_dir, bench3, tmp_path_factory):
    """One cold edit_dataset run over 3 CIEBench photos on a local store (shared by several tests)."""
    from flows.edit_dataset import edit_dataset

    folder, manifest, _ = bench3
    store_url = str(tmp_path_factory.mktemp("store-local"))
    cfg = _config(tiny_models_dir)
    _fresh_process_state()
    uri = edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny", config=cfg)
    return store_url, cfg, uri


def test_edit_dataset_local_store_end_to_end(cold_run, bench3):
    store_url, _, uri = cold_run
    _, _, inputs = bench3
    st = ArtifactStore(store_url)
    assert uri.endswith("/results.parquet") and "/runs/" in uri
    rows = _rows(st, uri)
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in inputs]
    for row, src in zip(rows, inputs):
        assert row["status"] in ("ok", "no_target"), f"{row['image_id']}: {row['error']}"
        counts = _stage_counts(row)
        for stage in ("load", "merge", "decompose"):
            assert counts[stage][0] == 0, f"a cold run on an empty store cannot hit the {stage} cache"
        edited = st.get_png(st.key_for(row["edited_uri"]))
        original = np.asarray(Image.open(src["image_uri"]).convert("RGB"))
        assert edited.shape == original.shape
        mask = st.get_mask(st.key_for(row["mask_uri"]))
        assert mask.shape == original.shape[:2]
        # mask.png is exactly the region allowed to differ from the input
        assert np.array_equal(edited[~mask], original[~mask])
        assert st.get_json(st.key_for(row["ssr_uri"]))["objects"] is not None
        trace = st.get_bytes(st.key_for(row["trace_uri"]))
        assert b"decompose" in trace
        for stage in ("load", "segment", "detect", "depth", "merge", "decompose", "finalize"):
            assert row[f"t_{stage}"] > 0


def _chromium_screenshot(page: Path, out: Path, width: int = 1400, height: int = 900) -> np.ndarray:
    """``page`` rendered by headless Chromium (Debian's ``chromium``), as an RGB array."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    done = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--user-data-dir={out.parent / 'chromium-profile'}", f"--window-size={width},{height}",
         f"--screenshot={out}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    return np.asarray(Image.open(out).convert("RGB"))


def _found_at(shot: np.ndarray, data_uri: str) -> tuple[int, int] | None:
    """Where a thumbnail (a data: URI of the page) is drawn in the screenshot, or None."""
    import base64

    import cv2

    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))
    res = cv2.matchTemplate(shot, thumb, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x, y) = cv2.minMaxLoc(res)
    return (x, y) if best > 0.95 else None


def test_index_html_of_the_run_shows_every_row_with_its_images_in_chromium(cold_run, bench3, tmp_path):
    """runs/<run_id>/index.html beside results.parquet: opened as file:// in headless Chromium, the
    screenshot shows the 3 rows, each with its input, edited and overlay thumbnails; its links reach
    the store's files; `cielr export` copies the outputs into DIR/<image_id>/."""
    from html.parser import HTMLParser

    from typer.testing import CliRunner

    from cli.main import app

    store_url, _, uri = cold_run
    _, _, inputs = bench3
    page = Path(uri).with_name("index.html")
    assert page.is_file(), "the run writes index.html beside results.parquet"

    class Parse(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.imgs, self.links = [], [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tr" and (a.get("id") or "").startswith("row-"):
                self.rows.append(a["id"])
            elif tag == "img":
                self.imgs.append(a)
            elif tag == "a" and not a["href"].startswith("#"):
                self.links.append(a["href"])

    p = Parse()
    p.feed(page.read_text())
    assert len(p.rows) == 3
    for h in p.links:
        assert (page.parent / h).resolve().is_file(), h
    shot = _chromium_screenshot(page, tmp_path / "index.png")
    for kind in ("before", "after", "SSR overlay"):
        thumbs = [a["src"] for a in p.imgs if a["alt"] == kind]
        assert len(thumbs) == 3, kind
        where = [_found_at(shot, t) for t in thumbs]
        assert all(where), f"{kind} thumbnails not all on screen: {where}"
        assert len({y for _, y in where}) == 3, f"{kind}: one per row, in three rows: {where}"

    res = CliRunner().invoke(app, ["export", uri, "--to", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output
    for r in inputs:
        have = set(os.listdir(tmp_path / "export" / r["image_id"]))
        assert {"edited.png", "mask.png", "overlay.png", "plan.json", "trace.json"} <= have, have
    assert (tmp_path / "export" / "index.html").is_file()


def test_second_run_is_all_cached_without_loading_models(cold_run, bench3):
    from flows.edit_dataset import edit_dataset

    store_url, cfg, first_uri = cold_run
    _, manifest, _ = bench3
    _fresh_process_state()
    uri = edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny", config=cfg)
    assert uri != first_uri, "each run writes its own results.parquet; none is overwritten"
    st = ArtifactStore(store_url)
    first = {r["image_id"]: r for r in _rows(st, first_uri)}
    for row in _rows(st, uri):
        assert row["task_runs"] > 0 and row["cache_hits"] == row["task_runs"], row["cached_stages"]
        assert row["edited_uri"] == first[row["image_id"]]["edited_uri"]
        assert row["status"] == first[row["image_id"]]["status"]
    assert models.stats() == {}, f"a fully cached run loaded models: {models.stats()}"


def test_llm_only_change_reuses_every_ssr(cold_run, bench3):
    from flows.edit_dataset import edit_dataset

    store_url, cfg, _ = cold_run
    _, manifest, _ = bench3
    changed = _config(Path(cfg["models_dir"]), llm={"max_new_tokens": 1000})
    _fresh_process_state()
    uri = edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny", config=changed)
    st = ArtifactStore(store_url)
    for row in _rows(st, uri):
        counts = _stage_counts(row)
        for stage in ("load", *STAGE_NAMES):
            hit, calls = counts[stage]
            # step 0's perception is the cold run's; later steps perceive edited images, also cached
            assert hit == calls, f"{row['image_id']}: {stage} recomputed after an LLM-only change ({row['cached_stages']})"
        assert counts["decompose"] == (0, 1), f"the LLM stage must re-run: {row['cached_stages']}"


def test_edit_dataset_on_s3(prefect_harness, tiny_models_dir, bench3, moto_server, s3_bucket, monkeypatch):
    """Store, Prefect results and cache records on S3 (moto's server), images read from disk."""
    import s3fs

    from flows.edit_dataset import edit_dataset

    _, manifest, inputs = bench3
    monkeypatch.setenv("CIELR_STORE__ENDPOINT_URL", moto_server)
    monkeypatch.setenv("CIELR_STORE__KEY", "testing")
    monkeypatch.setenv("CIELR_STORE__SECRET", "testing")
    store_url = f"s3://{s3_bucket}/cielr"
    _fresh_process_state()
    uri = edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny",
                       config=_config(tiny_models_dir))
    assert uri.startswith(f"s3://{s3_bucket}/cielr/runs/")
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": moto_server},
                           skip_instance_cache=True)
    rows = pq.read_table(io.BytesIO(fs.cat(uri))).to_pylist()
    assert len(rows) == len(inputs)
    for row in rows:
        assert row["status"] in ("ok", "no_target"), f"{row['image_id']}: {row['error']}"
        assert row["edited_uri"].startswith(f"s3://{s3_bucket}/cielr/out/")
        assert fs.exists(row["edited_uri"])
    assert fs.ls(f"{s3_bucket}/cielr/prefect"), "Prefect results and cache records live on the store"
    # the re-run finds everything in S3
    _fresh_process_state()
    uri2 = edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny", config=_config(tiny_models_dir))
    for row in pq.read_table(io.BytesIO(fs.cat(uri2))).to_pylist():
        assert row["cache_hits"] == row["task_runs"], row["cached_stages"]


def test_transient_store_failure_is_retried_and_bad_image_is_not(prefect_harness, tiny_models_dir, bench3, tmp_path,
                                                                  monkeypatch):
    from flows.edit_image import edit_image
    from storage.store import StoreError

    _, _, inputs = bench3
    calls: dict[str, int] = {"depth": 0, "load": 0}
    depth_keys: list[str] = []
    real_put_array = ArtifactStore.put_array

    def flaky_put_array(self, key, *a, **kw):
        if key.startswith("depth/"):
            calls["depth"] += 1
            depth_keys.append(key)
            if calls["depth"] == 1:
                # what the store raises when its backend drops the connection (see ArtifactStore._error)
                raise StoreError(f"{self.url}: simulated outage while writing {key}", transient=True)
        return real_put_array(self, key, *a, **kw)

    monkeypatch.setattr(ArtifactStore, "put_array", flaky_put_array)
    _fresh_process_state()
    row = edit_image(image_uri=inputs[0]["image_uri"], instruction=inputs[0]["instruction"], profile="tiny",
                     config=_config(tiny_models_dir), store=str(tmp_path / "store"))
    assert row["status"] in ("ok", "no_target"), row["error"]
    # the row and its task runs are named after the file (segment[<stem>], not segment[image])
    stem = Path(inputs[0]["image_uri"]).stem
    assert row["image_id"] == stem
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        named_runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"segment[{stem}]"])))
    assert named_runs, f"no task run named segment[{stem}]"
    # the first depth write failed (transient) and the task's retry wrote the same key
    assert depth_keys[:2] == [depth_keys[0]] * 2, depth_keys

    # bad input is not retried: a corrupt file fails once, with a message naming it
    import tasks.images as ti

    real_decode = ti.decode_image

    def counting_decode(*a, **kw):
        calls["load"] += 1
        return real_decode(*a, **kw)

    monkeypatch.setattr(ti, "decode_image", counting_decode)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    state = edit_image(image_uri=str(bad), instruction="remove the cup", profile="tiny",
                       config=_config(tiny_models_dir), store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed(), "a failed image fails the edit-image flow run"
    row = state.result(raise_on_failure=False)
    assert row["status"] == "failed" and row["failed_stage"] == "load"
    assert "corrupt.png" in row["error"]
    assert calls["load"] == 1, "bad input must not be retried"


def test_bad_rows_are_reported_and_the_rest_completes(prefect_harness, tiny_models_dir, bench3, tmp_path):
    from flows.edit_dataset import edit_dataset, results_uri

    folder, _, inputs = bench3
    images = folder / "images"
    (images / "truncated.png").write_bytes(Path(inputs[0]["image_uri"]).read_bytes()[:300])
    outside = tmp_path / "outside.png"
    outside.write_bytes(Path(inputs[0]["image_uri"]).read_bytes())
    good = inputs[0]
    rows = [
        {"image_id": "good", "image_uri": good["image_uri"], "instruction": good["instruction"]},
        {"image_id": "truncated", "image_uri": str(images / "truncated.png"), "instruction": "remove the cup"},
        {"image_id": "../escape", "image_uri": good["image_uri"], "instruction": "remove the cup"},
        {"image_id": "good", "image_uri": good["image_uri"], "instruction": "duplicate id"},
        {"image_id": "outside", "image_uri": str(outside), "instruction": "remove the cup"},
        {"image_id": "no-instruction", "image_uri": good["image_uri"], "instruction": ""},
        {"image_id": "missing-file", "image_uri": str(images / "nope.png"), "instruction": "remove the cup"},
    ]
    manifest = write_manifest(rows, str(folder / "bad-manifest.parquet"))
    store_url = str(tmp_path / "store")
    state = edit_dataset(manifest_uri=manifest, store=store_url, profile="tiny", config=_config(tiny_models_dir),
                         return_state=True)
    # failed and invalid rows fail the run (orchestration.max_failed_fraction 0), results written all the same
    assert state.is_failed() and "2 failed, 4 invalid of 7 rows" in state.message, state
    uri = results_uri(state)
    by_id: dict[str, list[dict]] = {}
    for r in _rows(ArtifactStore(store_url), uri):
        by_id.setdefault(r["image_id"], []).append(r)
    assert len(sum(by_id.values(), [])) == len(rows), "every row ends in results.parquet"
    statuses = sorted(r["status"] for r in by_id["good"])
    assert len(statuses) == 2 and "invalid" in statuses
    assert {"ok", "no_target"} & set(statuses), statuses
    assert "duplicate image_id" in [r for r in by_id["good"] if r["status"] == "invalid"][0]["error"]
    assert by_id["truncated"][0]["status"] == "failed" and by_id["truncated"][0]["failed_stage"] == "load"
    assert "truncated.png" in by_id["truncated"][0]["error"]
    assert by_id["../escape"][0]["status"] == "invalid" and "unsafe image_id" in by_id["../escape"][0]["error"]
    assert by_id["outside"][0]["status"] == "invalid" and "outside the allowed input roots" in by_id["outside"][0]["error"]
    assert by_id["no-instruction"][0]["status"] == "invalid" and "missing instruction" in by_id["no-instruction"][0]["error"]
    assert by_id["missing-file"][0]["status"] == "failed" and "no such file" in by_id["missing-file"][0]["error"]


def test_killed_run_resumes_without_recomputing_finished_rows(prefect_harness, tiny_models_dir, bench3, tmp_path):
    """`cielr run` in a subprocess is killed (SIGKILL) after its first image is finished; the re-run
    completes the rest and takes the finished image entirely from the cache."""
    from prefect.settings import PREFECT_API_URL

    _, manifest, inputs = bench3
    store_url = tmp_path / "store"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "CIELR_MODELS_DIR": str(tiny_models_dir),
           "CIELR_ORCHESTRATION__RETRY_DELAY_S": "0"}
    cmd = [sys.executable, "-m", "cli.main", "run", str(manifest), "--store", str(store_url), "--profile", "tiny"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    finished: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        finished = list(store_url.glob("out/*/*/*/trace.json"))
        if finished:
            break
        time.sleep(0.1)
    assert finished, f"no image finished before the deadline (exit {proc.poll()}): {proc.stdout.read().decode()[-2000:]}"
    # trace.json is written in the finalize task's body; Prefect persists that task's cache record just
    # after the body returns. A kill in between leaves the image's outputs without its last record (it
    # is then recomputed, correctly, and the row is not fully cached), so give the record a moment; the
    # last image cannot finish meanwhile (2 in flight on CPU, the third starts after one ends)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(store_url.glob("runs/*/results.parquet")), "killed before the end: no results yet"
    n_done = len(list(store_url.glob("out/*/*/*/trace.json")))
    assert n_done < len(inputs), "killed too late to test resuming; the first rows finished too fast"

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = done.stdout.strip().splitlines()[-1]
    rows = _rows(ArtifactStore(str(store_url)), uri)
    assert all(r["status"] in ("ok", "no_target") for r in rows), [r["error"] for r in rows]
    fully_cached = [r for r in rows if r["cache_hits"] == r["task_runs"]]
    assert len(fully_cached) >= n_done, [r["cached_stages"] for r in rows]
    assert any(r["cache_hits"] < r["task_runs"] for r in rows), "the unfinished rows were computed now"


def test_segment_retries_a_cuda_oom_once_at_half_the_point_batch(tiny_settings, monkeypatch):
    """CUDA cannot run here, so the perceiver is a test double that raises torch's own OOM error once."""
    import torch

    from cielr_core.perception import SegmentResult
    from tasks import perception as tp
    from tasks.images import put_rgb

    calls: list[dict] = []

    class OOMOncePerceiverDouble:
        def segment(self, rgb, sam2_overrides=None):
            calls.append(dict(sam2_overrides or {}))
            if len(calls) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return SegmentResult(masks=np.ones((1, 4, 4), bool), scores=np.ones(1, np.float32))

    monkeypatch.setattr(runtime, "perceiver", lambda s: OOMOncePerceiverDouble())
    image = put_rgb(np.zeros((4, 4, 3), np.uint8), tiny_settings)
    out = tp.segment.fn(image=image, settings=tiny_settings, sam2_overrides=None)
    assert out.n_masks == 1
    assert calls == [{}, {"points_per_batch": max(1, tiny_settings.perception.sam2.points_per_batch // 2)}]

    class AlwaysBadInputDouble:
        def segment(self, rgb, sam2_overrides=None):
            raise ValueError("not an OOM")

    monkeypatch.setattr(runtime, "perceiver", lambda s: AlwaysBadInputDouble())
    with pytest.raises(ValueError, match="not an OOM"):
        tp.segment.fn(image=image, settings=tiny_settings, sam2_overrides=None)


# -- the instruction's objects reach the detector's query set through the pipeline --------------------
class QueryObjectsScriptLLMDouble:
    """Test double for the LLM protocol, installed as ``tasks.runtime.llm``: ``decompose`` names the
    given objects (``query_objects``), ``assess`` says the SSR suffices, ``reason`` answers
    ``no_target`` (nothing to inpaint). Records each call's name and whether an image came with it;
    every answer is validated against the call's schema as a backend does (the tiny profile allows
    16 characters a text)."""

    def __init__(self, objects: list[str]):
        self.objects = objects
        self.calls: list[tuple[str, bool]] = []

    def complete(self, messages, schema, *, image=None, call_name=""):
        import json

        from cielr_core.reasoning.llm import LLMCall, parse_answer

        self.calls.append((call_name, image is not None))
        answer = {
            "decompose": {"reason": "one edit", "subtasks": ["remove tripod"],
                          "query_objects": self.objects},
            "assess": {"reason": "enough", "need": "none", "queries": [], "segmentation": "keep"},
            "reason": {"reason": "scripted", "status": "no_target"},
        }[call_name]
        raw = json.dumps(answer)
        return LLMCall(parsed=parse_answer(raw, schema), raw=raw, latency_s=0.001,
                       tokens={"prompt": 1, "completion": 1}, extra={"backend": "scripted"})


def test_instruction_objects_reach_the_query_set_in_trace_json(prefect_harness, tiny_models_dir, bench3, tmp_path,
                                                               monkeypatch):
    """The pipeline (real tasks, flow and tiny perception models) passes the decomposition's
    query_objects to every reason step: they join the detector's queries before the first
    assessment, trace.json records the query set holding them, and they are part of the step's
    cache key; with reasoning.show_image on, the decomposition sees the image (as Reasoner.plan)."""
    import json

    from flows.edit_image import edit_image
    from tasks import keys
    from tasks.reasoning import reason_step_cache_key
    from tasks.refs import SSRRef

    _, _, inputs = bench3
    objects = ["tripod head", "speaker grille"]  # neither is an LVIS category name
    llm = QueryObjectsScriptLLMDouble(objects)
    monkeypatch.setattr(runtime, "llm", lambda s: llm)
    store = str(tmp_path / "store")
    _fresh_process_state()
    row = edit_image(image_uri=inputs[0]["image_uri"], instruction="remove the tripod head", profile="tiny",
                     config=_config(tiny_models_dir), store=store)
    assert row["status"] == "no_target", row["error"]
    trace = json.loads(Path(row["trace_uri"]).read_text())
    decomposed = [e for e in trace["decompose"]["events"] if e.get("what") == "instruction objects"]
    assert decomposed and decomposed[0]["query_objects"] == objects
    events = trace["steps"][0]["events"]
    assert [e["reason"] for e in events if e["type"] == "ssr"][:2] == ["input", "semantic-instruction"]
    query_sets = [e for e in events if e["type"] == "note" and e["what"] == "query set"]
    assert query_sets and query_sets[0]["extra_queries"] == objects
    assert query_sets[0]["queries"][-2:] == objects and len(query_sets[0]["queries"]) > len(objects)
    # the query set was recorded before the first assessment
    first_query_set = next(i for i, e in enumerate(events) if e["type"] == "note" and e["what"] == "query set")
    first_assess = next(i for i, e in enumerate(events) if e["type"] == "llm_call" and e["call_name"] == "assess")
    assert first_query_set < first_assess
    assert [c for c, _ in llm.calls] == ["decompose", "assess", "reason"]
    assert not any(img for _, img in llm.calls), "show_image is off: no call gets an image"

    # the step's cache key (and store folder) follow the objects
    s = runtime.resolve("tiny", _config(tiny_models_dir), store)
    ssr = SSRRef(prefix="ssr/x", digest="d" * 64, n_objects=1)
    p = {"settings": runtime.settings_ref(s), "ssr": ssr, "instruction": "remove the tripod head",
         "subtask": "remove tripod"}
    found = {reason_step_cache_key({**p, "query_objects": q})
             for q in (None, [], objects, objects[:1], ["lamp"])}
    assert len(found) == 4, "None and [] are the same (no objects); every other set is its own key"
    assert reason_step_cache_key({**p, "query_objects": [" tripod  head", "speaker grille"]}) == \
        reason_step_cache_key({**p, "query_objects": objects}), "queries are normalised as perception does"
    assert all(0 < len(k) <= keys.MAX_CACHE_KEY for k in found)
    reason = keys.reason_prefix(trace["steps"][0]["events"][0]["digest"], "remove the tripod head", s)
    assert keys.step_prefix(reason, "remove tripod", objects) != keys.step_prefix(reason, "remove tripod")

    # reasoning.show_image: the decomposition (and every later call) sees the set-of-mark image
    llm.calls.clear()
    row = edit_image(image_uri=inputs[0]["image_uri"], instruction="remove the tripod head", profile="tiny",
                     config=_config(tiny_models_dir, reasoning={"show_image": True}), store=store)
    assert row["status"] == "no_target", row["error"]
    assert llm.calls == [("decompose", True), ("assess", True), ("reason", True)]
