"""An OpenAI-compatible chat-completions endpoint on 127.0.0.1 for benchmarks and tests.

It stands in for a continuously batching LLM server (vLLM, SGLang): every request is answered
after a fixed added service latency, with no capacity limit (any number of requests in flight at
once), and it counts the requests in flight so a caller can see how much concurrency the
endpoint was offered. The answer comes from ``answer(body) -> str``; :func:`through_model`
answers through the in-process transformers backend (the tiny model's grammar-constrained
decoding against the request's ``response_format`` JSON schema), so the reasoning loop gets
schema-valid JSON for every call.

    with LLMEndpoint(through_model(llm), latency_s=0.5) as ep:
        ... llm.base_url = ep.url ...
        ep.max_in_flight
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LLMEndpoint:
    def __init__(self, answer: Callable[[dict[str, Any]], str], *, latency_s: float = 0.0):
        self.answer = answer
        self.latency_s = float(latency_s)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client's pooled connections stay open

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    outer.requests += 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    t0 = time.perf_counter()
                    try:
                        content, status = outer.answer(body), 200
                    except Exception as e:  # noqa: BLE001 - reported to the client as a 500
                        content, status = f"{type(e).__name__}: {e}", 500
                        outer.errors.append(content)
                    left = outer.latency_s - (time.perf_counter() - t0)
                    if left > 0:
                        time.sleep(left)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "model": body.get("model", ""),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}]}
                else:
                    payload = {"error": {"message": content}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> LLMEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def through_model(llm) -> Callable[[dict[str, Any]], str]:
    """Answer each request through an in-process :class:`TransformersLLM` (text only: image parts
    of a message are dropped, as the tiny text-only model cannot see them)."""

    def answer(body: dict[str, Any]) -> str:
        msgs = []
        for m in body["messages"]:
            c = m["content"]
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if p.get("type") == "text")
            msgs.append({"role": m["role"], "content": c})
        schema = body["response_format"]["json_schema"]["schema"]
        raw, _tokens, _complete = llm.generate(msgs, schema)
        return raw

    return answer


def main(argv: list[str] | None = None) -> None:
    """Serve the tiny in-process model on 127.0.0.1 in its own process: prints the URL, then
    serves until stdin closes. ``--stats`` files get {"requests", "max_in_flight"} at exit."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cielr_core.config import load_settings
    from cielr_core.models import pin_intra_op_threads
    from cielr_core.reasoning import make_llm

    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stats", default=None)
    a = ap.parse_args(argv)
    pin_intra_op_threads(a.threads)
    s = load_settings(profile="tiny", overrides={"models_dir": a.models_dir, "llm": {
        "max_batch_size": a.max_batch_size, "max_new_tokens": a.max_new_tokens}})
    with LLMEndpoint(through_model(make_llm(s.llm, s)), latency_s=a.latency) as ep:
        print(ep.url, flush=True)
        sys.stdin.read()
        if a.stats:
            Path(a.stats).write_text(json.dumps({"requests": ep.requests, "max_in_flight": ep.max_in_flight,
                                                 "errors": ep.errors[:5]}))


if __name__ == "__main__":
    main()
