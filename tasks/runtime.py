"""Per-process state behind the tasks: settings, stores and stage objects, built once and reused.

Settings are resolved once per flow run (:func:`resolve`) and travel to every task as one
:class:`SettingsRef`: the canonical JSON of the settings without secrets and its digest, computed
once. A task turns it back into ``Settings`` with :func:`settings`, which looks the digest up in
this process (parsing the JSON only the first time), and looks the heavy objects up here, so models
stay resident in the worker process between tasks (the model registry in ``cielr_core.models``
does the actual once-per-process loading).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict

from cielr_core.canonical import canonical_json, sha256_bytes, sha256_json
from cielr_core.config import Settings, load_settings, settings_from_dict, settings_to_dict
from storage import ArtifactStore

_lock = threading.Lock()
_settings: dict[str, Settings] = {}
_stores: dict[str, ArtifactStore] = {}
_perceivers: dict[str, Any] = {}
_llms: dict[str, Any] = {}
_credentials: dict[str, Any] = {}


class SettingsRef(BaseModel):
    """The settings of one flow run as tasks take them: canonical JSON (no secrets: the receiving
    process takes those from its own environment) and its sha256, computed once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: str
    data: str


def resolve(profile: str | None = None, config: dict[str, Any] | None = None,
            store: str | None = None) -> Settings:
    """Flow parameters -> Settings: ``config`` takes the YAML file's place (so CIELR_* env still
    wins over it, as on the command line); ``store`` is an explicit override."""
    overrides = {"store": {"url": store}} if store else None
    return load_settings(profile=profile, config_data=config, overrides=overrides)


def settings_ref(s: Settings) -> SettingsRef:
    """What tasks take as ``settings``: computed once per flow run and passed down as it is."""
    data = canonical_json(settings_to_dict(s))
    ref = SettingsRef(digest=sha256_bytes(data), data=data.decode("utf-8"))
    with _lock:
        _settings.setdefault(ref.digest, s)
    return ref


def settings(ref: SettingsRef | Settings) -> Settings:
    """The Settings behind a reference: parsed once per process, then a dictionary look-up. Every
    task starts here, so this also pins torch's intra-op threads to ``orchestration.torch_threads``:
    a stage gives the same bytes in this process as in any other (a Dask worker starts with one
    thread, the in-process runner with every core)."""
    if isinstance(ref, Settings):
        s = ref
    else:
        with _lock:
            s = _settings.get(ref.digest)
        if s is None:
            import json

            s = settings_from_dict(json.loads(ref.data))
            with _lock:
                s = _settings.setdefault(ref.digest, s)
    from cielr_core.models import pin_intra_op_threads

    pin_intra_op_threads(s.orchestration.torch_threads)
    return s


def store_config(s: Settings):
    """``s.store`` with the credentials it names filled in: with ``store.credentials_block`` set, the
    saved Prefect ``AwsCredentials`` block of that name (prefect-aws) gives the access key, secret,
    region and endpoint that the settings leave unset (``CIELR_STORE__*`` values win). The block is
    loaded once per process from the Prefect API; its secrets stay in SecretStr fields (masked in
    reprs, logs and the settings reference that tasks receive)."""
    cfg = s.store
    name = cfg.credentials_block
    if not name:
        return cfg
    with _lock:
        creds = _credentials.get(name)
    if creds is None:
        try:
            from prefect_aws import AwsCredentials
        except ImportError as e:
            raise RuntimeError(f"store.credentials_block {name!r}: prefect-aws is not installed "
                               f"(pip install 'cielr[aws]')") from e
        try:
            creds = AwsCredentials.load(name, _sync=True)
        except ValueError as e:
            raise ValueError(f"store.credentials_block {name!r}: no such AwsCredentials block in the Prefect API "
                             f"({e}); save one (prefect-aws) or unset CIELR_STORE__CREDENTIALS_BLOCK") from e
        with _lock:
            creds = _credentials.setdefault(name, creds)
    from pydantic import SecretStr

    update: dict[str, Any] = {}
    if cfg.key is None and creds.aws_access_key_id:
        update["key"] = SecretStr(creds.aws_access_key_id)
    if cfg.secret is None and creds.aws_secret_access_key is not None:
        update["secret"] = creds.aws_secret_access_key
    if cfg.region is None and creds.region_name:
        update["region"] = creds.region_name
    endpoint = getattr(creds.aws_client_parameters, "endpoint_url", None)
    if cfg.endpoint_url is None and endpoint:
        update["endpoint_url"] = str(endpoint)
    return cfg.model_copy(update=update)


def store(s: Settings) -> ArtifactStore:
    cfg = store_config(s)
    key = sha256_json(
        [cfg.url, cfg.endpoint_url, cfg.region, cfg.anon, cfg.key is not None, cfg.credentials_block]
    )
    with _lock:
        st = _stores.get(key)
        if st is None:
            st = _stores[key] = ArtifactStore.from_config(cfg)
        return st


def perceiver(s: Settings):
    from cielr_core.perception import Perceiver

    key = sha256_json([s.perception.digest(), s.perception.device, s.models_dir])
    with _lock:
        p = _perceivers.get(key)
        if p is None:
            p = _perceivers[key] = Perceiver(s)
        return p


def llm(s: Settings):
    from cielr_core.reasoning import make_llm

    key = sha256_json([s.llm.digest(), s.llm.device, s.llm.base_url, s.models_dir])
    with _lock:
        m = _llms.get(key)
        if m is None:
            m = _llms[key] = make_llm(s.llm, s)
        return m


_result_storages: dict[str, Any] = {}


def result_storage(s: Settings):
    """Prefect result storage (results and cache records) on the same store as the artifacts.

    Local stores: a path (Prefect resolves it to a LocalFileSystem). S3 stores: Prefect needs the
    block saved server-side (so any process can read results back), so a RemoteFileSystem block
    named after the store URL and endpoint is saved once per process, WITHOUT credentials: s3fs
    takes them from the standard AWS variables, which ``CIELR_STORE__KEY`` / ``__SECRET`` fill for
    this process when they are not already set. Secrets never go into the Prefect database.
    """
    from pathlib import Path

    from tasks import keys

    st = store(s)
    if st.protocol == "file":
        return Path(st.root) / keys.PREFECT_PREFIX
    cfg = store_config(s)  # with store.credentials_block: the block's values where the settings have none
    if cfg.key is not None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", cfg.key.get_secret_value())
    if cfg.secret is not None:
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", cfg.secret.get_secret_value())
    basepath = f"s3://{st.root}/{keys.PREFECT_PREFIX}"
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if cfg.endpoint_url:
        opts["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        opts["client_kwargs"] = {"region_name": cfg.region}
    if cfg.anon:
        opts["anon"] = True
    name = "cielr-results-" + sha256_json([basepath, opts])[:20]
    with _lock:
        block = _result_storages.get(name)
    if block is None:
        from prefect.filesystems import RemoteFileSystem

        block = RemoteFileSystem(basepath=basepath, settings=opts)
        block.save(name, overwrite=True)
        with _lock:
            _result_storages[name] = block
    return block


def reset() -> None:
    """Forget cached objects (tests)."""
    with _lock:
        _settings.clear()
        _stores.clear()
        _perceivers.clear()
        _llms.clear()
        _result_storages.clear()
        _credentials.clear()
