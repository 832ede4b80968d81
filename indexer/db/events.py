"""Events (the outbox), webhook subscriptions, their queues and their deliveries.

An ``events`` row is written in the transaction of the change it reports (an asset done or
failed, labels changed, a job finished), so an event exists exactly when the change committed.
The dispatcher (:mod:`indexer.webhooks`) fans each event out to the subscriptions that want it
(``webhook_pending_events``), groups a subscription's queue into deliveries (one signed POST of
up to ``max_events`` events, sent at the latest ``max_wait_s`` after the oldest was queued) and
records every attempt on the ``webhook_deliveries`` row. A delivery keeps the exact body it
sends, so a replay sends the same bytes after the events themselves were pruned.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, BigIntPK, JsonType, UtcDateTime, check_in, db_now


class EventType(StrEnum):
    """What a subscriber can ask to be told about."""

    ASSET_DONE = "asset.done"
    ASSET_FAILED = "asset.failed"
    ASSET_TAGS_CHANGED = "asset.tags_changed"
    CONCEPT_BACKFILLED = "concept.backfilled"
    JOB_DONE = "job.done"


#: Events about assets: their payload lists ``asset_ids``, which a subscription limited to
#: collections sees narrowed to the assets of those collections.
ASSET_EVENTS = frozenset(
    {EventType.ASSET_DONE, EventType.ASSET_FAILED, EventType.ASSET_TAGS_CHANGED}
)

#: The type of the event ``POST /webhooks/{id}/test`` sends (never stored as an event).
PING = "ping"


class DeliveryStatus(StrEnum):
    """pending (never tried) -> delivered | failed (retried later) -> ... -> dead (gave up)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"


class Event(Base):
    """One thing that happened; a batch of assets ending together is one event."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(sa.String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    # Set once the dispatcher queued the event for every subscription that wants it.
    fanned_out: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())

    __table_args__ = (sa.Index("ix_events_fanned_out_id", "fanned_out", "id"),)


class Webhook(Base):
    """A subscription: where to POST which events, signed with ``secret``."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    # The HMAC key; stored as given (it must sign), shown to people only when created.
    secret: Mapped[str] = mapped_column(sa.String(200))
    event_types: Mapped[list[str]] = mapped_column(JsonType)
    # None: events of every asset; a list: only assets of these collections.
    collection_ids: Mapped[list[int] | None] = mapped_column(JsonType, nullable=True)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    max_events: Mapped[int] = mapped_column(sa.Integer, default=100, server_default="100")
    max_wait_s: Mapped[float] = mapped_column(sa.Float, default=5.0, server_default="5")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )


class WebhookPendingEvent(Base):
    """An event queued for a subscription, not yet part of a delivery."""

    __tablename__ = "webhook_pending_events"

    webhook_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)  # the event's time


class WebhookDelivery(Base):
    """One POST of one or more events to a subscription, with its attempts."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(
        sa.String(16),
        default=DeliveryStatus.PENDING.value,
        server_default=DeliveryStatus.PENDING.value,
    )
    event_count: Mapped[int] = mapped_column(sa.Integer)
    body: Mapped[str] = mapped_column(sa.Text)  # the exact bytes signed and sent (UTF-8 JSON)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # When the next attempt is due; a sender pushes it forward when it claims the delivery, so
    # a sender that dies mid-send leaves it due again later (at least once, never concurrently).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(160))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        sa.CheckConstraint(check_in("status", tuple(DeliveryStatus)), name="status"),
        sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    )
