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

Once its parts are made, a backfill job runs as its parts (:mod:`indexer.db.backfill_parts`):
the job is ``running`` without a lease and each part holds its own. A part whose lease ran out,
or a pending part whose message was lost, is sent again the same way (``ramdex.backfill_part``)
up to :data:`MAX_RESUMES` times per part, and continues after its cursor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from indexer.celery_app import BACKFILL_PART_TASK, BACKFILL_TASK, producer_app
from indexer.db.backfill_parts import BackfillPart, PartStatus, fail_parts, stopped_parts
from indexer.db.concept_repo import get_concept, update_concept
from indexer.db.concepts import ConceptStatus
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.db.session import session_scope
from indexer.ingest.queue_mark import lost_before, redispatch_after_s, send_headers
from indexer.jobs import stopped_runs
from indexer.settings import Settings

log = logging.getLogger(__name__)

MAX_RESUMES = 3
STOPPED_PART = (
    "the process running part {part} of this concept backfill stopped before it finished "
    "(killed, out of memory, or its machine gone) {count} times; the scores written so far are "
    "kept: delete the concept and create it again to score the whole archive"
)
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
    part: int | None = None  # one part of the job (its parts are made); None: the whole run


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
        for part in stopped_parts(session, queued_before=before):
            job = session.get(Job, part.job_id)
            concept_id = (job.params or {}).get("concept_id") if job is not None else None
            if job is None or int(job.id) in failed:
                continue
            if concept_id is not None and part.attempts < MAX_RESUMES and (broker or resume):
                _queue_again(part)
                resumed.append(Backfill(int(job.id), int(concept_id), part=int(part.part)))
                continue
            _fail(session, job, STOPPED_PART.format(part=part.part, count=part.attempts + 1))
            failed.append(int(job.id))
    for backfill in resumed:  # after the commit that recorded it
        what = "its run" if backfill.part is None else f"its part {backfill.part}"
        log.warning("backfill job %s: %s stopped; resuming it", backfill.job_id, what)
        try:
            if broker:
                _send(settings, backfill)
            else:
                resume(backfill)  # type: ignore[misc]
        except Exception as exc:  # broker away: the job is pending, a later pass sends it
            log.warning("backfill job %s: could not resume it (%s)", backfill.job_id, exc)
    return sorted({b.job_id for b in resumed}), failed


def _queue_again(part: BackfillPart) -> None:
    """Queued again: pending, no lease, one more attempt, updated now (the lost-message clock
    restarts). The cursor stays: the next run continues after it."""
    part.attempts += 1
    part.status = PartStatus.PENDING.value
    part.lease_owner = None
    part.lease_until = None


def _fail(session: sa.orm.Session, job: Job, reason: str) -> None:
    job.status = JobStatus.FAILED.value
    job.error = reason
    job.lease_owner = None
    job.lease_until = None
    fail_parts(session, int(job.id), reason)
    concept_id = (job.params or {}).get("concept_id")
    if concept_id is not None and get_concept(session, int(concept_id)) is not None:
        update_concept(session, int(concept_id), status=ConceptStatus.FAILED, error=reason)


def _send(settings: Settings, backfill: Backfill) -> None:
    if backfill.part is not None:
        send_part(settings, backfill.job_id, backfill.part)
        return
    producer_app(settings).send_task(
        BACKFILL_TASK,
        args=[backfill.concept_id, backfill.job_id, backfill.generate, backfill.fixed_threshold],
        queue=settings.broker.model_queue,
        headers=send_headers(),
    )


def send_part(settings: Settings, job_id: int, part: int) -> None:
    """Queue one part of a backfill job for any model worker."""
    producer_app(settings).send_task(
        BACKFILL_PART_TASK,
        args=[job_id, part],
        queue=settings.broker.model_queue,
        headers=send_headers(),
    )
