"""From events to deliveries: fan out, then group each subscription's queue into batches.

``fan_out`` queues every new event for each active webhook that subscribes to its type
(``webhook_pending_events``) and marks it fanned out; it picks events by that flag, not by an
id cursor, so an event whose transaction committed after a later id's is never skipped.
``seal`` turns a webhook's queue into deliveries of at most ``max_events`` events, the last
short one only once its oldest event waited ``max_wait_s``: a backfill over a million assets
(a few thousand batch events) becomes a few dozen POSTs. A webhook limited to collections gets
asset events narrowed to its collections' assets (none left: the event is dropped for it),
and job and concept events only of its collections.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, rowcount, table_of, upsert_insert
from indexer.db.collections import AssetCollection
from indexer.db.concepts import Concept
from indexer.db.events import (
    ASSET_EVENTS,
    Event,
    EventType,
    Webhook,
    WebhookPendingEvent,
)
from indexer.db.jobs import Job
from indexer.db.leases import db_in
from indexer.db.webhook_repo import add_delivery

_events = table_of(Event)
_hooks = table_of(Webhook)
_queue = table_of(WebhookPendingEvent)
_members = table_of(AssetCollection)
FAN_OUT_LIMIT = 5000  # events per fan-out statement batch


class SealConflict(RuntimeError):
    """Another process sealed the same queued events meanwhile (the transaction is undone)."""


@dataclass(frozen=True, slots=True)
class _Hook:
    id: int
    types: frozenset[str]
    collections: frozenset[int] | None
    max_events: int
    max_wait_s: float
    created_at: datetime


def _active_hooks(session: Session) -> list[_Hook]:
    rows = session.execute(
        sa.select(
            _hooks.c.id,
            _hooks.c.event_types,
            _hooks.c.collection_ids,
            _hooks.c.max_events,
            _hooks.c.max_wait_s,
            _hooks.c.created_at,
        )
        .where(_hooks.c.active)
        .order_by(_hooks.c.id)
    )
    return [
        _Hook(
            int(r.id),
            frozenset(r.event_types or ()),
            None if r.collection_ids is None else frozenset(int(c) for c in r.collection_ids),
            max(1, int(r.max_events)),
            float(r.max_wait_s),
            r.created_at,
        )
        for r in rows
    ]


def fan_out(session: Session, limit: int = FAN_OUT_LIMIT) -> int:
    """Queue up to ``limit`` new events for the webhooks that want them; returns how many
    events were fanned out."""
    stmt = (
        sa.select(_events.c.id, _events.c.type, _events.c.created_at)
        .where(_events.c.fanned_out.is_(False))
        .order_by(_events.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    events = session.execute(stmt).all()
    if not events:
        return 0
    hooks = _active_hooks(session)
    # A webhook gets what happened since it was made: an event recorded for an older one
    # (and fanned out after this one appeared) is not news to it.
    rows = [
        {"webhook_id": h.id, "event_id": int(e.id), "created_at": e.created_at}
        for e in events
        for h in hooks
        if e.type in h.types and e.created_at >= h.created_at
    ]
    for part in chunks(rows, 1000):
        session.execute(
            upsert_insert(session, _queue)
            .values(list(part))
            .on_conflict_do_nothing(index_elements=["webhook_id", "event_id"])
        )
    ids = [int(e.id) for e in events]
    for part in chunks(ids):
        session.execute(sa.update(_events).where(_events.c.id.in_(part)).values(fanned_out=True))
    return len(ids)


def seal_all(session: Session) -> list[int]:
    """Seal every active webhook's ripe batches; returns the new deliveries' ids."""
    created: list[int] = []
    for hook in _active_hooks(session):
        created.extend(seal(session, hook))
    return created


def seal(session: Session, hook: _Hook) -> list[int]:
    """The webhook's full batches, and its last short one once it waited long enough."""
    created: list[int] = []
    while True:
        queued = session.execute(
            sa.select(_queue.c.event_id)
            .where(_queue.c.webhook_id == hook.id)
            .order_by(_queue.c.event_id)
            .limit(hook.max_events)
        ).scalars()
        ids = [int(i) for i in queued]
        if not ids:
            break
        short = len(ids) < hook.max_events
        if short and not _waited(session, hook):
            break
        events = session.execute(
            sa.select(_events.c.id, _events.c.type, _events.c.payload, _events.c.created_at)
            .where(_events.c.id.in_(ids))
            .order_by(_events.c.id)
        ).all()
        taken = rowcount(
            session.execute(
                sa.delete(_queue).where(_queue.c.webhook_id == hook.id, _queue.c.event_id.in_(ids))
            )
        )
        if taken != len(ids):
            raise SealConflict(f"webhook {hook.id}: queued events taken by another process")
        visible = _narrow(
            session, hook, [(int(e.id), e.type, dict(e.payload), e.created_at) for e in events]
        )
        if visible:
            created.append(
                add_delivery(session, hook.id, delivery_body(hook.id, visible), len(visible))
            )
        if short:
            break
    return created


def _waited(session: Session, hook: _Hook) -> bool:
    """Whether the webhook's oldest queued event waited ``max_wait_s`` (database clock)."""
    stmt = sa.select(
        sa.exists().where(
            _queue.c.webhook_id == hook.id, _queue.c.created_at <= db_in(-hook.max_wait_s)
        )
    )
    return bool(session.execute(stmt).scalar())


_Item = tuple[int, str, dict[str, Any], datetime]


def _narrow(session: Session, hook: _Hook, events: Sequence[_Item]) -> list[_Item]:
    """The events as this webhook may see them (all, unless it is limited to collections)."""
    if hook.collections is None:
        return list(events)
    allowed = sorted(hook.collections)
    asset_ids = sorted(
        {int(a) for _, kind, p, _ in events if kind in ASSET_EVENTS for a in p.get("asset_ids", ())}
    )
    members: set[int] = set()
    for part in chunks(asset_ids):
        members.update(
            int(a)
            for a in session.execute(
                sa.select(_members.c.asset_id)
                .where(_members.c.asset_id.in_(part), _members.c.collection_id.in_(allowed))
                .distinct()
            ).scalars()
        )
    out: list[_Item] = []
    for event_id, kind, payload, created in events:
        if kind in ASSET_EVENTS:
            mine = [int(a) for a in payload.get("asset_ids", ()) if int(a) in members]
            if mine:
                out.append((event_id, kind, {**payload, "asset_ids": mine}, created))
        elif _owner_collection(session, kind, payload) in hook.collections:
            out.append((event_id, kind, payload, created))
    return out


def _owner_collection(session: Session, kind: str, payload: dict[str, Any]) -> int | None:
    """The collection a job or concept event belongs to (None: global, hidden from webhooks
    limited to collections)."""
    if kind == EventType.CONCEPT_BACKFILLED and payload.get("concept_id") is not None:
        return session.execute(
            sa.select(Concept.collection_id).where(Concept.id == int(payload["concept_id"]))
        ).scalar_one_or_none()
    column = getattr(Job, "collection_id", None)  # jobs carry a collection since issue 14
    if kind == EventType.JOB_DONE and column is not None and payload.get("job_id") is not None:
        return session.execute(
            sa.select(column).where(Job.id == int(payload["job_id"]))
        ).scalar_one_or_none()
    return None


def delivery_body(webhook_id: int, events: Sequence[_Item]) -> str:
    """The JSON a delivery POSTs (compact, UTF-8; the exact text is signed and stored)."""
    return json.dumps(
        {
            "webhook_id": webhook_id,
            "events": [
                {"id": i, "type": kind, "created_at": _iso(created), "data": payload}
                for i, kind, payload, created in events
            ],
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _iso(when: datetime | str | None) -> str | None:
    if when is None or isinstance(when, str):
        return when
    return when.isoformat().replace("+00:00", "Z")
