"""The LLM protocol every backend speaks, its errors, and answer parsing.

A call declares a pydantic schema; the backend constrains the model to that schema (JSON schema
``response_format`` for OpenAI-compatible endpoints, grammar-constrained decoding in-process) and
returns an :class:`LLMCall` whose ``parsed`` is an instance of the schema. When the text that came
back still does not validate (an endpoint that ignores ``response_format``, a truncated answer),
the backend raises :class:`AnswerParseError` carrying the raw text and the validation error; the
reasoning loop re-asks with that error appended to the conversation (bounded), then raises
:class:`InvalidAnswerError`.

Errors:

* :class:`LLMError` — transport level (endpoint unreachable, timeouts, 429/5xx after the retries,
  a refused request). ``transient`` says whether a later retry may succeed (orchestration retries
  those); a 400 or a missing model is not transient.
* :class:`AnswerParseError` — the model answered, but not with a valid instance of the schema.
* :class:`InvalidAnswerError` — still invalid after ``reasoning.max_invalid_retries`` re-asks.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ValidationError


class LLMError(RuntimeError):
    """The LLM could not be reached or refused the request (transport level)."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


class AnswerParseError(RuntimeError):
    """The model answered, but the answer does not validate against the call's schema."""

    def __init__(self, message: str, *, raw: str, latency_s: float = 0.0, tokens: dict[str, int] | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.raw = raw
        self.latency_s = latency_s
        self.tokens = dict(tokens or {})
        self.extra = dict(extra or {})


class InvalidAnswerError(RuntimeError):
    """The answer was still invalid after ``reasoning.max_invalid_retries`` re-asks."""

    transient = False  # a method-level verdict: the same call gives the same answer

    def __init__(self, call_name: str, error: str, attempts: int):
        super().__init__(
            f"LLM call {call_name!r} gave no valid answer after {attempts} attempt(s); last error: {error}"
        )
        self.call_name = call_name
        self.error = error
        self.attempts = attempts


@dataclass
class LLMCall:
    """One successful call: the validated answer, the raw text, wall time and token counts.

    ``tokens`` holds ``prompt`` and ``completion`` counts where the backend knows them; ``extra``
    holds backend details for the trace (e.g. ``prompt``: the chat-template-rendered text)."""

    parsed: BaseModel
    raw: str
    latency_s: float
    tokens: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LLM(Protocol):
    def complete(
        self,
        messages: list[dict],
        schema: type[BaseModel],
        *,
        image: np.ndarray | None = None,
        call_name: str = "",
    ) -> LLMCall: ...


# ------------------------------------------------------------------------------------------------
# answers
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_answer(raw: str, schema: type[BaseModel]) -> BaseModel:
    """Validate ``raw`` (JSON, optionally inside a markdown fence) against ``schema``.

    Raises ValueError with a compact, model-readable message on failure. Raw control characters
    inside JSON strings are refused (strict JSON)."""
    text = raw.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the answer is not valid JSON ({e.msg} at char {e.pos})") from None
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ValueError(format_validation_error(e)) from None


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:8]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg')}")
    more = f" (+{e.error_count() - 8} more)" if e.error_count() > 8 else ""
    return "the answer does not match the schema: " + "; ".join(parts) + more


def json_schema_for(schema: type[BaseModel]) -> dict[str, Any]:
    """The schema's JSON schema, as sent to an OpenAI-compatible endpoint."""
    return schema.model_json_schema()


# Strings the in-process grammar lets the model write: no control characters, no quote or
# backslash (so no escapes to get wrong), bounded length. Validation stays pydantic's own.
DEFAULT_GRAMMAR_MAX_STRING = 512
GRAMMAR_NUMBER_BOUND = 10**9


def grammar_schema(schema: type[BaseModel] | dict[str, Any], *, max_string: int = DEFAULT_GRAMMAR_MAX_STRING) -> dict:
    """A stricter copy of the JSON schema for grammar-constrained decoding.

    Every free string (no ``enum`` / ``const`` / ``pattern`` / ``format``) gets the pattern
    ``^[^\\x00-\\x1f"\\\\]{min,max}$`` (its own ``maxLength`` or ``max_string``): a small or
    untrained model then cannot emit raw control characters or run-away strings. Integers and
    numbers without bounds get ``±GRAMMAR_NUMBER_BOUND`` (the grammar then bounds their digits).
    """
    js = schema.model_json_schema() if isinstance(schema, type) else copy.deepcopy(schema)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: walk(v) for k, v in node.items()}
            if "oneOf" in node and "anyOf" not in node:
                # the grammar can only approximate oneOf; pydantic checks exclusivity afterwards
                node["anyOf"] = node.pop("oneOf")
            if node.get("type") == "string" and not any(k in node for k in ("enum", "const", "pattern", "format")):
                lo = int(node.pop("minLength", 0))
                hi = max(lo, int(node.pop("maxLength", max_string)))
                node["pattern"] = _bounded_text_pattern(lo, hi)
            if node.get("type") in ("integer", "number") and not any(k in node for k in ("enum", "const")):
                if "minimum" not in node and "exclusiveMinimum" not in node:
                    node["minimum"] = -GRAMMAR_NUMBER_BOUND
                if "maximum" not in node and "exclusiveMaximum" not in node:
                    node["maximum"] = GRAMMAR_NUMBER_BOUND
            return node
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(js)


_SAFE_CHAR = '[^\\x00-\\x1f"\\\\]'
_MAX_REPEAT = 100  # xgrammar 0.2.8 fails to compile repetition counts above ~128: chunk longer bounds


def _bounded_text_pattern(lo: int, hi: int) -> str:
    """``lo``..``hi`` safe characters, the first one not blank when ``lo > 0``."""
    # a required string starts with a visible character (no leading blanks)
    head = ('[^\\x00-\\x20"\\\\]' + (_SAFE_CHAR + "{%d}" % (lo - 1) if lo > 1 else "")) if lo else ""
    rest = hi - lo
    if rest <= _MAX_REPEAT:
        tail = _SAFE_CHAR + "{0,%d}" % rest
    else:
        k, r = divmod(rest, _MAX_REPEAT)
        tail = "(%s{0,%d}){0,%d}" % (_SAFE_CHAR, _MAX_REPEAT, k) + (_SAFE_CHAR + "{0,%d}" % r if r else "")
    return "^" + head + tail + "$"
