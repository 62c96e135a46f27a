"""Label vocabularies: the detector queries every image gets, as data files, and their digest.

Light on purpose (standard library only): the config's perception digest hashes a vocabulary's
CONTENT (:func:`vocabulary_digest`), so editing a vocabulary file, or a new built-in list, changes
every cache key that depends on labels.

Built-in vocabularies live in ``cielr_core/data``: ``lvis`` (the 1,203 LVIS v1 categories, one a
line as their synonyms joined by ``/``; the first synonym is the query, 1,198 distinct queries) and
``coco`` (the 80 COCO categories). Any other spec is a path to a text file with one query a line
(``#`` starts a comment line; no synonym splitting).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

# name -> (file in cielr_core/data, whether a line holds '/'-separated synonyms)
BUILTIN: dict[str, tuple[str, bool]] = {"lvis": ("lvis.txt", True), "coco": ("coco.txt", False)}


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _read(spec: str) -> tuple[str, bool]:
    if spec in BUILTIN:
        name, synonyms = BUILTIN[spec]
        return resources.files("cielr_core.data").joinpath(name).read_text(encoding="utf-8"), synonyms
    p = Path(spec).expanduser()
    if not p.is_file():
        known = ", ".join(repr(k) for k in BUILTIN)
        raise ValueError(
            f"vocabulary {spec!r} is neither a built-in vocabulary ({known}) nor a readable text file "
            "(one query a line)"
        )
    return p.read_text(encoding="utf-8"), False


def load_vocabulary(spec: str) -> list[str]:
    """The queries of ``spec`` (a built-in name or a file path). Duplicates are dropped, order kept."""
    text, synonyms = _read(spec)
    lines = _lines(text)
    out = merge_queries(ln.split("/")[0] for ln in lines) if synonyms else merge_queries(lines)
    if not out:
        raise ValueError(f"vocabulary {spec!r} holds no queries")
    return out


def merge_queries(*groups: Iterable[str]) -> list[str]:
    """Queries from several groups, whitespace collapsed, first occurrence wins, empties dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for g in groups:
        for q in g:
            q = " ".join(str(q).split())
            if q and q not in seen:
                seen.add(q)
                out.append(q)
    return out


def vocabulary_digest(spec: str) -> str:
    """sha256 of the query list ``spec`` names (its content, not its name or path); for a file that
    cannot be read, a digest of that fact (perception then fails with the reason)."""
    key: tuple = (spec,)
    if spec not in BUILTIN:
        try:
            st = os.stat(Path(spec).expanduser())
            key = (spec, st.st_mtime_ns, st.st_size)
        except OSError:
            key = (spec, "missing")
    return _digest(key)


@functools.lru_cache(maxsize=64)
def _digest(key: tuple) -> str:
    try:
        queries = load_vocabulary(key[0])
    except ValueError as e:
        queries = ["<unreadable>", str(e)]
    blob = json.dumps(queries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
