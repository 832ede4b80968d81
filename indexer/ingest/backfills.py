"""Concept backfill jobs watched by the reconciler: a backfill whose process died is resumed or
failed with a reason, never left ``running`` (or ``pending``) for ever.

A backfill run holds its job's lease (:func:`indexer.jobs.claim_job_run`, renewed by the
process's heartbeat). The reconciler (:func:`watch_backfills`, part of every recovery pass)
takes the jobs whose run stopped:

- ``running`` with a lease that ran out: the process running it died (SIGKILL, out of memory,
  its machine gone);
- ``pending``, never started, whose message is known lost (broker mode: the model queue is
  empty, or delivered messages sent well after it; see :mod:`indexer.ingest.queue_mark`), or,
  when an embedded server starts, left by a server that stopped before running it.

Each is sent again (broker mode: the backfill task on the model queue; embedded server: its
background thread) up to :data:`MAX_RESUMES` times; a backfill is idempotent (scores are
replaced, progress counted afresh) and a duplicate run is refused by the job's lease. Without a
way to resume it (an embedded ``ramdex ingest``), or after the last resume, the job and its
concept are marked failed with the reason; the scores written so far are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from indexer.celery_app import BACKFILL_TASK, producer_app
from indexer.db.concept_repo import get_concept, update_concept
from indexer.db.concepts import ConceptStatus
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.db.session import session_scope
from indexer.ingest.queue_mark import lost_before, redispatch_after_s, send_headers
from indexer.jobs import stopped_runs
from indexer.settings import Settings

log = logging.getLogger(__name__)

MAX_RESUMES = 3
STOPPED = (
    "the process running this concept backfill stopped before it finished (killed, out of "
    "memory, or its machine gone){again}; the scores written so far are kept: delete the "
    "concept and create it again to score the whole archive"
)


@dataclass(frozen=True)
class Backfill:
    """What a resumed backfill run needs."""

    job_id: int
    concept_id: int
    generate: bool = False
    fixed_threshold: bool = False


Resume = Callable[[Backfill], None]


def _queued_before(
    settings: Settings, session: sa.orm.Session, queue_empty: bool, pending: bool
) -> datetime | None:
    """Pending backfills created (or resumed) before this time lost their message."""
    if not pending:
        return None
    margin = timedelta(seconds=redispatch_after_s(settings))
    if not settings.broker.url or queue_empty:
        return datetime.now(UTC) - margin
    return lost_before(settings, session)


def watch_backfills(
    settings: Settings,
    *,
    queue_empty: bool,
    resume: Resume | None = None,
    pending: bool | None = None,
) -> tuple[list[int], list[int]]:
    """Resume (or fail) backfill jobs whose run stopped.

    Args:
        queue_empty: whether the model queue is known to be empty (broker mode).
        resume: runs a backfill in this process (the embedded server); None in broker mode
            (the job is sent to the model queue) and in an embedded ``ramdex ingest`` (the job
            is failed: nothing here can run it).
        pending: also take ``pending`` jobs never started (default: in broker mode, where the
            queue says whether their message was lost; an embedded server passes True once,
            when it starts, as nothing of its own can be waiting then).

    Returns:
        ``(resumed job ids, failed job ids)``.
    """
    broker = bool(settings.broker.url)
    if pending is None:
        pending = broker
    resumed: list[Backfill] = []
    failed: list[int] = []
    with session_scope(settings.database_url) as session:
        before = _queued_before(settings, session, queue_empty, pending)
        for job in stopped_runs(session, JobKind.BACKFILL, queued_before=before):
            params = dict(job.params or {})
            count = int(params.get("resumed", 0))
            concept_id = params.get("concept_id")
            if concept_id is not None and count < MAX_RESUMES and (broker or resume is not None):
                options = params.get("backfill") or {}
                params["resumed"] = count + 1
                job.params = params
                # Queued again: pending, no lease, updated now (the lost-message clock restarts).
                job.status = JobStatus.PENDING.value
                job.lease_owner = None
                job.lease_until = None
                resumed.append(
                    Backfill(
                        int(job.id),
                        int(concept_id),
                        bool(options.get("generate", False)),
                        bool(options.get("fixed_threshold", False)),
                    )
                )
                continue
            again = f" ({count} resumed runs stopped too)" if count else ""
            _fail(session, job, STOPPED.format(again=again))
            failed.append(int(job.id))
    for backfill in resumed:  # after the commit that recorded it
        log.warning("backfill job %s: its run stopped; resuming it", backfill.job_id)
        try:
            if broker:
                _send(settings, backfill)
            else:
                resume(backfill)  # type: ignore[misc]
        except Exception as exc:  # broker away: the job is pending, a later pass sends it
            log.warning("backfill job %s: could not resume it (%s)", backfill.job_id, exc)
    return [b.job_id for b in resumed], failed


def _fail(session: sa.orm.Session, job: Job, reason: str) -> None:
    job.status = JobStatus.FAILED.value
    job.error = reason
    job.lease_owner = None
    job.lease_until = None
    concept_id = (job.params or {}).get("concept_id")
    if concept_id is not None and get_concept(session, int(concept_id)) is not None:
        update_concept(session, int(concept_id), status=ConceptStatus.FAILED, error=reason)


def _send(settings: Settings, backfill: Backfill) -> None:
    producer_app(settings).send_task(
        BACKFILL_TASK,
        args=[backfill.concept_id, backfill.job_id, backfill.generate, backfill.fixed_threshold],
        queue=settings.broker.model_queue,
        headers=send_headers(),
    )
