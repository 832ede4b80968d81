"""The API under hostile clients (issue 11, section 3).

What lives in the HTTP server (header size, slow connections, keep-alive after errors, the
concurrency limit, query-image memory, the separate metrics listener) is tested against a real
``ramdex serve`` subprocess on a free port; what lives in the app (range checks, allowed roots,
throttles, metrics access, security headers, hidden paths) against the ASGI app on both database
backends. Numbers measured here are printed (``pytest -s``) for docs/deploy.md.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.hardening import API_CSP, UI_CSP, KeepConnectionAfterErrors
from api.ratelimit import AuthThrottle, CostlySlots, client_bucket
from indexer.allowed_roots import NO_ROOTS, NOT_ALLOWED, check_server_path
from indexer.walk import LINK_OUTSIDE, walk_files
from tests.api_support import MODEL, Keys, make_keys, make_settings, wait_for_job
from tests.ingest_fixtures import encode, photo_like, write_images

pytest_plugins = ["tests.api_support"]

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
MAX_CONCURRENCY = 24


# ---------- helpers ----------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def zero_png(width: int, height: int) -> bytes:
    """An all-zero RGB PNG, compressed row block by row block (never a full image in memory):
    88 megapixels make a file of about 250 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    parts = [packer.compress(row * 64) for _ in range(height // 64)]
    parts += [packer.compress(row) for _ in range(height % 64)]
    parts.append(packer.flush())
    idat = b"".join(parts)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in KiB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _cursor(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "ramdexhardeningboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# ---------- a real `ramdex serve` ----------
@dataclass
class Served:
    process: subprocess.Popen
    port: int
    metrics_port: int
    keys: Keys
    db_url: str

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
        conn = self.connection()
        try:
            start = time.perf_counter()
            conn.request("GET", path, headers=headers or {})
            reply = conn.getresponse()
            reply.read()
            return reply.status, time.perf_counter() - start
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``ramdex serve`` in its own process: SQLite, the tiny random model, short deadlines and
    the metrics on a separate listener."""
    home = tmp_path_factory.mktemp("served")
    db_url = f"sqlite:///{home / 'ramdex.sqlite3'}"
    port = _free_port()
    metrics_port = _free_port()
    while metrics_port == port:
        metrics_port = _free_port()
    env = {
        **os.environ,
        "RAMDEX_HOME": str(home),
        "RAMDEX_DATABASE__URL": db_url,
        "RAMDEX_BROKER__URL": "",
        "RAMDEX_MODEL__NAME": MODEL,
        "RAMDEX_MODEL__DEVICE": "cpu",
        "RAMDEX_API__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RAMDEX_API__BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "RAMDEX_API__MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "RAMDEX_API__METRICS_ACCESS": "bind",
        "RAMDEX_API__METRICS_BIND": f"127.0.0.1:{metrics_port}",
    }
    command = [str(Path(sys.executable).with_name("ramdex")), "serve", "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=home,  # no stray .env
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (home / "server.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, (home / "server.log").read_text()
                time.sleep(0.2)
        yield Served(process, port, metrics_port, make_keys(db_url), db_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _send_huge_header(port: int, size: int, result: dict) -> None:
    """Send a request whose one header is ``size`` bytes; record what came back and when."""
    start = time.perf_counter()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            block = b"a" * 65536
            while sent < size:
                sock.sendall(block)
                sent += len(block)
        except OSError:  # the server closed the connection on us: what we want
            pass
        result["sent_bytes"] = sent
        try:
            result["reply"] = sock.recv(200)
        except OSError:
            result["reply"] = b""
    result["seconds"] = time.perf_counter() - start


def test_a_100_mb_header_is_refused_at_once_without_stalling_others(served: Served) -> None:
    result: dict = {}
    sender = threading.Thread(target=_send_huge_header, args=(served.port, 100 * 2**20, result))
    latencies = []
    sender.start()
    while sender.is_alive() or len(latencies) < 10:
        status, seconds = served.get("/healthz")
        assert status == 200
        latencies.append(seconds)
    sender.join()
    print(
        f"\n100 MB header: refused after {result['sent_bytes'] / 2**20:.1f} MiB sent, "
        f"{result['seconds'] * 1000:.0f} ms; /healthz meanwhile max {max(latencies) * 1000:.0f} ms "
        f"over {len(latencies)} requests"
    )
    assert result["reply"].startswith(b"HTTP/1.1 431 "), result["reply"]
    assert result["sent_bytes"] < 16 * 2**20  # closed long before the 100 MB were sent
    assert result["seconds"] < 2.0
    assert max(latencies) < 0.5


def test_a_slow_loris_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.2)
        reply = b""
        while time.perf_counter() - start < 8:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s, never the end
            except OSError:
                break
            try:
                reply = sock.recv(200)
                break
            except TimeoutError:
                continue
        elapsed = time.perf_counter() - start
    print(f"\nslow loris: closed after {elapsed:.2f} s (api.header_timeout_s={HEADER_TIMEOUT_S})")
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed < HEADER_TIMEOUT_S + 2


def test_idle_and_slow_body_connections_are_closed(served: Served) -> None:
    # A connection that never sends anything.
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        reply = b""
        while chunk := sock.recv(4096):  # until the server closes
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ") and reply.endswith(b"}"), reply
    assert time.perf_counter() - start < HEADER_TIMEOUT_S + 2
    # A body that stops arriving.
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"text": "a'
        )
        reply = sock.recv(200)
        elapsed = time.perf_counter() - start
    print(f"\nstalled body: closed after {elapsed:.2f} s (api.body_timeout_s={BODY_TIMEOUT_S})")
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert BODY_TIMEOUT_S - 0.2 <= elapsed < BODY_TIMEOUT_S + 2


def test_a_kept_alive_connection_survives_every_out_of_range_input(served: Served) -> None:
    hostile = [
        ("GET", f"/assets?cursor={_cursor(10**30)}", None),
        ("GET", f"/assets?cursor={_cursor(-5)}", None),
        ("GET", "/assets?cursor=%21%21%21", None),
        ("GET", "/assets?limit=-1", None),
        ("GET", f"/assets?limit={10**30}", None),
        ("GET", f"/assets/{10**30}", None),
        ("GET", f"/assets/{2**63}", None),
        ("GET", "/assets/-1", None),
        ("GET", f"/jobs/{10**30}", None),
        ("GET", f"/concepts/{2**31}", None),
        ("POST", "/concepts", '{"name": "x", "threshold": NaN}'),
        ("POST", "/concepts", '{"name": "x", "threshold": Infinity}'),
        ("POST", "/concepts", '{"name": "x", "threshold": 1e308}'),
    ]
    conn = served.connection()
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        sock = conn.sock
        for method, path, body in hostile:
            headers = {**served.keys.write, "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            payload = json.loads(reply.read())
            assert reply.status == 422, (path, body, payload)
            assert reply.getheader("connection") != "close", (path, body)
            conn.request("GET", "/healthz")
            follow = conn.getresponse()
            follow.read()
            assert follow.status == 200
            assert conn.sock is sock, f"the connection was reset after {method} {path} {body}"
    finally:
        conn.close()


def test_more_connections_than_the_concurrency_limit_get_503(served: Served) -> None:
    held = []
    try:
        for _ in range(MAX_CONCURRENCY):
            held.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        time.sleep(0.2)
        status, _ = served.get("/healthz")
        assert status == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert served.get("/healthz")[0] == 200


def test_an_88_megapixel_png_query_costs_little_memory(served: Served) -> None:
    pid = served.process.pid
    small = encode(photo_like(64, 48, seed=3), "JPEG")
    bomb = zero_png(11000, 8000)  # 88 megapixels, all zero
    assert len(bomb) < 300_000

    def query(data: bytes, name: str) -> tuple[int, dict]:
        body, content_type = _multipart("file", name, data)
        conn = served.connection(timeout=120)
        try:
            conn.request(
                "POST",
                "/search/image",
                body=body,
                headers={**served.keys.read, "Content-Type": content_type},
            )
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()

    assert query(small, "small.jpg")[0] == 200  # loads the model: not part of the cost below
    before = _memory_kib(pid)
    statuses = []
    for _ in range(4):
        statuses.append(query(bomb, "bomb.png"))
    after = _memory_kib(pid)
    status, problem = statuses[0]
    assert status == 422 and problem["type"].endswith("/image-too-large"), problem
    assert "11000x8000" in problem["detail"]
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(
        f"\n88 MP PNG x4: RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, "
        f"peak {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB"
    )
    assert growth_mib < 40, (before, after)

    # An image under the limit is decoded in full, and its memory goes back afterwards.
    big_ok = zero_png(5000, 4000)  # 20 megapixels
    before = _memory_kib(pid)
    assert query(big_ok, "twenty.png")[0] == 200
    after = _memory_kib(pid)
    print(
        f"20 MP PNG: RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, "
        f"peak {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB"
    )
    assert (after["VmRSS"] - before["VmRSS"]) / 1024 < 60, (before, after)


def test_metrics_on_their_own_listener_only(served: Served) -> None:
    assert served.get("/metrics", served.keys.read)[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", served.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        text = reply.read().decode()
    finally:
        conn.close()
    assert reply.status == 200
    assert "ramdex_http_request_duration_seconds" in text


# ---------- the app ----------
def test_keep_connection_after_errors_swallows_only_after_a_complete_response() -> None:
    import asyncio

    async def complete_then_fail(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        raise RuntimeError("after the response")

    async def fail_midway(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("midway")

    async def send(message) -> None:
        return None

    async def run(app) -> None:
        await KeepConnectionAfterErrors(app)({"type": "http"}, None, send)

    asyncio.run(run(complete_then_fail))  # no exception: the connection stays usable
    with pytest.raises(RuntimeError, match="midway"):
        asyncio.run(run(fail_midway))


def test_out_of_range_inputs_are_422_on_both_backends(api_env) -> None:
    client, keys, _ = api_env
    for value in (10**30, 2**63, 0, -1):
        reply = client.get("/assets", params={"cursor": _cursor(value)}, headers=keys.read)
        assert reply.status_code == 422, (value, reply.text)
        assert reply.json()["type"].endswith("/invalid-cursor")
    assert client.get(
        "/assets", params={"cursor": _cursor(2**63 - 1)}, headers=keys.read
    ).is_success
    for path in (f"/assets/{2**63}", f"/jobs/{2**63}", f"/concepts/{2**31}", "/assets/0"):
        assert client.get(path, headers=keys.read).status_code == 422, path
    for threshold in ("NaN", "Infinity", "-Infinity", "1e308", "-0.5"):
        reply = client.post(
            "/concepts",
            content=f'{{"name": "hostile", "threshold": {threshold}}}',
            headers={**keys.write, "Content-Type": "application/json"},
        )
        assert reply.status_code == 422, (threshold, reply.text)


# ---------- allowed roots ----------
def test_allowed_roots_check_resolves_links_and_never_says_what_exists(tmp_path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (root / "inside.jpg").write_bytes(b"x")
    (root / "escape").symlink_to(outside)
    (root / "broken").symlink_to(tmp_path / "gone.txt")
    assert check_server_path(root / "inside.jpg", [root]) == (root / "inside.jpg").resolve()
    assert check_server_path(root / "missing.jpg", [root])  # inside: registration says "missing"
    messages = set()
    for path in (
        outside,
        tmp_path / "no-such-file",
        root / "escape",
        root / "broken",
        root / ".." / "secret.txt",
    ):
        with pytest.raises(ValueError) as raised:
            check_server_path(path, [root])
        messages.add(str(raised.value))
    assert messages == {NOT_ALLOWED}
    with pytest.raises(ValueError, match="storage.allowed_roots"):
        check_server_path(root / "inside.jpg", [])
    assert NO_ROOTS != NOT_ALLOWED


def test_walks_do_not_follow_links_out_of_the_folder(tmp_path) -> None:
    root = tmp_path / "walked"
    write_images(root, 2)
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere, 2)
    (root / "link-out.jpg").symlink_to(sorted(elsewhere.glob("img_*.jpg"))[0])
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "link-in.jpg").symlink_to(sorted(root.glob("img_*.jpg"))[0])
    (root / "dir-out").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)

    errors = []
    found = {p.name for p in walk_files([root], on_error=errors.append)}
    assert "link-in.jpg" in found and "link-out.jpg" not in found and "dangling.jpg" not in found
    assert {e.reason for e in errors} == {LINK_OUTSIDE}  # one text: existing or not
    assert {Path(e.path).name for e in errors} == {"link-out.jpg", "dangling.jpg"}

    # Following links: out of the folder, but never out of the allowed roots; loops once.
    errors = []
    followed = list(walk_files([root], follow_symlinks=True, on_error=errors.append))
    assert any(p.parent.name == "dir-out" for p in followed)
    assert {p.relative_to(root).as_posix() for p in followed} == {
        "dangling.jpg",
        "img_0000.jpg",
        "img_0001.jpg",
        "link-in.jpg",
        "link-out.jpg",
        "dir-out/img_0000.jpg",
        "dir-out/img_0001.jpg",
    }  # the loop back to the walked folder is not entered again
    errors = []
    confined = list(
        walk_files([root], follow_symlinks=True, on_error=errors.append, allowed_roots=[root])
    )
    assert not any(p.parent.name == "dir-out" or p.name == "link-out.jpg" for p in confined)
    assert {e.reason for e in errors} == {NOT_ALLOWED}
    errors = []
    assert list(walk_files([elsewhere], on_error=errors.append, allowed_roots=[root])) == []
    assert [e.reason for e in errors] == [NOT_ALLOWED]


def test_server_paths_only_inside_allowed_roots(archive, tmp_path, monkeypatch) -> None:
    c, k, settings = archive.client, archive.keys, archive.settings
    root = tmp_path / "allowed"
    write_images(root, 2, start=700)
    outside = tmp_path / "outside"
    write_images(outside, 1, start=720)
    (root / "sneaky.jpg").symlink_to(next(outside.iterdir()))

    # Nothing configured: the API takes no server path at all.
    reply = c.post("/assets/register", json={"paths": [str(root)]}, headers=k.admin)
    assert reply.status_code == 403 and "allowed_roots" in reply.json()["detail"]

    monkeypatch.setattr(settings.storage, "allowed_roots", [root])
    details = set()
    for probe in (outside, tmp_path / "nothing-here", Path("/etc/passwd"), root / "sneaky.jpg"):
        reply = c.post("/assets/register", json={"paths": [str(probe)]}, headers=k.admin)
        assert reply.status_code == 403, reply.text
        details.add(reply.json()["detail"].replace(repr(str(probe)), "PATH"))
    assert details == {f"PATH: {NOT_ALLOWED}"}  # missing or present: the same answer

    reply = c.post("/assets/register", json={"paths": [str(root)]}, headers=k.admin)
    assert reply.status_code == 202, reply.text
    job = wait_for_job(c, k.admin, reply.json()["job"]["id"])
    assert job["done"] == 2, job
    assert [f["reason"] for f in job["params"]["failures"]] == [LINK_OUTSIDE]
    listing = c.get("/assets", params={"limit": 500}, headers=k.read).json()["items"]
    for item in listing:
        sources = c.get(f"/assets/{item['id']}", headers=k.admin).json()["sources"]
        assert not any(str(outside) in s["uri"] for s in sources)


def test_registration_refuses_paths_outside_allowed_roots_in_the_cli_too(tmp_path) -> None:
    from indexer.ingest.register import Registrar
    from indexer.settings import Settings

    root = tmp_path / "allowed"
    write_images(root, 1)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(next(root.iterdir()).read_bytes())
    (root / "link.jpg").symlink_to(secret)
    settings = Settings(
        home=tmp_path / "home",
        database={"url": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
        storage={"allowed_roots": [str(root)]},
    )
    registrar = Registrar(settings)
    for path in (secret, tmp_path / "missing.jpg", root / "link.jpg"):
        outcome = registrar.register_path(path)
        assert (outcome.state, outcome.reason) == ("failed", NOT_ALLOWED), path


# ---------- hidden paths ----------
def test_read_keys_see_file_names_not_server_paths(archive, tmp_path, monkeypatch) -> None:
    c, k, settings = archive.client, archive.keys, archive.settings
    root = tmp_path / "private-home" / "alice" / "photos"
    write_images(root, 1, start=760)
    missing = root / "missing.jpg"
    monkeypatch.setattr(settings.storage, "allowed_roots", [tmp_path])
    reply = c.post("/assets/register", json={"paths": [str(root), str(missing)]}, headers=k.admin)
    job_id = reply.json()["job"]["id"]
    job = wait_for_job(c, k.admin, job_id)
    assert str(root) in json.dumps(job["params"])
    asset_id = max(i["id"] for i in c.get("/assets", headers=k.read).json()["items"])

    as_read = json.dumps(c.get(f"/jobs/{job_id}", headers=k.read).json())
    listed = json.dumps(c.get("/jobs", headers=k.read).json())
    detail = c.get(f"/assets/{asset_id}", headers=k.read).json()
    for text in (as_read, listed, json.dumps(detail)):
        assert str(tmp_path) not in text and "alice" not in text
    assert "server:missing.jpg" in as_read
    assert all(s["uri"].startswith("server:") for s in detail["sources"]), detail["sources"]
    assert str(root) in json.dumps(c.get(f"/assets/{asset_id}", headers=k.write).json())

    monkeypatch.setattr(settings.api, "read_keys_see_paths", True)
    assert str(root) in json.dumps(c.get(f"/jobs/{job_id}", headers=k.read).json())


# ---------- throttles ----------
def test_failed_authentication_is_throttled_per_client(archive) -> None:
    app = archive.client.app
    limit = archive.settings.api.auth_failure_limit
    allowed = int(limit.split("/")[0])
    guesser = TestClient(app, client=("198.51.100.7", 40000))
    neighbour = TestClient(app, client=("198.51.100.8", 40000))
    statuses = []
    start = time.perf_counter()
    for i in range(300):
        reply = guesser.get("/me", headers={"Authorization": f"Bearer rdx_{i:012x}_guess"})
        statuses.append(reply.status_code)
    elapsed = time.perf_counter() - start
    assert statuses[:allowed] == [401] * allowed
    assert set(statuses[allowed:]) == {429}
    throttled = guesser.get("/me", headers=archive.keys.read)  # checked before the key is
    assert throttled.status_code == 429
    retry = int(throttled.headers["retry-after"])
    assert 1 <= retry <= 60
    assert throttled.json()["type"].endswith("/rate-limited")
    assert neighbour.get("/me", headers=archive.keys.read).status_code == 200
    print(f"\n300 wrong keys: {allowed} x 401 then 429 (Retry-After {retry} s) in {elapsed:.2f} s")


def test_throttle_buckets_ipv6_by_64_and_counts_only_failures() -> None:
    assert client_bucket("2001:db8::1") == client_bucket("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_bucket("2001:db8:0:1::1") != client_bucket("2001:db8::1")
    assert client_bucket("::ffff:192.0.2.1") == "192.0.2.1"
    throttle = AuthThrottle("3/minute")
    for _ in range(3):
        throttle.check("192.0.2.9")
        throttle.failed("192.0.2.9")
    with pytest.raises(Exception) as raised:
        throttle.check("192.0.2.9")
    assert raised.value.status == 429 and "Retry-After" in raised.value.headers
    throttle.check("192.0.2.10")  # another client is not affected


def test_costly_searches_per_key_are_bounded_with_429(archive) -> None:
    c, k = archive.client, archive.keys
    slots: CostlySlots = c.app.state.costly_slots
    key_id = c.get("/me", headers=k.read).json()["key_id"]
    held = [slots.slot(f"key:{key_id}") for _ in range(slots.per_key)]
    for slot in held:
        slot.__enter__()
    try:
        concept = c.post("/search", json={"text": "lighthouse", "limit": 3}, headers=k.read)
        assert concept.status_code == 429, concept.text
        assert int(concept.headers["retry-after"]) >= 1
        image = c.post(
            "/search/image",
            files={"file": ("q.jpg", encode(photo_like(40, 30, seed=5), "JPEG"))},
            headers=k.read,
        )
        assert image.status_code == 429
        # Tag search is cheap: never limited; another key has its own slots.
        assert c.post("/search", json={"limit": 3}, headers=k.read).status_code == 200
        other = c.post("/search", json={"text": "lighthouse", "limit": 3}, headers=k.write)
        assert other.status_code == 200, other.text
    finally:
        for slot in held:
            slot.__exit__(None, None, None)
    assert c.post("/search", json={"text": "lighthouse", "limit": 3}, headers=k.read).is_success
    assert slots.running(f"key:{key_id}") == 0


def test_costly_slots_hold_under_concurrency() -> None:
    slots = CostlySlots(per_key=2)
    inside, peak, refused = [0], [0], [0]
    lock = threading.Lock()

    def search() -> None:
        try:
            with slots.slot("key:a"):
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.05)
                with lock:
                    inside[0] -= 1
        except Exception as exc:
            assert exc.status == 429
            with lock:
                refused[0] += 1

    threads = [threading.Thread(target=search) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2 and refused[0] >= 1 and slots.running("key:a") == 0


# ---------- metrics access, security headers, SSRF ----------
@pytest.mark.parametrize("access", ["key", "open", "bind"])
def test_metrics_access_modes(sqlite_url, tmp_path, access) -> None:
    port = _free_port()
    settings = make_settings(
        tmp_path, sqlite_url, metrics_access=access, metrics_bind=f"127.0.0.1:{port}"
    )
    keys = make_keys(sqlite_url)
    with TestClient(create_app(settings)) as client:
        anonymous = client.get("/metrics").status_code
        with_key = client.get("/metrics", headers=keys.read).status_code
        if access == "bind":
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            listener = conn.getresponse()
            assert listener.status == 200 and b"ramdex_assets" in listener.read()
            conn.close()
    assert (anonymous, with_key) == {"key": (401, 200), "open": (200, 200), "bind": (404, 404)}[
        access
    ]
    if access == "bind":  # the listener stops with the app
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ui_and_api_send_a_content_security_policy(api_env) -> None:
    client, keys, _ = api_env
    for path in ("/", "/static/app.js"):
        reply = client.get(path)
        assert reply.headers["content-security-policy"] == UI_CSP
        assert "frame-ancestors 'none'" in UI_CSP and "script-src 'self'" in UI_CSP
        assert reply.headers["x-frame-options"] == "DENY"
    reply = client.get("/me", headers=keys.read)
    assert reply.headers["content-security-policy"] == API_CSP
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_site_local_ipv6_is_not_public() -> None:
    import ipaddress

    from indexer.fetch import FetchError, is_public_address, resolve_checked

    for text in ("fec0::1", "fed0::1234", "feff:ffff::1"):
        assert not is_public_address(ipaddress.ip_address(text)), text
    assert is_public_address(ipaddress.ip_address("2001:4860:4860::8888"))
    with pytest.raises(FetchError):
        resolve_checked("http://[fec0::1]/x.jpg", "fec0::1", 80, allow_private=False)


def test_query_image_limits_jpeg_by_draft_scale(tmp_path) -> None:
    from api.problems import ProblemError
    from api.query_image import jpeg_draft_scale, query_decode_options
    from indexer.settings import Settings

    settings = Settings(home=tmp_path, api={"query_max_pixels": 1_000_000})
    assert jpeg_draft_scale(8000, 6000, 384) == 8 and jpeg_draft_scale(700, 6000, 384) == 1
    big_jpeg = io.BytesIO()
    photo_like(64, 48).resize((4000, 3000)).save(big_jpeg, "JPEG", quality=30)
    options = query_decode_options(settings, big_jpeg.getvalue(), 384)
    assert options.draft_size == 384  # 12 MP decoded at 1/4 scale: 0.75 MP
    assert (
        query_decode_options(settings, encode(photo_like(64, 48), "JPEG"), 384).draft_size is None
    )
    with pytest.raises(ProblemError) as raised:
        query_decode_options(settings, zero_png(2000, 1000), 384)
    assert raised.value.status == 422 and raised.value.kind == "image-too-large"
