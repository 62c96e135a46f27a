"""The parent's side of the child's output: bounded, decoded without recursion, validated.

What the code produces ends up in SSR attributes, in ``ssr.json``, in the trace and in the next LLM
prompt, and some of it is shown in terminals; so:

* the raw output is decoded only after a non-recursive scan says its nesting is shallow
  (a deeply nested document cannot make ``json.loads`` raise ``RecursionError`` in the parent);
* result values must be JSON scalars or short flat lists; strings are bounded in length and may not
  carry control characters (terminal escape sequences) or invisible bidi/format characters;
* messages that come from the child (exception texts) are cleaned the same way before they reach
  the trace or the LLM.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from cielr_core.reasoning.sandbox.errors import SandboxError
from cielr_core.ssr import Scene

ATTR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
MAX_ATTRS_PER_OBJECT = 16
MAX_STRING_CHARS = 256
MAX_LIST_ITEMS = 1000
MAX_OUTPUT_DEPTH = 8
MAX_REASON_CHARS = 500


def _unsafe_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat == "Cc" or cat == "Cf" or cat in ("Zl", "Zp")


def clean_text(text: Any, limit: int = MAX_REASON_CHARS) -> str:
    """A message from the child made safe to show and to log: control and format characters become
    ``?``, the length is bounded."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return "".join("?" if _unsafe_char(c) and c != "\n" else c for c in s)


def json_depth(raw: str) -> int:
    """Maximum nesting of ``[``/``{`` in a JSON text, ignoring string contents (no recursion)."""
    depth = best = 0
    in_str = esc = False
    for c in raw:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            best = max(best, depth)
        elif c in "]}":
            depth -= 1
    return best


def decode_output(raw: bytes, exit_status: Any, stderr_tail: str = "") -> dict[str, Any]:
    """The child's one JSON document, or :class:`SandboxError` saying why there is none."""
    tail = f": {clean_text(stderr_tail, 200)}" if stderr_tail else ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SandboxError(f"the sandbox gave no valid JSON output (exit status {exit_status}){tail}") from None
    if json_depth(text) > MAX_OUTPUT_DEPTH:
        raise SandboxError(f"the output is nested deeper than {MAX_OUTPUT_DEPTH} levels")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError, MemoryError):
        raise SandboxError(f"the sandbox gave no valid JSON output (exit status {exit_status}){tail}") from None
    if not isinstance(doc, dict):
        raise SandboxError("the code failed: bad output")
    return doc


def _value_problem(v: Any, depth: int = 0) -> str | None:
    if v is None or isinstance(v, (bool, int)):
        return None if not isinstance(v, int) or abs(v) < 2 ** 63 else "is an integer out of range"
    if isinstance(v, float):
        return None if math.isfinite(v) else "is not a finite number"
    if isinstance(v, str):
        if len(v) > MAX_STRING_CHARS:
            return f"is a string longer than {MAX_STRING_CHARS} characters"
        bad = next((c for c in v if _unsafe_char(c)), None)
        if bad is not None:
            return f"contains the control or format character U+{ord(bad):04X}"
        return None
    if isinstance(v, list) and depth < 2:
        if len(v) > MAX_LIST_ITEMS:
            return f"is a list longer than {MAX_LIST_ITEMS} items"
        for x in v:
            p = _value_problem(x, depth + 1)
            if p:
                return "has an item that " + p
        return None
    return "is not a JSON scalar or a short list"


def validate_result(result: Any, scene: Scene) -> dict[int, dict[str, Any]]:
    """``result`` must be ``{object_id: {attribute_name: value}}`` over existing ids; raises SandboxError."""
    if not isinstance(result, dict):
        raise SandboxError(f"result must be a dict {{object_id: {{attribute: value}}}}, got {type(result).__name__}")
    out: dict[int, dict[str, Any]] = {}
    for k, v in result.items():
        try:
            oid = int(k)
        except (TypeError, ValueError, OverflowError):
            raise SandboxError(f"result key {clean_text(repr(k), 60)} is not an object id") from None
        if oid not in scene.ssr.objects:
            raise SandboxError(f"result names object {oid}, which is not in the SSR (ids: {scene.ssr.ids})")
        if not isinstance(v, dict):
            raise SandboxError(f"result[{oid}] must be a dict of attributes, got {type(v).__name__}")
        if len(v) > MAX_ATTRS_PER_OBJECT:
            raise SandboxError(f"result[{oid}] has more than {MAX_ATTRS_PER_OBJECT} attributes")
        for name, val in v.items():
            if not isinstance(name, str) or not ATTR_NAME.match(name):
                raise SandboxError(f"attribute name {clean_text(repr(name), 60)} of object {oid} must match "
                                   f"{ATTR_NAME.pattern}")
            problem = _value_problem(val)
            if problem:
                raise SandboxError(f"attribute {name!r} of object {oid} {problem}")
        out[oid] = dict(v)
    return out
