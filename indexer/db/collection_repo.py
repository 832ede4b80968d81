"""Data access for collections: create, list, delete, membership of assets, API key limits.

Membership writes are idempotent (``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite), so a
source re-scan, a retried upload or two workers adding the same asset never fail or duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, rowcount, table_of, upsert_insert
from indexer.db.collections import (
    MAX_COLLECTION_NAME,
    ApiKeyCollection,
    AssetCollection,
    Collection,
)
from indexer.db.errors import DuplicateError, NotFoundError

_collections = table_of(Collection)
_members = table_of(AssetCollection)
_key_limits = table_of(ApiKeyCollection)


@dataclass(frozen=True)
class CollectionInfo:
    """A collection with its asset count."""

    id: int
    name: str
    description: str | None
    asset_count: int
    created_at: object


def add_assets_to_collection(session: Session, collection_id: int, asset_ids: Iterable[int]) -> int:
    """Put assets into a collection; assets already in it are left alone (idempotent).

    Runs in the caller's transaction (a source scan adds its assets with the rows that made
    them). The collection and the assets must exist (foreign keys).

    Returns:
        How many assets were new to the collection.
    """
    ids = sorted({int(i) for i in asset_ids})
    added = 0
    for part in chunks(ids, 2000):
        stmt = (
            upsert_insert(session, _members)
            .values([{"collection_id": int(collection_id), "asset_id": i} for i in part])
            .on_conflict_do_nothing(index_elements=["collection_id", "asset_id"])
            .returning(_members.c.asset_id)
        )
        added += len(session.execute(stmt).all())
    return added


def add_job_assets_to_collection(session: Session, job_id: int, collection_id: int) -> int:
    """Put every asset in a job's ledger into a collection (a collection's ingest, when its
    registration ends; idempotent). Returns how many were new to it."""
    from indexer.db.jobs import JobAsset

    ledger = table_of(JobAsset)
    ids = [
        int(i)
        for i in session.scalars(sa.select(ledger.c.asset_id).where(ledger.c.job_id == job_id))
    ]
    return add_assets_to_collection(session, collection_id, ids)


def remove_assets_from_collection(
    session: Session, collection_id: int, asset_ids: Iterable[int]
) -> int:
    """Take assets out of a collection (the assets stay in the archive).

    Returns:
        How many were in it.
    """
    ids = sorted({int(i) for i in asset_ids})
    removed = 0
    for part in chunks(ids):
        removed += rowcount(
            session.execute(
                sa.delete(_members).where(
                    _members.c.collection_id == int(collection_id),
                    _members.c.asset_id.in_(part),
                )
            )
        )
    return removed


def create_collection(session: Session, name: str, description: str | None = None) -> Collection:
    """A new collection.

    Raises:
        ValueError: an empty or too long name.
        DuplicateError: a collection of that name exists.
    """
    name = validate_collection_name(name)
    if get_collection_by_name(session, name) is not None:
        raise DuplicateError(f"a collection named {name!r} exists already")
    row = Collection(name=name, description=description or None)
    session.add(row)
    session.flush()
    return row


def ensure_collection(session: Session, name: str, description: str | None = None) -> Collection:
    """The collection named ``name``, created when absent (a source's collection)."""
    found = get_collection_by_name(session, validate_collection_name(name))
    if found is not None:
        return found
    stmt = (
        upsert_insert(session, _collections)
        .values(name=name.strip(), description=description or None)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    session.execute(stmt)
    found = get_collection_by_name(session, name.strip())
    assert found is not None
    return found


def validate_collection_name(name: str) -> str:
    """The name stripped; refuses empty, too long, control characters, or all digits (digits
    name a collection by id)."""
    cleaned = (name or "").strip()
    if not cleaned:
        raise ValueError("a collection name cannot be empty")
    if len(cleaned) > MAX_COLLECTION_NAME:
        raise ValueError(f"a collection name has at most {MAX_COLLECTION_NAME} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in cleaned):
        raise ValueError("a collection name cannot contain control characters")
    if cleaned.isdigit():
        raise ValueError("a collection name cannot be only digits (those name ids)")
    return cleaned


def get_collection(session: Session, collection_id: int) -> Collection | None:
    """The collection, or None."""
    return session.get(Collection, int(collection_id))


def get_collection_by_name(session: Session, name: str) -> Collection | None:
    """The collection of that exact name, or None."""
    return session.scalars(sa.select(Collection).where(Collection.name == name)).first()


def resolve_collection(session: Session, ref: str | int) -> Collection:
    """A collection by id (an int or a string of digits) or by name.

    Raises:
        NotFoundError: no such collection.
    """
    text = str(ref).strip()
    found = get_collection(session, int(text)) if text.isdigit() else None
    if found is None:
        found = get_collection_by_name(session, text)
    if found is None:
        raise NotFoundError(f"no collection {text!r}")
    return found


def list_collections(
    session: Session, only_ids: Iterable[int] | None = None
) -> list[CollectionInfo]:
    """Collections by name with their asset counts; ``only_ids`` limits to those ids."""
    counts = (
        sa.select(_members.c.collection_id, sa.func.count().label("n"))
        .group_by(_members.c.collection_id)
        .subquery()
    )
    stmt = (
        sa.select(
            _collections.c.id,
            _collections.c.name,
            _collections.c.description,
            sa.func.coalesce(counts.c.n, 0),
            _collections.c.created_at,
        )
        .outerjoin(counts, counts.c.collection_id == _collections.c.id)
        .order_by(_collections.c.name)
    )
    if only_ids is not None:
        ids = sorted({int(i) for i in only_ids})
        if not ids:
            return []
        stmt = stmt.where(_collections.c.id.in_(ids))
    return [
        CollectionInfo(int(r[0]), str(r[1]), r[2], int(r[3]), r[4])
        for r in session.execute(stmt).all()
    ]


def collection_asset_count(session: Session, collection_id: int) -> int:
    """Assets in the collection."""
    return int(
        session.scalar(
            sa.select(sa.func.count())
            .select_from(_members)
            .where(_members.c.collection_id == int(collection_id))
        )
        or 0
    )


def delete_collection(session: Session, collection_id: int) -> None:
    """Delete a collection: its memberships, its concepts and the key limits naming it go with
    it (foreign keys cascade); the assets stay in the archive.

    Raises:
        NotFoundError: no such collection.
    """
    # Children first: SQLite enforces ON DELETE CASCADE only with foreign keys on.
    from indexer.db.concepts import Concept

    session.execute(sa.delete(_members).where(_members.c.collection_id == int(collection_id)))
    session.execute(sa.delete(_key_limits).where(_key_limits.c.collection_id == int(collection_id)))
    session.execute(sa.delete(Concept).where(Concept.collection_id == int(collection_id)))
    gone = rowcount(
        session.execute(sa.delete(_collections).where(_collections.c.id == int(collection_id)))
    )
    if not gone:
        raise NotFoundError(f"no collection {collection_id}")


def collections_of_assets(session: Session, asset_ids: Sequence[int]) -> dict[int, list[int]]:
    """Collection ids of each asset (assets in none are absent)."""
    out: dict[int, list[int]] = {}
    for part in chunks(sorted({int(i) for i in asset_ids})):
        rows = session.execute(
            sa.select(_members.c.asset_id, _members.c.collection_id)
            .where(_members.c.asset_id.in_(part))
            .order_by(_members.c.asset_id, _members.c.collection_id)
        ).all()
        for asset_id, collection_id in rows:
            out.setdefault(int(asset_id), []).append(int(collection_id))
    return out


def assets_in_collections(
    session: Session, asset_ids: Sequence[int], collection_ids: Iterable[int]
) -> set[int]:
    """Those of ``asset_ids`` in at least one of ``collection_ids``."""
    cids = sorted({int(c) for c in collection_ids})
    if not cids:
        return set()
    found: set[int] = set()
    for part in chunks(sorted({int(i) for i in asset_ids})):
        found.update(
            int(a)
            for a in session.scalars(
                sa.select(_members.c.asset_id)
                .where(_members.c.asset_id.in_(part), _members.c.collection_id.in_(cids))
                .distinct()
            )
        )
    return found


def set_key_collections(
    session: Session, api_key_id: int, collection_ids: Iterable[int] | None
) -> None:
    """Limit an API key to collections (``None``: unrestricted, every collection)."""
    from indexer.db.api_keys import ApiKey

    session.execute(sa.delete(_key_limits).where(_key_limits.c.api_key_id == int(api_key_id)))
    key = session.get(ApiKey, int(api_key_id))
    if key is None:
        raise NotFoundError(f"no API key {api_key_id}")
    key.all_collections = collection_ids is None
    ids = sorted({int(c) for c in collection_ids or ()})
    if ids:
        session.execute(
            sa.insert(_key_limits),
            [{"api_key_id": int(api_key_id), "collection_id": c} for c in ids],
        )
    session.flush()


def key_collections(session: Session, api_key_ids: Sequence[int]) -> dict[int, list[int]]:
    """The collection ids each key is limited to (keys without limit rows are absent)."""
    ids = sorted({int(i) for i in api_key_ids})
    out: dict[int, list[int]] = {}
    for part in chunks(ids):
        for key_id, cid in session.execute(
            sa.select(_key_limits.c.api_key_id, _key_limits.c.collection_id)
            .where(_key_limits.c.api_key_id.in_(part))
            .order_by(_key_limits.c.api_key_id, _key_limits.c.collection_id)
        ):
            out.setdefault(int(key_id), []).append(int(cid))
    return out
