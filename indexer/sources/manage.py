"""Adding, listing and removing sources (the command line and the API share these).

Adding checks the source before storing it: an S3 bucket must exist and be listable with the
credentials at hand, a folder must exist (inside ``storage.allowed_roots`` when they are set, or
always for the API). Each source gets a collection: the one named, or one named after the
source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.collection_repo import ensure_collection, get_collection, resolve_collection
from indexer.db.collections import MAX_COLLECTION_NAME, Collection
from indexer.db.errors import DuplicateError, NotFoundError
from indexer.db.session import session_scope
from indexer.db.source_repo import (
    SourceCounts,
    create_source,
    delete_source,
    get_source,
    list_sources,
    source_counts,
)
from indexer.db.sources import Source, SourceKind
from indexer.settings import Settings
from indexer.sources import s3
from indexer.sources.errors import SourceError
from indexer.sources.uri import SourceRef, check_folder, parse_source_uri

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class CollectionForbidden(PermissionError):
    """A key limited to collections named one outside them (or none)."""


@dataclass(frozen=True)
class SourceView:
    """A source with its collection's name and its objects' counts (what ``list`` shows)."""

    id: int
    kind: str
    uri: str
    include: list[str]
    exclude: list[str]
    collection_id: int
    collection: str | None
    watch: bool
    interval_s: int
    copy_originals: bool
    created_at: datetime | None
    last_scan_at: datetime | None
    next_scan_at: datetime | None
    last_status: str
    last_error: str | None
    last_job_id: int | None
    last_counts: dict[str, Any]
    counts: SourceCounts

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        out = dict(self.__dict__)
        out["counts"] = dict(self.counts.__dict__)
        for key in ("created_at", "last_scan_at", "next_scan_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


def parse_interval(text: str | int | float) -> int:
    """Seconds of an interval written ``90``, ``30s``, ``5m``, ``2h`` or ``1d``.

    Raises:
        SourceError: not such a text, or under one second.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _INTERVAL.match(text or "")
        if not match:
            raise SourceError(f"invalid interval {text!r}", hint="write seconds or 30s, 5m, 2h, 1d")
        seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
    if seconds < 1:
        raise SourceError(f"interval {text!r} is under one second", hint="for example 5m")
    return int(round(seconds))


def checked_ref(settings: Settings, uri: str, *, require_roots: bool = False) -> SourceRef:
    """The source's parsed URI once the store is known to be there and readable.

    Raises:
        SourceError: see :func:`indexer.sources.uri.parse_source_uri`,
            :func:`indexer.sources.uri.check_folder` and :func:`indexer.sources.s3.check_bucket`.
    """
    ref = parse_source_uri(uri)
    if ref.kind is SourceKind.S3:
        s3.check_bucket(settings, ref.bucket, ref.list_prefix)
        return ref
    return check_folder(ref, settings.storage.allowed_roots, require_roots=require_roots)


def _collection_for(
    session: Session, ref: SourceRef, name: str | None, allowed: frozenset[int] | None
) -> Collection:
    """The source's collection: named (created when absent, unless the caller is limited to
    collections), or one named after the source."""
    if allowed is not None:
        if not name:
            raise CollectionForbidden(
                "a key limited to collections must name one of its collections (collection)"
            )
        try:
            found = resolve_collection(session, name)
        except NotFoundError:
            raise CollectionForbidden(f"collection {name!r} is not one of this key's") from None
        if found.id not in allowed:
            raise CollectionForbidden(f"collection {name!r} is not one of this key's")
        return found
    if name:
        text = name.strip()
        if text.isdigit():
            by_id = get_collection(session, int(text))
            if by_id is None:
                raise SourceError(
                    f"no collection {text}", hint="`ramdex collections list` shows them"
                )
            return by_id
        try:
            return ensure_collection(session, text)
        except ValueError as exc:
            raise SourceError(str(exc), hint="choose another --collection name") from exc
    return ensure_collection(session, ref.uri[:MAX_COLLECTION_NAME])


def add_source(
    settings: Settings,
    uri: str,
    *,
    collection: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    watch: bool = False,
    interval: str | int | None = None,
    copy_originals: bool = False,
    require_roots: bool = False,
    allowed_collections: frozenset[int] | None = None,
) -> SourceView:
    """Check and store a new source (due for its first scan at once).

    Args:
        collection: a collection name or id; None: one named after the source.
        watch: watch the folder for changes (folders only; S3 sources are scanned every
            ``interval``).
        interval: between full scans (``5m``; default ``sources.default_interval_s``).
        require_roots: folders must lie inside ``storage.allowed_roots`` even when none are set
            (the API).
        allowed_collections: the caller is limited to these collections (an API key).

    Raises:
        SourceError: bad URI, store missing or unreadable, bad interval or collection.
        CollectionForbidden: ``allowed_collections`` does not hold the collection.
        indexer.db.errors.DuplicateError: a source for this URI exists.
    """
    seconds = (
        parse_interval(interval) if interval is not None else settings.sources.default_interval_s
    )
    ref = parse_source_uri(uri)
    if watch and ref.kind is SourceKind.S3:
        raise SourceError(
            "S3 sources cannot be watched (object stores send no change events here)",
            hint="they are re-scanned every --interval (for example --interval 1m)",
        )
    for pattern in (*include, *exclude):
        if not pattern.strip() or "\x00" in pattern:
            raise SourceError(f"invalid pattern {pattern!r}", hint="for example --include '*.jpg'")
    with session_scope(settings.database_url) as session:
        # Refused before the network is asked: a key's collection and a duplicate URI.
        if allowed_collections is not None:
            _collection_for(session, ref, collection, allowed_collections)
        if session.scalar(sa.select(Source.id).where(Source.uri == ref.uri)) is not None:
            raise DuplicateError(f"a source for {ref.uri} exists already")
    ref = checked_ref(settings, uri, require_roots=require_roots)
    with session_scope(settings.database_url) as session:
        coll = _collection_for(session, ref, collection, allowed_collections)
        row = create_source(
            session,
            kind=ref.kind.value,
            uri=ref.uri,
            collection_id=coll.id,
            include=list(include),
            exclude=list(exclude),
            watch=watch,
            interval_s=seconds,
            copy_originals=copy_originals,
        )
        return views(session, [row])[0]


def views(session: Session, rows: Sequence[Source]) -> list[SourceView]:
    """Sources as :class:`SourceView` (their collections' names, their counts)."""
    counts = source_counts(session, [r.id for r in rows])
    names: dict[int, str] = {}
    for cid in {r.collection_id for r in rows}:
        found = get_collection(session, cid)
        if found is not None:
            names[cid] = found.name
    return [
        SourceView(
            id=int(r.id),
            kind=r.kind,
            uri=r.uri,
            include=list(r.include or []),
            exclude=list(r.exclude or []),
            collection_id=int(r.collection_id),
            collection=names.get(r.collection_id),
            watch=bool(r.watch),
            interval_s=int(r.interval_s),
            copy_originals=bool(r.copy_originals),
            created_at=r.created_at,
            last_scan_at=r.last_scan_at,
            next_scan_at=r.next_scan_at,
            last_status=r.last_status,
            last_error=r.last_error,
            last_job_id=r.last_job_id,
            last_counts=dict(r.last_counts or {}),
            counts=counts.get(int(r.id), SourceCounts()),
        )
        for r in rows
    ]


def list_views(session: Session, collection_ids: frozenset[int] | None = None) -> list[SourceView]:
    """Every source (or those of ``collection_ids``) as views."""
    return views(session, list_sources(session, collection_ids))


def get_view(session: Session, source_id: int) -> SourceView | None:
    """One source as a view, or None."""
    row = get_source(session, source_id)
    return views(session, [row])[0] if row is not None else None


def remove_source(settings: Settings, source_id: int) -> bool:
    """Delete a source and its object rows; its assets stay in the archive and its collection.

    Returns:
        Whether it existed.
    """
    with session_scope(settings.database_url) as session:
        return delete_source(session, source_id)
