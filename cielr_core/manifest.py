"""Dataset manifests: the schema, the row rules and the one writer.

A manifest is Parquet with ``image_id``, ``image_uri``, ``instruction`` (optional ``seed``,
``mask_uri``, ``reference_text``; benchmarks may add string columns). Rows are validated up front:
bad rows are reported and skipped, not fatal; a manifest that lacks a required column is a clear
error. Reading the bytes (local, s3://) is the orchestration's job (tasks/manifest.py).

Column types are whatever the writer chose (pandas writes an integer column with a missing value
as float NaN; a hand-made file may hold ids as integers or a list where a string belongs), so each
row's values are coerced one by one (:func:`coerce_row`) before any rule runs: lossless changes
are made (an integer ``image_id`` 7 becomes ``"7"``; a ``seed`` 3.0 or ``"3"`` becomes 3; NaN in an
optional column is missing), anything else makes that row ``invalid`` with a message naming the
column and the type it had; the other rows run.
"""

from __future__ import annotations

import math
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


#: how to allow a folder (the manifest's own folder is the default root)
ALLOW_HINT = ("allow its folder with `cielr run --allow-root DIR` (repeatable) or the setting "
              "limits.allowed_input_roots (CIELR_LIMITS__ALLOWED_INPUT_ROOTS)")


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
    if limit is not None:
        table = table.slice(0, max(0, limit))
    try:
        records = table.select(cols).to_pylist()
    except Exception as e:  # noqa: BLE001 - a column type pyarrow cannot turn into Python values
        raise ManifestError(f"manifest {uri}: its columns cannot be read as values: {type(e).__name__}: {e}") from e
    out = Manifest(uri=uri)
    seen: set[str] = set()
    for i, raw in enumerate(records):
        rec, error = coerce_row(raw)
        if error is None:
            error = row_error(rec, seen)
        row = {
            "row": i,
            "image_id": _as_text(rec.get("image_id")),
            "image_uri": _as_text(rec.get("image_uri")),
            "instruction": _as_text(rec.get("instruction")),
            "seed": rec.get("seed") if error is None else _int_or_none(rec.get("seed")),
            "mask_uri": rec.get("mask_uri") if isinstance(rec.get("mask_uri"), str) else None,
            "reference_text": rec.get("reference_text") if isinstance(rec.get("reference_text"), str) else None,
        }
        if error is None:
            row["image_uri"] = _resolve(rec["image_uri"], base_dir)
            if not _under(row["image_uri"], roots):
                error = (f"image_uri {rec['image_uri']!r} is outside the allowed input roots ({', '.join(roots)}); "
                         f"{ALLOW_HINT}")
        if error is None and row["mask_uri"]:
            row["mask_uri"] = _resolve(row["mask_uri"], base_dir)
            if not _under(row["mask_uri"], roots):
                error = f"mask_uri {rec['mask_uri']!r} is outside the allowed input roots; {ALLOW_HINT}"
        if error is None:
            seen.add(row["image_id"])
            out.rows.append(row)
        else:
            row["error"] = f"row {i}: {error}"
            out.rejected.append(row)
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _type_name(v: Any) -> str:
    return type(v).__name__


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _as_text(v: Any) -> str:
    """A printable stand-in for a value of a rejected row (results.parquet's string columns)."""
    if _missing(v):
        return ""
    return v if isinstance(v, str) else _short(v, 200)


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else None


def coerce_row(raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The row's values in the manifest's types, and the first error (None when every value fits).

    ``image_id``: a string, or an integer (or an integral float) written as its decimal digits.
    ``image_uri``, ``instruction``, ``mask_uri``, ``reference_text``: strings (the last two may be
    missing). ``seed``: a non-negative integer below 2**63, an integral float (3.0) or a string of
    digits; NaN or None is missing. Booleans, lists, bytes, dicts and other types are errors."""
    rec = dict(raw)
    for c in ("image_id", "image_uri", "instruction", "mask_uri", "reference_text", "seed"):
        if c in rec and _missing(rec[c]):
            rec[c] = None
    v = rec.get("image_id")
    if v is not None and not isinstance(v, str):
        if isinstance(v, int) and not isinstance(v, bool):
            rec["image_id"] = str(v)
        elif isinstance(v, float) and math.isfinite(v) and v.is_integer():
            rec["image_id"] = str(int(v))
        else:
            return rec, f"image_id must be a string (or an integer), got {_type_name(v)} {_short(v)}"
    for c in ("image_uri", "instruction", "mask_uri", "reference_text"):
        v = rec.get(c)
        if v is not None and not isinstance(v, str):
            return rec, f"{c} must be a string, got {_type_name(v)} {_short(v)}"
    v = rec.get("seed")
    if v is not None:
        seed: int | None = None
        if isinstance(v, int) and not isinstance(v, bool):
            seed = v
        elif (isinstance(v, float) and math.isfinite(v) and v.is_integer()) or (
                isinstance(v, str) and re.fullmatch(r"\s*\d{1,19}\s*", v)):
            seed = int(v)
        if seed is None or not 0 <= seed < 2**63:
            return rec, f"seed must be a non-negative integer, got {_type_name(v)} {_short(v)}"
        rec["seed"] = seed
    return rec, None


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
