"""Planted secrets and the places they must never reach: outputs, stored objects, logs, exceptions
and every record the Prefect API keeps (flow runs, task runs, logs, artifacts, block documents)."""

from __future__ import annotations

import json

LLM_KEY = "sk-planted-reliability-llm-key-5e1c7a"
STORE_KEY = "AKIAPLANTEDRELIABILITY"
STORE_SECRET = "planted-reliability-store-secret-93d0b2"
SECRETS = (LLM_KEY, STORE_SECRET)


def prefect_records() -> str:
    """Everything the session's Prefect API holds that a run could have written to, as one text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import LogSort

    parts = []
    with get_client(sync_client=True) as c:
        for fr in c.read_flow_runs(limit=200):
            parts.append(fr.model_dump_json())
        for tr in c.read_task_runs(limit=200):
            parts.append(tr.model_dump_json())
        for log in c.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC):
            parts.append(log.model_dump_json())
        for a in c.read_artifacts(limit=200):
            parts.append(a.model_dump_json())
        for b in c.read_block_documents(include_secrets=True):
            parts.append(b.model_dump_json())
    return "\n".join(parts)


def found(*texts) -> list[str]:
    """Which planted secrets occur in ``texts`` (str, bytes, or anything JSON-able)."""
    blob = []
    for t in texts:
        if isinstance(t, bytes):
            blob.append(t.decode("latin-1"))
        elif isinstance(t, str):
            blob.append(t)
        else:
            blob.append(json.dumps(t, default=str))
    text = "\n".join(blob)
    return [s for s in SECRETS if s in text]
