"""S3 credentials for workers from a saved Prefect block (prefect-aws AwsCredentials), beside the
environment variables: `store.credentials_block` names the block; each process loads it from the
Prefect API (here the session's harness) and reaches moto's S3 server with its key, secret, region
and endpoint. The secret never enters the settings reference, reprs, the result-storage block or
error messages."""

from __future__ import annotations

import uuid

import pytest

KEY, SECRET = "AKIABLOCKKEY0001", "block-secret-value-5f1e"


@pytest.fixture()
def block_settings(prefect_harness, moto_server, s3_bucket):
    from prefect_aws import AwsCredentials

    from cielr_core.config import load_settings
    from tasks import runtime

    name = f"cielr-s3-{uuid.uuid4().hex[:8]}"
    AwsCredentials(aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1",
                   aws_client_parameters={"endpoint_url": moto_server}).save(name)
    runtime.reset()
    s = load_settings(profile="tiny", overrides={"store": {"url": f"s3://{s3_bucket}/cielr",
                                                           "credentials_block": name}})
    yield s, name, s3_bucket
    runtime.reset()


def test_the_store_reaches_s3_with_the_blocks_credentials_and_endpoint(block_settings, tmp_path):
    import numpy as np

    from cielr_core.images import encode_png
    from tasks import runtime
    from tasks.images import read_uri

    s, _, bucket = block_settings
    assert s.store.endpoint_url is None and s.store.key is None  # only the block has them
    st = runtime.store(s)
    assert st.fs.key == KEY and st.fs.secret == SECRET
    st.put_bytes("probe/a.png", encode_png(np.zeros((4, 4, 3), np.uint8)))  # through moto, at the block's endpoint
    assert read_uri(f"s3://{bucket}/cielr/probe/a.png", s)[:4] == b"\x89PNG"  # the load-image stage's reader
    assert st.get_bytes("probe/a.png")[:4] == b"\x89PNG"
    # the block never leaks: not in the settings reference that tasks receive, nor in reprs, nor in
    # the result-storage block saved in Prefect, nor in a store error
    cfg = runtime.store_config(s)
    assert cfg.secret.get_secret_value() == SECRET and SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert SECRET not in runtime.settings_ref(s).data and KEY not in runtime.settings_ref(s).data
    block = runtime.result_storage(s)
    assert SECRET not in block.model_dump_json() and KEY not in block.model_dump_json()
    with pytest.raises(Exception) as e:
        st.get_bytes("probe/missing.png")
    assert SECRET not in str(e.value)


def test_explicit_settings_win_over_the_block_and_a_missing_block_is_named(block_settings):
    from pydantic import SecretStr

    from tasks import runtime

    s, _, _ = block_settings
    s2 = s.model_copy(update={"store": s.store.model_copy(update={"key": SecretStr("ENVKEY")})})
    assert runtime.store_config(s2).key.get_secret_value() == "ENVKEY"
    assert runtime.store_config(s2).secret.get_secret_value() == SECRET
    s3 = s.model_copy(update={"store": s.store.model_copy(update={"credentials_block": "no-such-block"})})
    with pytest.raises(ValueError, match="store.credentials_block 'no-such-block': no such AwsCredentials block"):
        runtime.store(s3)
