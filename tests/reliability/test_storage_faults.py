"""Storage faults: a fault-injecting proxy (reliability/faults.py) in front of moto's S3 server.

* A share of requests (seeded) fails: 500, 503, dropped connections, resets, slow answers, lost
  replies. The run completes through retries, every row ok.
* An outage of one image's objects, longer than any retry budget: that row fails with a clear
  storage error, the others complete, nothing partial is stored; a re-run after the outage completes
  it without touching the finished rows' objects.
* The planted storage credentials appear in no stored object, row error, log line or Prefect record.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cielr_core.images import image_digest
from reliability.faults import FaultyProxy
from reliability.secrets import STORE_KEY, STORE_SECRET, found, prefect_records

pytestmark = pytest.mark.slow

FAULT_RATE = 0.15


@pytest.fixture()
def s3(moto_server, s3_bucket, monkeypatch, tiny_models_dir):
    from cielr_core import models
    from tasks import runtime

    proxy = FaultyProxy(moto_server, seed=16)
    monkeypatch.setenv("CIELR_STORE__ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("CIELR_STORE__KEY", STORE_KEY)
    monkeypatch.setenv("CIELR_STORE__SECRET", STORE_SECRET)
    models.clear()
    runtime.reset()
    yield proxy, f"s3://{s3_bucket}/cielr"
    proxy.close()
    runtime.reset()


def _config(tiny_models_dir) -> dict:
    return {"models_dir": str(tiny_models_dir),
            "orchestration": {"retry_delay_s": 0.0, "retry_jitter_factor": 0.0, "max_in_flight": 1}}


def _objects(moto_server: str, bucket: str) -> dict[str, bytes]:
    import boto3

    c = boto3.client("s3", endpoint_url=moto_server, aws_access_key_id="x", aws_secret_access_key="x",
                     region_name="us-east-1")
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _latest_rows(objects: dict[str, bytes]) -> list[dict]:
    runs = [k for k in objects if k.endswith("/results.parquet")]
    assert runs, "no results.parquet"
    tables = [pq.read_table(io.BytesIO(objects[k])).to_pylist() for k in runs]
    return tables


def _run(manifest, store_url, tiny_models_dir):
    from flows.edit_dataset import edit_dataset

    return edit_dataset(manifest_uri=str(manifest), store=store_url, profile="tiny",
                        config=_config(tiny_models_dir), return_state=True)


def _whole(objects: dict[str, bytes]) -> list[str]:
    import json

    from PIL import Image

    bad = []
    for k, v in objects.items():
        try:
            if k.endswith(".json") or "/prefect/" in k:
                json.loads(v)
            elif k.endswith(".png"):
                Image.open(io.BytesIO(v)).load()
            elif k.endswith(".parquet"):
                pq.read_table(io.BytesIO(v))
        except Exception as e:  # noqa: BLE001
            bad.append(f"{k}: {type(e).__name__}")
    return bad


def test_flaky_s3_run_completes_through_retries(prefect_harness, tiny_models_dir, photos3, s3, moto_server,
                                                s3_bucket):
    proxy, store_url = s3
    manifest, inputs = photos3
    proxy.rate = FAULT_RATE
    state = _run(manifest, store_url, tiny_models_dir)
    proxy.rate = 0.0
    objects = _objects(moto_server, s3_bucket)
    (rows,) = _latest_rows(objects)
    print(f"storage faults: {proxy.requests} requests, injected {dict(proxy.injected)}; rows "
          f"{[r['status'] for r in rows]}")
    assert sum(proxy.injected.values()) >= 10, proxy.injected
    assert state.is_completed(), state.message
    assert sorted(r["image_id"] for r in rows) == sorted(r["image_id"] for r in inputs)
    assert all(r["status"] in ("ok", "no_target") for r in rows), [(r["image_id"], r["error"]) for r in rows]
    assert _whole(objects) == []
    assert found(list(objects.values()), [r["error"] for r in rows], prefect_records()) == []


def test_outage_fails_the_affected_row_and_a_rerun_completes_it(prefect_harness, tiny_models_dir, photos3, s3,
                                                                 moto_server, s3_bucket):
    proxy, store_url = s3
    manifest, inputs = photos3
    victim = inputs[1]
    image_sha = image_digest(np.asarray(Image.open(victim["image_uri"]).convert("RGB")))
    proxy.refuse = (image_sha,)  # every request for this image's objects, for the whole run
    state = _run(manifest, store_url, tiny_models_dir)
    refused = proxy.refused
    proxy.refuse = ()
    assert not state.is_completed()  # a failed row fails the run (orchestration.max_failed_fraction 0)
    objects = _objects(moto_server, s3_bucket)
    (rows,) = _latest_rows(objects)
    by_id = {r["image_id"]: r for r in rows}
    bad = by_id[victim["image_id"]]
    print(f"storage outage: {refused} requests refused; {victim['image_id']}: {bad['status']}: {bad['error']}")
    assert refused > 0
    assert bad["status"] == "failed"
    assert bad["error"].startswith("load: StoreError: store s3://") and " failed: " in bad["error"], bad["error"]
    assert all(by_id[r["image_id"]]["status"] in ("ok", "no_target") for r in inputs if r is not victim)
    assert _whole(objects) == []
    assert [k for k in objects if image_sha in k and not k.startswith("cielr/prefect/")] == []
    finished = {k: v for k, v in objects.items() if "/runs/" not in k and "/prefect/" not in k}

    state = _run(manifest, store_url, tiny_models_dir)  # the outage is over
    assert state.is_completed(), state.message
    after = _objects(moto_server, s3_bucket)
    rows = max(_latest_rows(after), key=lambda t: sum(r["status"] == "ok" for r in t))
    assert all(r["status"] in ("ok", "no_target") for r in rows), [(r["image_id"], r["error"]) for r in rows]
    assert {k: after[k] for k in finished} == finished  # nothing finished was overwritten or lost
    assert found(list(after.values()), [r["error"] for r in rows], bad["error"], prefect_records()) == []
