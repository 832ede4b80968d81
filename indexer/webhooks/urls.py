"""Webhook URLs pass the SSRF rules of ingest (:mod:`indexer.fetch`): http(s) only, no
credentials, and every address the host resolves to public unless
``ingest.allow_private_urls``. Checked when a webhook is registered and again at every
delivery (the sender connects to the address it checked: a DNS answer that changed meanwhile
cannot send a delivery inside the network)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from indexer.fetch import BlockedAddressError, FetchError, resolve_checked
from indexer.webhooks.errors import WebhookError

MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class Target:
    """Where a POST goes: the checked address to connect to and what the request names."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an acceptable URL.

    Raises:
        WebhookError: not http(s), credentials, no host, a bad port, too long.
    """
    if not url or len(url) > MAX_URL_LENGTH:
        raise WebhookError(f"a webhook URL must be 1 to {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError as exc:  # a malformed [IPv6] host
        raise WebhookError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookError(
            f"webhook URLs must be http or https, not {parts.scheme or 'none'!r}: {url[:200]}",
            hint="give a URL like https://example.com/ramdex-hook",
        )
    if parts.username or parts.password:
        raise WebhookError("webhook URLs with credentials are refused (sign, do not embed)")
    if not host:
        raise WebhookError(f"the webhook URL has no host: {url[:200]}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookError(f"bad port in the webhook URL: {exc}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path


def check(url: str, *, allow_private: bool) -> Target:
    """Resolve and check the URL now.

    Raises:
        WebhookError: a malformed URL, a host that does not resolve, or one that resolves to a
            non-public address (and ``allow_private`` is off).
    """
    scheme, host, port, path = parse(url)
    try:
        address = resolve_checked(url, host, port, allow_private)
    except BlockedAddressError as exc:
        raise WebhookError(
            f"webhook URL refused: {exc.reason}",
            hint="webhooks go to public addresses; set RAMDEX_INGEST__ALLOW_PRIVATE_URLS=true "
            "only for a trusted internal network",
        ) from None
    except FetchError as exc:
        raise WebhookError(f"webhook URL refused: {exc.reason}") from None
    except (UnicodeError, ValueError) as exc:  # a host name that cannot be encoded (IDNA)
        raise WebhookError(f"webhook URL refused: bad host name {host[:100]!r} ({exc})") from None
    return Target(scheme, host, port, address, path)
