"""The reasoning trace: every LLM call, every SSR version and every sandbox run, in order.

Persisted as ``trace.json``. It holds the rendered prompts (messages and, for the in-process
backend, the chat-template text), raw answers, parsed answers, validation errors, latencies and
token counts. It never holds a secret: backends keep credentials in their HTTP clients only, and
``to_json_bytes`` additionally replaces any registered secret value (see :meth:`Trace.redact`)
with ``***`` as a last guard. Images are never embedded, only described.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from pydantic import BaseModel, SecretStr

TRACE_VERSION = 1


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class Trace:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._t0 = time.time()

    def redact(self, *secrets: SecretStr | str | None) -> None:
        """Register secret values that must never appear in the serialised trace."""
        for s in secrets:
            v = s.get_secret_value() if isinstance(s, SecretStr) else s
            if v and len(v) >= 4:
                self._secrets.add(v)

    def _add(self, kind: str, **data: Any) -> dict[str, Any]:
        ev = {"type": kind, "t": round(time.time() - self._t0, 4), **_plain(data)}
        with self._lock:
            ev["seq"] = len(self.events)
            self.events.append(ev)
        return ev

    def llm_call(self, *, call_name: str, attempt: int, messages: list[dict], raw: str | None,
                 parsed: Any = None, error: str | None = None, latency_s: float | None = None,
                 tokens: dict | None = None, extra: dict | None = None, subtask: str | None = None) -> None:
        extra = dict(extra or {})
        self._add(
            "llm_call", call_name=call_name, subtask=subtask, attempt=attempt, messages=messages,
            rendered_prompt=extra.pop("prompt", None), raw=raw, parsed=parsed, error=error,
            latency_s=None if latency_s is None else round(latency_s, 4), tokens=tokens or {}, backend=extra,
        )

    def ssr(self, scene_or_ssr: Any, *, reason: str, subtask: str | None = None, detail: Any = None) -> None:
        ssr = getattr(scene_or_ssr, "ssr", scene_or_ssr)
        self._add("ssr", reason=reason, subtask=subtask, version=ssr.version, digest=ssr.digest(),
                  ssr=ssr.llm_view(), detail=detail)

    def sandbox(self, *, code: str | None, ok: bool, attributes: Any = None, error: str | None = None,
                duration_s: float | None = None, subtask: str | None = None, refused: bool = False,
                isolation: str | None = None) -> None:
        self._add("sandbox", subtask=subtask, code=code, ok=ok, attributes=attributes, error=error,
                  duration_s=None if duration_s is None else round(duration_s, 4), refused=refused,
                  isolation=isolation)

    def note(self, what: str, subtask: str | None = None, **data: Any) -> None:
        self._add("note", what=what, subtask=subtask, **data)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"trace_version": TRACE_VERSION, "events": list(self.events)}

    def to_json_bytes(self) -> bytes:
        text = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, default=str)
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, "***")
            text = text.replace(json.dumps(s)[1:-1], "***")
        return text.encode("utf-8")
