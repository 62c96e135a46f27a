"""A run's browsable page: ``index.html`` from plain data (no store, no Prefect).

One row per image: id, instruction, before / after / mask / SSR-overlay thumbnails (each a link to
the full file), the plan's steps with their reasons, the row's status and error, and links to the
row's files. The caller says where each file is (``links``: an href relative to the page, so the
page works opened as ``file://`` from a local store, and in a copied or exported run folder) and
hands over the bytes the thumbnails are made from; thumbnails are embedded as data URIs
(:func:`cielr_core.report.thumbnail_data_uri`), so the page needs no other file to show them.

Everything shown comes from a manifest or a model (ids, instructions, errors, plan text): all of
it is HTML-escaped, hrefs are URL-quoted and only relative paths or ``http(s)`` / ``file`` URLs
become links, and the page declares a Content-Security-Policy that runs no script at all.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from cielr_core.report import plan_steps_html, thumbnail_data_uri

#: the thumbnails of a row, in column order, with their column headings
THUMB_KINDS = {"before": "before", "edited": "after", "mask": "mask", "overlay": "SSR overlay"}
#: the files a row links to, in order, with their link texts
LINK_KINDS = {"before": "input", "edited": "edited.png", "mask": "mask.png", "overlay": "overlay.png",
              "plan": "plan.json", "trace": "trace.json", "ssr": "ssr.json"}
THUMB_SIZE = 128
#: statuses that count as success (anything else is shown as a failure)
OK_STATUSES = ("ok", "no_target")

# no script, no remote resource: inline styles and data: images only
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:20px;color:#222}
h1{font-size:20px;margin:0 0 8px}ul.meta{margin:4px 0 12px;padding-left:18px;font-size:13px}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top}
th{background:#f2f2f2;position:sticky;top:0}td.thumb{width:132px;text-align:center}
td.thumb img{display:block;max-width:128px;max-height:128px;margin:auto;background:#eee;outline:1px solid #bbb}
td.instr{min-width:160px;max-width:260px}td.plan{min-width:220px;max-width:380px}
td.plan ol{margin:0;padding-left:18px}td.plan li{margin-bottom:4px}.reason{color:#555;font-size:12px}
.op{font-weight:600}.err{color:#a11;font-size:12px;white-space:pre-wrap;word-break:break-word;max-width:320px}
.files a{display:inline-block;margin-right:6px;font-size:12px}.missing{color:#999}.small{font-size:12px;color:#555}
.st{display:inline-block;padding:1px 6px;border-radius:8px;font-size:12px;white-space:nowrap}
.st-ok{background:#dff3df;color:#1d5e1d}.st-no_target{background:#eee;color:#555}
.st-failed,.st-invalid{background:#fbdcdc;color:#8a1b1b}.st-cancelled{background:#fff1c2;color:#7a5b00}tr.bad td{background:#fff6f6}
code{overflow-wrap:anywhere}td.id{min-width:96px;max-width:180px}
"""


@dataclass
class IndexEntry:
    """One row of the page. ``thumbs``: kind -> data URI (or None); ``links``: kind -> href;
    ``steps``: the plan's steps as dicts (subtask, status, operation, target_ids, prompt, reason)."""

    image_id: str
    instruction: str
    status: str
    error: str | None = None
    failed_stage: str | None = None
    verified: bool | None = None
    thumbs: dict[str, str | None] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)


def plan_steps(data: bytes | str | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps of a plan.json as plain dicts (what the page shows of each)."""
    from cielr_core.plan import read_plan

    plan = read_plan(dict(data) if isinstance(data, Mapping) else data)
    return [{"subtask": s.subtask, "status": s.status, "operation": s.operation, "target_ids": list(s.target_ids),
             "prompt": s.prompt, "reason": s.reason} for s in plan.steps]


def make_entry(row: Mapping[str, Any], files: Mapping[str, bytes | None], links: Mapping[str, str | None], *,
               thumbs: bool = True, thumb_size: int = THUMB_SIZE) -> IndexEntry:
    """An entry from a results.parquet row, the bytes of its files (kind -> bytes, any of
    ``before``, ``edited``, ``mask``, ``overlay``, ``plan``) and hrefs of its files. A file that is
    absent or unreadable shows as a placeholder, never as an error of the page."""
    e = IndexEntry(image_id=str(row.get("image_id")), instruction=str(row.get("instruction") or ""),
                   status=str(row.get("status") or ""), error=row.get("error"), failed_stage=row.get("failed_stage"),
                   verified=row.get("verified"), links={k: v for k, v in links.items() if v})
    if thumbs:
        for kind in THUMB_KINDS:
            e.thumbs[kind] = thumbnail_data_uri(files.get(kind), thumb_size, mask=(kind == "mask"))
    plan = files.get("plan")
    if plan is not None:
        try:
            e.steps = plan_steps(plan)
        except Exception as exc:  # noqa: BLE001 - an unreadable plan is a note on its row
            e.notes.append(f"plan.json unreadable: {type(exc).__name__}: {exc}")
    return e


def safe_href(href: str | None) -> str | None:
    """``href`` URL-quoted for an attribute, or None when it is not a relative path or an
    ``http``/``https``/``file`` URL (``javascript:``, ``data:`` and the like never become links)."""
    if not href:
        return None
    parts = urlsplit(href)
    if parts.scheme and parts.scheme.lower() not in ("http", "https", "file"):
        return None
    if not parts.scheme and (parts.netloc or href.startswith("//")):
        return None
    return quote(href, safe="/:#?=&%.-_~+@")


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _link(href: str | None, text: str) -> str:
    h = safe_href(href)
    return f'<a href="{_esc(h)}">{_esc(text)}</a>' if h else f'<span class="missing">{_esc(text)}</span>'


def _row_html(n: int, e: IndexEntry, show_thumbs: bool) -> str:
    ok = e.status in OK_STATUSES
    cells = [f'<td class="num">{n}</td>',
             f'<td class="id"><code>{_esc(e.image_id)}</code><br><span class="st st-{_esc(e.status)}">{_esc(e.status)}</span>'
             + ("" if e.verified is None else f'<div class="small">edit check: {"verified" if e.verified else "rejected"}</div>')
             + "</td>",
             f'<td class="instr">{_esc(e.instruction)}</td>']
    if show_thumbs:
        for kind, label in THUMB_KINDS.items():
            uri = e.thumbs.get(kind)
            if uri:
                img = f'<img alt="{_esc(label)}" src="{_esc(uri)}">'
                href = safe_href(e.links.get(kind))
                cells.append('<td class="thumb">' + (f'<a href="{_esc(href)}">{img}</a>' if href else img) + "</td>")
            else:
                cells.append('<td class="thumb missing">—</td>')
    if e.steps:
        plan = plan_steps_html(e.steps)
    else:
        plan = '<span class="missing">—</span>' if e.steps is None else '<span class="missing">no steps</span>'
    cells.append(f'<td class="plan">{plan}</td>')
    detail = ""
    if e.error:
        stage = f"{e.failed_stage}: " if e.failed_stage and not str(e.error).startswith(f"{e.failed_stage}:") else ""
        detail += f'<div class="err">{_esc(stage + str(e.error))}</div>'
    for note in e.notes:
        detail += f'<div class="err">{_esc(note)}</div>'
    files = " ".join(_link(e.links.get(k), text) for k, text in LINK_KINDS.items() if e.links.get(k))
    cells.append(f"<td>{detail}<div class=\"files\">{files or '<span class=missing>no files</span>'}</div></td>")
    rid = f"row-{n}"
    return f'<tr id="{rid}" class="{"ok" if ok else "bad"}">' + "".join(cells) + "</tr>"


def render_index(entries: Iterable[IndexEntry], *, title: str = "CIELR run",
                 meta: Mapping[str, Any] | None = None, links: Mapping[str, str] | None = None,
                 notes: Iterable[str] = ()) -> str:
    """The page. ``meta``: label -> value lines under the title; ``links``: label -> href lines
    (e.g. results.parquet); ``notes``: sentences shown above the table."""
    entries = list(entries)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    show_thumbs = any(e.thumbs for e in entries)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_esc(CSP)}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
           '<ul class="meta">']
    for k, v in (meta or {}).items():
        out.append(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>")
    for k, href in (links or {}).items():
        out.append(f"<li><b>{_esc(k)}</b>: {_link(href, href)}</li>")
    out.append(f'<li><b>rows</b>: <span id="n-rows">{len(entries)}</span> ('
               + ", ".join(f'{_esc(k)} <span id="n-{_esc(k)}">{v}</span>' for k, v in sorted(counts.items())) + ")</li>")
    bad = [(i, e) for i, e in enumerate(entries, 1) if e.status not in OK_STATUSES]
    if bad:
        out.append("<li><b>not ok</b>: " + ", ".join(
            f'<a href="#row-{i}">{_esc(e.image_id)}</a>' for i, e in bad[:50])
            + (f" and {len(bad) - 50} more" if len(bad) > 50 else "") + "</li>")
    out.append("</ul>")
    for note in notes:
        out.append(f'<p class="small">{_esc(note)}</p>')
    head = ["#", "image", "instruction"] + (list(THUMB_KINDS.values()) if show_thumbs else []) + \
        ["plan: steps and reasons", "error / files"]
    out.append('<table id="rows"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for i, e in enumerate(entries, 1):
        out.append(_row_html(i, e, show_thumbs))
    out.append("</tbody></table></body></html>")
    return "\n".join(out)
