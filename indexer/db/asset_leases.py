"""Data access for asset leases: who holds an unfinished asset, until when, and which unfinished
assets nobody holds (see :mod:`indexer.ingest.reconcile`).

An unfinished asset (``pending`` or ``processing``) is either leased (``lease_owner``,
``lease_until``: a live process will dispatch or process it), queued (``dispatched_at``: its
message was sent), or an orphan. Times are the database's clock (:mod:`indexer.db.leases`). Every
function runs in the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, rowcount, table_of
from indexer.db.assets import Asset, AssetStatus
from indexer.db.base import UtcDateTime, db_now
from indexer.db.leases import db_in
from indexer.db.video_parts import has_open_parts

_assets = table_of(Asset)


_UNFINISHED = (AssetStatus.PENDING.value, AssetStatus.PROCESSING.value)


def _free_or(owner: str) -> sa.ColumnElement[bool]:
    """No live lease of another process: not leased, leased by ``owner``, or ran out."""
    return sa.or_(
        _assets.c.lease_owner.is_(None),
        _assets.c.lease_owner == owner,
        _assets.c.lease_until < db_now(),
    )


def _lease_where(
    session: Session,
    asset_ids: Sequence[int],
    condition: sa.ColumnElement[bool],
    owner: str,
    lease_s: float,
    **values: object,
) -> set[int]:
    """Lease to ``owner`` those of ``asset_ids`` that meet ``condition``, setting ``values`` too.

    Returns:
        The ids now leased to ``owner``.
    """
    leased: set[int] = set()
    for part in chunks(list(asset_ids)):
        stmt = (
            sa.update(_assets)
            .where(_assets.c.id.in_(part), condition)
            .values(lease_owner=owner, lease_until=db_in(lease_s), updated_at=db_now(), **values)
            .returning(_assets.c.id)
        )
        leased.update(int(i) for i in session.execute(stmt).scalars())
    return leased


def claim_assets(
    session: Session, asset_ids: Sequence[int], owner: str, lease_s: float
) -> set[int]:
    """Claim unfinished assets for processing by ``owner`` (status ``processing``, leased).

    Claimable: every ``pending`` asset (a lease on a pending asset only says that a live process
    will dispatch or process it, so the reconciler leaves it alone; whoever processes it first
    wins), and ``processing`` assets whose lease is ``owner``'s or ran out. Assets another live
    process is processing, finished ones and deleted ones are left alone.

    Returns:
        The ids now processing under ``owner``'s lease.
    """
    claimable = sa.and_(
        sa.or_(
            _assets.c.status == AssetStatus.PENDING.value,
            sa.and_(_assets.c.status == AssetStatus.PROCESSING.value, _free_or(owner)),
        ),
        # A split video's running parts hold it (a duplicate message must not split it again).
        ~has_open_parts(),
    )
    return _lease_where(
        session, asset_ids, claimable, owner, lease_s, status=AssetStatus.PROCESSING.value
    )


def lease_assets(
    session: Session, asset_ids: Sequence[int], owner: str, lease_s: float
) -> set[int]:
    """Take unfinished assets over for dispatch (or in-process work) by ``owner``.

    They become ``pending`` with ``owner``'s lease and no dispatch time, unless another live
    process holds them. Used when a run meets unfinished assets again (a resumed ingest) and by
    the reconciler for orphaned work.

    Returns:
        The ids now leased to ``owner``.
    """
    return _lease_where(
        session,
        asset_ids,
        sa.and_(_assets.c.status.in_(_UNFINISHED), _free_or(owner), ~has_open_parts()),
        owner,
        lease_s,
        status=AssetStatus.PENDING.value,
        dispatched_at=None,
    )


def renew_asset_leases(
    session: Session, asset_ids: Sequence[int], owner: str, lease_s: float
) -> int:
    """Extend ``owner``'s leases on these assets (the heartbeat). Returns leases renewed.

    ``updated_at`` is left alone: a heartbeat is not a change of the asset.
    """
    renewed = 0
    for part in chunks(list(asset_ids)):
        stmt = (
            sa.update(_assets)
            .where(
                _assets.c.id.in_(part),
                _assets.c.lease_owner == owner,
                _assets.c.status.in_(_UNFINISHED),
            )
            .values(lease_until=db_in(lease_s))
        )
        renewed += rowcount(session.execute(stmt))
    return renewed


def release_assets(
    session: Session,
    asset_ids: Sequence[int],
    owner: str,
    *,
    dispatched: bool,
    uncount: Sequence[int] = (),
) -> int:
    """Give ``owner``'s unfinished assets back: ``pending``, no lease (a run that stopped
    cleanly, for example before a retry).

    Args:
        dispatched: a message for them is on its way (a task retry): record the dispatch time,
            so they are not dispatched again at once.
        uncount: assets whose processing run this owner had counted in ``attempts`` and that
            ended cleanly: the count is taken back (only crashes should count).

    Returns:
        The number of assets released.
    """
    ids = list(asset_ids)
    again = set(int(i) for i in uncount)
    released = 0
    for part in chunks(ids):
        mine = (
            _assets.c.id.in_(part),
            _assets.c.lease_owner == owner,
            _assets.c.status.in_(_UNFINISHED),
        )
        minus = [i for i in part if i in again]
        if minus:
            session.execute(
                sa.update(_assets)
                .where(*mine, _assets.c.id.in_(minus), _assets.c.attempts > 0)
                .values(attempts=_assets.c.attempts - 1)
            )
        stmt = (
            sa.update(_assets)
            .where(*mine)
            .values(
                status=AssetStatus.PENDING.value,
                lease_owner=None,
                lease_until=None,
                dispatched_at=db_now() if dispatched else None,
                updated_at=db_now(),
            )
        )
        released += rowcount(session.execute(stmt))
    return released


def mark_dispatched(session: Session, asset_ids: Sequence[int], owner: str | None) -> int:
    """After their message was sent: pending assets leased to ``owner`` (or to nobody) drop the
    lease and record the dispatch time (the queue holds them now). Returns the rows changed."""
    changed = 0
    holder = _assets.c.lease_owner.is_(None)
    if owner is not None:
        holder = sa.or_(holder, _assets.c.lease_owner == owner)
    for part in chunks(list(asset_ids)):
        stmt = (
            sa.update(_assets)
            .where(
                _assets.c.id.in_(part),
                _assets.c.status == AssetStatus.PENDING.value,
                holder,
            )
            .values(lease_owner=None, lease_until=None, dispatched_at=db_now())
        )
        changed += rowcount(session.execute(stmt))
    return changed


def orphaned_assets(
    session: Session,
    *,
    lease_s: float,
    lost_after_s: float | None,
    sent_before: datetime | None = None,
    limit: int = 1000,
) -> list[int]:
    """Unfinished assets nobody holds, oldest first: runnable again.

    - ``pending`` or ``processing`` with a lease that ran out (its process died), and
      ``processing`` with no lease at all (left by a version of ramdex that did not lease);
    - ``pending`` with no lease, never dispatched and not changed for ``lease_s``;
    - with ``lost_after_s``: ``pending`` with no lease, dispatched longer ago than that (the
      caller knows the queue holds no message for them, for example because it is empty);
    - with ``sent_before``: ``pending`` with no lease, dispatched before that time (the caller
      knows the queue delivered everything sent then: :mod:`indexer.ingest.queue_mark`).

    Each is a range of ``ix_assets_status_lease_until`` or ``ix_assets_status_dispatched_at``,
    so a pass over an idle archive reads no rows.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    now = db_now()
    expired = sa.select(_assets.c.id).where(
        _assets.c.status.in_(_UNFINISHED), _assets.c.lease_until < now
    )
    # Processing without any lease: left by a version that did not lease (claims always do),
    # or a split video, which its parts hold (the reconciler watches those instead).
    leaseless = sa.select(_assets.c.id).where(
        _assets.c.status == AssetStatus.PROCESSING.value,
        _assets.c.lease_until.is_(None),
        ~has_open_parts(),
    )
    pending = _assets.c.status == AssetStatus.PENDING.value
    unleased = _assets.c.lease_owner.is_(None)
    # Unleased and never dispatched: created by a caller that dispatches them itself; give it
    # one lease period before taking over.
    grace = db_in(-float(lease_s))
    never = sa.select(_assets.c.id).where(
        pending, unleased, _assets.c.dispatched_at.is_(None), _assets.c.updated_at < grace
    )
    queries = [expired.limit(limit), leaseless.limit(limit), never.limit(limit)]
    if lost_after_s is not None:
        lost = sa.select(_assets.c.id).where(
            pending, unleased, _assets.c.dispatched_at < db_in(-float(lost_after_s))
        )
        queries.append(lost.limit(limit))
    if sent_before is not None:
        passed = sa.select(_assets.c.id).where(
            pending, unleased, _assets.c.dispatched_at < sa.literal(sent_before, UtcDateTime())
        )
        queries.append(passed.limit(limit))
    found: set[int] = set()
    for query in queries:
        found.update(int(i) for i in session.execute(query).scalars())
    return sorted(found)[:limit]


def live_lease_owners(session: Session, prefix: str) -> list[str]:
    """Distinct owners whose name starts with ``prefix`` holding live leases on unfinished
    assets (to check on this machine whether their processes still exist)."""
    stmt = (
        sa.select(_assets.c.lease_owner)
        .where(
            _assets.c.status.in_(_UNFINISHED),
            _assets.c.lease_until >= db_now(),
            _assets.c.lease_owner.startswith(prefix, autoescape=True),
        )
        .distinct()
    )
    return [str(o) for o in session.execute(stmt).scalars()]


def expire_leases_of(session: Session, owners: Sequence[str]) -> int:
    """End the leases of owners known to be dead (their work becomes runnable at once)."""
    if not owners:
        return 0
    stmt = (
        sa.update(_assets)
        .where(_assets.c.lease_owner.in_(list(owners)), _assets.c.status.in_(_UNFINISHED))
        .values(lease_until=db_in(-1.0))
    )
    return rowcount(session.execute(stmt))
