"""Canonical JSON: equal content gives equal bytes, so equal digests."""

from __future__ import annotations

import hashlib
import json
import math
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
