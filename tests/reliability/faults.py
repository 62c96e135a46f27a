"""Test doubles at protocol boundaries: a fault-injecting HTTP proxy in front of moto's S3 server.

``FaultyProxy`` forwards every request to the real S3 server (moto) and, for a seeded share of
them, answers with a fault instead: 500 InternalError, 503 SlowDown, a dropped connection (closed
without an answer), a connection reset (RST), a slow answer, or a lost reply (forwarded and done
by S3, but the client sees the connection close: the retry finds the object already there).
``refuse`` names path substrings for which every request is refused (503), for as long as it is
set: an outage of those objects longer than any retry budget.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "drop", "reset", "slow", "lost-reply")
_S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
             '<RequestId>fault-proxy</RequestId></Error>')


class FaultyProxy:
    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 0, slow_s: float = 0.3):
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.rate = rate
        self.rng = random.Random(seed)
        self.slow_s = slow_s
        self.refuse: tuple[str, ...] = ()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.refused = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                outer._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    # -- one request ------------------------------------------------------------------------------
    def _draw(self, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.refuse and any(s in path for s in self.refuse):
                self.refused += 1
                return "refused"
            if self.rate and self.rng.random() < self.rate:
                fault = self.rng.choice(FAULTS)
                self.injected[fault] += 1
                return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._draw(h.path)
        if fault in ("500", "503", "refused"):
            code, name = (500, "InternalError") if fault == "500" else (503, "SlowDown")
            self._answer(h, code, {"Content-Type": "application/xml"},
                         _S3_ERROR.format(code=name, msg=f"injected {fault}").encode(), head=h.command == "HEAD")
            return
        if fault == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "reset":
            h.close_connection = True
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            return
        if fault == "slow":
            time.sleep(self.slow_s)
        status, headers, data = self._forward(h, body)
        if fault == "lost-reply":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(h, status, headers, data, head=h.command == "HEAD")

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("expect", "connection")}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            out = [(k, v) for k, v in r.getheaders()
                   if k.lower() not in ("transfer-encoding", "connection", "content-length")]
            if h.command == "HEAD":
                out.append(("Content-Length", r.getheader("Content-Length") or "0"))
            return r.status, out, data
        finally:
            conn.close()

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, headers, data: bytes, head: bool = False) -> None:
        h.send_response(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for k, v in items:
            h.send_header(k, v)
        if not head:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
