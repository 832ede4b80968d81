"""How far the model queue has delivered: the evidence that a queued asset's message was lost.

A ``pending`` asset with ``dispatched_at`` is *queued*: its message is somewhere in the model
queue. When a broker restarts without persistence the message is gone but the row still says
queued. An empty queue proves the loss; a busy one (uploads keep arriving) may never be empty.
The queue's order proves it too: every model message is stamped with its send time
(:func:`send_headers`), and a worker starting a task records the newest stamp it saw
(:func:`note_delivery`, on Celery's ``task_prerun``). The queue is first in, first out, so once a
message sent at ``T`` was delivered, every message sent before ``T`` was delivered as well: a
pending asset dispatched well before ``T`` (by ``ingest.redispatch_after_s``) that nobody
claimed lost its message, however deep the queue is now. A deep but healthy queue (a million
assets dispatched at once) never looks lost: its old messages are still ahead of every newer one.

Messages that leave the order (a task retried with a countdown, a message Redis redelivers after
its visibility timeout) carry their original stamp, which is older: the mark is a maximum, so
they never move it. A false alarm (an asset whose message a worker holds beyond the margin)
only sends it once more: a worker's claim skips assets already processing elsewhere or done.

The mark lives in ``service_leases`` (row ``queue-mark:<queue>``, its ``lease_until`` is the
mark): one row, no schema change. Stamps are the producer's wall clock, compared with
``dispatched_at`` (the database's clock): the margin (default ``ingest.lease_s``) absorbs clock
differences between machines far larger than NTP's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from celery.signals import task_prerun
from sqlalchemy.orm import Session

from indexer.db._sql import table_of, upsert_insert
from indexer.db.leases import ServiceLease
from indexer.db.session import session_scope
from indexer.settings import Settings

log = logging.getLogger(__name__)

SENT_AT_HEADER = "ramdex_sent_at"  # epoch seconds (float) when the producer sent the message
NOTE_STEP_S = 1.0  # a worker writes the mark at most once per this much newer stamp
_OWNER = "queue-mark"
_service = table_of(ServiceLease)


def mark_name(queue: str) -> str:
    """The ``service_leases`` row holding the mark of ``queue``."""
    return f"queue-mark:{queue}"[:64]


def redispatch_after_s(settings: Settings) -> float:
    """The margin: ``ingest.redispatch_after_s``, or the lease length when unset."""
    value = settings.ingest.redispatch_after_s
    return float(value if value is not None else settings.ingest.lease_s)


def send_headers() -> dict[str, float]:
    """Headers for a model-queue message: its send time."""
    return {SENT_AT_HEADER: time.time()}


def record_mark(session: Session, queue: str, sent_at: datetime) -> bool:
    """In the caller's transaction: the queue delivered a message sent at ``sent_at``; the mark
    only moves forward. Returns whether it moved."""
    stmt = upsert_insert(session, _service).values(
        name=mark_name(queue), owner=_OWNER, lease_until=sent_at
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"lease_until": stmt.excluded.lease_until},
        where=_service.c.lease_until < stmt.excluded.lease_until,
    ).returning(_service.c.name)
    return session.execute(stmt).first() is not None


def delivered_mark(session: Session, queue: str) -> datetime | None:
    """The send time of the newest message the queue is known to have delivered (None: none
    recorded yet)."""
    stmt = sa.select(_service.c.lease_until).where(_service.c.name == mark_name(queue))
    value = session.execute(stmt).scalar_one_or_none()
    if value is None:
        return None
    # Read back through the table's UTC type on both backends.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def lost_before(settings: Settings, session: Session) -> datetime | None:
    """Pending assets dispatched before this time have lost their message (the queue delivered
    a message sent ``redispatch_after_s`` after them), or None when the mark does not say."""
    mark = delivered_mark(session, settings.broker.model_queue)
    if mark is None:
        return None
    return mark - timedelta(seconds=redispatch_after_s(settings))


_noted: dict[int, float] = {}  # per process: the newest stamp this process wrote
_noted_lock = threading.Lock()


def note_delivery(settings: Settings, sent_at: float) -> bool:
    """A worker starts a model task whose message was sent at ``sent_at`` (epoch seconds):
    record it (at most one write per :data:`NOTE_STEP_S` of newer stamps per process).

    Returns:
        Whether the database was written.
    """
    pid = os.getpid()
    with _noted_lock:
        if sent_at < _noted.get(pid, 0.0) + NOTE_STEP_S:
            return False
        _noted[pid] = sent_at
    with session_scope(settings.database_url) as session:
        record_mark(session, settings.broker.model_queue, datetime.fromtimestamp(sent_at, tz=UTC))
    return True


@task_prerun.connect(weak=False)
def _on_task_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    """Celery hook (worker side): note the send stamp of every stamped task it starts."""
    request = getattr(task, "request", None)
    stamp = request.get(SENT_AT_HEADER) if request is not None else None
    if stamp is None:
        return
    try:
        from indexer.settings import get_settings

        note_delivery(get_settings(), float(stamp))
    except Exception as exc:  # the mark only speeds up recovery: never fail the task for it
        log.warning("could not record the queue mark: %s: %s", type(exc).__name__, exc)
