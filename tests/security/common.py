"""Shared pieces of the sandbox escape corpus: a scene, planted secrets and a marker path."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np

from cielr_core.config import SandboxConfig
from cielr_core.ssr import SSR, Scene, make_object

H, W = 30, 40
SECRETS = {
    "CIELR_LLM__API_KEY": "sk-planted-llm-key-7f3a9c2e51",
    "CIELR_STORE__SECRET": "planted-store-secret-b81d0e44",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-2c9e6a11",
}
# a marker the attempts try to create; unique per test session so a stale file cannot pass a test
MARKER = f"/tmp/cielr-escape-marker-{uuid.uuid4().hex[:10]}"
LIMITS = SandboxConfig(cpu_seconds=2, memory_mb=512, wall_timeout_s=6, max_output_bytes=50_000, max_open_files=32)


def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def make_scene() -> Scene:
    masks = {0: _rect(2, 8, 2, 8), 1: _rect(12, 29, 14, 38), 2: _rect(16, 22, 20, 28)}
    objs = {i: make_object(i, m, label=lab, score=0.9, depth=0.5)
            for (i, m), lab in zip(masks.items(), ("cup", "plate", "apple"))}
    return Scene(ssr=SSR(image_sha256="b" * 64, width=W, height=H, objects=objs), masks=masks)


def no_secret_in(*texts) -> None:
    blob = "\n".join(str(t) for t in texts)
    for v in SECRETS.values():
        assert v not in blob, "a planted secret leaked"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
