"""Parts of a distributed concept backfill: one row per range of asset ids, with its cursor.

A backfill job over N assets is split into parts (ranges of asset ids, about one token-store
shard each) that any number of model workers run at once. A part's ``cursor`` (the last asset id
scored) and its counters are committed in the same transaction as the scores of each chunk, so a
part that stops (its process killed) resumes after the cursor and never counts an asset twice.
A part is leased like an asset (``lease_owner``, ``lease_until`` on the database's clock,
renewed by its process's heartbeat); the reconciler sends a part whose lease ran out again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from indexer.db._sql import rowcount
from indexer.db.base import Base, UtcDateTime, check_in, db_now
from indexer.db.jobs import Job, JobStatus
from indexer.db.leases import db_in


class PartStatus(StrEnum):
    """pending -> running -> done | failed."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class BackfillPart(Base):
    """One range ``[id_lo, id_hi]`` of a backfill job's assets and how far it got."""

    __tablename__ = "backfill_parts"

    job_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    id_lo: Mapped[int] = mapped_column(sa.BigInteger)
    id_hi: Mapped[int] = mapped_column(sa.BigInteger)
    total: Mapped[int] = mapped_column(sa.BigInteger)
    cursor: Mapped[int | None] = mapped_column(sa.BigInteger)  # last asset id scored
    done: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    status: Mapped[str] = mapped_column(
        sa.String(16), default=PartStatus.PENDING.value, server_default=PartStatus.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(160))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("status", tuple(PartStatus)), name="status"),
        sa.CheckConstraint("id_lo <= id_hi", name="range"),
        # The reconciler's scan: unfinished parts by status.
        sa.Index("ix_backfill_parts_status_lease_until", "status", "lease_until"),
    )


_parts = BackfillPart.__table__
_jobs = Job.__table__


@dataclass(frozen=True)
class PartRange:
    """A part as planned: its asset id range and how many stored assets it holds."""

    id_lo: int
    id_hi: int
    total: int


@dataclass(frozen=True)
class ClaimedPart:
    """A part this process now runs: where to start (after ``cursor``) and where to stop."""

    job_id: int
    part: int
    id_lo: int
    id_hi: int
    cursor: int | None


def add_parts(session: Session, job_id: int, ranges: Sequence[PartRange]) -> None:
    """In the caller's transaction: the job's parts, numbered from 0 (the job has none yet)."""
    if ranges:
        session.execute(
            sa.insert(_parts),
            [
                {"job_id": job_id, "part": k, "id_lo": r.id_lo, "id_hi": r.id_hi, "total": r.total}
                for k, r in enumerate(ranges)
            ],
        )


def part_numbers(session: Session, job_id: int, *, unfinished: bool = False) -> list[int]:
    """The job's part numbers (only pending and running ones with ``unfinished``)."""
    stmt = sa.select(_parts.c.part).where(_parts.c.job_id == job_id).order_by(_parts.c.part)
    if unfinished:
        stmt = stmt.where(_parts.c.status.in_([PartStatus.PENDING.value, PartStatus.RUNNING.value]))
    return [int(p) for p in session.scalars(stmt)]


def claim_part(
    session: Session,
    job_id: int,
    part: int,
    owner: str,
    lease_s: float,
    *,
    dead: Sequence[str] = (),
) -> ClaimedPart | None:
    """Take a part's lease: it is unfinished, its job is running, and nobody live holds it.

    Args:
        dead: lease owners known to be dead (a killed process of this machine).

    Returns:
        The part, or None when it is finished, its job is not running (cancelled, failed) or
        another live process runs it (a duplicate message).
    """
    job_running = (
        sa.select(_jobs.c.id)
        .where(_jobs.c.id == job_id, _jobs.c.status == JobStatus.RUNNING.value)
        .exists()
    )
    taken = session.execute(
        sa.update(_parts)
        .where(
            _parts.c.job_id == job_id,
            _parts.c.part == part,
            _parts.c.status.in_([PartStatus.PENDING.value, PartStatus.RUNNING.value]),
            job_running,
            sa.or_(
                _parts.c.lease_owner.is_(None),
                _parts.c.lease_owner == owner,
                _parts.c.lease_until.is_(None),
                _parts.c.lease_until < db_now(),
                _parts.c.lease_owner.in_(list(dead)),
            ),
        )
        .values(
            status=PartStatus.RUNNING.value,
            lease_owner=owner,
            lease_until=db_in(lease_s),
            updated_at=db_now(),
        )
    )
    if not rowcount(taken):
        return None
    row = session.execute(
        sa.select(_parts.c.id_lo, _parts.c.id_hi, _parts.c.cursor).where(
            _parts.c.job_id == job_id, _parts.c.part == part
        )
    ).one()
    return ClaimedPart(job_id, part, int(row.id_lo), int(row.id_hi), row.cursor)


def part_lease_owner(session: Session, job_id: int, part: int) -> str | None:
    """Who holds the part's lease now (None: nobody)."""
    return session.execute(
        sa.select(_parts.c.lease_owner).where(_parts.c.job_id == job_id, _parts.c.part == part)
    ).scalar_one_or_none()


def advance_part(
    session: Session, claimed: ClaimedPart, owner: str, cursor: int, done: int, failed: int
) -> bool:
    """In the chunk's transaction: move the part's cursor and count the chunk into the part
    and its job, if this process still holds the part and the job still runs.

    Returns:
        False when the lease was lost (another process took the part over) or the job stopped:
        the caller rolls the chunk back and stops.
    """
    moved = session.execute(
        sa.update(_parts)
        .where(
            _parts.c.job_id == claimed.job_id,
            _parts.c.part == claimed.part,
            _parts.c.lease_owner == owner,
            _parts.c.status == PartStatus.RUNNING.value,
        )
        .values(
            cursor=cursor,
            done=_parts.c.done + done,
            failed=_parts.c.failed + failed,
            updated_at=db_now(),
        )
    )
    if not rowcount(moved):
        return False
    counted = session.execute(
        sa.update(_jobs)
        .where(_jobs.c.id == claimed.job_id, _jobs.c.status == JobStatus.RUNNING.value)
        .values(done=_jobs.c.done + done, failed=_jobs.c.failed + failed, updated_at=db_now())
    )
    return bool(rowcount(counted))


def finish_part(session: Session, claimed: ClaimedPart, owner: str) -> bool:
    """In the caller's transaction: the part is done; when it was the job's last unfinished
    part, the job is done too.

    The job row is locked first, so of two parts finishing at once the second sees the first
    one's part done and completes the job: exactly one of them does.

    Returns:
        Whether this call completed the job.
    """
    session.execute(sa.select(_jobs.c.id).where(_jobs.c.id == claimed.job_id).with_for_update())
    mine = sa.and_(
        _parts.c.job_id == claimed.job_id,
        _parts.c.part == claimed.part,
        _parts.c.lease_owner == owner,
        _parts.c.status == PartStatus.RUNNING.value,
    )
    # Assets of the range that left the token store after the split (deleted) were never
    # read: they count as failed, so the job's done + failed still reaches its total.
    gone = session.execute(
        sa.select(_parts.c.total - _parts.c.done - _parts.c.failed).where(mine)
    ).scalar_one_or_none()
    if gone is None:
        return False  # taken over meanwhile: the new holder finishes it
    session.execute(
        sa.update(_parts)
        .where(mine)
        .values(
            status=PartStatus.DONE.value,
            failed=_parts.c.failed + max(0, int(gone)),
            lease_owner=None,
            lease_until=None,
            updated_at=db_now(),
        )
    )
    if gone > 0:
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == claimed.job_id)
            .values(failed=_jobs.c.failed + int(gone))
        )
    unfinished = (
        sa.select(_parts.c.part)
        .where(_parts.c.job_id == claimed.job_id, _parts.c.status != PartStatus.DONE.value)
        .exists()
    )
    completed = session.execute(
        sa.update(_jobs)
        .where(_jobs.c.id == claimed.job_id, _jobs.c.status == JobStatus.RUNNING.value, ~unfinished)
        .values(status=JobStatus.DONE.value, updated_at=db_now())
    )
    return bool(rowcount(completed))


def fail_parts(session: Session, job_id: int, reason: str) -> None:
    """In the caller's transaction: every unfinished part of the job is failed with a reason."""
    session.execute(
        sa.update(_parts)
        .where(
            _parts.c.job_id == job_id,
            _parts.c.status.in_([PartStatus.PENDING.value, PartStatus.RUNNING.value]),
        )
        .values(
            status=PartStatus.FAILED.value,
            error=reason,
            lease_owner=None,
            lease_until=None,
            updated_at=db_now(),
        )
    )


def renew_part(session: Session, job_id: int, part: int, owner: str, lease_s: float) -> bool:
    """Extend ``owner``'s lease on a running part (the heartbeat)."""
    renewed = session.execute(
        sa.update(_parts)
        .where(
            _parts.c.job_id == job_id,
            _parts.c.part == part,
            _parts.c.status == PartStatus.RUNNING.value,
            _parts.c.lease_owner == owner,
        )
        .values(lease_until=db_in(lease_s))
    )
    return bool(rowcount(renewed))


def stopped_parts(
    session: Session, *, queued_before: datetime | None = None, limit: int = 200
) -> list[BackfillPart]:
    """In the caller's transaction: parts of running jobs whose run stopped: ``running`` with a
    lease that ran out, and, with ``queued_before``, ``pending`` ones queued before that time
    (their message was lost). Locked with SKIP LOCKED: two recoverers never resume a part twice.
    """
    stopped: Any = sa.and_(
        _parts.c.status == PartStatus.RUNNING.value, _parts.c.lease_until < db_in(0.0)
    )
    if queued_before is not None:
        never = sa.and_(
            _parts.c.status == PartStatus.PENDING.value,
            _parts.c.updated_at < sa.literal(queued_before, UtcDateTime()),
        )
        stopped = sa.or_(stopped, never)
    job_running = (
        sa.select(_jobs.c.id)
        .where(_jobs.c.id == _parts.c.job_id, _jobs.c.status == JobStatus.RUNNING.value)
        .exists()
    )
    stmt = (
        sa.select(BackfillPart)
        .where(stopped, job_running)
        .order_by(_parts.c.job_id, _parts.c.part)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def part_progress(session: Session, job_id: int) -> dict[str, int]:
    """Counts of the job's parts by status (``ramdex jobs``, tests)."""
    rows = session.execute(
        sa.select(_parts.c.status, sa.func.count())
        .where(_parts.c.job_id == job_id)
        .group_by(_parts.c.status)
    ).all()
    return {str(status): int(n) for status, n in rows}
