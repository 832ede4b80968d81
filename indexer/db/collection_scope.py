"""What one caller may see: :class:`CollectionScope`, passed down from the API (or the command
line) to every query that reads or changes assets, concepts, tags or jobs.

The rules (docs/collections.md):

- an **asset** is visible iff it is in at least one of the scope's collections;
- a **concept** iff it is global or of one of the scope's collections;
- a **tag** iff it is built in, or made from a visible concept (a collection's concept that
  became a tag is seen only through that collection);
- a **job** iff it was made for one of the scope's collections (``jobs.collection_id``);
- the **unrestricted** scope (``collection_ids`` None, every key made before collections, and
  the command line) sees everything, assets in no collection included.

The scope only builds SQL conditions and checks; it holds no session and no global state, so
each request's scope travels with the call (api -> indexer -> indexer.db).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, table_of
from indexer.db.collections import AssetCollection
from indexer.db.concepts import Concept

_members = table_of(AssetCollection)
_concepts = table_of(Concept)


class CollectionForbiddenError(PermissionError):
    """A collection-limited caller asked to change something outside its collections, or a
    global thing only an unrestricted admin may change (answered 403)."""


class CollectionRequiredError(ValueError):
    """A caller limited to several collections made something without saying for which (422)."""


@dataclass(frozen=True)
class CollectionScope:
    """The collections a caller sees: ``collection_ids`` None = everything; a (maybe empty)
    frozenset = only those."""

    collection_ids: frozenset[int] | None = None

    @property
    def restricted(self) -> bool:
        """Whether the caller is limited to some collections."""
        return self.collection_ids is not None

    @property
    def ids(self) -> list[int]:
        """The collection ids, sorted (empty when unrestricted: check :attr:`restricted`)."""
        return sorted(self.collection_ids or ())

    def sees_collection(self, collection_id: int | None) -> bool:
        """Whether a collection (None: something global, outside any) is visible."""
        if self.collection_ids is None:
            return True
        return collection_id is not None and collection_id in self.collection_ids

    # ---- assets ----------------------------------------------------------------------------

    def asset_condition(self, asset_id: Any) -> sa.ColumnElement[bool] | None:
        """An SQL condition "the asset ``asset_id`` (a column) is visible", or None when every
        asset is: one EXISTS probe of ``asset_collections`` per asset (its asset_id index)."""
        if self.collection_ids is None:
            return None
        if not self.collection_ids:
            return sa.false()
        member = _members.alias("scope_member")
        return sa.exists().where(
            member.c.asset_id == asset_id, member.c.collection_id.in_(self.ids)
        )

    def asset_conditions(self, asset_id: Any) -> list[sa.ColumnElement[bool]]:
        """:meth:`asset_condition` as a list (empty when every asset is visible), to splat
        into ``where(...)``."""
        condition = self.asset_condition(asset_id)
        return [] if condition is None else [condition]

    def visible_assets(self, session: Session, asset_ids: Iterable[int]) -> set[int]:
        """Those of ``asset_ids`` the scope sees (all of them when unrestricted: existence is
        not checked)."""
        ids = sorted({int(i) for i in asset_ids})
        if self.collection_ids is None:
            return set(ids)
        if not self.collection_ids or not ids:
            return set()
        found: set[int] = set()
        for part in chunks(ids):
            found.update(
                int(a)
                for a in session.scalars(
                    sa.select(_members.c.asset_id)
                    .where(_members.c.asset_id.in_(part), _members.c.collection_id.in_(self.ids))
                    .distinct()
                )
            )
        return found

    def sees_asset(self, session: Session, asset_id: int) -> bool:
        """Whether the asset is visible (an asset that does not exist is visible to the
        unrestricted scope: callers check existence themselves)."""
        return int(asset_id) in self.visible_assets(session, [asset_id])

    def asset_mask(self, session: Session, asset_ids: np.ndarray) -> np.ndarray:
        """Which of ``asset_ids`` are visible (bool mask, order kept)."""
        if self.collection_ids is None:
            return np.ones(len(asset_ids), bool)
        seen = self.visible_assets(session, (int(i) for i in asset_ids))
        return np.fromiter((int(i) in seen for i in asset_ids), bool, len(asset_ids))

    # ---- concepts and tags -------------------------------------------------------------------

    def concept_condition(self) -> sa.ColumnElement[bool] | None:
        """An SQL condition on ``concepts``: global or of one of the scope's collections."""
        if self.collection_ids is None:
            return None
        column = _concepts.c.collection_id
        if not self.collection_ids:
            return column.is_(None)
        return sa.or_(column.is_(None), column.in_(self.ids))

    def sees_concept(self, concept: Concept) -> bool:
        """Whether a concept is visible."""
        return concept.collection_id is None or self.sees_collection(concept.collection_id)

    def tag_condition(self, tag_id: Any) -> sa.ColumnElement[bool] | None:
        """An SQL condition "the tag ``tag_id`` (a column) is visible": no concept of a
        collection outside the scope made it."""
        if self.collection_ids is None:
            return None
        owner = _concepts.alias("scope_concept")
        foreign: sa.ColumnElement[bool] = owner.c.collection_id.is_not(None)
        if self.collection_ids:
            foreign = sa.and_(foreign, owner.c.collection_id.not_in(self.ids))
        return ~sa.exists().where(owner.c.tag_id == tag_id, foreign)

    def hidden_tag_ids(self, session: Session) -> frozenset[int]:
        """Ids of the tags the scope does not see (made from other collections' concepts):
        few, read once per request to filter tag lists in Python."""
        if self.collection_ids is None:
            return frozenset()
        stmt = sa.select(_concepts.c.tag_id).where(
            _concepts.c.tag_id.is_not(None), _concepts.c.collection_id.is_not(None)
        )
        if self.collection_ids:
            stmt = stmt.where(_concepts.c.collection_id.not_in(self.ids))
        return frozenset(int(t) for t in session.scalars(stmt))

    # ---- jobs ----------------------------------------------------------------------------------

    def job_condition(self, collection_id: Any) -> sa.ColumnElement[bool] | None:
        """An SQL condition on a job's ``collection_id`` column (None: every job visible)."""
        if self.collection_ids is None:
            return None
        if not self.collection_ids:
            return sa.false()
        return collection_id.in_(self.ids)

    # ---- making things -------------------------------------------------------------------------

    def target_collection(self, requested: int | None) -> int | None:
        """The collection a new asset, concept or job goes to.

        Unrestricted: the ``requested`` one (None: none, global). Restricted: ``requested``
        when it is one of the scope's; without one, the scope's only collection.

        Raises:
            CollectionForbiddenError: ``requested`` is outside the scope.
            CollectionRequiredError: several collections and none requested (or none at all).
        """
        if self.collection_ids is None:
            return requested
        if requested is not None:
            if requested not in self.collection_ids:
                raise CollectionForbiddenError(
                    f"this key cannot add to collection {requested} (it is limited to "
                    f"collections {', '.join(map(str, self.ids)) or 'none'})"
                )
            return requested
        if len(self.collection_ids) == 1:
            return next(iter(self.collection_ids))
        if not self.collection_ids:
            raise CollectionForbiddenError("this key is limited to no collection: it adds nothing")
        raise CollectionRequiredError(
            f"this key is limited to collections {', '.join(map(str, self.ids))}: "
            "say which one with the collection parameter"
        )

    def require_unrestricted(self, what: str) -> None:
        """Refuse a change of something global to a collection-limited caller.

        Raises:
            CollectionForbiddenError: the scope is restricted.
        """
        if self.collection_ids is not None:
            raise CollectionForbiddenError(
                f"{what}: that concerns every collection, so it needs a key that is not "
                "limited to collections"
            )


EVERYTHING = CollectionScope()


def scope_of(collection_ids: Sequence[int] | frozenset[int] | None) -> CollectionScope:
    """A scope for these collection ids (None: unrestricted)."""
    return CollectionScope(None if collection_ids is None else frozenset(collection_ids))
