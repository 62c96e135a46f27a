"""OpenAI-compatible chat-completions backend (vLLM, SGLang, Ollama, hosted Qwen, OpenAI).

``POST {base_url}/chat/completions`` with ``response_format = {"type": "json_schema", ...}`` so the
server constrains the answer to the call's schema; the answer is validated again here. Transport
failures are retried with exponential backoff (honouring ``Retry-After``) on timeouts, connection
errors, 429 and 5xx only; any other status (400, 401, 404, ...) fails at once. The API key travels
only in the ``Authorization`` header: it is never logged, put in an error or in the trace.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from pydantic import BaseModel

from cielr_core.reasoning.llm import AnswerParseError, LLMCall, LLMError, json_schema_for, parse_answer

if TYPE_CHECKING:  # pragma: no cover
    from cielr_core.config import LLMConfig

# vLLM, SGLang and Ollama constrain to the schema whatever this flag says; OpenAI's strict mode
# refuses schemas with optional fields or some keywords (HTTP 400 on every call). Not strict here,
# and every answer is validated on our side anyway (then re-asked).
STRICT = False
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


def image_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAILLM:
    def __init__(self, cfg: "LLMConfig", *, backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None):
        if not cfg.base_url:
            raise LLMError("the openai backend needs llm.base_url (e.g. http://localhost:8000/v1)")
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.backoff_s = backoff_s
        headers = {"Content-Type": "application/json"}
        if cfg.api_key is not None and cfg.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {cfg.api_key.get_secret_value()}"
        # One client per instance, shared by every thread of the process (tasks.runtime keeps one
        # instance per LLM config): httpx.Client is thread-safe and pools connections. The semaphore
        # bounds the requests in flight (llm.max_concurrency) so the endpoint sees the calls of the
        # images in flight together and can batch them, and never more than that many.
        n = int(cfg.max_concurrency)
        self._slots = threading.BoundedSemaphore(n)
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s), headers=headers, transport=transport,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))

    @property
    def name(self) -> str:
        return f"openai:{self.cfg.model.id}"

    def close(self) -> None:
        self._client.close()

    def _payload(self, messages: list[dict], schema: type[BaseModel], image: np.ndarray | None) -> dict[str, Any]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if image is not None:
            last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last] = {
                "role": "user",
                "content": [
                    {"type": "text", "text": msgs[last]["content"]},
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                ],
            }
        return {
            "model": self.cfg.model.id,
            "messages": msgs,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_new_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": json_schema_for(schema), "strict": STRICT},
            },
        }

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        attempts = int(self.cfg.max_retries) + 1
        last = ""
        for attempt in range(attempts):
            wait = self.backoff_s * (2**attempt)
            try:
                with self._slots:  # a slot per attempt: a backoff sleep holds none
                    r = self._client.post(url, json=payload)
            except httpx.TimeoutException as e:
                last = f"timed out after {self.cfg.timeout_s}s ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"transport error: {type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise LLMError(f"{url} answered 200 with a body that is not JSON", status=200) from None
                detail = _error_detail(r)
                if r.status_code not in RETRY_STATUSES:
                    raise LLMError(f"{url} refused the request: HTTP {r.status_code}{detail}", status=r.status_code)
                last = f"HTTP {r.status_code}{detail}"
                ra = r.headers.get("retry-after")
                if ra:
                    try:
                        wait = max(wait, float(ra))
                    except ValueError:
                        pass
            if attempt + 1 < attempts:
                time.sleep(min(wait, MAX_BACKOFF_S))
        raise LLMError(f"{url} failed after {attempts} attempt(s): {last}", transient=True)

    def complete(
        self, messages: list[dict], schema: type[BaseModel], *, image: np.ndarray | None = None, call_name: str = ""
    ) -> LLMCall:
        payload = self._payload(messages, schema, image)
        extra: dict[str, Any] = {"backend": "openai", "model": self.cfg.model.id}
        if image is not None:
            extra["image"] = f"{image.shape[1]}x{image.shape[0]} PNG sent as a data URL"
        t0 = time.perf_counter()
        body = self._post(payload)
        latency = time.perf_counter() - t0
        try:
            choice = body["choices"][0]
            raw = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LLMError("the endpoint's answer has no choices[0].message.content") from None
        usage = body.get("usage") or {}
        tokens = {k: int(usage[v]) for k, v in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"))
                  if isinstance(usage.get(v), int)}
        if choice.get("finish_reason") == "length":
            extra["finish_reason"] = "length"
        try:
            parsed = parse_answer(raw, schema)
        except ValueError as e:
            msg = str(e)
            if choice.get("finish_reason") == "length":
                msg += f" (the answer was cut off at max_tokens={self.cfg.max_new_tokens})"
            raise AnswerParseError(msg, raw=raw, latency_s=latency, tokens=tokens, extra=extra) from None
        return LLMCall(parsed=parsed, raw=raw, latency_s=latency, tokens=tokens, extra=extra)


def _error_detail(r: httpx.Response) -> str:
    try:
        text = r.text.strip()
    except Exception:  # noqa: BLE001
        return ""
    return f": {text[:300]}" if text else ""
