"""Recovery rules of the reconciler on SQLite and on the real PostgreSQL server, without workers
(the fault suite, tests/test_fault_*.py, runs the same rules with real processes):

- lost messages under a busy queue: the queue's delivery mark (indexer/ingest/queue_mark.py);
- jobs from before the job ledger (migration k003) are settled;
- concept backfill jobs are watched through a lease.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from indexer.db.asset_leases import orphaned_assets
from indexer.db.assets import Asset
from indexer.db.leases import db_in
from indexer.db.session import session_scope
from indexer.ingest import queue_mark
from indexer.ingest.register import Registrar
from indexer.settings import Settings
from indexer.stores import ensure_schema
from tests.ingest_fixtures import postgres_database, write_images


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database("ramdex_recovery") as url:
        yield url


def _reset_postgres(url: str) -> None:
    from indexer.db.session import dispose_engines
    from indexer.stores import _schema_ready

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    dispose_engines()
    _schema_ready.discard(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    """Settings of an empty archive (schema migrated), broker mode on paper (nothing is sent)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        _reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    made = Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": "redis://127.0.0.1:1/0"},  # never reached by these tests
        model={"name": "test_micro", "device": "cpu"},
        ingest={"lease_s": 5.0},
    )
    ensure_schema(url)
    return made


def _register(settings: Settings, folder, n: int, start: int = 0) -> list[int]:
    paths = write_images(folder, n, start=start)
    registrar = Registrar(settings)
    return [int(registrar.register(p).asset_id) for p in paths]  # type: ignore[arg-type]


def _dispatched(settings: Settings, ids: list[int], seconds_ago: float) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(
            sa.update(Asset)
            .where(Asset.id.in_(ids))
            .values(lease_owner=None, lease_until=None, dispatched_at=db_in(-seconds_ago))
        )


def _mark(settings: Settings, seconds_ago: float) -> datetime:
    at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    with session_scope(settings.database_url) as s:
        queue_mark.record_mark(s, settings.broker.model_queue, at)
    return at


def test_a_busy_queue_that_delivered_newer_messages_proves_older_ones_lost(settings, tmp_path):
    """Queued assets are orphans once the queue delivered a message sent ``redispatch_after_s``
    (here the lease, 5 s) after theirs; those sent later, or sent before an older delivery only,
    are still in the queue; a deep queue without newer deliveries loses nothing."""
    old, recent, fresh = (
        _register(settings, tmp_path / n, 2, start=k * 10) for k, n in enumerate("abc")
    )
    _dispatched(settings, old, 300)  # lost: newer messages were delivered since
    _dispatched(settings, recent, 62)  # sent 2 s before the delivered message: within margin
    _dispatched(settings, fresh, 1)  # behind the delivered message: still queued

    def lost() -> list[int]:
        with session_scope(settings.database_url) as s:
            before = queue_mark.lost_before(settings, s)
            return orphaned_assets(s, lease_s=5.0, lost_after_s=None, sent_before=before)

    assert lost() == []  # nothing delivered recorded yet: a deep queue is not a lost one
    _mark(settings, 600)  # a delivery older than every queued asset says nothing about them
    assert lost() == []
    at = _mark(settings, 60)
    assert lost() == sorted(old)
    _mark(settings, 3600)  # the mark never moves back (a retried, older message)
    with session_scope(settings.database_url) as s:
        mark = queue_mark.delivered_mark(s, settings.broker.model_queue)
    assert abs((mark - at).total_seconds()) < 0.01  # type: ignore[operator]
    _mark(settings, 0)  # the queue reached messages sent now: only the freshest may still wait
    assert lost() == sorted(old + recent)


def test_workers_write_the_mark_at_most_once_a_second(settings, monkeypatch):
    """Every model task's start notes its message's send time; a process writes only when the
    stamp moved a second past what it wrote (one small UPDATE per second per worker at most)."""
    monkeypatch.setattr(queue_mark, "_noted", {})
    now = datetime.now(UTC).timestamp()
    assert queue_mark.note_delivery(settings, now - 30)
    assert not queue_mark.note_delivery(settings, now - 29.5)
    assert not queue_mark.note_delivery(settings, now - 40)  # older: never written
    assert queue_mark.note_delivery(settings, now - 28)
    with session_scope(settings.database_url) as s:
        mark = queue_mark.delivered_mark(s, settings.broker.model_queue)
    assert abs(mark.timestamp() - (now - 28)) < 0.01  # type: ignore[union-attr]
    headers = queue_mark.send_headers()
    assert abs(headers[queue_mark.SENT_AT_HEADER] - datetime.now(UTC).timestamp()) < 5
