"""Job progress for ingest and reindex runs, shared by the caller, the workers and ``ramdex jobs``.

Lifecycle of a job row (``indexer.db.jobs.Job``):

- ``pending``: the caller is still registering sources; it holds the job's lease (renewed by
  its heartbeat), so a registration that died is noticed: the reconciler marks the job
  ``failed`` with a reason (or, for the API's server-path jobs, registers them again);
- ``running``: registration is over; the job waits for the assets in its ledger
  (``job_assets``): each is credited ``done`` or ``failed`` once, when it ends, by whichever
  process ended it (its own run, a run that resumed it, a worker after the reconciler
  re-dispatched it), in the transaction that ended it;
- ``done``: every ledger row is credited and registration is over (a job with failures is
  still ``done``: failures are per source, with reasons; sources that never became assets, such
  as a refused URL, count as failed too);
- ``failed``: the run itself broke before registering everything (the error says why),
  ``cancelled``: stopped by a person.

Whoever credits the last item flips the status, with one conditional ``UPDATE``, so callers and
workers never race; a client that stops waiting (Ctrl-C) changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.backfill_parts import PartStatus, part_progress
from indexer.db.base import UtcDateTime
from indexer.db.collection_repo import add_job_assets_to_collection
from indexer.db.job_repo import (
    add_job_assets,
    complete_jobs,
    create_job,
    credit_assets,
    get_job,
    renew_job_lease,
    settle_job,
    update_job,
)
from indexer.db.jobs import Job, JobAsset, JobKind, JobOutcome, JobStatus
from indexer.db.leases import db_in
from indexer.db.session import session_scope

log = logging.getLogger(__name__)
_jobs = Job.__table__
MAX_RECORDED_FAILURES = 100  # per job, in params["failures"]: enough to act on, bounded in size


LEGACY_JOB = (
    "started by a version of ramdex from before per-asset job tracking (migration k003), so "
    "its progress can no longer be followed; its unfinished assets are recovered and processed "
    "anyway ({done} done and {failed} failed of {total} when it was last counted)"
)


def settle_legacy_jobs(session: Session, idle_s: float, *, limit: int = 100) -> list[int]:
    """In the caller's transaction: settle ingest and reindex jobs that a version of ramdex
    without the job ledger left ``pending`` or ``running``.

    Such a job has no ledger rows and no lease, so nothing would ever credit or fail it. (Every
    job this version starts has one or the other while it is unfinished: a registration lease
    while pending, ledger rows once running; a running job whose sources all failed before
    becoming assets completes when its registration ends.) A quiet one (unchanged for
    ``idle_s``) ends ``done`` when its own counters say every item was processed, else
    ``failed`` with :data:`LEGACY_JOB` as the reason. Its assets need nothing from it: the
    reconciler finds them as orphans (processing without a lease, pending never dispatched).

    Returns:
        The ids of the jobs settled.
    """
    ledger = JobAsset.__table__
    unfinished = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
    stmt = (
        sa.select(_jobs.c.id, _jobs.c.status, _jobs.c.total, _jobs.c.done, _jobs.c.failed)
        .where(
            _jobs.c.status.in_(unfinished),
            _jobs.c.kind.in_([JobKind.INGEST.value, JobKind.REINDEX.value]),
            _jobs.c.lease_owner.is_(None),
            _jobs.c.lease_until.is_(None),
            _jobs.c.updated_at < db_in(-float(idle_s)),
            ~sa.exists().where(ledger.c.job_id == _jobs.c.id),
        )
        .order_by(_jobs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # two recoverers never settle one job twice
    )
    settled: list[int] = []
    for job in session.execute(stmt).all():
        finished = job.status == JobStatus.RUNNING.value and job.done + job.failed >= job.total
        values: dict[str, Any] = {"status": JobStatus.DONE.value, "updated_at": sa.func.now()}
        if not finished:
            reason = LEGACY_JOB.format(done=job.done, failed=job.failed, total=job.total)
            values.update(status=JobStatus.FAILED.value, error=reason)
        changed = session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job.id, _jobs.c.status.in_(unfinished))
            .values(**values)
        )
        if changed.rowcount:
            settled.append(int(job.id))
    return settled


def claim_job_run(
    url: str | None,
    job_id: int,
    owner: str,
    lease_s: float,
    params: dict[str, Any] | None = None,
    *,
    dead: Sequence[str] = (),
) -> bool:
    """This process runs a job's work itself (a concept backfill): the job becomes ``running``
    under ``owner``'s lease, renewed by its heartbeat (:func:`renew_job_run`), so a process that
    dies leaves a lease that runs out and the reconciler resumes or fails the job.

    Args:
        params: merged into the job's params (what a resumed run needs to start again).
        dead: lease owners known to be dead (a killed process of this machine): their live-
            looking lease is taken over.

    A finished job may run again (a message redelivered after its run ended: the run is
    idempotent and counts afresh), a cancelled one never.

    Returns:
        False when the job is cancelled, gone, or another live process runs it (a duplicate
        message): the caller does nothing.
    """
    with session_scope(url) as session:
        taken = session.execute(
            sa.update(_jobs)
            .where(
                _jobs.c.id == job_id,
                _jobs.c.status != JobStatus.CANCELLED.value,
                sa.or_(
                    _jobs.c.lease_owner.is_(None),
                    _jobs.c.lease_owner == owner,
                    _jobs.c.lease_until.is_(None),
                    _jobs.c.lease_until < sa.func.now(),
                    _jobs.c.lease_owner.in_(list(dead)),
                ),
            )
            .values(
                status=JobStatus.RUNNING.value,
                lease_owner=owner,
                lease_until=db_in(lease_s),
                updated_at=sa.func.now(),
            )
        )
        if not taken.rowcount:
            return False
        if params:
            job = get_job(session, job_id)
            if job is not None:
                job.params = {**(job.params or {}), **params}
        return True


def renew_job_run(session: Session, job_id: int, owner: str, lease_s: float) -> bool:
    """Extend ``owner``'s lease on a running job (the heartbeat of :func:`claim_job_run`);
    False when it is no longer running under that owner."""
    result = session.execute(
        sa.update(_jobs)
        .where(
            _jobs.c.id == job_id,
            _jobs.c.status == JobStatus.RUNNING.value,
            _jobs.c.lease_owner == owner,
        )
        .values(lease_until=db_in(lease_s))
    )
    return bool(result.rowcount)


def job_lease_owner(url: str | None, job_id: int) -> str | None:
    """Who holds the job's lease now (None: nobody)."""
    with session_scope(url) as session:
        owner = session.execute(sa.select(_jobs.c.lease_owner).where(_jobs.c.id == job_id))
        return owner.scalar_one_or_none()


def finish_job_run(
    url: str | None, job_id: int, owner: str, status: JobStatus, error: str | None = None
) -> None:
    """The run ended: the job is ``status`` (done or failed, with ``error``), its lease gone."""
    with session_scope(url) as session:
        update_job(session, job_id, status=status, error=error)
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


def stopped_runs(
    session: Session,
    kind: JobKind,
    *,
    queued_before: datetime | None = None,
    limit: int = 100,
) -> list[Job]:
    """In the caller's transaction: jobs of ``kind`` whose run stopped: ``running`` with a lease
    that ran out (the process running them died), and, with ``queued_before``, ``pending`` ones
    not started that were queued (created, or queued again) before that time (their message
    was lost). Locked with SKIP LOCKED: two recoverers never resume one job twice."""
    stopped = sa.and_(_jobs.c.status == JobStatus.RUNNING.value, _jobs.c.lease_until < db_in(0.0))
    if queued_before is not None:
        never = sa.and_(
            _jobs.c.status == JobStatus.PENDING.value,
            _jobs.c.lease_until.is_(None),
            _jobs.c.updated_at < sa.literal(queued_before, UtcDateTime()),
        )
        stopped = sa.or_(stopped, never)
    stmt = (
        sa.select(Job)
        .where(_jobs.c.kind == JobKind(kind).value, stopped)
        .order_by(_jobs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


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
    parts: dict[str, int] | None = None  # a distributed backfill's parts by status

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
            "parts": self.parts,
        }


def view(job: Job) -> JobView:
    """A detached :class:`JobView` of a job row (a backfill's with its parts by status, read in
    the row's session)."""
    parts = None
    session = sa.orm.object_session(job)
    if job.kind == JobKind.BACKFILL.value and session is not None:
        counts = part_progress(session, int(job.id))
        if counts:  # every status named (0 included) and the total, for scripts
            parts = {status.value: counts.get(status.value, 0) for status in PartStatus}
            parts["total"] = sum(counts.values())
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
        parts=parts,
    )


def start_job(
    url: str | None,
    kind: JobKind | str,
    params: dict[str, Any] | None = None,
    *,
    owner: str | None = None,
    lease_s: float | None = None,
    collection_id: int | None = None,
) -> int:
    """Create a ``pending`` job (its sources are being registered) and return its id.

    Args:
        owner, lease_s: the registering process and its lease; None: no lease (the job is not
            watched by the reconciler until a registering process takes it, see
            :func:`begin_registration`).
        collection_id: the collection its assets go to (when registration ends) and whose
            keys see the job.
    """
    with session_scope(url) as session:
        job = create_job(session, kind=kind, total=0, params=params or {})
        if collection_id is not None:
            job.collection_id = collection_id
            session.flush()
        if owner is not None and lease_s is not None:
            job.lease_owner = owner
            session.flush()
            renew_job_lease(session, int(job.id), owner, lease_s)
        return int(job.id)


def begin_registration(url: str | None, job_id: int, owner: str, lease_s: float) -> None:
    """This process registers the sources of an existing ``pending`` job (created by the API, or
    registered again after its first registration was lost): it takes the job's lease.

    Raises:
        LookupError: no such job, or it is no longer pending.
    """
    with session_scope(url) as session:
        taken = session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.PENDING.value)
            .values(lease_owner=owner, lease_until=db_in(lease_s), updated_at=sa.func.now())
        )
        if not taken.rowcount:
            raise LookupError(f"job {job_id} is not a pending job")


def end_registration(
    url: str | None,
    job_id: int,
    extra: dict[str, Any] | None = None,
    *,
    unregistered: int = 0,
    model_name: str | None = None,
) -> str:
    """Registration is over: ``running``, or ``done`` if its assets have all ended already.

    Args:
        extra: merged into the job's params (counts of duplicates and registration failures).
        unregistered: sources that failed before becoming assets (unreadable paths, refused
            URLs): counted in the job's total and failed.
        model_name: a reindex job's model (its ledger rows count done once that model scored
            them).

    Returns:
        The job's status afterwards.
    """
    with session_scope(url) as session:
        job = get_job(session, job_id)
        if job is not None and extra:
            job.params = {**(job.params or {}), **extra}
            session.flush()
        if job is not None and job.collection_id is not None:
            # A collection's ingest: every asset it registered joins the collection.
            add_job_assets_to_collection(session, job_id, job.collection_id)
        if unregistered:
            session.execute(
                sa.update(_jobs)
                .where(_jobs.c.id == job_id)
                .values(
                    total=_jobs.c.total + unregistered,
                    failed=_jobs.c.failed + unregistered,
                )
            )
        # Rows added just as their asset ended elsewhere were not credited by that process.
        settle_job(session, job_id, model_name)
        finished = (_jobs.c.done + _jobs.c.failed) >= _jobs.c.total
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.PENDING.value)
            .values(
                status=sa.case((finished, JobStatus.DONE.value), else_=JobStatus.RUNNING.value),
                lease_owner=None,
                lease_until=None,
                updated_at=sa.func.now(),
            )
        )
        status = session.execute(sa.select(_jobs.c.status).where(_jobs.c.id == job_id))
        return str(status.scalar_one_or_none() or "")


def add_assets(url: str | None, job_id: int, asset_ids: Sequence[int]) -> int:
    """Make the job wait for these assets (each once); returns how many were new to it."""
    with session_scope(url) as session:
        return add_job_assets(session, job_id, asset_ids)


def settle(session: Session, done: Sequence[int] = (), failed: Sequence[int] = ()) -> list[int]:
    """In the caller's transaction: these assets ended; credit every job waiting for them and
    complete the jobs that have nothing left.

    Returns:
        The ids of the jobs this call completed.
    """
    touched = set(credit_assets(session, done, JobOutcome.DONE)) if done else set()
    if failed:
        touched.update(credit_assets(session, failed, JobOutcome.FAILED))
    return complete_jobs(session, sorted(touched))


def complete_if_finished(session: Session, job_id: int) -> bool:
    """In the caller's transaction: a ``running`` job whose items are all processed is ``done``.

    Returns:
        Whether this call completed the job.
    """
    return bool(complete_jobs(session, [job_id]))


def fail_job(url: str | None, job_id: int, error: str) -> None:
    """Mark the run itself failed (not its items) with a reason."""
    with session_scope(url) as session:
        update_job(session, job_id, status=JobStatus.FAILED, error=error)
        session.execute(
            sa.update(_jobs).where(_jobs.c.id == job_id).values(lease_owner=None, lease_until=None)
        )


def fail_registration(url: str | None, job_id: int, error: str) -> bool:
    """A registration that could not finish fails its job (a job already past registration is
    left alone: it completes from its assets). Returns whether the job was failed."""
    with session_scope(url) as session:
        result = session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.PENDING.value)
            .values(
                status=JobStatus.FAILED.value,
                error=error[:4000],
                lease_owner=None,
                lease_until=None,
                updated_at=sa.func.now(),
            )
        )
        return bool(result.rowcount)


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


class JobStalledError(RuntimeError):
    """A waited-for job made no progress for the stall timeout."""

    def __init__(self, view: JobView, stalled_s: float) -> None:
        self.view = view
        self.stalled_s = stalled_s
        left = view.total - view.processed
        super().__init__(
            f"job {view.id} made no progress for {stalled_s:.0f} s "
            f"({view.processed}/{view.total} processed, {left} waiting): is a worker running "
            f"(`ramdex worker`) and can it reach the broker and the database? The job goes on "
            f"when one does; follow it with `ramdex jobs {view.id} --watch`"
        )


def wait_for_job(
    url: str | None,
    job_id: int,
    *,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    stall_timeout_s: float | None = None,
    on_update: Callable[[JobView], None] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> JobView:
    """Poll until the job is finished; ``on_update`` sees every poll (progress bars).

    Database hiccups while polling are retried: the job goes on in the workers anyway. Stopping
    the wait (an exception, Ctrl-C) leaves the job as it is.

    Args:
        stall_timeout_s: give up when ``done + failed`` and ``total`` have not changed for this
            long (None or 0: never).
        on_poll: called once per poll before reading the job (clients re-send what they could
            not dispatch); its errors are logged, not raised.

    Raises:
        LookupError: no such job.
        TimeoutError: not finished within ``timeout_s``.
        JobStalledError: no progress for ``stall_timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_change = time.monotonic()
    seen: tuple[int, int] | None = None
    while True:
        if on_poll is not None:
            try:
                on_poll()
            except Exception as exc:
                log.warning("while waiting for job %s: %s: %s", job_id, type(exc).__name__, exc)
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
        now = time.monotonic()
        progress = (current.processed, current.total)
        if progress != seen:
            seen, last_change = progress, now
        elif stall_timeout_s and now - last_change >= stall_timeout_s:
            raise JobStalledError(current, now - last_change)
        if deadline is not None and now > deadline:
            raise TimeoutError(
                f"job {job_id} not finished after {timeout_s:.0f} s "
                f"({current.processed}/{current.total} processed)"
            )
        time.sleep(poll_s)
