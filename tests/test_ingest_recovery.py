"""Recovery rules of the reconciler on SQLite and on the real PostgreSQL server, without workers
(the fault suite, tests/test_fault_*.py, runs the same rules with real processes):

- lost messages under a busy queue: the queue's delivery mark (indexer/ingest/queue_mark.py);
- jobs from before the job ledger (migration k003) are settled;
- concept backfill jobs are watched through a lease.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from indexer.db.asset_leases import orphaned_assets
from indexer.db.assets import Asset
from indexer.db.jobs import Job
from indexer.db.leases import db_in
from indexer.db.session import session_scope
from indexer.ingest import queue_mark
from indexer.ingest.register import Registrar
from indexer.settings import Settings
from indexer.stores import ensure_schema
from tests.db_fixtures import reset_postgres
from tests.ingest_fixtures import postgres_database, write_images


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database("ramdex_recovery") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    """Settings of an empty archive (schema migrated), broker mode on paper (nothing is sent)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
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


@pytest.fixture(params=["sqlite", "postgresql"])
def old_archive(request, tmp_path) -> Settings:
    """An archive whose schema is at k002, the revision before the job ledger (k003)."""
    from indexer.migrate import upgrade_database

    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    upgrade_database(url, "k002")
    return Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu"},
        ingest={"lease_s": 2.0},
    )


def test_jobs_from_before_the_job_ledger_are_settled(old_archive, tmp_path):
    """What an older version left (written with SQL into the k002 schema): a pending job
    (registration cut short), a running one half counted, a running one fully counted, and
    their unfinished assets. After ``alembic upgrade`` (k003: no leases, no ledger rows for
    them) one recovery pass ends every job truthfully and takes the assets over; jobs of this
    version (a live registration, a running job with a ledger) are left alone."""
    from indexer.db.jobs import Job
    from indexer.ingest.reconcile import recover
    from indexer.jobs import start_job
    from indexer.migrate import upgrade_database

    settings = old_archive
    url = settings.database_url
    engine = sa.create_engine(url)
    old = "now() - interval '1 hour'" if url.startswith("postgresql") else "'2026-01-01 00:00:00'"
    with engine.begin() as conn:
        for kind, status, total, done, failed in [
            ("ingest", "pending", 3, 0, 0),
            ("ingest", "running", 10, 4, 1),
            ("reindex", "running", 5, 4, 1),
        ]:
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (kind, status, total, done, failed, params, created_at, "
                    f"updated_at) VALUES (:k, :s, :t, :d, :f, '{{}}', {old}, {old})"
                ),
                {"k": kind, "s": status, "t": total, "d": done, "f": failed},
            )
        for i, status in enumerate(["pending", "processing", "done"]):
            conn.execute(
                sa.text(
                    "INSERT INTO assets (sha256, status, created_at, updated_at) "
                    f"VALUES (:sha, :status, {old}, {old})"
                ),
                {"sha": f"{i:064x}", "status": status},
            )
    engine.dispose()
    upgrade_database(url)
    live = start_job(url, "ingest", owner="elsewhere|-|1|1", lease_s=3600)  # registering now
    running = _job_with_a_ledger(settings, tmp_path)

    found = recover(settings, "recoverer")
    assert sorted(found.jobs_settled) == [1, 2, 3]
    assert found.assets == [1, 2]  # the pending and the processing asset, now leased to us
    with session_scope(url) as s:
        jobs = {j.id: j for j in s.scalars(sa.select(Job))}
        assert (jobs[1].status, jobs[2].status, jobs[3].status) == ("failed", "failed", "done")
        assert "before per-asset job tracking" in jobs[1].error
        assert "4 done and 1 failed of 10" in jobs[2].error
        assert jobs[3].error is None
        assert jobs[live].status == "pending" and jobs[running].status == "running"
    assert recover(settings, "recoverer").jobs_settled == []  # settled once


def _job_with_a_ledger(settings: Settings, tmp_path) -> int:
    """A running job of this version waiting for one asset."""
    from indexer.jobs import end_registration, start_job

    url = settings.database_url
    job = start_job(url, "ingest")
    registrar = Registrar(settings, job_id=job, owner="elsewhere|-|1|1")
    asset = registrar.register(write_images(tmp_path / "ledger", 1, start=77)[0]).asset_id
    assert end_registration(url, job) == "running"
    with session_scope(url) as s:  # quiet for a while, like the legacy ones; its asset held
        s.execute(sa.update(Job).where(Job.id == job).values(updated_at=db_in(-3600)))
        s.execute(sa.update(Asset).where(Asset.id == asset).values(lease_until=db_in(3600)))
    return job


def _backfill_job(
    settings: Settings, owner: str, lease_s: float, name: str = "harbour crane"
) -> tuple[int, int]:
    """A concept and its backfill job, running under ``owner``'s lease (as a run leaves it)."""
    from indexer.db.concept_repo import create_concept
    from indexer.db.job_repo import create_job
    from indexer.jobs import claim_job_run

    with session_scope(settings.database_url) as s:
        concept = create_concept(
            s, model_name="test_micro@random", name=name, descriptions=["a crane"]
        )
        job = create_job(s, kind="backfill", params={"concept_id": concept.id})
        s.flush()
        concept_id, job_id = int(concept.id), int(job.id)
    resume = {"backfill": {"generate": True, "fixed_threshold": True}}
    assert claim_job_run(settings.database_url, job_id, owner, lease_s, resume)
    return concept_id, job_id


def test_a_backfill_run_is_leased_and_a_duplicate_run_refused(settings):
    """Two deliveries of one backfill message never run at once: the second finds the first's
    live lease and does nothing; once that lease ran out (its process died) it takes over."""
    from indexer.jobs import claim_job_run

    url = settings.database_url
    _, job_id = _backfill_job(settings, "first|-|1|1", 3600)
    assert not claim_job_run(url, job_id, "second|-|2|2", 60)
    with session_scope(url) as s:
        s.execute(sa.update(Job).where(Job.id == job_id).values(lease_until=db_in(-1)))
    assert claim_job_run(url, job_id, "second|-|2|2", 60)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.lease_owner) == ("running", "second|-|2|2")
        assert job.params["backfill"] == {"generate": True, "fixed_threshold": True}


def test_a_backfill_whose_process_died_is_resumed_then_failed_with_a_reason(settings):
    """A backfill run whose lease ran out is resumed with its own arguments (here by the
    embedded server's hook; with a broker the task is sent again) at most three times, then
    failed with a reason, its concept too; with nothing to resume it (an embedded ``ramdex
    ingest``), it is failed at once. Never ``running`` for ever."""
    from indexer.db.concepts import Concept
    from indexer.ingest.backfills import MAX_RESUMES, Backfill
    from indexer.ingest.reconcile import recover
    from indexer.jobs import claim_job_run

    url = settings.database_url
    embedded = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": ""})}
    )
    concept_id, job_id = _backfill_job(embedded, "gone|-|1|1", 0.01)
    time.sleep(0.05)  # its lease runs out
    resumed: list[Backfill] = []
    for run in range(1, MAX_RESUMES + 1):
        found = recover(embedded, "recoverer", resume_backfill=resumed.append)
        assert found.backfills_resumed == [job_id] and found.backfills_failed == []
        assert resumed[-1] == Backfill(job_id, concept_id, generate=True, fixed_threshold=True)
        with session_scope(url) as s:
            job = s.get(Job, job_id)
            assert (job.status, job.params["resumed"]) == ("pending", run)
        # The resumed run starts, and dies as well.
        assert claim_job_run(url, job_id, f"again{run}|-|1|1", 0.01)
        time.sleep(0.05)
    found = recover(embedded, "recoverer", resume_backfill=resumed.append)
    assert found.backfills_failed == [job_id] and len(resumed) == MAX_RESUMES
    with session_scope(url) as s:
        job, concept = s.get(Job, job_id), s.get(Concept, concept_id)
        assert job.status == "failed" and "stopped before it finished" in job.error
        assert "3 resumed runs stopped too" in job.error
        assert concept.status == "failed" and concept.error == job.error
        assert job.lease_owner is None

    _, other = _backfill_job(embedded, "gone|-|1|1", 0.01, name="dry dock")
    time.sleep(0.05)
    assert recover(embedded, "recoverer").backfills_failed == [other]  # nothing could resume it
