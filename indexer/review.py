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
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db import label_repo
from indexer.db.asset_repo import get_asset
from indexer.db.errors import NotFoundError, UnknownTagError
from indexer.db.label_repo import QueueCursor, QueueItem
from indexer.db.labels import (
    MAX_LABEL_LENGTH,
    AssetLabel,
    LabelAction,
    LabelChange,
    TagSource,
)
from indexer.db.labels import label_key as key_of
from indexer.db.tag_match import match_sources
from indexer.db.tag_repo import resolve_tags
from indexer.db.tags import AssetTag, Tag, TagOrigin
from indexer.errors import RamdexError

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


def resolve_name(session: Session, model_id: str, name: str) -> ResolvedName:
    """What ``name`` is for the model ``model_id``: its vocabulary tag (English name in any
    case, Chinese name, or a synonym the taxonomy maps to a tag's name), else a free keyword.

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
) -> ChangeResult:
    """Apply ``action`` for the tag or keyword ``name`` to ``asset_ids`` (not committed).

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
    resolved = resolve_name(session, model_id, name)
    if act in REVIEW_ACTIONS and resolved.tag is None:
        raise UnknownTagError([name], model_id)
    changed, unchanged = label_repo.change_labels(
        session, asset_ids, resolved.key, resolved.label, act, actor
    )
    return ChangeResult(changed, unchanged, resolved)


@dataclass
class TagView:
    """One tag of an asset with where it comes from (the provenance view)."""

    key: str
    name: str
    chinese: str | None = None
    tag_id: int | None = None
    score: float | None = None
    threshold: float | None = None
    sources: list[str] = field(default_factory=list)
    review: str | None = None
    manual: bool = False
    embedded: bool = False
    matches: bool = False


def _score_source(tag: Tag) -> str:
    return (TagSource.CONCEPT if tag.origin == TagOrigin.CONCEPT.value else TagSource.MODEL).value


def provenance(session: Session, model_id: str, asset_id: int) -> list[TagView]:
    """Every tag the asset has by any source: the model's and concepts' tags scored above
    their threshold and every label row; matching tags first, then by score, then name.

    ``sources`` lists ``model``/``concept`` when the score is above the threshold or the tag
    was accepted, ``manual`` and ``embedded`` from the label; ``matches`` is what a default
    tag search decides (manual, embedded or accepted; or above the threshold and not rejected).

    Raises:
        NotFoundError: no such asset.
    """
    if get_asset(session, asset_id) is None:
        raise NotFoundError(f"asset {asset_id} does not exist")
    labels = {row.key: row for row in label_repo.labels_of(session, asset_id)}
    stmt = (
        sa.select(Tag, AssetTag.score)
        .join(AssetTag, AssetTag.tag_id == Tag.id)
        .where(AssetTag.asset_id == asset_id, Tag.model_name == model_id)
    )
    scored: dict[str, tuple[Tag, float | None]] = {}
    for tag, score in session.execute(stmt):
        if float(score) > tag.effective_threshold or key_of(tag.english) in labels:
            scored[key_of(tag.english)] = (tag, float(score))
    unscored = [k for k in labels if k not in scored]
    if unscored:  # labelled vocabulary tags the asset has no stored score for
        rows = session.scalars(
            sa.select(Tag).where(
                Tag.model_name == model_id, sa.func.lower(Tag.english).in_(unscored)
            )
        )
        for tag in rows:
            if key_of(tag.english) in labels:
                scored.setdefault(key_of(tag.english), (tag, None))
    views = [_view(key, scored.get(key), labels.get(key)) for key in scored.keys() | labels.keys()]
    return sorted(views, key=lambda v: (not v.matches, -(v.score or 0.0), v.name.casefold()))


def _view(key: str, scored: tuple[Tag, float | None] | None, label: AssetLabel | None) -> TagView:
    tag, score = scored if scored is not None else (None, None)
    view = TagView(key=key, name=tag.english if tag else (label.label if label else key))
    if tag is not None:
        view.chinese, view.tag_id, view.threshold = tag.chinese, tag.id, tag.effective_threshold
    view.score = score
    if label is not None:
        view.manual, view.embedded, view.review = label.manual, label.embedded, label.review
    above = score is not None and view.threshold is not None and score > view.threshold
    # the search rule (indexer/db/tag_match.py): what makes the tag match, none when it does not
    view.sources = list(
        match_sources(
            score_source=_score_source(tag) if tag is not None else None,
            above=above,
            manual=view.manual,
            embedded=view.embedded,
            review=view.review,
        )
    )
    view.matches = bool(view.sources)
    return view


def history(session: Session, asset_id: int, limit: int = 100) -> list[LabelChange]:
    """The asset's recorded label changes, newest first.

    Raises:
        NotFoundError: no such asset.
    """
    if get_asset(session, asset_id) is None:
        raise NotFoundError(f"asset {asset_id} does not exist")
    return label_repo.history(session, asset_id, limit)


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One page of a tag's review queue."""

    tag: Tag
    threshold: float
    items: list[QueueItem]
    next_cursor: str | None


def queue(
    session: Session, model_id: str, name: str, limit: int = 50, cursor: str | None = None
) -> QueuePage:
    """The review queue of the vocabulary tag ``name`` (see :func:`label_repo.review_queue`).

    Raises:
        UnknownTagError: ``name`` is not a tag of the model.
        InvalidCursorError: a cursor not from this tag's queue.
        ValueError: limit outside 1..1000.
    """
    resolved = resolve_name(session, model_id, name)
    if resolved.tag is None:
        raise UnknownTagError([name], model_id)
    tag = resolved.tag
    after = QueueCursor.decode(cursor, tag.id) if cursor else None
    items, following = label_repo.review_queue(session, tag, limit, after)
    return QueuePage(tag, tag.effective_threshold, items, following.encode() if following else None)
