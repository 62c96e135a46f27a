"""Test double at the protocol boundary: an OpenAI-compatible chat-completions server whose
behaviour is chosen per row by a marker in the instruction (``#fault=<mode>``), so one dataset run
sees a healthy endpoint for some rows and a faulty one for others.

Modes: ``ok``; ``recover`` (429 with Retry-After, then 500, then answers); ``slow`` (answers
after ``slow_s``, beyond the client's timeout); ``hang`` (accepts and never answers); ``truncated``
(200 with half a JSON body); ``nonjson`` (200 with an HTML page); ``429`` (always 429 with
Retry-After). Every request's headers and body are recorded.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = re.compile(r"#fault=([a-z0-9]+)")


def _fill(schema: dict, answer: dict) -> dict:
    for name in schema.get("required", []):
        if name not in answer:
            prop = schema.get("properties", {}).get(name, {})
            answer[name] = ("x" if prop.get("type") == "string" else [] if prop.get("type") == "array"
                            else prop.get("enum", [0])[0])
    return answer


def answer(name: str, schema: dict) -> dict:
    if name == "Decomposition":
        return _fill(schema, {"subtasks": ["remove the object"]})
    if name == "Assessment":
        return _fill(schema, {"reason": "the SSR is enough", "need": "none"})
    remove = schema.get("$defs", {}).get("Remove")
    if remove:
        item = remove["properties"]["target_ids"]["items"]
        first = item["enum"][0] if "enum" in item else item["const"]
        return {"reason": "that one", "status": "ok", "operation": "remove", "target_ids": [first]}
    return _fill(schema, {"reason": "nothing to edit", "status": "no_target"})


class FaultyLLM:
    def __init__(self, *, slow_s: float = 3.0, retry_after: str = "1"):
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.requests: Counter[str] = Counter()  # per mode
        self.headers: list[str] = []
        self.bodies: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                text = raw.decode("utf-8")
                m = MARK.search(text)
                mode = m.group(1) if m else "ok"
                with outer._lock:
                    outer.requests[mode] += 1
                    n = outer.requests[mode]
                    outer.headers.append(str(self.headers))
                    outer.bodies.append(text)
                try:
                    outer.respond(self, mode, n, json.loads(raw))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception as e:  # the script itself failed: make the test say so
                    outer.errors.append(repr(e))
                    raise

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str = "application/json",
              extra: dict | None = None, length: int | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def respond(self, h: BaseHTTPRequestHandler, mode: str, n: int, body: dict) -> None:
        if mode == "hang":
            self._stop.wait(60)
            return
        if mode == "429" or (mode == "recover" and n == 1):
            self._send(h, 429, b'{"error": {"message": "rate limited"}}', extra={"Retry-After": self.retry_after})
            return
        if mode == "recover" and n == 2:
            self._send(h, 500, b'{"error": {"message": "internal"}}')
            return
        if mode == "nonjson":
            self._send(h, 200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
            return
        if mode == "slow":
            self._stop.wait(self.slow_s)
        fmt = body["response_format"]["json_schema"]
        content = json.dumps(answer(fmt["name"], fmt["schema"]))
        data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        if mode == "truncated":  # half the body, then the connection closes
            h.close_connection = True
            self._send(h, 200, data[: len(data) // 2], length=len(data))
            return
        self._send(h, 200, data)

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
