"""Reading a manifest from its URI (a local path or s3:// with the store's credentials), then the
rules of cielr_core.manifest."""

from __future__ import annotations

import io
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from cielr_core.config import Settings
from cielr_core.manifest import Manifest, ManifestError, validate
from tasks.images import storage_options_for


def read_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ManifestError(f"manifest {uri}: no such file") from e
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"manifest {uri}: cannot be read: {type(e).__name__}: {e}") from e
    try:
        return pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"manifest {uri}: not a readable Parquet file: {e}") from e


def load_manifest(uri: str, settings: Settings, *, limit: int | None = None) -> Manifest:
    table = read_table(uri, storage_options_for(uri, settings))
    return validate(uri, table, allowed_roots=list(settings.limits.allowed_input_roots), limit=limit)
