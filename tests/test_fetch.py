"""URL downloads against a real HTTP server on 127.0.0.1.

Loopback is refused by default, so the tests that download turn ``allow_private`` on (the
settings flag ``ingest.allow_private_urls``) or pass an address policy that allows only the
test server. DNS answers for made-up host names are the one thing faked (``socket.getaddrinfo``),
because no real resolver here can be made to lie on cue.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexer.fetch import (
    BlockedAddressError,
    FetchError,
    FetchLimits,
    fetch_url,
    is_public_address,
)
from indexer.settings import Settings
from tests.ingest_fixtures import encode, photo_like

JPEG = encode(photo_like(64, 48, seed=11), "JPEG")
VIDEO: bytes = b""  # an MP4 made once by the ``video`` fixture (PyAV), served at /clip.mp4
SEEN_HOSTS: list[str] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", length: bool = True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        SEEN_HOSTS.append(self.headers.get("Host", ""))
        path = self.path
        if path == "/img.jpg":
            self._send(200, JPEG)
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/img.jpg" if hops == 0 else f"/redirect/{hops - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/to-other-loopback":
            port = self.server.server_address[1]
            self.send_response(301)
            self.send_header("Location", f"http://127.0.0.2:{port}/img.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/html":
            self._send(200, b"<html>hello</html>", "text/html")
        elif path == "/fake-jpeg":
            self._send(200, b"definitely not a jpeg" * 10, "image/jpeg")
        elif path == "/octet":
            self._send(200, JPEG, "application/octet-stream")
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
        elif path == "/big-undeclared":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(JPEG + b"\x00" * 200_000)
            except OSError:
                pass
        elif path == "/clip.mp4":
            self._send(200, VIDEO, "video/mp4")
        elif path == "/clip-as-binary":
            self._send(200, VIDEO, "application/octet-stream")
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, JPEG)
        elif path == "/missing":
            self._send(404, b"no", "text/plain")
        else:
            self._send(500, b"?", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


ALLOW = FetchLimits(allow_private=True, timeout_s=5.0)


def test_download_when_private_addresses_are_allowed(server, tmp_path):
    base, _ = server
    got = fetch_url(f"{base}/img.jpg", tmp_path, ALLOW)
    assert got.path.read_bytes() == JPEG
    assert got.sha256 == hashlib.sha256(JPEG).hexdigest() and got.size == len(JPEG)
    assert got.mime == "image/jpeg" and got.final_url == f"{base}/img.jpg"


def test_settings_flag_controls_private_addresses(server, tmp_path):
    base, _ = server
    assert FetchLimits.from_settings(Settings()).allow_private is False
    allowed = Settings(ingest={"allow_private_urls": True})
    assert fetch_url(f"{base}/img.jpg", tmp_path, FetchLimits.from_settings(allowed)).size == len(
        JPEG
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/img.jpg",
        "http://localhost:{port}/img.jpg",
        "http://[::1]:{port}/img.jpg",
        "http://10.1.2.3/img.jpg",
        "http://192.168.0.1/img.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:{port}/img.jpg",
        "http://0.0.0.0:{port}/img.jpg",
    ],
)
def test_loopback_private_and_link_local_are_refused_by_default(server, tmp_path, url):
    _, port = server
    before = len(SEEN_HOSTS)
    with pytest.raises(BlockedAddressError, match="not a public address"):
        fetch_url(url.format(port=port), tmp_path, FetchLimits(timeout_s=2.0))
    assert len(SEEN_HOSTS) == before  # refused before any connection
    assert list(tmp_path.iterdir()) == []


def test_address_classification():
    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]
    private = [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.1.1", "100.64.0.1",
        "224.0.0.1", "0.0.0.0", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
        "2002:7f00:0001::1",  # 6to4 wrapping 127.0.0.1
    ]  # fmt: skip
    for text in public:
        assert is_public_address(ipaddress.ip_address(text)), text
    for text in private:
        assert not is_public_address(ipaddress.ip_address(text)), text


def test_redirects_are_followed_up_to_the_limit(server, tmp_path):
    base, _ = server
    limits = FetchLimits(allow_private=True, timeout_s=5.0, max_redirects=3)
    assert fetch_url(f"{base}/redirect/2", tmp_path, limits).final_url == f"{base}/img.jpg"
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch_url(f"{base}/redirect/5", tmp_path, limits)


def test_every_redirect_target_is_checked_again(server, tmp_path, monkeypatch):
    base, port = server
    # Only the test server's address counts as allowed; the redirect goes to 127.0.0.2.
    monkeypatch.setattr(
        "indexer.fetch.is_public_address", lambda a: str(a) == "127.0.0.1", raising=True
    )
    with pytest.raises(BlockedAddressError, match="127.0.0.2"):
        fetch_url(f"{base}/to-other-loopback", tmp_path, FetchLimits(timeout_s=5.0))


def test_all_resolved_addresses_must_be_public(server, tmp_path, monkeypatch):
    _, port = server
    real = socket.getaddrinfo

    def two_answers(host, *args, **kwargs):
        if host == "mixed.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
            ]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(BlockedAddressError, match="10.0.0.7"):
        fetch_url("http://mixed.example/img.jpg", tmp_path, FetchLimits(timeout_s=2.0))


def test_connection_is_pinned_to_the_checked_address(server, tmp_path, monkeypatch):
    """DNS rebinding: a second lookup would answer a forbidden address; none is made."""
    _, port = server
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1", "10.9.9.9", "10.9.9.9"])
    calls = []

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example":
            calls.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr("indexer.fetch.is_public_address", lambda a: str(a) == "127.0.0.1")
    got = fetch_url(f"http://rebind.example:{port}/img.jpg", tmp_path, FetchLimits(timeout_s=5.0))
    assert got.path.read_bytes() == JPEG
    assert calls == ["rebind.example"]  # resolved once, connected to that answer
    assert SEEN_HOSTS[-1] == f"rebind.example:{port}"  # the Host header names the host


def test_content_type_and_signature_are_checked(server, tmp_path):
    base, _ = server
    with pytest.raises(FetchError, match="text/html, not an image"):
        fetch_url(f"{base}/html", tmp_path, ALLOW)
    with pytest.raises(FetchError, match="not a supported image"):
        fetch_url(f"{base}/fake-jpeg", tmp_path, ALLOW)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{base}/missing", tmp_path, ALLOW)
    assert list(tmp_path.iterdir()) == []  # refused bodies leave no file behind
    octet = fetch_url(f"{base}/octet", tmp_path, ALLOW)  # generic binary: the bytes decide
    assert octet.mime == "image/jpeg" and list(tmp_path.iterdir()) == [octet.path]


def test_size_cap_declared_and_streamed(server, tmp_path):
    base, _ = server
    limits = FetchLimits(allow_private=True, timeout_s=5.0, max_bytes=100_000)
    with pytest.raises(FetchError, match="over the limit"):
        fetch_url(f"{base}/big-declared", tmp_path, limits)
    with pytest.raises(FetchError, match="over the limit"):
        fetch_url(f"{base}/big-undeclared", tmp_path, limits)
    assert list(tmp_path.iterdir()) == []  # partial downloads removed


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    global VIDEO
    from tests.media_fixtures import encode_video, solid

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    VIDEO = encode_video(path, [(solid(c), 1.0) for c in ("red", "blue")]).read_bytes()
    return VIDEO


def test_videos_have_their_own_size_limit(server, video, tmp_path):
    """A video URL is accepted up to ``max_video_bytes`` even when it is over ``max_bytes``
    (the limit of everything else), whether the server says video/mp4 or a generic binary type
    (then the bytes say it is a video)."""
    base, _ = server
    small = len(video) // 2
    loose = FetchLimits(allow_private=True, timeout_s=5.0, max_bytes=small, max_video_bytes=None)
    with pytest.raises(FetchError, match="over the limit"):
        fetch_url(f"{base}/clip.mp4", tmp_path, loose)  # no video limit: max_bytes holds
    limits = FetchLimits(
        allow_private=True, timeout_s=5.0, max_bytes=small, max_video_bytes=len(video)
    )
    for path in ("/clip.mp4", "/clip-as-binary"):
        got = fetch_url(f"{base}{path}", tmp_path, limits)
        assert got.mime == "video/mp4" and got.size == len(video)
        assert got.sha256 == hashlib.sha256(video).hexdigest()
        got.path.unlink()
    tight = FetchLimits(
        allow_private=True, timeout_s=5.0, max_bytes=small, max_video_bytes=len(video) - 1
    )
    with pytest.raises(FetchError, match="over the limit"):
        fetch_url(f"{base}/clip.mp4", tmp_path, tight)
    # An image is still held to max_bytes, whatever the video limit.
    with pytest.raises(FetchError, match="over the limit"):
        fetch_url(
            f"{base}/img.jpg",
            tmp_path,
            FetchLimits(allow_private=True, max_bytes=len(JPEG) - 1, max_video_bytes=10**9),
        )
    assert list(tmp_path.iterdir()) == []


def test_a_video_url_is_ingested_with_its_frames(server, video, tmp_path):
    from indexer.db.frame_repo import read_frames
    from indexer.db.session import session_scope
    from indexer.ingest.pipeline import ingest
    from indexer.ingest.process import AssetProcessor
    from ram_pp.factory import random_model

    base, _ = server
    settings = Settings(
        home=tmp_path / "home",
        database={"url": f"sqlite:///{tmp_path / 'url.sqlite3'}"},
        broker={"url": ""},
        ingest={"allow_private_urls": True},
        media={"min_interval_s": 0.5, "max_interval_s": 1.0},
    )
    proc = AssetProcessor(
        settings, loaded=random_model("test_micro", seed=0), model_id="test_micro@random"
    )
    summary = ingest([f"{base}/clip.mp4"], settings=settings, processor=proc, progress=False)
    assert (summary.done, summary.failed) == (1, 0), summary.failures
    with session_scope(settings.database_url) as s:
        frames = next(iter(read_frames(s, [1]).values()))
    assert len(frames) >= 2 and frames[-1].timestamp_s >= 1.0  # red, then blue


def test_timeout(server, tmp_path):
    base, _ = server
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(f"{base}/slow", tmp_path, FetchLimits(allow_private=True, timeout_s=0.3))
    assert time.monotonic() - start < 1.4


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/a.jpg", "only http and https"),
        ("http://user:pw@example.com/a.jpg", "credentials"),
        ("http:///a.jpg", "no host"),
        ("http://no-such-host.invalid/a.jpg", "cannot resolve"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(tmp_path, url, reason):
    with pytest.raises(FetchError, match=reason):
        fetch_url(url, tmp_path, FetchLimits(timeout_s=2.0))
