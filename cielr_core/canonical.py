"""Canonical forms shared by every layer: canonical JSON (equal content gives equal bytes, so equal
digests), sha256 digests, and safe relative keys ('/'-separated paths that cannot escape a root).

The artifact store (``storage``) writes JSON and validates keys with these; the SSR and plan models
use them for their digests and mask keys. A plain library module: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"canonical JSON cannot hold non-finite number {value!r}")
        # Integral floats are written as floats by json; keep them as they are (1.0 != 1 in intent).
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                if isinstance(k, (int, bool)) or k is None:
                    k = json.dumps(k)
                else:
                    raise TypeError(f"canonical JSON keys must be str or int, got {type(k).__name__}")
            out[k] = _normalise(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _normalise(value.item())
    return value


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys, no whitespace, no NaN/inf."""
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_bytes(canonical_json(value))


# -- relative keys ---------------------------------------------------------------------------------
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

