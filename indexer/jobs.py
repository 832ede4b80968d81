"""Job progress for ingest and reindex runs, shared by the caller, the workers and ``ramdex jobs``.

Lifecycle of a job row (``indexer.db.jobs.Job``):

- ``pending``: the caller is still registering items (``total`` grows as assets are queued);
- ``running``: every item is registered and queued; workers count ``done`` / ``failed``
  (in-process runs, which register and process at once, are ``running`` from the start and
  finish the job themselves);
- ``done``: ``done + failed >= total`` once registration has ended (a job whose items all
  failed is still ``done``: failures are per asset, with reasons on the assets);
- ``failed``: the run itself broke (the error says why), ``cancelled``: stopped by a person.

Whoever finishes last flips the status, with one conditional ``UPDATE`` each, so the caller
and the workers never race: a worker completes a ``running`` job; the caller, when it ends
registration, goes straight to ``done`` if the workers were faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.job_repo import create_job, get_job, update_job
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.db.session import session_scope

_jobs = Job.__table__
MAX_RECORDED_FAILURES = 100  # per job, in params["failures"]: enough to act on, bounded in size


@dataclass(frozen=True)
class JobView:
    """A job's progress as a person reads it."""

    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    params: dict[str, Any]

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def rate(self) -> float | None:
        """Items per second since the job was created (None before any progress)."""
        if not self.processed or self.created_at is None or self.updated_at is None:
            return None
        seconds = (self.updated_at - self.created_at).total_seconds()
        return self.processed / seconds if seconds > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the average rate so far (None when unknown)."""
        rate = self.rate
        if rate is None or self.finished:
            return None
        return max(0.0, (self.total - self.processed) / rate)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for ``ramdex jobs --json`` and logs)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "error": self.error,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "rate_per_s": self.rate,
            "eta_s": self.eta_s,
            "params": self.params,
        }


def view(job: Job) -> JobView:
    """A detached :class:`JobView` of a job row."""
    return JobView(
        id=int(job.id),
        kind=job.kind,
        status=job.status,
        total=int(job.total),
        done=int(job.done),
        failed=int(job.failed),
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        params=dict(job.params or {}),
    )


def start_job(url: str | None, kind: JobKind | str, params: dict[str, Any] | None = None) -> int:
    """Create a ``pending`` job (items are being registered) and return its id."""
    with session_scope(url) as session:
        return int(create_job(session, kind=kind, total=0, params=params or {}).id)


def add_total(url: str | None, job_id: int, count: int) -> None:
    """Grow a job's total by ``count`` queued items."""
    if count:
        with session_scope(url) as session:
            update_job(session, job_id, add_total=count)


def end_registration(url: str | None, job_id: int, extra: dict[str, Any] | None = None) -> str:
    """Registration is over: ``running``, or ``done`` if the workers already finished.

    Args:
        extra: merged into the job's params (counts of duplicates and registration failures).

    Returns:
        The job's status afterwards.
    """
    with session_scope(url) as session:
        if extra:
            job = get_job(session, job_id)
            if job is not None:
                job.params = {**(job.params or {}), **extra}
                session.flush()
        finished = (_jobs.c.done + _jobs.c.failed) >= _jobs.c.total
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.PENDING.value)
            .values(
                status=sa.case((finished, JobStatus.DONE.value), else_=JobStatus.RUNNING.value),
                updated_at=sa.func.now(),
            )
        )
        status = session.execute(sa.select(_jobs.c.status).where(_jobs.c.id == job_id))
        return str(status.scalar_one_or_none() or "")


def set_running(url: str | None, job_id: int) -> None:
    """In-process runs (embedded mode) register and process at once: show the job running."""
    with session_scope(url) as session:
        update_job(session, job_id, status=JobStatus.RUNNING)


def finish_job(url: str | None, job_id: int, extra: dict[str, Any] | None = None) -> None:
    """An in-process run is over: ``done``, with ``extra`` merged into the params."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        if job is not None and extra:
            job.params = {**(job.params or {}), **extra}
            session.flush()
        update_job(session, job_id, status=JobStatus.DONE)


def complete_if_finished(session: Session, job_id: int) -> bool:
    """In the caller's transaction: a ``running`` job whose items are all processed is ``done``.

    Returns:
        Whether this call completed the job.
    """
    result = session.execute(
        sa.update(_jobs)
        .where(
            _jobs.c.id == job_id,
            _jobs.c.status == JobStatus.RUNNING.value,
            (_jobs.c.done + _jobs.c.failed) >= _jobs.c.total,
        )
        .values(status=JobStatus.DONE.value, updated_at=sa.func.now())
    )
    return bool(result.rowcount)


def fail_job(url: str | None, job_id: int, error: str) -> None:
    """Mark the run itself failed (not its items) with a reason."""
    with session_scope(url) as session:
        update_job(session, job_id, status=JobStatus.FAILED, error=error)


def get_job_view(url: str | None, job_id: int) -> JobView | None:
    """The job's current progress, or None when there is no such job."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        return None if job is None else view(job)


def recent_jobs(url: str | None, limit: int = 20) -> list[JobView]:
    """The newest jobs first."""
    with session_scope(url) as session:
        rows = session.scalars(sa.select(Job).order_by(Job.id.desc()).limit(limit))
        return [view(j) for j in rows]


def wait_for_job(
    url: str | None,
    job_id: int,
    *,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    on_update: Callable[[JobView], None] | None = None,
) -> JobView:
    """Poll until the job is finished; ``on_update`` sees every poll (progress bars).

    Database hiccups while polling are retried: the job goes on in the workers anyway.

    Raises:
        LookupError: no such job.
        TimeoutError: not finished within ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            current = get_job_view(url, job_id)
        except sa.exc.OperationalError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(poll_s)
            continue
        if current is None:
            raise LookupError(f"no job with id {job_id}")
        if on_update is not None:
            on_update(current)
        if current.finished:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} not finished after {timeout_s:.0f} s "
                f"({current.processed}/{current.total} processed)"
            )
        time.sleep(poll_s)
