"""A real webhook receiver on loopback for the webhook tests and the benchmark.

It verifies every request's signature with its own implementation of the scheme documented in
docs/webhooks.md (written from the documentation, sharing no code with
``indexer.webhooks.signing``), and can be told to answer 500, to hang past the sender's timeout,
or to go away (connection refused). Loopback is a private address: tests set
``ingest.allow_private_urls=true`` so that the SSRF guard lets deliveries reach it (the guard
itself is tested separately, with the setting off).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's check, as docs/webhooks.md tells receivers to write it."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    timestamp, given = fields.get("t", ""), fields.get("v1", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.payload["events"]


@dataclass
class Receiver:
    """``mode``: "ok" (204), "fail" (500), "hang" (answers after ``hang_s``)."""

    secret: str = ""
    mode: str = "ok"
    hang_s: float = 3.0
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                header = self.headers.get("X-Ramdex-Signature", "")
                ok = verify_signature(receiver.secret, header, body) if receiver.secret else False
                receiver.requests.append(Received(dict(self.headers), body, ok, time.time()))
                if receiver.mode == "hang":
                    time.sleep(receiver.hang_s)
                status = 500 if receiver.mode == "fail" else 204
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up (timeout)

            def do_GET(self) -> None:  # noqa: N802 - /stats, for a receiver in a subprocess
                stats = {
                    "requests": len(receiver.requests),
                    "verified": sum(r.verified for r in receiver.requests),
                    "events": sum(len(r.events) for r in receiver.requests),
                }
                data = json.dumps(stats).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every event received (in order), optionally of one type."""
        out = [e for r in self.requests for e in r.events]
        return [e for e in out if kind is None or e["type"] == kind]


def refused_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


if __name__ == "__main__":  # a receiver in its own process (benchmarks): prints its URL
    import sys

    server = Receiver(secret=sys.argv[1]).start()
    print(server.url, flush=True)
    threading.Event().wait()
