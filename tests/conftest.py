"""Shared fixtures: one Prefect test harness per session, moto's S3 server, tiny models.

Everything is local: Prefect's ephemeral API in a temp PREFECT_HOME, moto's real HTTP server on
127.0.0.1, and toy-size random-weight models written to a temp dir by the real factories.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

# --- environment, before anything imports prefect -----------------------------------------------
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="cielr-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect-results")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf-home")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tests never read the user's own config or secrets
for _k in list(os.environ):
    if _k.startswith("CIELR_"):
        del os.environ[_k]

REPO = Path(__file__).resolve().parents[1]
CIEBENCH = (REPO.parent / "shared" / "datasets" / "ciebench").resolve()


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def ciebench_dir() -> Path:
    if not (CIEBENCH / "updated_data.json").exists():
        pytest.fail(f"CIEBench not found at {CIEBENCH} (../shared/datasets/ciebench beside the checkout)")
    return CIEBENCH


# --- S3 on moto's server ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_server():
    """moto's real S3 HTTP server on 127.0.0.1 (in-process mock_aws does not reach aiobotocore)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(moto_server) -> str:
    """A fresh bucket on the moto server; returns its name."""
    import boto3

    name = f"cielr-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=moto_server, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return name


# --- Prefect -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes 10-20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- tiny models -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_models_dir(session_tmp) -> Path:
    """All tiny model families, written once per session by the real factories."""
    from cielr_core.tiny import make_all

    d = session_tmp / "models"
    make_all(d)
    return d


def tiny_family(session_tmp: Path, family: str) -> Path:
    from cielr_core.tiny import make

    return make(family, session_tmp / "models")


@pytest.fixture()
def tiny_settings(tiny_models_dir, tmp_path):
    """`tiny` profile settings reading the session's tiny models, with a fresh local store."""
    from cielr_core.config import load_settings

    return load_settings(
        profile="tiny", overrides={"models_dir": str(tiny_models_dir), "store": {"url": str(tmp_path / "store")}}
    )
