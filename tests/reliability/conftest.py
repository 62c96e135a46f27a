"""Fixtures of the reliability suite: a small manifest of real photos, the session's Prefect API
URL (every forked run talks to the one test server, so no run starts its own), and a fork server
for `cielr` runs."""

from __future__ import annotations

import pytest

from reliability.harness import ForkedCli, small_manifest


@pytest.fixture(scope="session")
def photos3(tmp_path_factory, ciebench_dir):
    """Three CIEBench photos, at most 64 px a side, and their manifest."""
    return small_manifest(tmp_path_factory.mktemp("photos3"), ciebench_dir, 3, side=64)


@pytest.fixture(scope="session")
def api_url(prefect_harness) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def forked_cli(api_url, tiny_models_dir, session_tmp):
    """`cielr` runs forked from one server process with the heavy modules imported once (their log
    files in the session's temp dir, not the user's cache)."""
    cli = ForkedCli(api_url, {"XDG_CACHE_HOME": str(session_tmp / "xdg-cache"),
                              "CIELR_MODELS_DIR": str(tiny_models_dir), "CIELR_ORCHESTRATION__RETRY_DELAY_S": "0",
                              "CIELR_ORCHESTRATION__RETRY_JITTER_FACTOR": "0",
                              "CIELR_ORCHESTRATION__MAX_IN_FLIGHT": "1"})
    yield cli
    cli.stop_server()
