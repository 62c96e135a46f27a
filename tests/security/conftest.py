"""The `planted` fixture: secrets in the environment, a decoy result on disk, and checks after each
attempt that nothing escaped (no marker, decoy intact, no process left)."""

from __future__ import annotations

import hashlib
import os

import psutil
import pytest

from cielr_core.reasoning.sandbox.isolation import owner_tag
from security.common import MARKER, SECRETS


@pytest.fixture()
def planted(monkeypatch, tmp_path):
    """Secrets in the parent's environment and a decoy 'finished result' on disk, as on a worker."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    decoy = tmp_path / "store" / "runs" / "r1" / "results.parquet"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"finished results that must never be lost " * 100)
    digest = hashlib.sha256(decoy.read_bytes()).hexdigest()
    if os.path.exists(MARKER):
        os.remove(MARKER)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield {"decoy": decoy, "decoy_sha": digest}
    # nothing escaped
    assert not os.path.exists(MARKER), "the marker file appeared"
    assert decoy.exists() and hashlib.sha256(decoy.read_bytes()).hexdigest() == digest, "the decoy changed"
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], f"processes outlived the call: {[(p.pid, p.name()) for p in left]}"
    tag = owner_tag()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if tag in (p.info.get("cmdline") or [])], "a sandbox of this process is still running"


