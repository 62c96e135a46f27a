"""Reading a manifest from its URI (a local path or s3:// with the store's credentials), then the
rules of cielr_core.manifest."""

from __future__ import annotations

import io
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from cielr_core.config import Settings
from cielr_core.files import UnreadableFileError, read_regular_file
from cielr_core.manifest import Manifest, ManifestError, validate
from tasks.images import storage_options_for


def read_table(uri: str, storage_options: dict[str, Any] | None = None, *, max_bytes: int | None = None) -> pa.Table:
    """The manifest's table. A local manifest must be a regular file (a FIFO or a device is refused
    unopened); at most ``max_bytes`` are read (limits.max_manifest_bytes)."""
    limit = max_bytes if max_bytes is not None else 1 << 62
    local = uri[len("file://"):] if uri.startswith("file://") else (None if "://" in uri else uri)
    try:
        if local is not None:
            data = read_regular_file(local, max_bytes=limit, limit_name="limits.max_manifest_bytes")
        else:
            with fsspec.open(uri, "rb", **(storage_options or {})) as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise ManifestError(f"manifest {uri}: larger than the {limit}-byte limit (limits.max_manifest_bytes)")
    except UnreadableFileError as e:
        raise ManifestError(f"manifest {e}") from e
    except ManifestError:
        raise
    except FileNotFoundError as e:
        raise ManifestError(f"manifest {uri}: no such file") from e
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"manifest {uri}: cannot be read: {type(e).__name__}: {e}") from e
    try:
        return pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"manifest {uri}: not a readable Parquet file: {e}") from e


def load_manifest(uri: str, settings: Settings, *, limit: int | None = None) -> Manifest:
    table = read_table(uri, storage_options_for(uri, settings), max_bytes=settings.limits.max_manifest_bytes)
    return validate(uri, table, allowed_roots=list(settings.limits.allowed_input_roots), limit=limit)
