"""Pruning: events once queued for every subscriber and older than ``event_retention_s``
(deliveries keep their own copy of the body), deliveries delivered or dead for longer than
``delivery_retention_days``. Keeps both tables bounded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import rowcount, table_of
from indexer.db.events import DeliveryStatus, Event, WebhookDelivery, WebhookPendingEvent
from indexer.db.leases import db_in
from indexer.settings import WebhookSettings

_events = table_of(Event)
_queue = table_of(WebhookPendingEvent)
_deliveries = table_of(WebhookDelivery)


def prune(session: Session, settings: WebhookSettings) -> tuple[int, int]:
    """Delete what is no longer needed; returns (events, deliveries) deleted."""
    events = rowcount(
        session.execute(
            sa.delete(_events).where(
                _events.c.fanned_out.is_(True),
                _events.c.created_at < db_in(-settings.event_retention_s),
                ~sa.exists().where(_queue.c.event_id == _events.c.id),
            )
        )
    )
    deliveries = rowcount(
        session.execute(
            sa.delete(_deliveries).where(
                _deliveries.c.status.in_(
                    [DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value]
                ),
                _deliveries.c.created_at < db_in(-settings.delivery_retention_days * 86400.0),
            )
        )
    )
    return events, deliveries
