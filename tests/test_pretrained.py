"""``ramdex models download`` up to the network boundary.

No machine here reaches the Hugging Face hub, so the hub is played by a small HTTP server on
127.0.0.1 (HF_ENDPOINT points huggingface_hub at it); the download code itself is the real one.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PAYLOAD = os.urandom(64 * 1024)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    def _headers(self) -> bool:
        if not self.path.endswith("/resolve/main/ram_plus_swin_large_14m.pth"):
            self.send_response(404)
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(PAYLOAD).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        return True

    def do_HEAD(self) -> None:  # noqa: N802 - http.server API
        self._headers()

    def do_GET(self) -> None:  # noqa: N802
        if self._headers():
            self.wfile.write(PAYLOAD)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _ramdex(args: list[str], endpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    exe = Path(sys.executable).parent / "ramdex"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def test_download_fetches_caches_and_records_checksum(tmp_path, fake_hub):
    proc = _ramdex(["models", "download", "--cache-dir", str(tmp_path)], fake_hub)
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "ram_plus_swin_large_14m" / "ram_plus_swin_large_14m.pth"
    assert Path(proc.stdout.strip()) == target
    assert target.read_bytes() == PAYLOAD
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    listing = _ramdex(["models", "list", "--cache-dir", str(tmp_path)], fake_hub)
    line = next(x for x in listing.stdout.splitlines() if x.startswith("ram_plus_swin_large_14m"))
    assert "not cached" not in line


def test_offline_download_fails_at_once_with_manual_instructions(tmp_path):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    proc = _ramdex(
        ["models", "download", "--cache-dir", str(tmp_path)], f"http://127.0.0.1:{closed}"
    )
    assert proc.returncode == 1
    assert time.monotonic() - started < 20  # no minute of retries
    assert "offline" in proc.stderr and "place it at" in proc.stderr
    assert str(tmp_path) in proc.stderr
