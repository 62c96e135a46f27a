"""LLM endpoint faults: a dataset run against a local OpenAI-compatible server (reliability/llm_server.py)
that is healthy for some rows and faulty for others: slow beyond the timeout, accepting and never
answering, 429 with Retry-After (always, or once then a 500 then healthy), truncated and non-JSON
bodies. Every faulty row ends after bounded retries (llm.max_retries, llm.timeout_s) with a clear
per-row error; the healthy and recovering rows complete. The planted API key appears in no output,
row, stored object, log line or Prefect record."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from reliability.llm_server import FaultyLLM
from reliability.secrets import LLM_KEY, found, prefect_records

pytestmark = pytest.mark.slow

MAX_RETRIES = 2
# mode -> what the row's error must say (None: the row completes)
EXPECT = {
    "ok": None,
    "recover": None,
    "slow": "timed out after 1.0s",
    "hang": "timed out after 1.0s",
    "429": "HTTP 429",
    "truncated": "transport error",
    "nonjson": "not JSON",
}


def test_llm_faults_fail_their_rows_only(prefect_harness, tiny_models_dir, photos3, tmp_path, monkeypatch):
    from cielr_core import models
    from cielr_core.manifest import write_manifest
    from flows.edit_dataset import edit_dataset
    from storage import ArtifactStore
    from tasks import runtime

    photos_manifest, inputs = photos3
    image = inputs[0]["image_uri"]
    rows = [{"image_id": f"llm-{mode}", "image_uri": image, "instruction": f"remove the clock #fault={mode}"}
            for mode in EXPECT]
    # beside the photos' own manifest: a manifest's folder is where its images may come from
    manifest = write_manifest(rows, str(photos_manifest.parent / "llm-faults.parquet"))
    srv = FaultyLLM(slow_s=3.0, retry_after="1")
    store = tmp_path / "store"
    try:
        monkeypatch.setenv("CIELR_LLM__BACKEND", "openai")
        monkeypatch.setenv("CIELR_LLM__BASE_URL", srv.url)
        monkeypatch.setenv("CIELR_LLM__MODEL__ID", "faulty-test-model")
        monkeypatch.setenv("CIELR_LLM__API_KEY", LLM_KEY)
        monkeypatch.setenv("CIELR_LLM__TIMEOUT_S", "1")
        monkeypatch.setenv("CIELR_LLM__MAX_RETRIES", str(MAX_RETRIES))
        models.clear()
        runtime.reset()
        state = edit_dataset(manifest_uri=str(manifest), store=str(store), profile="tiny", return_state=True,
                             config={"models_dir": str(tiny_models_dir),
                                     "orchestration": {"retries": 0, "max_in_flight": 1}})
    finally:
        srv.close()
        runtime.reset()
    assert srv.errors == []
    st = ArtifactStore(str(store))
    (key,) = [k for k in st.list("runs") if k.endswith("results.parquet")]
    got = {r["image_id"]: r for r in pq.read_table(io.BytesIO(st.get_bytes(key))).to_pylist()}
    print("llm faults: requests per mode", dict(srv.requests))
    for mode, error in EXPECT.items():
        r = got[f"llm-{mode}"]
        print(f"  {mode}: {r['status']}: {r['error']}")
        if error is None:
            assert r["status"] in ("ok", "no_target"), (mode, r["error"])
        else:
            assert r["status"] == "failed" and error in r["error"], (mode, r["error"])
    assert not state.is_completed()
    # retries are bounded: a transport failure is tried max_retries + 1 times per call
    for mode in ("slow", "hang", "429", "truncated"):
        assert MAX_RETRIES + 1 <= srv.requests[mode] <= 4 * (MAX_RETRIES + 1), (mode, srv.requests)
    assert srv.requests["nonjson"] <= 4  # not a transport error: no transport retry
    assert all(f"Bearer {LLM_KEY}" in h for h in srv.headers)  # the key went where it belongs
    stored = [st.get_bytes(k) for k in st.list()]
    assert found(stored, list(got.values()), prefect_records()) == []
