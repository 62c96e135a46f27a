"""The LLM batched (issue 15), at dataset level: the images in flight keep several requests in
flight at an OpenAI-compatible endpoint. Real parts: Prefect's engine and API (the session's test
harness), tiny random-weight models through their real classes, CIEBench photos, and
bench/llm_endpoint.py (an HTTP endpoint answering through the in-process tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cielr_core.config import load_settings
from cielr_core.reasoning import make_llm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llm_endpoint import LLMEndpoint, through_model


@pytest.fixture()
def one_torch_thread():
    import torch

    from cielr_core.models import pin_intra_op_threads

    n = torch.get_num_threads()
    pin_intra_op_threads(1)
    yield
    pin_intra_op_threads(n)


def _llm(models_dir: Path, **llm):
    s = load_settings(profile="tiny", overrides={"models_dir": str(models_dir), "llm": llm})
    return make_llm(s.llm, s)


def test_dataset_run_keeps_several_llm_requests_in_flight(prefect_harness, tiny_models_dir, ciebench_dir, tmp_path,
                                                          one_torch_thread):
    """Images in flight make concurrent LLM calls: an OpenAI-compatible endpoint (the tiny model
    behind a fixed service latency, no capacity limit) sees more than one request at once."""
    import pyarrow.parquet as pq

    from cielr_core.manifest import write_manifest
    from cli.commands.demo import write_demo_inputs
    from flows.edit_dataset import edit_dataset

    _, rows = write_demo_inputs(tmp_path / "in", str(ciebench_dir), 3)
    manifest = write_manifest(rows, str(tmp_path / "manifest.parquet"))
    with LLMEndpoint(through_model(_llm(tiny_models_dir, max_new_tokens=256)), latency_s=0.5) as ep:
        uri = edit_dataset(manifest_uri=manifest, store=str(tmp_path / "store"), profile="tiny", config={
            "models_dir": str(tiny_models_dir),
            "orchestration": {"max_in_flight": 3, "retry_delay_s": 0.0, "retry_jitter_factor": 0.0},
            "llm": {"backend": "openai", "base_url": ep.url, "model": {"id": "tiny/qwen2"}, "max_concurrency": 3}})
    out = pq.read_table(uri).to_pylist()
    assert len(out) == 3 and not ep.errors
    assert ep.max_in_flight > 1, f"{ep.requests} requests, never more than one in flight"
    assert ep.max_in_flight <= 3  # llm.max_concurrency bounds what the endpoint sees
