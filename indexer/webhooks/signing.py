"""The delivery signature (docs/webhooks.md): HMAC-SHA256 over ``timestamp + "." + body``.

Header: ``X-Ramdex-Signature: t=<unix seconds>,v1=<hex digest>``. The timestamp is signed too,
so a receiver that refuses old timestamps (5 minutes is usual) cannot be fed a replayed
request; the body is the exact bytes sent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "X-Ramdex-Signature"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A random signing secret (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}." + body`` keyed by the secret (UTF-8)."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Ramdex-Signature`` value for a body sent now (or at ``timestamp``)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={signature(secret, ts, body)}"
