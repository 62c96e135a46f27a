"""Shared pieces of the sandbox escape corpus: planted secrets, a marker path, limits, and the reasoning
tests' constructed scene."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from test_reasoning import make_scene  # noqa: F401 - the reasoning tests' 30x40 scene of three objects

from cielr_core.config import SandboxConfig

SECRETS = {
    "CIELR_LLM__API_KEY": "sk-planted-llm-key-7f3a9c2e51",
    "CIELR_STORE__SECRET": "planted-store-secret-b81d0e44",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-2c9e6a11",
}
# a marker the attempts try to create; unique per test session so a stale file cannot pass a test
MARKER = f"/tmp/cielr-escape-marker-{uuid.uuid4().hex[:10]}"
LIMITS = SandboxConfig(cpu_seconds=2, memory_mb=512, wall_timeout_s=6, max_output_bytes=50_000, max_open_files=32)


def no_secret_in(*texts) -> None:
    blob = "\n".join(str(t) for t in texts)
    for v in SECRETS.values():
        assert v not in blob, "a planted secret leaked"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
