"""A run's outputs for people: its ``index.html`` in the store, and ``cielr export``'s folder.

Both gather the same thing per results.parquet row: the files the row names (the decoded input,
edited.png, mask.png, overlay.png, plan.json, trace.json, ssr.json), thumbnails and the plan's steps,
and hand them to :mod:`cielr_core.run_index` for the page. The index links each file relative to
``runs/<run_id>/``, so it works opened as ``file://`` from a local store and in a copy of the store
(e.g. ``aws s3 sync``); the export copies the files into ``DIR/<image_id>/`` and writes its own
index.html linking to those copies.

Thumbnails are made for the first ``thumb_rows`` rows (default 500; the page says so when there
are more): every thumbnail means reading a full image from the store.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from cielr_core.manifest import SAFE_ID
from cielr_core.run_index import IndexEntry, make_entry, render_index
from tasks import keys

THUMB_ROWS = 500
#: the files gathered for a row: kind -> (results column, file name in an export)
ROW_FILES = {
    "before": (None, "input.png"), "edited": ("edited_uri", "edited.png"), "mask": ("mask_uri", "mask.png"),
    "overlay": ("overlay_uri", "overlay.png"), "plan": ("plan_uri", "plan.json"),
    "trace": ("trace_uri", "trace.json"), "ssr": ("ssr_uri", "ssr.json"),
}
#: what a page needs read (the others are only linked, unless exported)
PAGE_FILES = ("before", "edited", "mask", "overlay", "plan")
EXPORT_MARKER = "export.json"


class ExportError(RuntimeError):
    """An export that cannot start (``usage``: the command line must change) or could not copy every file."""

    def __init__(self, message: str, *, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def row_keys(st, row: dict[str, Any]) -> dict[str, str]:
    """kind -> store key of each file the row names (the decoded input by its pixel digest)."""
    out: dict[str, str] = {}
    if row.get("image_sha256"):
        out["before"] = keys.image_key(row["image_sha256"])
    for kind, (col, _) in ROW_FILES.items():
        if col and row.get(col):
            try:
                out[kind] = st.key_for(row[col])
            except Exception:  # noqa: BLE001, S112 - a URI outside this store is not followed (export lists it)
                continue
    return out


def _read(st, key: str | None) -> bytes | None:
    if key is None:
        return None
    try:
        return st.get_bytes(key)
    except Exception:  # noqa: BLE001 - a missing file shows as a placeholder on the page
        return None


def _gather(st, rows: list[dict[str, Any]], read: Callable[[int, dict[str, Any]], IndexEntry],
            workers: int = 4) -> list[IndexEntry]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda ir: read(*ir), enumerate(rows)))


def _meta(run_id: str, rows: list[dict[str, Any]], thumb_rows: int) -> tuple[dict[str, str], list[str]]:
    meta = {"run": run_id, "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    notes = [("Thumbnails link to the full files; each row's files are listed in its last column. "
              "mask: white is the region the edit was allowed to change (pixels outside it are the input's).")]
    if len(rows) > thumb_rows:
        notes.append(f"Thumbnails are shown for the first {thumb_rows} of {len(rows)} rows; every row links its files.")
    return meta, notes


def run_index_html(st, run_id: str, rows: list[dict[str, Any]], *, thumb_rows: int = THUMB_ROWS) -> str:
    """The page of run ``run_id`` (its results rows as dicts), links relative to ``runs/<run_id>/``."""
    here = keys.run_prefix(run_id)

    def read(i: int, row: dict[str, Any]) -> IndexEntry:
        where = row_keys(st, row)
        thumbs = i < thumb_rows
        files = {k: _read(st, where.get(k)) for k in PAGE_FILES if thumbs or k == "plan"}
        links = {k: posixpath.relpath(v, here) for k, v in where.items()}
        return make_entry(row, files, links, thumbs=thumbs)

    meta, notes = _meta(run_id, rows, thumb_rows)
    return render_index(_gather(st, rows, read), title=f"CIELR run {run_id}", meta=meta,
                        links={"results": posixpath.relpath(keys.results_key(run_id), here)}, notes=notes)


def write_run_index(st, run_id: str, rows: list[Any], logger=None, *, thumb_rows: int = THUMB_ROWS) -> str | None:
    """Write ``runs/<run_id>/index.html``; returns its URI, or None (with a warning) when it could not
    be written: the page is a convenience, the run's results stand without it."""
    try:
        data = [r.model_dump() if hasattr(r, "model_dump") else dict(r) for r in rows]
        page = run_index_html(st, run_id, data, thumb_rows=thumb_rows)
        key = keys.run_index_key(run_id)
        st.put_bytes(key, page.encode("utf-8"))
        return st.uri_for(key)
    except Exception as e:  # noqa: BLE001
        if logger is not None:
            logger.warning("index.html of run %s not written: %s: %s", run_id, type(e).__name__, e)
        return None


# -- export ------------------------------------------------------------------------------------------
def export_dir_name(image_id: str, used: set[str]) -> str | None:
    """The folder of a row in an export: its image_id when that is a safe, unused file name; None
    otherwise (an invalid row's id can be anything)."""
    if not isinstance(image_id, str) or not SAFE_ID.match(image_id) or image_id in used or image_id == EXPORT_MARKER:
        return None
    if image_id.lower() in ("index.html", "results.parquet"):
        return None
    return image_id


def _write_file(path: str, data: bytes) -> None:
    """Atomically (a temporary file renamed into place), with the mode open() gives: the umask applies."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_export_target(to_dir: str, source: str, force: bool) -> None:
    """Refuse a non-empty folder that is not an earlier export of the same run (unless ``force``)."""
    if not os.path.exists(to_dir):
        return
    if not os.path.isdir(to_dir):
        raise ExportError(f"--to {to_dir} exists and is not a folder", usage=True)
    entries = [e for e in os.listdir(to_dir) if not e.startswith(".")]
    if not entries or force:
        return
    marker = os.path.join(to_dir, EXPORT_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            previous = json.load(f).get("source")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == source:
        return
    what = f"an export of {previous}" if previous else f"not empty ({len(entries)} entries) and not an export of this run"
    raise ExportError(f"--to {to_dir} is {what}; choose an empty folder or pass --force to write over it", usage=True)


def export_run(st, results_key: str, to_dir: str, *, force: bool = False, thumb_rows: int = THUMB_ROWS) -> dict[str, Any]:
    """Copy run ``results_key``'s outputs into ``to_dir``: ``<image_id>/{input,edited,mask,overlay}.png,
    plan.json, trace.json, ssr.json`` (what exists), ``<image_id>/error.txt`` for a failed or invalid
    row, ``index.html`` linking to the copies, ``results.parquet`` (as it is in the store) and ``export.json`` (the source and every row's folder,
    files, status and error). Returns export.json's content; ``missing`` lists files a row names
    that could not be read. Raises :class:`ExportError` before writing anything when ``to_dir`` is a
    different, non-empty folder and ``force`` is not set."""
    run_id = keys.run_id_of(results_key)
    source = st.uri_for(results_key)
    check_export_target(to_dir, source, force)
    table_bytes = st.get_bytes(results_key)
    rows = st.get_table(results_key).to_pylist()
    os.makedirs(to_dir, exist_ok=True)
    _write_file(os.path.join(to_dir, "results.parquet"), table_bytes)
    used: set[str] = set()
    names = []
    for r in rows:
        name = export_dir_name(r.get("image_id"), used)
        if name:
            used.add(name)
        names.append(name)
    listing: list[dict[str, Any]] = [None] * len(rows)  # type: ignore[list-item]
    missing: list[str] = []

    def read(i: int, row: dict[str, Any]) -> IndexEntry:
        name = names[i]
        where = row_keys(st, row)
        item: dict[str, Any] = {"image_id": row.get("image_id"), "status": row.get("status"),
                                "error": row.get("error"), "folder": name, "files": []}
        files: dict[str, bytes | None] = {}
        links: dict[str, str] = {}
        if name is not None:
            for kind, (col, _) in ROW_FILES.items():
                if col and row.get(col) and kind not in where:
                    missing.append(f"{row.get('image_id')}: {kind} ({row[col]} is not in this store)")
            for kind, key in where.items():
                data = _read(st, key)
                if data is None:
                    missing.append(f"{row.get('image_id')}: {kind} ({st.uri_for(key)})")
                    continue
                fname = ROW_FILES[kind][1]
                _write_file(os.path.join(to_dir, name, fname), data)
                item["files"].append(fname)
                links[kind] = f"{name}/{fname}"
                if kind in PAGE_FILES:
                    files[kind] = data
            if row.get("status") in ("failed", "invalid"):
                stage = f" at {row['failed_stage']}" if row.get("failed_stage") else ""
                text = f"{row.get('status')}{stage}: {row.get('error') or ''}\n"
                _write_file(os.path.join(to_dir, name, "error.txt"), text.encode("utf-8"))
                item["files"].append("error.txt")
        listing[i] = item
        return make_entry(row, files if i < thumb_rows else {"plan": files.get("plan")}, links, thumbs=i < thumb_rows)

    entries = _gather(st, rows, read)
    meta, notes = _meta(str(run_id), rows, thumb_rows)
    meta["exported from"] = source
    unlisted = [it for it in listing if it["folder"] is None]
    if unlisted:
        notes.append(f"{len(unlisted)} row(s) have no folder (their image_id is not a safe file name); "
                     "export.json lists them with their errors.")
    page = render_index(entries, title=f"CIELR run {run_id} (export)", meta=meta, notes=notes,
                        links={"results": "results.parquet"})
    _write_file(os.path.join(to_dir, "index.html"), page.encode("utf-8"))
    marker = {"source": source, "run_id": run_id, "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rows": listing, "missing": sorted(missing)}
    _write_file(os.path.join(to_dir, EXPORT_MARKER), (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
    return marker


def file_url(uri: str) -> str:
    """A link target for a store URI: ``file://`` + the quoted path for a local file, else the URI."""
    from urllib.parse import quote

    if "://" in uri:
        return uri
    return "file://" + quote(os.path.abspath(uri))


def markdown_links(row: Any) -> dict[str, str | None]:
    """The results table artifact's link columns of a row: edited.png and mask.png (None when the
    row has no outputs)."""
    d = row.model_dump() if hasattr(row, "model_dump") else dict(row)
    out: dict[str, str | None] = {}
    for kind in ("edited", "mask"):
        uri = d.get(f"{kind}_uri")
        out[kind] = f"[{kind}.png]({file_url(uri)})" if uri else None
    return out
