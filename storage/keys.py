"""Store keys are relative, '/'-separated paths. Anything that could escape the store is refused."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class KeyError_(ValueError):
    """An invalid store key (named with a trailing underscore so it never shadows builtins.KeyError)."""


def validate_key(key: str, *, allow_empty: bool = False) -> str:
    """Return ``key`` unchanged if it is safe, else raise KeyError_ saying why."""
    if not isinstance(key, str):
        raise KeyError_(f"store key must be a string, got {type(key).__name__}")
    if key == "":
        if allow_empty:
            return key
        raise KeyError_("store key is empty")
    if _CONTROL.search(key):
        raise KeyError_(f"store key {key!r} contains control characters")
    if "\\" in key:
        raise KeyError_(f"store key {key!r} contains a backslash")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key) or "://" in key:
        raise KeyError_(f"store key {key!r} is absolute; keys are relative to the store")
    parts = key.split("/")
    for part in parts:
        if part == "":
            raise KeyError_(f"store key {key!r} has an empty path segment")
        if part in (".", ".."):
            raise KeyError_(f"store key {key!r} contains a {part!r} segment")
    return key


def join_key(*parts: str) -> str:
    return validate_key("/".join(p.strip("/") for p in parts if p))
