"""One delivery attempt: a POST to the checked address, bounded in time and in what is read.

Redirects are not followed (a 3xx is a failed attempt: the subscriber should register the
final URL); environment proxies are ignored (they would connect somewhere unchecked); at most
:data:`MAX_RESPONSE_BYTES` of the answer are read, for the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import certifi
import urllib3

from indexer.webhooks.errors import WebhookError
from indexer.webhooks.urls import check

USER_AGENT = "ramdex-webhooks/0.1"
MAX_RESPONSE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to: ``error`` None when the receiver answered 2xx."""

    status_code: int | None
    error: str | None
    elapsed_ms: float


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout_s: float, allow_private: bool
) -> Attempt:
    """POST ``body`` to ``url`` (the URL checked again now); never raises."""
    started = time.perf_counter()

    def done(status: int | None, error: str | None) -> Attempt:
        return Attempt(status, error, (time.perf_counter() - started) * 1000.0)

    try:
        target = check(url, allow_private=allow_private)
    except WebhookError as exc:
        return done(None, exc.message)
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
    common = {"port": target.port, "timeout": timeout, "retries": False, "maxsize": 1}
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=target.host,
            assert_hostname=target.host,
            **common,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, **common)
    default_port = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    request_headers = {
        "Host": host if target.port == default_port else f"{host}:{target.port}",
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        **headers,
    }
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers=request_headers,
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            response.read(MAX_RESPONSE_BYTES)
        finally:
            response.release_conn()
            response.close()
    except urllib3.exceptions.NewConnectionError as exc:  # refused, unreachable (a subclass
        return done(None, f"connection failed: {_reason(exc)}")  # of the timeout error: first)
    except urllib3.exceptions.TimeoutError:
        return done(None, f"timed out after {timeout_s:g} s")
    except urllib3.exceptions.HTTPError as exc:
        return done(None, f"connection failed: {_reason(exc)}")
    except OSError as exc:
        return done(None, f"connection failed: {exc}")
    finally:
        pool.close()
    status = int(response.status)
    if 200 <= status < 300:
        return done(status, None)
    if 300 <= status < 400:
        return done(status, f"HTTP {status}: redirects are not followed (register the final URL)")
    return done(status, f"HTTP {status}")


def _reason(exc: Exception) -> str:
    inner = getattr(exc, "reason", None)
    return str(inner or exc).splitlines()[0][:300]
