"""Data access for webhook subscriptions and their deliveries (the caller's transaction).

Claiming is one conditional UPDATE per delivery (due, not delivered or dead), which pushes
``next_attempt_at`` forward by the claim's lease: two senders never hold one delivery at the
same time, and a sender that dies leaves it due again when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import rowcount, table_of, truncate_text
from indexer.db.base import db_now
from indexer.db.event_repo import forget_subscriptions
from indexer.db.events import DeliveryStatus, Event, Webhook, WebhookDelivery
from indexer.db.leases import db_in

_hooks = table_of(Webhook)
_deliveries = table_of(WebhookDelivery)
_events = table_of(Event)
_RETRYABLE = (DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender holds: what to POST, where, signed with what."""

    id: int
    webhook_id: int
    url: str
    secret: str
    body: str
    attempt: int  # this attempt's number, 1 for the first


def create_webhook(session: Session, **values: Any) -> Webhook:
    """Store a subscription (values already checked, see :mod:`indexer.webhooks.subscriptions`)."""
    # Sub-second creation time (SQLite's default has whole seconds): a hook gets the events
    # recorded from this instant on (indexer.webhooks.batching.fan_out).
    hook = Webhook(**{"created_at": db_now(), **values})
    session.add(hook)
    session.flush()
    forget_subscriptions()
    return hook


def get_webhook(session: Session, webhook_id: int) -> Webhook | None:
    """The subscription, or None."""
    return session.get(Webhook, webhook_id, populate_existing=True)


def list_webhooks(session: Session) -> list[Webhook]:
    """Every subscription, oldest first."""
    return list(session.scalars(sa.select(Webhook).order_by(Webhook.id)))


def delete_webhook(session: Session, webhook_id: int) -> bool:
    """Remove a subscription with its queue and deliveries; False when there was none."""
    gone = rowcount(session.execute(sa.delete(_hooks).where(_hooks.c.id == webhook_id)))
    forget_subscriptions()
    return bool(gone)


def add_delivery(session: Session, webhook_id: int, body: str, event_count: int) -> int:
    """A new delivery, due now; returns its id."""
    stmt = (
        sa.insert(_deliveries)
        .values(
            webhook_id=webhook_id,
            status=DeliveryStatus.PENDING.value,
            event_count=event_count,
            body=body,
            attempts=0,
            next_attempt_at=db_now(),
            created_at=db_now(),
        )
        .returning(_deliveries.c.id)
    )
    return int(session.execute(stmt).scalar_one())


def list_deliveries(
    session: Session,
    webhook_id: int,
    *,
    status: DeliveryStatus | str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[WebhookDelivery]:
    """A subscription's deliveries, newest first (page on with ``before_id``)."""
    stmt = (
        sa.select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == DeliveryStatus(status).value)
    if before_id is not None:
        stmt = stmt.where(WebhookDelivery.id < before_id)
    return list(session.scalars(stmt))


def get_delivery(session: Session, webhook_id: int, delivery_id: int) -> WebhookDelivery | None:
    """One delivery of the subscription, or None."""
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    return row if row is not None and row.webhook_id == webhook_id else None


def replay_delivery(session: Session, delivery_id: int) -> bool:
    """Send a delivery again (whatever its status): due now, attempts counted afresh.
    False when it is held by a sender right now (try again in a moment)."""
    held = sa.and_(
        _deliveries.c.status.in_(_RETRYABLE),
        _deliveries.c.claimed_by.is_not(None),
        _deliveries.c.next_attempt_at > db_now(),
    )
    result = session.execute(
        sa.update(_deliveries)
        .where(_deliveries.c.id == delivery_id, ~held)
        .values(
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            next_attempt_at=db_now(),
            claimed_by=None,
        )
    )
    return bool(rowcount(result))


def due_delivery_ids(session: Session, limit: int) -> list[int]:
    """Up to ``limit`` deliveries whose next attempt is due, oldest due first, taken in turn
    from each webhook (round robin), so one receiver with a long backlog, or one that hangs,
    does not hold back every other webhook's deliveries."""
    stmt = (
        sa.select(_deliveries.c.id, _deliveries.c.webhook_id)
        .where(_deliveries.c.status.in_(_RETRYABLE), _deliveries.c.next_attempt_at <= db_now())
        .order_by(_deliveries.c.next_attempt_at, _deliveries.c.id)
        .limit(limit * 8)
    )
    queues: dict[int, list[int]] = {}
    for row in session.execute(stmt):
        queues.setdefault(int(row.webhook_id), []).append(int(row.id))
    picked: list[int] = []
    while len(picked) < limit and queues:
        for hook_id in list(queues):
            picked.append(queues[hook_id].pop(0))
            if not queues[hook_id]:
                del queues[hook_id]
            if len(picked) >= limit:
                break
    return picked


def claim(
    session: Session, delivery_ids: Sequence[int], owner: str, lease_s: float
) -> list[Claimed]:
    """Take the deliveries among these that are still due and count the attempt: one
    conditional UPDATE (its condition is checked again on each row it changes, so a delivery
    another sender took meanwhile is skipped, on both backends)."""
    if not delivery_ids:
        return []
    rows = session.execute(
        sa.update(_deliveries)
        .where(
            _deliveries.c.id.in_(list(delivery_ids)),
            _deliveries.c.status.in_(_RETRYABLE),
            _deliveries.c.next_attempt_at <= db_now(),
        )
        .values(
            attempts=_deliveries.c.attempts + 1,
            next_attempt_at=db_in(lease_s),
            claimed_by=owner,
        )
        .returning(
            _deliveries.c.id, _deliveries.c.webhook_id, _deliveries.c.body, _deliveries.c.attempts
        )
    ).all()
    hook_ids = sorted({int(r.webhook_id) for r in rows})
    hooks = {
        int(h.id): h
        for h in session.execute(
            sa.select(_hooks.c.id, _hooks.c.url, _hooks.c.secret).where(_hooks.c.id.in_(hook_ids))
        )
    }
    return [
        Claimed(
            int(r.id),
            int(r.webhook_id),
            hooks[int(r.webhook_id)].url,
            hooks[int(r.webhook_id)].secret,
            r.body,
            int(r.attempts),
        )
        for r in sorted(rows, key=lambda r: int(r.id))
        if int(r.webhook_id) in hooks
    ]


def record_attempt(
    session: Session,
    delivery_id: int,
    owner: str,
    *,
    status_code: int | None,
    error: str | None,
    retry_in_s: float | None,
) -> str:
    """The outcome of a claimed attempt: delivered (no ``error``), failed and due again in
    ``retry_in_s``, or dead (``retry_in_s`` None). Returns the status written ("" when the
    delivery was replayed or removed meanwhile: nothing written)."""
    if error is None:
        status = DeliveryStatus.DELIVERED.value
        values: dict[str, Any] = {"delivered_at": db_now(), "next_attempt_at": None}
    elif retry_in_s is None:
        status = DeliveryStatus.DEAD.value
        values = {"next_attempt_at": None}
    else:
        status = DeliveryStatus.FAILED.value
        values = {"next_attempt_at": db_in(retry_in_s)}
    values.update(
        status=status,
        last_status_code=status_code,
        last_error=None if error is None else truncate_text(error, 1000),
        claimed_by=None,
    )
    result = session.execute(
        sa.update(_deliveries)
        .where(_deliveries.c.id == delivery_id, _deliveries.c.claimed_by == owner)
        .values(**values)
    )
    return status if rowcount(result) else ""


def has_work(session: Session) -> bool:
    """Whether a dispatcher pass could do anything: an active webhook, a delivery not yet
    delivered, or an event not yet fanned out (one read)."""
    stmt = sa.select(
        sa.or_(
            sa.exists().where(_hooks.c.active),
            sa.exists().where(_deliveries.c.status.in_(_RETRYABLE)),
            sa.exists().where(_events.c.fanned_out.is_(False)),
        )
    )
    return bool(session.execute(stmt).scalar())
