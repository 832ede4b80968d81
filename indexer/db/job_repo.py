"""Data access for jobs, their ledger of assets and their progress counters.

Progress increments are single ``UPDATE .. SET done = done + n`` statements, so many workers can
report into one job concurrently without lost updates. An ingest or reindex job's counters come
from its ledger (``job_assets``): each row is credited once, when its asset ends, by whichever
process ended it (:func:`credit_assets`), in the transaction that ended it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, rowcount, table_of, truncate_text, upsert_insert
from indexer.db.assets import Asset, AssetStatus
from indexer.db.base import db_now
from indexer.db.errors import NotFoundError
from indexer.db.jobs import Job, JobAsset, JobKind, JobOutcome, JobStatus
from indexer.db.leases import db_in

_jobs = table_of(Job)
_ledger = table_of(JobAsset)
_assets = table_of(Asset)


def create_job(
    session: Session,
    *,
    kind: JobKind | str,
    total: int = 0,
    params: dict[str, Any] | None = None,
) -> Job:
    """A new ``pending`` job.

    Args:
        kind: ingest, reindex or backfill.
        total: items expected (can grow later with :func:`update_job`).
        params: JSON-serialisable parameters of the run (paths, options).

    Raises:
        ValueError: unknown kind or negative total.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    job = Job(kind=JobKind(kind).value, total=total, params=dict(params or {}))
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job | None:
    """The job, or None (fresh from the database, not a cached copy)."""
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(
    session: Session,
    *,
    status: JobStatus | str | None = None,
    kind: JobKind | str | None = None,
    limit: int = 20,
    visible: Any = None,
) -> list[Job]:
    """Jobs, newest first; ``visible``: an SQL condition limiting them (a collection-limited
    key's, see indexer.db.collection_scope)."""
    stmt = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    if visible is not None:
        stmt = stmt.where(visible)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status).value)
    if kind is not None:
        stmt = stmt.where(Job.kind == JobKind(kind).value)
    return list(session.scalars(stmt))


def update_job(
    session: Session,
    job_id: int,
    *,
    status: JobStatus | str | None = None,
    total: int | None = None,
    add_total: int = 0,
    error: str | None = None,
    reset_progress: bool = False,
) -> None:
    """Change a job's status, total (set, or grow atomically with ``add_total``) or error;
    ``reset_progress`` sets its done and failed counts back to zero (a job run again).

    Raises:
        NotFoundError: no such job.
    """
    values: dict[str, Any] = {"updated_at": db_now()}
    if status is not None:
        values["status"] = JobStatus(status).value
    if total is not None:
        values["total"] = total
    elif add_total:
        values["total"] = _jobs.c.total + add_total
    if error is not None:
        values["error"] = truncate_text(error)
    if reset_progress:
        values["done"] = 0
        values["failed"] = 0
    result = session.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(**values))
    if rowcount(result) == 0:
        raise NotFoundError(f"no job with id {job_id}")


def add_job_progress(session: Session, job_id: int, *, done: int = 0, failed: int = 0) -> None:
    """Atomically count processed items of a job (safe from many workers at once).

    Raises:
        NotFoundError: no such job.
        ValueError: negative counts.
    """
    if done < 0 or failed < 0:
        raise ValueError("progress counts must be >= 0")
    stmt = (
        sa.update(_jobs)
        .where(_jobs.c.id == job_id)
        .values(done=_jobs.c.done + done, failed=_jobs.c.failed + failed, updated_at=db_now())
    )
    if rowcount(session.execute(stmt)) == 0:
        raise NotFoundError(f"no job with id {job_id}")


# --------------------------------------------------------------------------------------------
# The ledger: which assets a job waits for


def add_job_assets(
    session: Session,
    job_id: int,
    asset_ids: Sequence[int],
    outcome: JobOutcome | str | None = None,
) -> int:
    """Make the job wait for these assets (each once); grows ``total`` by the rows added.

    Args:
        outcome: already known (an asset that failed at registration): the rows are credited
            at once.

    Returns:
        The number of assets new to this job (the others were in it already).
    """
    ids = sorted({int(i) for i in asset_ids})
    if not ids:
        return 0
    value = None if outcome is None else JobOutcome(outcome).value
    added = 0
    for part in chunks(ids, 2000):
        stmt = (
            upsert_insert(session, _ledger)
            .values([{"job_id": job_id, "asset_id": i, "outcome": value} for i in part])
            .on_conflict_do_nothing(index_elements=["job_id", "asset_id"])
            .returning(_ledger.c.asset_id)
        )
        added += len(session.execute(stmt).all())
    if added:
        values: dict[str, Any] = {"total": _jobs.c.total + added, "updated_at": db_now()}
        if value == JobOutcome.DONE.value:
            values["done"] = _jobs.c.done + added
        elif value == JobOutcome.FAILED.value:
            values["failed"] = _jobs.c.failed + added
        session.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(**values))
    return added


def _count_into_jobs(session: Session, job_ids: Sequence[int], outcome: str) -> list[int]:
    counts = Counter(int(j) for j in job_ids)
    column = "done" if outcome == JobOutcome.DONE.value else "failed"
    for job_id in sorted(counts):  # a fixed order: concurrent crediting cannot deadlock
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id)
            .values({column: _jobs.c[column] + counts[job_id], "updated_at": db_now()})
        )
    return sorted(counts)


def credit_assets(
    session: Session, asset_ids: Sequence[int], outcome: JobOutcome | str
) -> list[int]:
    """The assets ended with ``outcome``: credit every job still waiting for them.

    Returns:
        The ids of the jobs whose counters changed (check them with :func:`complete_jobs`).
    """
    value = JobOutcome(outcome).value
    jobs: list[int] = []
    for part in chunks(sorted({int(i) for i in asset_ids})):
        stmt = (
            sa.update(_ledger)
            .where(_ledger.c.asset_id.in_(part), _ledger.c.outcome.is_(None))
            .values(outcome=value)
            .returning(_ledger.c.job_id)
        )
        jobs.extend(int(j) for j in session.execute(stmt).scalars())
    return _count_into_jobs(session, jobs, value)


def settle_job(session: Session, job_id: int, model_name: str | None = None) -> int:
    """Credit the job's open rows whose assets already ended (a safety net for rows added just
    as their asset ended elsewhere). For a reindex job (``model_name``), a done asset counts
    only once that model scored it.

    Returns:
        The rows credited.
    """
    opened = (
        sa.select(_assets.c.id, _assets.c.status, _assets.c.model_name)
        .join(_ledger, _ledger.c.asset_id == _assets.c.id)
        .where(
            _ledger.c.job_id == job_id,
            _ledger.c.outcome.is_(None),
            _assets.c.status.in_([AssetStatus.DONE.value, AssetStatus.FAILED.value]),
        )
    )
    by_outcome: dict[str, list[int]] = {}
    for row in session.execute(opened):
        if row.status == AssetStatus.DONE.value and model_name and row.model_name != model_name:
            continue  # still to be re-scored
        by_outcome.setdefault(row.status, []).append(int(row.id))
    credited = 0
    for value, ids in by_outcome.items():
        for part in chunks(ids):
            stmt = (
                sa.update(_ledger)
                .where(
                    _ledger.c.job_id == job_id,
                    _ledger.c.asset_id.in_(part),
                    _ledger.c.outcome.is_(None),
                )
                .values(outcome=value)
            )
            n = rowcount(session.execute(stmt))
            credited += n
            if n:
                _count_into_jobs(session, [job_id] * n, value)
    return credited


def open_job_assets(session: Session, job_id: int, *, limit: int = 1000) -> list[int]:
    """Ids of assets the job still waits for (ascending, at most ``limit``)."""
    stmt = (
        sa.select(_ledger.c.asset_id)
        .where(_ledger.c.job_id == job_id, _ledger.c.outcome.is_(None))
        .order_by(_ledger.c.asset_id)
        .limit(limit)
    )
    return [int(i) for i in session.execute(stmt).scalars()]


def complete_jobs(session: Session, job_ids: Sequence[int]) -> list[int]:
    """``running`` jobs among these whose items are all processed become ``done``.

    Pending jobs are still registering and never complete here. One conditional UPDATE per
    job, so whoever credits the last item completes the job, exactly once.

    Returns:
        The ids of the jobs this call completed.
    """
    completed: list[int] = []
    for job_id in sorted({int(j) for j in job_ids}):
        result = session.execute(
            sa.update(_jobs)
            .where(
                _jobs.c.id == job_id,
                _jobs.c.status == JobStatus.RUNNING.value,
                (_jobs.c.done + _jobs.c.failed) >= _jobs.c.total,
            )
            .values(status=JobStatus.DONE.value, updated_at=db_now())
        )
        if rowcount(result):
            completed.append(job_id)
    return completed


# --------------------------------------------------------------------------------------------
# Registration leases: a pending job's registering process


def renew_job_lease(session: Session, job_id: int, owner: str, lease_s: float) -> bool:
    """Extend the registering process's lease on a pending job; False when the job is no longer
    pending (or another process took it over)."""
    stmt = (
        sa.update(_jobs)
        .where(
            _jobs.c.id == job_id,
            _jobs.c.status == JobStatus.PENDING.value,
            sa.or_(_jobs.c.lease_owner.is_(None), _jobs.c.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=db_in(lease_s))
    )
    return bool(rowcount(session.execute(stmt)))


def abandoned_registrations(session: Session, *, limit: int = 100) -> list[Job]:
    """Pending ingest/reindex jobs whose registering process's lease ran out."""
    stmt = (
        sa.select(Job)
        .where(
            Job.status == JobStatus.PENDING.value,
            Job.kind.in_([JobKind.INGEST.value, JobKind.REINDEX.value]),
            Job.lease_until < db_now(),
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # two recoverers never settle the same job twice
    )
    return list(session.scalars(stmt))


def quiet_running_jobs(session: Session, idle_s: float, *, limit: int = 100) -> list[Job]:
    """Running ingest/reindex jobs whose counters have not moved for ``idle_s`` seconds."""
    stmt = (
        sa.select(Job)
        .where(
            Job.status == JobStatus.RUNNING.value,
            Job.kind.in_([JobKind.INGEST.value, JobKind.REINDEX.value]),
            Job.updated_at < db_in(-float(idle_s)),
        )
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))
