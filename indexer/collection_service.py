"""Collections as the API and the command line use them: every call takes the caller's
:class:`~indexer.db.collection_scope.CollectionScope` (docs/collections.md).

- Listing and reading show only the collections the scope sees; others are "not found".
- Creating and deleting collections changes what keys see: only an unrestricted caller may.
- Adding and removing assets needs the collection and every asset to be visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db import collection_repo as repo
from indexer.db.assets import Asset
from indexer.db.collection_repo import CollectionInfo
from indexer.db.collection_scope import CollectionScope
from indexer.db.errors import NotFoundError

MAX_ASSETS_PER_CALL = 10_000


class MissingAssetsError(NotFoundError):
    """Asset ids that do not exist or that the caller does not see (nothing was changed)."""

    def __init__(self, asset_ids: Sequence[int]) -> None:
        self.asset_ids = sorted(asset_ids)
        shown = ", ".join(map(str, self.asset_ids[:20]))
        more = f" and {len(self.asset_ids) - 20} more" if len(self.asset_ids) > 20 else ""
        super().__init__(f"no asset {shown}{more}")


@dataclass(frozen=True)
class MembershipChange:
    """How many assets a call changed; the others already were so."""

    changed: int
    unchanged: int


def list_collections(session: Session, scope: CollectionScope) -> list[CollectionInfo]:
    """The collections the scope sees, by name, with their asset counts."""
    return repo.list_collections(session, scope.collection_ids)


def get_collection(session: Session, scope: CollectionScope, ref: str | int) -> CollectionInfo:
    """One visible collection by id or name.

    Raises:
        NotFoundError: no such collection, or the scope does not see it (the same answer).
    """
    try:
        row = repo.resolve_collection(session, ref)
    except NotFoundError:
        raise NotFoundError(f"collection {str(ref)[:100]!r} does not exist") from None
    if not scope.sees_collection(row.id):
        raise NotFoundError(f"collection {str(ref)[:100]!r} does not exist")
    found = repo.list_collections(session, [row.id])
    return found[0]


def create_collection(
    session: Session, scope: CollectionScope, name: str, description: str | None = None
) -> CollectionInfo:
    """A new, empty collection (unrestricted callers only).

    Raises:
        CollectionForbiddenError: the scope is limited to collections.
        DuplicateError: the name is taken; ValueError: a bad name.
    """
    scope.require_unrestricted("creating a collection")
    row = repo.create_collection(session, name, description)
    return CollectionInfo(row.id, row.name, row.description, 0, row.created_at)


def delete_collection(session: Session, scope: CollectionScope, ref: str | int) -> CollectionInfo:
    """Delete a collection (unrestricted callers only); its assets stay in the archive, its
    concepts go, keys limited to it lose it.

    Raises:
        NotFoundError: no such collection; CollectionForbiddenError: a restricted scope.
    """
    found = get_collection(session, scope, ref)
    scope.require_unrestricted("deleting a collection")
    repo.delete_collection(session, found.id)
    return found


def _visible_existing(session: Session, scope: CollectionScope, asset_ids: Sequence[int]) -> None:
    """Raise :class:`MissingAssetsError` unless every asset exists and is visible."""
    ids = sorted({int(i) for i in asset_ids})
    if len(ids) > MAX_ASSETS_PER_CALL:
        raise ValueError(f"at most {MAX_ASSETS_PER_CALL} assets per call")
    existing: set[int] = set()
    for start in range(0, len(ids), 5000):
        part = ids[start : start + 5000]
        existing.update(
            int(i) for i in session.scalars(sa.select(Asset.id).where(Asset.id.in_(part)))
        )
    visible = scope.visible_assets(session, existing)
    missing = [i for i in ids if i not in visible]
    if missing:
        raise MissingAssetsError(missing)


def add_assets(
    session: Session, scope: CollectionScope, ref: str | int, asset_ids: Sequence[int]
) -> MembershipChange:
    """Put visible assets into a visible collection (idempotent).

    Raises:
        NotFoundError: the collection; MissingAssetsError: assets absent or not visible.
    """
    found = get_collection(session, scope, ref)
    _visible_existing(session, scope, asset_ids)
    unique = {int(i) for i in asset_ids}
    added = repo.add_assets_to_collection(session, found.id, unique)
    return MembershipChange(added, len(unique) - added)


def remove_assets(
    session: Session, scope: CollectionScope, ref: str | int, asset_ids: Sequence[int]
) -> MembershipChange:
    """Take visible assets out of a visible collection (they stay in the archive; a
    restricted caller may lose sight of them).

    Raises:
        NotFoundError: the collection; MissingAssetsError: assets absent or not visible.
    """
    found = get_collection(session, scope, ref)
    _visible_existing(session, scope, asset_ids)
    unique = {int(i) for i in asset_ids}
    removed = repo.remove_assets_from_collection(session, found.id, unique)
    return MembershipChange(removed, len(unique) - removed)
