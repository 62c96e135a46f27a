"""Per-process state behind the tasks: settings, stores and stage objects, built once and reused.

Tasks receive settings as a reference: the canonical JSON string of the settings dict (no secrets;
see ``cielr_core.config.settings_to_dict`` and :func:`settings_ref`), or that dict itself
and look the heavy objects up here, so models stay resident in the worker process between tasks
(the model registry in ``cielr_core.models`` does the actual once-per-process loading).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from cielr_core.config import Settings, settings_from_dict, settings_to_dict
from storage import ArtifactStore, sha256_json

_lock = threading.Lock()
_settings: dict[str, Settings] = {}
_stores: dict[str, ArtifactStore] = {}
_perceivers: dict[str, Any] = {}
_llms: dict[str, Any] = {}


SettingsRef = str | dict[str, Any]


def settings_ref(s: Settings) -> str:
    """What tasks take as ``settings``: one JSON string. A string keeps Prefect from walking a deep
    dict for futures on every task call (that walk was a quarter of the per-task overhead)."""
    import json

    return json.dumps(settings_to_dict(s), sort_keys=True, separators=(",", ":"))


def settings(data: SettingsRef | Settings) -> Settings:
    if isinstance(data, Settings):
        return data
    key = sha256_json(data)
    with _lock:
        s = _settings.get(key)
    if s is None:
        if isinstance(data, str):
            import json

            data = json.loads(data)
        s = settings_from_dict(data)
        with _lock:
            _settings[key] = s
    return s


def store(s: Settings) -> ArtifactStore:
    key = sha256_json(
        [s.store.url, s.store.endpoint_url, s.store.region, s.store.anon, s.store.key is not None]
    )
    with _lock:
        st = _stores.get(key)
        if st is None:
            st = _stores[key] = ArtifactStore.from_config(s.store)
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

    st = store(s)
    if st.protocol == "file":
        return Path(st.root) / "prefect"
    if s.store.key is not None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", s.store.key.get_secret_value())
    if s.store.secret is not None:
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s.store.secret.get_secret_value())
    basepath = f"s3://{st.root}/prefect"
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if s.store.endpoint_url:
        opts["endpoint_url"] = s.store.endpoint_url
    if s.store.region:
        opts["client_kwargs"] = {"region_name": s.store.region}
    if s.store.anon:
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
