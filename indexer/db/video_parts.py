"""Parts of a long video shared by several workers: one row per time range (docs/media.md).

A video longer than ``media.split_s`` is not decoded by the worker that claimed it: that worker
plans the parts (time ranges, each with its own slice of frame indices), records them here and
sends one task per part; the asset stays ``processing`` with no lease of its own while any part
is unfinished (the reconciler leaves it alone and watches the parts instead). Each part is
leased like an asset (``lease_owner``, ``lease_until`` on the database's clock, renewed by its
process's heartbeat). A part commits its frames, its tags' maximum over them and its poster
candidate in one transaction; the part that finishes last (the asset row is locked, so exactly
one sees no part left) turns the parts into the asset's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from indexer.db._sql import rowcount, table_of
from indexer.db.assets import Asset
from indexer.db.base import Base, UtcDateTime, check_in, db_now
from indexer.db.leases import db_in


class VideoPartStatus(StrEnum):
    """pending -> running -> done | failed."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


_OPEN = (VideoPartStatus.PENDING.value, VideoPartStatus.RUNNING.value)


class VideoPart(Base):
    """One time range ``[start_s, end_s)`` of a split video and what its run found."""

    __tablename__ = "video_parts"

    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    part: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    start_s: Mapped[float] = mapped_column(sa.Float)
    end_s: Mapped[float] = mapped_column(sa.Float)
    first_idx: Mapped[int] = mapped_column(sa.Integer)  # its frames are first_idx.. + max_frames
    max_frames: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(
        sa.String(16),
        default=VideoPartStatus.PENDING.value,
        server_default=VideoPartStatus.PENDING.value,
    )
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)
    frames: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    poster_idx: Mapped[int | None] = mapped_column(sa.Integer)  # its poster candidate frame
    # The maximum of each tag over the part's frames, at or above the score floor: int32 tag
    # ids and float32 scores (exact, so the asset's maximum equals an unsplit run's).
    score_tags: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    score_values: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(160))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("status", tuple(VideoPartStatus)), name="status"),
        sa.CheckConstraint("start_s <= end_s", name="range"),
        # The reconciler's scan: unfinished parts by status and lease.
        sa.Index("ix_video_parts_status_lease_until", "status", "lease_until"),
    )


_parts = table_of(VideoPart)
_assets = table_of(Asset)


@dataclass(frozen=True, slots=True)
class PartPlan:
    """A part as planned: its time range and its slice of the asset's frame indices."""

    start_s: float
    end_s: float
    first_idx: int
    max_frames: int


@dataclass(frozen=True, slots=True)
class ClaimedVideoPart:
    """A part whose lease this process now holds."""

    asset_id: int
    part: int
    start_s: float
    end_s: float
    first_idx: int
    max_frames: int
    attempts: int


def has_open_parts() -> sa.ColumnElement[bool]:
    """For asset queries: the asset is a split video with a part still to run."""
    return (
        sa.select(_parts.c.asset_id)
        .where(_parts.c.asset_id == _assets.c.id, _parts.c.status.in_(_OPEN))
        .exists()
    )


def replace_parts(session: Session, asset_id: int, plans: Sequence[PartPlan]) -> None:
    """Record a fresh split of the asset (an earlier split's parts, a re-score's, go)."""
    session.execute(sa.delete(_parts).where(_parts.c.asset_id == asset_id))
    session.execute(
        sa.insert(_parts),
        [
            {
                "asset_id": asset_id,
                "part": n,
                "start_s": p.start_s,
                "end_s": p.end_s,
                "first_idx": p.first_idx,
                "max_frames": p.max_frames,
                "status": VideoPartStatus.PENDING.value,
            }
            for n, p in enumerate(plans)
        ],
    )


def part_numbers(session: Session, asset_id: int, *, unfinished: bool = False) -> list[int]:
    """The asset's parts (only the unfinished ones with ``unfinished``)."""
    stmt = sa.select(_parts.c.part).where(_parts.c.asset_id == asset_id)
    if unfinished:
        stmt = stmt.where(_parts.c.status.in_(_OPEN))
    return [int(p) for p in session.execute(stmt.order_by(_parts.c.part)).scalars()]


def _running_under(owner: str, asset_id: int, part: int) -> tuple[sa.ColumnElement[bool], ...]:
    """The part, running under ``owner``'s lease."""
    return (
        _parts.c.asset_id == asset_id,
        _parts.c.part == part,
        _parts.c.status == VideoPartStatus.RUNNING.value,
        _parts.c.lease_owner == owner,
    )


def claim_video_part(
    session: Session, asset_id: int, part: int, owner: str, lease_s: float
) -> ClaimedVideoPart | None:
    """Take a part's lease (counting an attempt): it is unfinished and nobody live holds it.

    Returns:
        The part, or None when it is finished, gone (the asset deleted or split again) or
        another live process runs it (a duplicate message).
    """
    taken = session.execute(
        sa.update(_parts)
        .where(
            _parts.c.asset_id == asset_id,
            _parts.c.part == part,
            _parts.c.status.in_(_OPEN),
            sa.or_(
                _parts.c.lease_owner.is_(None),
                _parts.c.lease_owner == owner,
                _parts.c.lease_until.is_(None),
                _parts.c.lease_until < db_now(),
            ),
        )
        .values(
            status=VideoPartStatus.RUNNING.value,
            lease_owner=owner,
            lease_until=db_in(lease_s),
            attempts=_parts.c.attempts + 1,
            updated_at=db_now(),
        )
    )
    if not rowcount(taken):
        return None
    row = session.execute(
        sa.select(_parts).where(_parts.c.asset_id == asset_id, _parts.c.part == part)
    ).one()
    return ClaimedVideoPart(
        asset_id,
        part,
        float(row.start_s),
        float(row.end_s),
        int(row.first_idx),
        int(row.max_frames),
        int(row.attempts),
    )


def renew_video_part(
    session: Session, asset_id: int, part: int, owner: str, lease_s: float
) -> bool:
    """Extend ``owner``'s lease on a running part (the heartbeat)."""
    renewed = session.execute(
        sa.update(_parts)
        .where(*_running_under(owner, asset_id, part))
        .values(lease_until=db_in(lease_s))
    )
    return bool(rowcount(renewed))


def lock_asset(session: Session, asset_id: int) -> str | None:
    """Lock the asset row for the rest of the transaction (PostgreSQL ``FOR UPDATE``; SQLite
    serialises writers anyway) and return its status (None: deleted). Parts committing at once
    queue here, so exactly one of them sees that no part is left."""
    return session.execute(
        sa.select(_assets.c.status).where(_assets.c.id == asset_id).with_for_update()
    ).scalar_one_or_none()


def finish_video_part(
    session: Session,
    claimed: ClaimedVideoPart,
    owner: str,
    *,
    frames: int,
    poster_idx: int | None,
    tag_ids: np.ndarray,
    maxima: np.ndarray,
) -> bool:
    """Record the part as done with its frame count, poster and per-tag maxima (``tag_ids``
    aligned with ``maxima``, already at or above the floor). False when this process no
    longer holds it (its lease ran out and another process took it over)."""
    done = session.execute(
        sa.update(_parts)
        .where(*_running_under(owner, claimed.asset_id, claimed.part))
        .values(
            status=VideoPartStatus.DONE.value,
            frames=frames,
            poster_idx=poster_idx,
            score_tags=np.asarray(tag_ids, dtype="<i4").tobytes(),
            score_values=np.asarray(maxima, dtype="<f4").tobytes(),
            error=None,
            lease_owner=None,
            lease_until=None,
            updated_at=db_now(),
        )
    )
    return bool(rowcount(done))


def fail_video_part(
    session: Session, asset_id: int, part: int, reason: str, owner: str | None = None
) -> bool:
    """Record an unfinished part as failed with its reason (held by ``owner`` when given)."""
    where: list[Any] = [
        _parts.c.asset_id == asset_id,
        _parts.c.part == part,
        _parts.c.status.in_(_OPEN),
    ]
    if owner is not None:
        where.append(_parts.c.lease_owner == owner)
    failed = session.execute(
        sa.update(_parts)
        .where(*where)
        .values(
            status=VideoPartStatus.FAILED.value,
            error=reason[:2000],
            lease_owner=None,
            lease_until=None,
            updated_at=db_now(),
        )
    )
    return bool(rowcount(failed))


def release_video_part(session: Session, asset_id: int, part: int, owner: str) -> None:
    """Give a running part back (a transient error): pending, unleased, run again later."""
    session.execute(
        sa.update(_parts)
        .where(*_running_under(owner, asset_id, part))
        .values(status=VideoPartStatus.PENDING.value, lease_owner=None, lease_until=None)
    )


def stopped_video_parts(
    session: Session, *, queued_before: datetime | None = None, limit: int = 200
) -> list[tuple[int, int]]:
    """(asset, part) of parts whose run stopped: ``running`` with a lease that ran out, and
    with ``queued_before``, ``pending`` ones sent before that time (their message was lost)."""
    stopped: Any = sa.and_(
        _parts.c.status == VideoPartStatus.RUNNING.value, _parts.c.lease_until < db_now()
    )
    if queued_before is not None:
        never = sa.and_(
            _parts.c.status == VideoPartStatus.PENDING.value,
            _parts.c.updated_at < sa.literal(queued_before, UtcDateTime()),
        )
        stopped = sa.or_(stopped, never)
    stmt = (
        sa.select(_parts.c.asset_id, _parts.c.part)
        .where(stopped)
        .order_by(_parts.c.asset_id, _parts.c.part)
        .limit(limit)
    )
    return [(int(a), int(p)) for a, p in session.execute(stmt)]


def requeue_video_parts(session: Session, keys: Sequence[tuple[int, int]]) -> None:
    """Parts about to be sent again: pending, unleased, sent now (the lost-message clock and
    the stopped-run check both restart from here)."""
    for asset_id, part in keys:
        session.execute(
            sa.update(_parts)
            .where(
                _parts.c.asset_id == asset_id,
                _parts.c.part == part,
                _parts.c.status.in_(_OPEN),
            )
            .values(
                status=VideoPartStatus.PENDING.value,
                lease_owner=None,
                lease_until=None,
                updated_at=db_now(),
            )
        )


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """A finished part as the asset's result reads it."""

    part: int
    status: str
    first_idx: int  # its slice of frame indices: first_idx .. first_idx + max_frames - 1
    max_frames: int
    frames: int
    poster_idx: int | None
    tag_ids: np.ndarray
    maxima: np.ndarray
    error: str | None


def part_outcomes(session: Session, asset_id: int) -> list[PartOutcome]:
    """Every part of the asset in time order, with what it found."""
    stmt = sa.select(_parts).where(_parts.c.asset_id == asset_id).order_by(_parts.c.part)
    return [
        PartOutcome(
            int(r.part),
            str(r.status),
            int(r.first_idx),
            int(r.max_frames),
            int(r.frames or 0),
            None if r.poster_idx is None else int(r.poster_idx),
            np.frombuffer(r.score_tags or b"", dtype="<i4"),
            np.frombuffer(r.score_values or b"", dtype="<f4"),
            r.error,
        )
        for r in session.execute(stmt)
    ]
