"""Data access for jobs and their progress counters.

Progress increments are single ``UPDATE .. SET done = done + n`` statements, so many workers can
report into one job concurrently without lost updates.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import rowcount, table_of, truncate_text
from indexer.db.base import db_now
from indexer.db.errors import NotFoundError
from indexer.db.jobs import Job, JobKind, JobStatus

_jobs = table_of(Job)


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
) -> list[Job]:
    """Jobs, newest first."""
    stmt = sa.select(Job).order_by(Job.id.desc()).limit(limit)
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
