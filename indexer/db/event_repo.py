"""Events written in the caller's transaction (the outbox), and the cheap check that anyone
subscribes to them.

An event is written only while an active webhook subscribes to its type, so an archive with
no webhooks pays one read of a tiny table every :data:`SUBSCRIPTION_TTL_S` seconds per process
(cached), not a row per batch. The price of the cache: a webhook created in another process
gets the events committed from at most that long after its creation (the creating process
forgets its cache at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import table_of
from indexer.db.base import db_now
from indexer.db.events import Event, EventType, Webhook

#: How long a process trusts what it read of the subscriptions.
SUBSCRIPTION_TTL_S = 2.0

_events = table_of(Event)
_webhooks = table_of(Webhook)
_cache: dict[str, tuple[float, frozenset[str]]] = {}
_lock = threading.Lock()


def subscribed_types(session: Session) -> frozenset[str]:
    """The event types some active webhook of this database wants (cached briefly)."""
    key = str(session.get_bind().url)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    rows = session.execute(sa.select(_webhooks.c.event_types).where(_webhooks.c.active))
    types = frozenset(str(t) for row in rows.scalars() for t in (row or ()))
    with _lock:
        _cache[key] = (now + SUBSCRIPTION_TTL_S, types)
    return types


def forget_subscriptions() -> None:
    """Drop the cache (a webhook was created, changed or removed in this process)."""
    with _lock:
        _cache.clear()


def record_event(session: Session, event_type: EventType | str, payload: dict[str, Any]) -> bool:
    """Write one event in the caller's transaction, if anyone subscribes to its type.

    Returns:
        Whether a row was written.
    """
    kind = EventType(event_type).value
    if kind not in subscribed_types(session):
        return False
    session.execute(
        sa.insert(_events).values(type=kind, payload=payload, created_at=db_now(), fanned_out=False)
    )
    return True


def record_asset_event(
    session: Session, event_type: EventType | str, asset_ids: Iterable[int], **data: Any
) -> bool:
    """One event for a batch of assets (``asset_ids`` ascending, plus ``data``); nothing for
    an empty batch. Returns whether a row was written."""
    ids = sorted({int(i) for i in asset_ids})
    if not ids:
        return False
    return record_event(session, event_type, {"asset_ids": ids, **data})
