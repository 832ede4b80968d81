"""Safe URL downloads for ingest.

A URL given to ``ramdex ingest`` (or to the API) makes the server open a connection, so every
request is checked the way a server-side-request-forgery guard must:

- only ``http`` and ``https``; no credentials in the URL;
- the host name is resolved once and **every** resolved address must be public (not loopback,
  private, link-local, IPv6 site-local (fec0::/10), multicast, reserved, unspecified,
  carrier-grade NAT, or an IPv4 address hidden inside IPv6), unless ``allow_private`` is set;
- the connection is made to the address that was checked (the host name is kept for TLS SNI,
  certificate checking and the ``Host`` header), so a second DNS answer cannot swap in an
  internal address (DNS rebinding);
- redirects are followed by hand, at most ``max_redirects``, each target checked again;
- the response must say it is an image (or generic binary), is read with a byte cap and a total
  deadline, and its first bytes must be an image signature;
- environment proxies are ignored on purpose (a proxy would connect somewhere unchecked).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3

from indexer.media import SNIFF_BYTES, sniff_mime

REDIRECT_CODES = {301, 302, 303, 307, 308}
ACCEPTED_CONTENT_TYPES = ("image/", "video/", "application/octet-stream", "binary/octet-stream")
USER_AGENT = "ramdex-ingest/0.1 (+https://github.com/ramdex)"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class FetchError(Exception):
    """A URL that could not be downloaded, with the reason (safe to show to the user)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class BlockedAddressError(FetchError):
    """The URL points at a loopback, private, link-local or otherwise non-public address."""


@dataclass(frozen=True)
class FetchLimits:
    """Limits for one download.

    Attributes:
        max_bytes: the largest body accepted (a video's: ``max_video_bytes``).
        max_video_bytes: the largest video accepted (None: ``max_bytes``); a body is a video
            when its bytes say so (sniffed), or its Content-Type before they are read.
        timeout_s: connect and per-read timeout.
        total_timeout_s: deadline for the whole download (None: 10 x ``timeout_s``).
        max_redirects: redirects followed before giving up.
        allow_private: allow non-public addresses (tests, trusted internal networks).
    """

    max_bytes: int = 200 * 1024 * 1024
    max_video_bytes: int | None = None
    timeout_s: float = 20.0
    total_timeout_s: float | None = None
    max_redirects: int = 3
    allow_private: bool = False

    def limit_for(self, mime: str | None) -> int:
        """The largest body of this (sniffed or declared) type; None: not known yet."""
        video = self.max_video_bytes if self.max_video_bytes is not None else self.max_bytes
        if mime is None:
            return max(self.max_bytes, video)
        return video if mime.startswith("video/") else self.max_bytes

    @classmethod
    def from_settings(cls, settings) -> FetchLimits:  # noqa: ANN001 - indexer.settings.Settings
        """The limits configured in ``settings.ingest``."""
        ingest = settings.ingest
        return cls(
            max_bytes=ingest.max_bytes,
            max_video_bytes=settings.media.max_video_bytes,
            timeout_s=ingest.url_timeout_s,
            max_redirects=ingest.url_max_redirects,
            allow_private=ingest.allow_private_urls,
        )


@dataclass(frozen=True)
class FetchedFile:
    """A finished download in a temporary file (the caller moves or deletes it)."""

    url: str  # as given
    final_url: str  # after redirects
    path: Path
    size: int
    sha256: str
    content_type: str
    mime: str  # sniffed from the bytes


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet (the only kind fetched by default)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public_address(embedded)
        if address.teredo is not None:
            return False
        if address.is_site_local:  # fec0::/10: deprecated site-local, still routed inside sites
            return False
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
    ):
        return False
    return address.is_global


def resolve_checked(url: str, host: str, port: int, allow_private: bool) -> str:
    """Resolve ``host`` and return one address to connect to, after checking all of them.

    Raises:
        FetchError: the name does not resolve.
        BlockedAddressError: any resolved address is not public (and ``allow_private`` is off).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(url, f"cannot resolve host {host!r}: {exc.strerror}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchError(url, f"host {host!r} has no addresses")
    parsed = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if not allow_private and not is_public_address(address):
            raise BlockedAddressError(
                url,
                f"host {host!r} resolves to {address}, which is not a public address; "
                "set RAMDEX_INGEST__ALLOW_PRIVATE_URLS=true to allow internal hosts",
            )
        parsed.append(address)
    # Prefer IPv4: more often routable from containers than IPv6.
    parsed.sort(key=lambda a: a.version)
    return str(parsed[0])


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, url: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise FetchError(url, "download took longer than the total time limit")
        return remaining


def _open(
    url: str, limits: FetchLimits, deadline: _Deadline
) -> tuple[urllib3.HTTPConnectionPool, urllib3.BaseHTTPResponse]:
    """One request to the checked address of ``url``; no redirects followed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(url, f"only http and https URLs are fetched, not {parts.scheme!r}")
    if parts.username or parts.password:
        raise FetchError(url, "URLs with credentials are refused")
    host = parts.hostname
    if not host:
        raise FetchError(url, "URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FetchError(url, f"bad port: {exc}") from exc
    ip = resolve_checked(url, host, port, limits.allow_private)
    timeout = urllib3.Timeout(
        connect=min(limits.timeout_s, deadline.left(url)),
        read=min(limits.timeout_s, deadline.left(url)),
    )
    common = {"port": port, "timeout": timeout, "retries": False, "maxsize": 1}
    if parts.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            ip,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=host,  # SNI names the host, not the pinned address
            assert_hostname=host,  # and the certificate must be for the host
            **common,
        )
    else:
        pool = urllib3.HTTPConnectionPool(ip, **common)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    default_port = 443 if parts.scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and not host_header.startswith("["):
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    headers = {
        "Host": host_header,
        "User-Agent": USER_AGENT,
        "Accept": "image/*, video/*",
        "Accept-Encoding": "identity",  # no transparent gunzip: a gzip bomb stays a small file
    }
    try:
        response = pool.urlopen(
            "GET",
            target,
            headers=headers,
            redirect=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
        return pool, response
    except urllib3.exceptions.HTTPError as exc:
        pool.close()
        if isinstance(exc, urllib3.exceptions.SSLError):
            raise FetchError(url, f"TLS error: {exc}") from exc
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            raise FetchError(url, "timed out connecting or waiting for the server") from exc
        raise FetchError(url, f"connection failed: {exc}") from exc


def fetch_url(url: str, dest_dir: str | Path, limits: FetchLimits = FetchLimits()) -> FetchedFile:
    """Download an image or video URL into a temporary file under ``dest_dir``, hashing it on
    the way.

    Raises:
        BlockedAddressError: the URL (or a redirect) targets a non-public address.
        FetchError: anything else that stops the download (status, type, size, time, TLS ...).
    """
    deadline = _Deadline(limits.total_timeout_s or limits.timeout_s * 10)
    current = url
    for _hop in range(limits.max_redirects + 1):
        pool, response = _open(current, limits, deadline)
        try:
            if response.status in REDIRECT_CODES:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(current, f"HTTP {response.status} without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise FetchError(current, f"HTTP {response.status} {response.reason or ''}".strip())
            return _read_body(url, current, response, dest_dir, limits, deadline)
        finally:
            response.close()
            pool.close()
    raise FetchError(url, f"more than {limits.max_redirects} redirects")


def _read_body(
    url: str,
    final_url: str,
    response: urllib3.BaseHTTPResponse,
    dest_dir: str | Path,
    limits: FetchLimits,
    deadline: _Deadline,
) -> FetchedFile:
    content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if not content_type.startswith(ACCEPTED_CONTENT_TYPES):
        raise FetchError(
            final_url,
            f"server says the content is {content_type or 'untyped'}, not an image or a video",
        )
    # Until the first bytes say what it is, the declared type sets the limit (a generic
    # binary type: the larger one).
    limit = limits.limit_for(
        content_type if content_type.startswith(("image/", "video/")) else None
    )
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FetchError(final_url, f"file is {declared} bytes, over the limit of {limit} bytes")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest, prefix="url-", suffix=".part")
    temp = Path(name)
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                deadline.left(final_url)
                try:
                    chunk = response.read(256 * 1024)
                except urllib3.exceptions.TimeoutError as exc:
                    raise FetchError(final_url, "timed out reading the response") from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise FetchError(final_url, f"connection broke while reading: {exc}") from exc
                if not chunk:
                    break
                size += len(chunk)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES:  # the bytes say what it is: their limit
                        limit = limits.limit_for(sniff_mime(head) or content_type)
                if size > limit:
                    raise FetchError(final_url, f"response is over the limit of {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise FetchError(final_url, "empty response (0 bytes)")
        mime = sniff_mime(head)
        if mime is None:
            raise FetchError(
                final_url, "the response is not a supported image or video (unknown signature)"
            )
        if size > limits.limit_for(mime):  # shorter than the sniffing window, of another type
            raise FetchError(
                final_url, f"response is over the limit of {limits.limit_for(mime)} bytes"
            )
        return FetchedFile(url, final_url, temp, size, digest.hexdigest(), content_type, mime)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
