"""Dataset manifests: the schema, the row rules and the one writer.

A manifest is Parquet with ``image_id``, ``image_uri``, ``instruction`` (optional ``seed``,
``mask_uri``, ``reference_text``; benchmarks may add string columns). Rows are validated up front:
bad rows are reported and skipped, not fatal; a manifest that lacks a required column is a clear
error. Reading the bytes (local, s3://) is the orchestration's job (tasks/manifest.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("image_id", pa.string()), ("image_uri", pa.string()), ("instruction", pa.string()), ("seed", pa.int64()),
    ("mask_uri", pa.string()), ("reference_text", pa.string()),
]
REQUIRED = ("image_id", "image_uri", "instruction")
OPTIONAL = tuple(name for name, _ in MANIFEST_COLUMNS if name not in REQUIRED)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_INSTRUCTION_CHARS = 2000


class ManifestError(ValueError):
    """The manifest as a whole cannot be used."""

    transient = False


@dataclass
class Manifest:
    uri: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # each with image_id, image_uri, instruction, error


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _resolve(uri: str, base_dir: str | None) -> str:
    if _is_remote(uri):
        return uri
    path = os.path.expanduser(_local(uri))
    if not os.path.isabs(path) and base_dir is not None:
        path = os.path.join(base_dir, path)
    return os.path.realpath(path)


def _under(uri: str, roots: list[str]) -> bool:
    for root in roots:
        if _is_remote(root) or _is_remote(uri):
            if _is_remote(root) and _is_remote(uri) and uri.startswith(root.rstrip("/") + "/"):
                return True
            continue
        r = os.path.realpath(os.path.expanduser(_local(root)))
        if uri == r or uri.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


def validate(uri: str, table: pa.Table, *, allowed_roots: list[str], limit: int | None = None) -> Manifest:
    """The rows of a manifest ``table`` read from ``uri``: valid rows (URIs resolved against the
    manifest's folder) and rejected ones, each with its error. ``allowed_roots`` empty: the
    manifest's own folder."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"manifest {uri}: missing required column(s) {', '.join(missing)} "
            f"(has {', '.join(table.column_names) or 'no columns'})"
        )
    base_dir = None if _is_remote(uri) else os.path.dirname(os.path.realpath(_local(uri)))
    roots = list(allowed_roots) or ([base_dir] if base_dir else [uri.rsplit("/", 1)[0]])
    cols = [c for c in REQUIRED + OPTIONAL if c in table.column_names]
    records = table.select(cols).to_pylist()
    if limit is not None:
        records = records[: max(0, limit)]
    out = Manifest(uri=uri)
    seen: set[str] = set()
    for i, rec in enumerate(records):
        error = row_error(rec, seen)
        row = {
            "row": i,
            "image_id": rec.get("image_id") if isinstance(rec.get("image_id"), str) else str(rec.get("image_id")),
            "image_uri": rec.get("image_uri") or "",
            "instruction": rec.get("instruction") or "",
            "seed": rec.get("seed"),
            "mask_uri": rec.get("mask_uri"),
            "reference_text": rec.get("reference_text"),
        }
        if error is None:
            row["image_uri"] = _resolve(rec["image_uri"], base_dir)
            if not _under(row["image_uri"], roots):
                error = f"image_uri {rec['image_uri']!r} is outside the allowed input roots ({', '.join(roots)})"
        if error is None and row["mask_uri"]:
            row["mask_uri"] = _resolve(row["mask_uri"], base_dir)
            if not _under(row["mask_uri"], roots):
                error = f"mask_uri {rec['mask_uri']!r} is outside the allowed input roots"
        if error is None:
            seen.add(row["image_id"])
            out.rows.append(row)
        else:
            row["error"] = f"row {i}: {error}"
            out.rejected.append(row)
    return out


def row_error(rec: dict[str, Any], seen: set[str]) -> str | None:
    for c in REQUIRED:
        v = rec.get(c)
        if v is None or (isinstance(v, str) and not v.strip()):
            return f"missing {c}"
        if not isinstance(v, str):
            return f"{c} must be a string, got {type(v).__name__}"
    if not SAFE_ID.match(rec["image_id"]):
        return (
            f"unsafe image_id {rec['image_id']!r} (use letters, digits, '.', '_', '-'; "
            "start with a letter or digit; at most 128 characters)"
        )
    if rec["image_id"] in seen:
        return f"duplicate image_id {rec['image_id']!r}"
    if len(rec["instruction"]) > MAX_INSTRUCTION_CHARS:
        return f"instruction longer than {MAX_INSTRUCTION_CHARS} characters"
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in rec["instruction"]):
        return "instruction contains control characters"
    seed = rec.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        return f"seed must be a non-negative integer, got {seed!r}"
    return None



def write_manifest(rows: Iterable[dict[str, Any]], path: str | os.PathLike, *, extra_columns: Iterable[str] = ()) -> str:
    """Write rows as a Parquet manifest (columns ``image_id``, ``image_uri``, ``instruction``,
    ``seed``, ``mask_uri``, ``reference_text``, then ``extra_columns`` as strings) and return
    the path. Written to a temporary file and renamed, so a reader never sees half a file."""
    rows = list(rows)
    fields = list(MANIFEST_COLUMNS) + [(c, pa.string()) for c in extra_columns]
    schema = pa.schema(fields)
    data = []
    for r in rows:
        rec = {}
        for name, typ in fields:
            v = r.get(name)
            if v is not None and typ == pa.string() and not isinstance(v, str):
                v = str(v)
            rec[name] = v
        data.append(rec)
    table = pa.Table.from_pylist(data, schema=schema)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
