"""Reviewing tags: the one service behind ``ramdex review`` and ``/labels`` (docs/review.md).

- :func:`resolve_name`: what a typed name is: a tag of the model's vocabulary (English any case,
  Chinese, or a synonym from the taxonomy) or a free keyword.
- :func:`change`: add/remove a manual tag, accept/reject/unreview a model or concept tag, on
  many assets in the caller's transaction (recorded in the audit trail).
- :func:`provenance`: every tag an asset has, by any source, with whether a default search
  matches it (the rule of :mod:`indexer.db.labels`).
- :func:`queue`: the assets whose score for a tag is nearest its threshold, undecided only.

Nothing here commits: the API route and the CLI command commit (one transaction per request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db import label_repo
from indexer.db.asset_repo import get_asset
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.errors import NotFoundError, UnknownTagError
from indexer.db.label_repo import QueueCursor, QueueItem
from indexer.db.labels import (
    MAX_LABEL_LENGTH,
    LabelAction,
    LabelChange,
)
from indexer.db.labels import label_key as key_of
from indexer.db.tag_repo import resolve_tags
from indexer.db.tags import Tag
from indexer.errors import RamdexError
from indexer.provenance import TagOnAsset, tags_on_assets

#: Actions on a model or concept tag's review decision (the name must be a vocabulary tag).
REVIEW_ACTIONS = frozenset({LabelAction.ACCEPT, LabelAction.REJECT, LabelAction.UNREVIEW})
#: What people do through the API and the CLI (``embed`` is ingest's).
USER_ACTIONS = REVIEW_ACTIONS | {LabelAction.ADD, LabelAction.REMOVE}


class AmbiguousNameError(RamdexError):
    """A Chinese name shared by several tags of the vocabulary."""


@dataclass(frozen=True, slots=True)
class ResolvedName:
    """A typed name as labels store it: ``key``, display ``label``, and the vocabulary tag
    (None: a free keyword)."""

    key: str
    label: str
    tag: Tag | None


def _clean(name: str) -> str:
    text = " ".join(name.split())
    if not text:
        raise RamdexError("the tag name is empty", hint="give a tag name or a keyword")
    if len(text) > MAX_LABEL_LENGTH:
        raise RamdexError(f"the tag name is longer than {MAX_LABEL_LENGTH} characters")
    return text


def _synonym(session: Session, name: str) -> str | None:
    """The taxonomy concept key ``name`` names, when the taxonomy module is there."""
    try:
        from indexer.db import taxonomy_repo
    except ImportError:  # pragma: no cover - the taxonomy ships with ramdex
        return None
    lookup = getattr(taxonomy_repo, "lookup", None)
    return lookup(session, name) if lookup is not None else None


def resolve_name(
    session: Session, model_id: str, name: str, scope: CollectionScope = EVERYTHING
) -> ResolvedName:
    """What ``name`` is for the model ``model_id``: its vocabulary tag (English name in any
    case, Chinese name, or a synonym the taxonomy maps to a tag's name), else a free keyword.
    Tags ``scope`` does not see (other collections' concepts') are not tags to it.

    Raises:
        RamdexError: an empty or overlong name.
        AmbiguousNameError: a Chinese name of several tags (the English name is needed).
    """
    text = _clean(name)
    try:
        tags = resolve_tags(session, model_id, [text])[text]
    except UnknownTagError:
        tags = []
        concept = _synonym(session, text)
        if concept is not None and concept != key_of(text):
            stmt = sa.select(Tag).where(
                Tag.model_name == model_id, sa.func.lower(Tag.english) == concept
            )
            tags = [t for t in session.scalars(stmt) if key_of(t.english) == concept]
    hidden = scope.hidden_tag_ids(session)
    tags = [t for t in tags if t.id not in hidden]
    english = {t.english: t for t in tags}
    if len(english) > 1:
        raise AmbiguousNameError(
            f"{text!r} names several tags: " + ", ".join(sorted(english)),
            hint="give the English name of the one you mean",
        )
    if tags:
        tag = tags[0]
        return ResolvedName(key_of(tag.english), tag.english, tag)
    return ResolvedName(key_of(text), text, None)


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What one change did: asset counts and the label it was applied to."""

    changed: int
    unchanged: int
    name: ResolvedName


def change(
    session: Session,
    model_id: str,
    asset_ids: Sequence[int],
    name: str,
    action: LabelAction | str,
    actor: str,
    scope: CollectionScope = EVERYTHING,
) -> ChangeResult:
    """Apply ``action`` for the tag or keyword ``name`` to ``asset_ids`` (not committed);
    assets ``scope`` does not see count as missing.

    Raises:
        UnknownTagError: accept/reject/unreview of a name that is not a vocabulary tag.
        NotFoundError: some assets do not exist (nothing changed).
        RamdexError: an empty, overlong or ambiguous name, or an action people do not take.
        ValueError: no or too many asset ids.
    """
    try:
        act = LabelAction(action)
    except ValueError:
        act = None
    if act not in USER_ACTIONS:
        raise RamdexError(
            f"unknown action {action!r}", hint="one of: " + ", ".join(sorted(USER_ACTIONS))
        )
    if scope.restricted:
        unseen = sorted(set(map(int, asset_ids)) - scope.visible_assets(session, asset_ids))
        if unseen:
            raise label_repo.MissingAssetsError(unseen)
    resolved = resolve_name(session, model_id, name, scope)
    if act in REVIEW_ACTIONS and resolved.tag is None:
        raise UnknownTagError([name], model_id)
    changed, unchanged = label_repo.change_labels(
        session, asset_ids, resolved.key, resolved.label, act, actor
    )
    return ChangeResult(changed, unchanged, resolved)


def provenance(
    session: Session, model_id: str, asset_id: int, scope: CollectionScope = EVERYTHING
) -> list[TagOnAsset]:
    """Every tag the asset has by any source: the model's and concepts' tags scored above
    their threshold and every labelled name; matching tags first, then by score, then name.

    ``sources`` says what makes each match (indexer/db/tag_match.py, empty for a rejected or
    removed one); ``matches`` is what a default tag search decides.

    Raises:
        NotFoundError: no such asset, or ``scope`` does not see it.
    """
    _visible(session, scope, asset_id)
    hidden = scope.hidden_tag_ids(session)
    views = tags_on_assets(session, model_id, [asset_id]).get(asset_id, [])
    shown = [v for v in views if (v.matches or v.labelled) and v.tag_id not in hidden]
    return sorted(shown, key=lambda v: (not v.matches, -(v.score or 0.0), v.name.casefold()))


def history(
    session: Session,
    asset_id: int,
    limit: int = 100,
    scope: CollectionScope = EVERYTHING,
    own_actor: str | None = None,
) -> list[LabelChange]:
    """The asset's recorded label changes, newest first. For a restricted ``scope``, changes
    made by anyone but ``own_actor`` name no actor (an asset shared with another collection
    must not reveal that collection's key names).

    Raises:
        NotFoundError: no such asset, or ``scope`` does not see it.
    """
    _visible(session, scope, asset_id)
    changes = label_repo.history(session, asset_id, limit)
    if not scope.restricted:
        return changes
    for change in changes:
        if change.actor != own_actor:
            session.expunge(change)  # shown, never written back
            change.actor = OTHER_ACTOR
    return changes


OTHER_ACTOR = "another key"


def _visible(session: Session, scope: CollectionScope, asset_id: int) -> None:
    if get_asset(session, asset_id) is None or not scope.sees_asset(session, asset_id):
        raise NotFoundError(f"asset {asset_id} does not exist")


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One page of a tag's review queue."""

    tag: Tag
    threshold: float
    items: list[QueueItem]
    next_cursor: str | None


def queue(
    session: Session,
    model_id: str,
    name: str,
    limit: int = 50,
    cursor: str | None = None,
    scope: CollectionScope = EVERYTHING,
) -> QueuePage:
    """The review queue of the vocabulary tag ``name`` (see :func:`label_repo.review_queue`),
    of the assets ``scope`` sees.

    Raises:
        UnknownTagError: ``name`` is not a tag of the model.
        InvalidCursorError: a cursor not from this tag's queue.
        ValueError: limit outside 1..1000.
    """
    resolved = resolve_name(session, model_id, name, scope)
    if resolved.tag is None:
        raise UnknownTagError([name], model_id)
    tag = resolved.tag
    after = QueueCursor.decode(cursor, tag.id) if cursor else None
    items, following = label_repo.review_queue(session, tag, limit, after, scope)
    return QueuePage(tag, tag.effective_threshold, items, following.encode() if following else None)
