"""Data access for sources and the objects their scans saw (see :mod:`indexer.db.sources`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, rowcount, table_of, truncate_text, upsert_insert
from indexer.db.assets import Asset, AssetStatus
from indexer.db.base import db_now
from indexer.db.errors import DuplicateError
from indexer.db.leases import db_in
from indexer.db.sources import ScanStatus, Source, SourceObject

_sources = table_of(Source)
_objects = table_of(SourceObject)


@dataclass(frozen=True)
class KnownObject:
    """What the source's table says of one key."""

    etag: str | None
    size: int | None
    mtime: datetime | None
    asset_id: int | None
    gone: bool


@dataclass(frozen=True)
class SourceCounts:
    """A source's objects now: listed and present, with an asset, gone, and failed (unreadable,
    or their asset failed)."""

    objects: int = 0
    assets: int = 0
    gone: int = 0
    failed: int = 0


def create_source(
    session: Session,
    *,
    kind: str,
    uri: str,
    collection_id: int,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    watch: bool = False,
    interval_s: int = 300,
    copy_originals: bool = False,
) -> Source:
    """A new source, due for a scan at once.

    Raises:
        DuplicateError: a source with this URI exists.
    """
    if session.scalar(sa.select(Source.id).where(Source.uri == uri)) is not None:
        raise DuplicateError(f"a source for {uri} exists already")
    row = Source(
        kind=kind,
        uri=uri,
        collection_id=int(collection_id),
        include=list(include),
        exclude=list(exclude),
        watch=watch,
        interval_s=int(interval_s),
        copy_originals=copy_originals,
        last_status=ScanStatus.NEVER.value,
    )
    session.add(row)
    session.flush()
    return row


def get_source(session: Session, source_id: int) -> Source | None:
    """The source, or None."""
    return session.get(Source, int(source_id))


def list_sources(session: Session, collection_ids: Iterable[int] | None = None) -> list[Source]:
    """Sources by id; ``collection_ids`` limits to sources of those collections."""
    stmt = sa.select(Source).order_by(Source.id)
    if collection_ids is not None:
        ids = sorted({int(c) for c in collection_ids})
        if not ids:
            return []
        stmt = stmt.where(Source.collection_id.in_(ids))
    return list(session.scalars(stmt))


def delete_source(session: Session, source_id: int) -> bool:
    """Delete a source and its object rows (its assets and their collection stay)."""
    session.execute(sa.delete(_objects).where(_objects.c.source_id == int(source_id)))
    return bool(rowcount(session.execute(sa.delete(_sources).where(_sources.c.id == source_id))))


def due_sources(session: Session) -> list[int]:
    """Ids of sources whose next full scan is due (never scanned, or ``next_scan_at`` passed),
    on the database's clock."""
    stmt = (
        sa.select(Source.id)
        .where(sa.or_(Source.next_scan_at.is_(None), Source.next_scan_at <= db_now()))
        .order_by(Source.next_scan_at.nulls_first(), Source.id)
    )
    return [int(i) for i in session.scalars(stmt)]


def known_objects(
    session: Session, source_id: int, keys: Iterable[str] | None = None
) -> dict[str, KnownObject]:
    """Every key of the source's table (or only ``keys``) with what was recorded of it."""
    cols = (
        _objects.c.key,
        _objects.c.etag,
        _objects.c.size,
        _objects.c.mtime,
        _objects.c.asset_id,
        _objects.c.gone_at,
    )
    base = sa.select(*cols).where(_objects.c.source_id == int(source_id))
    if keys is None:
        rows: Iterable[Any] = session.execute(base)
    else:
        wanted = sorted(set(keys))
        rows = [
            r
            for part in chunks(wanted)
            for r in session.execute(base.where(_objects.c.key.in_(part)))
        ]
    return {
        r.key: KnownObject(r.etag, r.size, r.mtime, r.asset_id, r.gone_at is not None) for r in rows
    }


def record_object(
    session: Session,
    source_id: int,
    key: str,
    *,
    etag: str | None,
    size: int | None,
    mtime: datetime | None,
    asset_id: int | None,
    error: str | None = None,
) -> None:
    """Upsert what a registration found for one key (present again: ``gone_at`` cleared).

    An object without an asset is recorded without its ETag/size, so the next scan reads it
    again (a read that failed on the network is retried)."""
    values = {
        "etag": etag if asset_id is not None else None,
        "size": size if asset_id is not None else None,
        "mtime": mtime if asset_id is not None else None,
        "asset_id": asset_id,
        "error": truncate_text(error) if error else None,
        "seen_at": db_now(),
        "gone_at": None,
    }
    stmt = upsert_insert(session, _objects).values(source_id=int(source_id), key=key, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["source_id", "key"], set_=values)
    session.execute(stmt)


def mark_gone(session: Session, source_id: int, keys: Sequence[str]) -> int:
    """Keys no longer listed are gone from the source (their assets stay). Returns how many."""
    gone = 0
    for part in chunks(sorted(set(keys))):
        gone += rowcount(
            session.execute(
                sa.update(_objects)
                .where(
                    _objects.c.source_id == int(source_id),
                    _objects.c.key.in_(part),
                    _objects.c.gone_at.is_(None),
                )
                .values(gone_at=db_now())
            )
        )
    return gone


def mark_present(session: Session, source_id: int, keys: Sequence[str]) -> int:
    """Gone keys listed again with the same content are present again (nothing re-read)."""
    back = 0
    for part in chunks(sorted(set(keys))):
        back += rowcount(
            session.execute(
                sa.update(_objects)
                .where(
                    _objects.c.source_id == int(source_id),
                    _objects.c.key.in_(part),
                    _objects.c.gone_at.is_not(None),
                )
                .values(gone_at=None, seen_at=db_now())
            )
        )
    return back


def source_counts(session: Session, source_ids: Sequence[int]) -> dict[int, SourceCounts]:
    """:class:`SourceCounts` of each source (two grouped statements)."""
    ids = sorted({int(i) for i in source_ids})
    if not ids:
        return {}
    present = _objects.c.gone_at.is_(None)
    failed = sa.or_(
        sa.and_(_objects.c.asset_id.is_(None), _objects.c.error.is_not(None)),
        Asset.status == AssetStatus.FAILED.value,
    )
    stmt = (
        sa.select(
            _objects.c.source_id,
            sa.func.count().filter(present),
            sa.func.count().filter(present, _objects.c.asset_id.is_not(None)),
            sa.func.count().filter(_objects.c.gone_at.is_not(None)),
            sa.func.count().filter(present, failed),
        )
        .outerjoin(Asset, Asset.id == _objects.c.asset_id)
        .where(_objects.c.source_id.in_(ids))
        .group_by(_objects.c.source_id)
    )
    out = {i: SourceCounts() for i in ids}
    for sid, objects, assets, gone, bad in session.execute(stmt):
        out[int(sid)] = SourceCounts(int(objects), int(assets), int(gone), int(bad))
    return out


def source_asset_ids(session: Session, source_id: int, *, present: bool = True) -> list[int]:
    """Asset ids of the source's objects (present ones only, or every one)."""
    stmt = sa.select(_objects.c.asset_id).where(
        _objects.c.source_id == int(source_id), _objects.c.asset_id.is_not(None)
    )
    if present:
        stmt = stmt.where(_objects.c.gone_at.is_(None))
    return sorted({int(i) for i in session.scalars(stmt)})


def begin_scan(session: Session, source_id: int) -> None:
    """A scan of the source starts: its status says running."""
    session.execute(
        sa.update(_sources)
        .where(_sources.c.id == int(source_id))
        .values(last_status=ScanStatus.RUNNING.value)
    )


def end_scan(
    session: Session,
    source_id: int,
    *,
    error: str | None,
    counts: dict[str, Any] | None,
    job_id: int | None,
    interval_s: float,
) -> None:
    """Record how a scan ended, and when the next one is due (``interval_s`` from now, on the
    database's clock). A failed scan keeps the previous scan's figures."""
    values: dict[str, Any] = {
        "last_scan_at": db_now(),
        "last_status": (ScanStatus.ERROR if error else ScanStatus.OK).value,
        "last_error": truncate_text(error) if error else None,
        "next_scan_at": db_in(interval_s),
    }
    if counts is not None:
        values["last_counts"] = counts
    if job_id is not None:
        values["last_job_id"] = int(job_id)
    session.execute(sa.update(_sources).where(_sources.c.id == int(source_id)).values(**values))


def request_scan(session: Session, source_id: int) -> None:
    """Make the source due now (the scheduler scans it at its next tick)."""
    session.execute(
        sa.update(_sources).where(_sources.c.id == int(source_id)).values(next_scan_at=None)
    )


def note_job(session: Session, source_id: int, job_id: int) -> None:
    """The source's latest ingest job (a watcher's scan: the last full scan's status stays)."""
    session.execute(
        sa.update(_sources).where(_sources.c.id == int(source_id)).values(last_job_id=int(job_id))
    )
