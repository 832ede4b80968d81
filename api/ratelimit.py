"""Throttles for hostile clients: failed authentication per client address and concurrent
costly searches per key, both answered with ``429`` and ``Retry-After``.

Failed authentications are counted with the `limits` library (moving window; in memory per
process by default, or in Redis so that every API process shares the counts). Only failures count:
a client that presents a good key is never slowed down, one that guesses keys gets
``api.auth_failure_limit`` tries per window and then 429s until the window moves on, before its
guesses even reach the database.

Costly searches (free-text concepts scored over the archive, query images run through the image
model) hold one of ``api.costly_searches_per_key`` slots of their key while they run; one more is
refused at once rather than queued (a client that floods should learn it, not pile up threads).
The slots are per process: N API processes allow N times as many.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated

from fastapi import Depends, Request
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from api.auth import Principal
from api.deps import get_principal
from api.problems import ProblemError


def client_bucket(host: str | None) -> str:
    """The throttling identity of a client address: IPv4 as is, IPv6 by its /64 (one host
    usually holds a whole /64, so counting single IPv6 addresses would be no limit at all)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def too_many(detail: str, retry_after_s: float) -> ProblemError:
    """A 429 problem with a whole-second ``Retry-After`` (at least 1)."""
    seconds = max(1, math.ceil(retry_after_s))
    return ProblemError(
        429,
        f"{detail}; retry in {seconds} s",
        kind="rate-limited",
        headers={"Retry-After": str(seconds)},
        retry_after_s=seconds,
    )


class AuthThrottle:
    """Failed authentications per client bucket (see :func:`client_bucket`).

    Args:
        limit: `limits` notation, for example ``"20/minute"`` or ``"20/minute;200/hour"``.
        storage_uri: ``memory://`` or a Redis URL.
    """

    def __init__(self, limit: str, storage_uri: str = "memory://") -> None:
        self.limits = parse_many(limit)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def check(self, client: str | None) -> None:
        """Refuse a client whose failures used up the window, before its key is looked at.

        Raises:
            ProblemError: 429 with ``Retry-After``.
        """
        bucket = client_bucket(client)
        for item in self.limits:
            if not self.limiter.test(item, "auth-fail", bucket):
                reset, _ = self.limiter.get_window_stats(item, "auth-fail", bucket)
                raise too_many(
                    "too many failed authentications from this address", reset - time.time()
                )

    def failed(self, client: str | None) -> None:
        """Count one failed authentication of this client."""
        bucket = client_bucket(client)
        for item in self.limits:
            self.limiter.hit(item, "auth-fail", bucket)


class CostlySlots:
    """At most ``per_key`` costly searches running at once for each key (or client address when
    keys are off)."""

    def __init__(self, per_key: int, retry_after_s: float = 2.0) -> None:
        self.per_key = per_key
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    def running(self, who: str) -> int:
        """How many costly searches ``who`` runs now."""
        with self._lock:
            return self._running.get(who, 0)

    @contextmanager
    def slot(self, who: str) -> Iterator[None]:
        """Hold one of ``who``'s slots for the duration of the block.

        Raises:
            ProblemError: 429 with ``Retry-After`` when all of them are taken.
        """
        with self._lock:
            held = self._running.get(who, 0)
            if held >= self.per_key:
                raise too_many(
                    f"this key already runs {held} costly searches (free-text concepts or query "
                    f"images; the limit is {self.per_key} at once)",
                    self.retry_after_s,
                )
            self._running[who] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running[who] - 1
                if left:
                    self._running[who] = left
                else:
                    del self._running[who]  # no entry per idle key: the dict stays small


class CostlyGate:
    """The calling key's costly-search slots: ``with gate.slot(): ...`` around the work."""

    def __init__(self, slots: CostlySlots | None, who: str) -> None:
        self.slots = slots
        self.who = who

    def slot(self) -> AbstractContextManager[None]:
        """Hold a slot (429 when none is free); a no-op for an app built without slots."""
        if self.slots is None:
            return _no_slot()
        return self.slots.slot(self.who)


@contextmanager
def _no_slot() -> Iterator[None]:
    yield


def get_costly_gate(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> CostlyGate:
    """The slots of the calling key (of the client address when keys are off)."""
    if principal.key_id is not None:
        who = f"key:{principal.key_id}"
    else:
        who = f"addr:{client_bucket(request.client.host if request.client else None)}"
    return CostlyGate(getattr(request.app.state, "costly_slots", None), who)


CostlyGateDep = Annotated[CostlyGate, Depends(get_costly_gate)]
