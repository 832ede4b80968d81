"""Recovery: make the database's promises come true, whatever crashed.

The asset rows say what must happen; the queue only wakes workers up. This module finds work the
rows say is unfinished and nobody holds, and makes it runnable again:

- **orphaned assets**: a lease that ran out (the process that held them died), pending assets
  never dispatched (the registering process died before sending them), and pending assets whose
  message was lost (a broker restarted without persistence): dispatched long ago while the model
  queue is empty, or well before a message the queue has since delivered, however busy it is
  (:mod:`indexer.ingest.queue_mark`);
- **abandoned registrations**: pending jobs whose registering process's lease ran out; the API's
  server-path jobs are registered again (registration is idempotent), others are marked failed
  with a reason (their remaining sources are on a machine we cannot see);
- **jobs from before the job ledger** (migration k003): unfinished, no lease, no ledger rows,
  so nothing would ever end them: done when their own counters say so, else failed with a
  reason (:func:`indexer.jobs.settle_legacy_jobs`);
- **quiet jobs**: running jobs without progress are settled from their assets' states (and a
  reindex job whose messages were lost is re-driven);
- **parts of split videos** (:mod:`indexer.ingest.video_parts`): a part whose lease ran out
  or whose message was lost is sent again;
- **the FAISS index**: re-synced when the database has done assets it lacks.

It runs at the start of every ``ramdex ingest`` and ``reindex`` (:func:`recover`; embedded runs
then process what they recovered themselves), and in broker mode periodically in every worker
(:class:`Reconciler`), one pass at a time across the cluster: a worker runs a pass only while it
holds the ``reconcile`` service lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from indexer.celery_app import REGISTER_TASK, producer_app
from indexer.db.asset_leases import (
    expire_leases_of,
    lease_assets,
    live_lease_owners,
    orphaned_assets,
)
from indexer.db.job_repo import (
    abandoned_registrations,
    complete_jobs,
    open_job_assets,
    quiet_running_jobs,
    settle_job,
    update_job,
)
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.db.leases import db_in, release_service_lease, take_service_lease
from indexer.db.session import session_scope
from indexer.ingest.backfills import Resume, watch_backfills
from indexer.ingest.dispatch import dispatch, model_queue_depth, request_index_sync
from indexer.ingest.lease import is_dead_here, local_prefix, process_owner
from indexer.ingest.queue_mark import lost_before, redispatch_after_s
from indexer.ingest.video_parts import watch_video_parts
from indexer.jobs import settle_legacy_jobs
from indexer.settings import Settings
from indexer.stores import index_is_behind

log = logging.getLogger(__name__)

RECOVER_LIMIT = 2000  # orphaned assets taken per pass (the next pass takes more)
MAX_REDRIVES = 3  # registrations of an API job sent again before it is failed
FULL_INDEX_CHECK_EVERY = 20  # passes between exact index watermark checks
SERVICE = "reconcile"

REGISTRATION_LOST = (
    "registration stopped before every source was registered (the process registering them "
    "was interrupted, killed or lost its database); the {n} assets it registered are processed "
    "anyway; run the same ingest again to finish (what is stored is kept)"
)


@dataclass
class Recovery:
    """What one :func:`recover` call found."""

    assets: list[int] = field(default_factory=list)  # now leased to the caller
    jobs_failed: list[int] = field(default_factory=list)
    jobs_redriven: list[int] = field(default_factory=list)
    jobs_settled: list[int] = field(default_factory=list)  # left by a version without a ledger
    backfills_resumed: list[int] = field(default_factory=list)
    backfills_failed: list[int] = field(default_factory=list)


@dataclass
class ReconcileReport:
    """What one reconciler pass did, and what it cost."""

    recovered: int = 0
    dispatched: int = 0
    jobs_failed: int = 0
    jobs_redriven: int = 0
    jobs_settled: int = 0
    jobs_completed: int = 0
    backfills_resumed: int = 0
    backfills_failed: int = 0
    video_parts_resent: int = 0
    index_synced: bool = False
    queue_depth: int | None = None
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _expire_dead_local_owners(settings: Settings) -> int:
    """Leases held by processes of this machine that no longer run end now."""
    prefix = local_prefix()
    with session_scope(settings.database_url) as session:
        owners = live_lease_owners(session, prefix)
        jobs = session.execute(
            Job.__table__.select()
            .with_only_columns(Job.id, Job.lease_owner)
            .where(
                # Registrations, and backfills (the one kind of job whose run holds a lease).
                sa.or_(
                    Job.status == JobStatus.PENDING.value,
                    sa.and_(
                        Job.status == JobStatus.RUNNING.value, Job.kind == JobKind.BACKFILL.value
                    ),
                ),
                Job.lease_until >= db_in(0.0),
                Job.lease_owner.startswith(prefix, autoescape=True),
            )
        ).all()
        dead = [o for o in owners if is_dead_here(o)]
        expired = expire_leases_of(session, dead)
        for job in jobs:
            if job.lease_owner and is_dead_here(job.lease_owner):
                session.execute(
                    Job.__table__.update()
                    .where(Job.id == job.id, Job.lease_owner == job.lease_owner)
                    .values(lease_until=db_in(-1.0))
                )
        return expired


def _abandoned_registrations(settings: Settings) -> tuple[list[int], list[int]]:
    """Fail (or register again) pending jobs whose registering process is gone."""
    failed: list[int] = []
    redriven: list[int] = []
    with session_scope(settings.database_url) as session:
        for job in abandoned_registrations(session):
            redrive = dict((job.params or {}).get("redrive") or {})
            count = int(redrive.get("count", 0))
            if settings.broker.url and redrive.get("sources") and count < MAX_REDRIVES:
                redrive["count"] = count + 1
                job.params = {**(job.params or {}), "redrive": redrive}
                # Time for the task to start; it takes the lease over (begin_registration).
                job.lease_owner = None
                session.flush()
                session.execute(
                    Job.__table__.update()
                    .where(Job.id == job.id)
                    .values(lease_until=db_in(settings.ingest.lease_s * 4))
                )
                redriven.append(int(job.id))
                continue
            update_job(
                session,
                int(job.id),
                status=JobStatus.FAILED,
                error=REGISTRATION_LOST.format(n=int(job.total)),
            )
            failed.append(int(job.id))
    for job_id in redriven:  # after the commit that recorded it
        try:
            _send_registration(settings, job_id)
        except Exception as exc:  # the broker is away: the lease runs out again, and we retry
            log.warning("job %s: could not send its registration again (%s)", job_id, exc)
    return failed, redriven


def _send_registration(settings: Settings, job_id: int) -> None:
    from indexer.jobs import get_job_view

    view = get_job_view(settings.database_url, job_id)
    if view is None:
        return
    redrive = view.params.get("redrive") or {}
    log.warning("job %s: its registration was lost; registering its sources again", job_id)
    producer_app(settings).send_task(
        REGISTER_TASK,
        args=[redrive["sources"], job_id, redrive.get("include"), redrive.get("exclude")],
        queue=settings.broker.default_queue,
    )


def recover(
    settings: Settings,
    owner: str | None = None,
    *,
    queue_empty: bool | None = None,
    limit: int = RECOVER_LIMIT,
    local_check: bool = True,
    resume_backfill: Resume | None = None,
    pending_backfills: bool | None = None,
) -> Recovery:
    """Take over orphaned work: abandoned registrations are settled, orphaned assets are leased
    to ``owner`` (pending, for ``ingest.lease_s``: the caller holds them with its lease keeper
    if it needs longer to dispatch or process them).

    Args:
        owner: default this process.
        queue_empty: whether the model queue is known to hold no message (then pending assets
            dispatched longer than ``ingest.redispatch_after_s`` ago are orphans too). None: the
            embedded mode (no queue) counts as empty; with a broker, its queue is asked. Busy
            or not, pending assets dispatched that long before a message the queue has since
            delivered are orphans (their message was lost: :mod:`indexer.ingest.queue_mark`).
        local_check: end at once the leases of processes of this machine that no longer run
            (a re-run right after a crash need not wait for their leases). The periodic
            reconciler does not: a worker's own redelivery (``task_reject_on_worker_lost``)
            and its poison-file count handle a dead pool process, the lease everything else.
        resume_backfill, pending_backfills: how backfill jobs whose run stopped are resumed
            (see :func:`indexer.ingest.backfills.watch_backfills`).
    """
    owner = owner or process_owner()
    lease_s = settings.ingest.lease_s
    margin_s = redispatch_after_s(settings)
    if local_check:
        _expire_dead_local_owners(settings)
    failed, redriven = _abandoned_registrations(settings)
    with session_scope(settings.database_url) as session:
        legacy = settle_legacy_jobs(session, lease_s)
    if legacy:
        log.warning(
            "settled %d jobs left unfinished by a version without the job ledger", len(legacy)
        )
    if queue_empty is None:
        queue_empty = not settings.broker.url or model_queue_depth(settings) == 0
    with session_scope(settings.database_url) as session:
        # A busy queue is never empty: it proves a loss by having delivered newer messages.
        passed = lost_before(settings, session) if settings.broker.url else None
        found = orphaned_assets(
            session,
            lease_s=lease_s,
            lost_after_s=margin_s if queue_empty else None,
            sent_before=passed,
            limit=limit,
        )
        taken = sorted(lease_assets(session, found, owner, lease_s)) if found else []
    if taken:
        log.info("recovered %d unfinished assets nobody was working on", len(taken))
    resumed, stopped = watch_backfills(
        settings, queue_empty=queue_empty, resume=resume_backfill, pending=pending_backfills
    )
    return Recovery(taken, failed, redriven, legacy, resumed, stopped)


def settle_quiet_jobs(
    settings: Settings,
    queue_empty: bool,
    report: ReconcileReport,
    send: Callable[[list[int]], None] | None = None,
) -> None:
    """Running jobs without progress: credit what already ended; re-drive lost re-scores.

    Args:
        send: how re-driven re-scores run (default: sent to the model queue; the embedded
            server processes them in its background thread).
    """
    lease_s = settings.ingest.lease_s
    redrive: list[int] = []
    with session_scope(settings.database_url) as session:
        for job in quiet_running_jobs(session, lease_s):
            model = (job.params or {}).get("model") if job.kind == JobKind.REINDEX else None
            report.jobs_settled += settle_job(session, int(job.id), model)
            completed = complete_jobs(session, [int(job.id)])
            report.jobs_completed += len(completed)
            if completed or not queue_empty or job.kind != JobKind.REINDEX:
                continue
            # A reindex job's work is done assets scored by another model: no lease shows a
            # lost message for them, the empty queue does.
            redrive.extend(open_job_assets(session, int(job.id), limit=RECOVER_LIMIT))
            update_job(session, int(job.id))  # touch: quiet again only after another lease_s
    if redrive:
        (send or (lambda ids: dispatch(settings, ids, None)))(redrive)
        report.dispatched += len(redrive)


def reconcile_once(
    settings: Settings, *, model_id: str | None = None, full: bool = False
) -> ReconcileReport:
    """One reconciler pass (broker mode): recover and re-dispatch orphaned work, settle quiet
    jobs, re-sync a stale FAISS index. On an idle archive it reads only index ends.

    Args:
        model_id: the configured model, for the index check (None: skip it).
        full: also compare the index's exact watermark (a count over the model's assets).
    """
    started = time.perf_counter()
    report = ReconcileReport()
    owner = process_owner()
    depth = model_queue_depth(settings) if settings.broker.url else 0
    report.queue_depth = depth
    found = recover(settings, owner, queue_empty=depth == 0, local_check=False)
    report.recovered = len(found.assets)
    report.jobs_failed, report.jobs_redriven = len(found.jobs_failed), len(found.jobs_redriven)
    report.jobs_settled += len(found.jobs_settled)
    report.backfills_resumed = len(found.backfills_resumed)
    report.backfills_failed = len(found.backfills_failed)
    if found.assets:
        try:
            dispatch(settings, found.assets, owner)
            report.dispatched += len(found.assets)
        except Exception as exc:  # the broker is down: the leases run out, a later pass retries
            log.warning("reconciler could not dispatch: %s: %s", type(exc).__name__, exc)
    try:
        report.video_parts_resent = watch_video_parts(settings, queue_empty=depth == 0)
    except Exception as exc:  # the broker or database is away: a later pass does it
        log.warning("reconciler could not check video parts: %s: %s", type(exc).__name__, exc)
    settle_quiet_jobs(settings, depth == 0, report)
    if model_id is not None and index_is_behind(settings, model_id, full=full):
        request_index_sync(settings, final=True, model_id=model_id)
        report.index_synced = True
    report.elapsed_ms = (time.perf_counter() - started) * 1000.0
    if (
        report.recovered
        or report.jobs_failed
        or report.jobs_redriven
        or report.dispatched
        or report.backfills_resumed
        or report.backfills_failed
        or report.video_parts_resent
    ):
        log.warning("reconciler: %s", report.to_dict())
    return report


def release_reconcile_lease(settings: Settings, owner: str) -> None:
    """Give the cluster-wide reconcile lease up, so another process takes it at once (best effort:
    with the database away the lease simply runs out)."""
    try:
        with session_scope(settings.database_url) as session:
            release_service_lease(session, SERVICE, owner)
    except Exception:
        log.debug("could not release the reconcile lease", exc_info=True)


class Reconciler:
    """The periodic reconciler of a worker process: every ``ingest.reconcile_interval_s``, the
    process holding the ``reconcile`` service lease runs :func:`reconcile_once`; the others only
    try to take the lease (one statement), so a dead holder is replaced within a few intervals.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval_s = settings.ingest.reconcile_interval_s
        self.owner = process_owner()
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._model_id: str | None = None

    def _model(self) -> str | None:
        if self._model_id is None:
            try:
                from indexer.models import configured_model_id

                self._model_id = configured_model_id(self.settings)
            except Exception as exc:  # no model on this machine: no index checks here
                log.info("reconciler: no index checks (%s)", exc)
        return self._model_id

    def tick(self) -> ReconcileReport | None:
        """Take (or keep) the service lease and, while holding it, run one pass."""
        with session_scope(self.settings.database_url) as session:
            held = take_service_lease(session, SERVICE, self.owner, self.interval_s * 3)
        if not held:
            return None
        self.passes += 1
        full = self.passes % FULL_INDEX_CHECK_EVERY == 1
        return reconcile_once(self.settings, model_id=self._model(), full=full)

    def start(self) -> Reconciler:
        """Run :meth:`tick` every interval in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ramdex-reconcile", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and give the service lease up (another worker takes it at once)."""
        self._stop.set()
        release_reconcile_lease(self.settings, self.owner)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # database or broker away: the next tick tries again
                log.warning("reconciler pass failed: %s: %s", type(exc).__name__, exc)
