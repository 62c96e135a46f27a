"""The label vocabulary OWLv2 queries on every image: a data file, one query a line."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

BUILTIN = {"coco": "coco.txt"}


def _parse(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_vocabulary(spec: str) -> list[str]:
    """``'coco'`` (the 80 COCO category names shipped in ``cielr_core/data``) or a path to a text file
    with one query a line (``#`` starts a comment line). Duplicates are dropped, order kept."""
    if spec in BUILTIN:
        text = resources.files("cielr_core.data").joinpath(BUILTIN[spec]).read_text(encoding="utf-8")
    else:
        p = Path(spec).expanduser()
        if not p.is_file():
            known = ", ".join(repr(k) for k in BUILTIN)
            raise ValueError(
                f"vocabulary {spec!r} is neither a built-in vocabulary ({known}) nor a readable text file "
                "(one query a line)"
            )
        text = p.read_text(encoding="utf-8")
    out = merge_queries(_parse(text))
    if not out:
        raise ValueError(f"vocabulary {spec!r} holds no queries")
    return out


def merge_queries(*groups: Iterable[str]) -> list[str]:
    """Queries from several groups, stripped, first occurrence wins, empties dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for g in groups:
        for q in g:
            q = " ".join(str(q).split())
            if q and q not in seen:
                seen.add(q)
                out.append(q)
    return out
