"""Data access for people's labels: manual tags, review decisions, their audit trail, the queue.

A label row (``asset_labels``) exists only while it says something (manual, embedded or a
review decision); :func:`change_labels` deletes it when its last flag is cleared. Every change
that changed something writes one ``label_changes`` row with the row's state before and after.
Model scores (``asset_tags``) are never touched here, and re-scoring never touches labels.

Every function runs inside the caller's transaction; none commits. The SQL is dialect-neutral
except for the upsert (``ON CONFLICT``, which both PostgreSQL and SQLite speak).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, table_of, upsert_insert
from indexer.db.assets import Asset
from indexer.db.base import Real, db_now
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.errors import InvalidCursorError, NotFoundError
from indexer.db.event_repo import record_asset_event
from indexer.db.events import EventType
from indexer.db.labels import (
    MAX_LABEL_LENGTH,
    AssetLabel,
    LabelAction,
    LabelChange,
    Review,
    label_key,
)
from indexer.db.tags import AssetTag, Tag

MAX_ASSETS_PER_CHANGE = 1000  # one request's worth; larger curations go in several requests
MAX_ACTOR_LENGTH = 200  # label_changes.actor / asset_labels.updated_by
_BATCH = 500  # rows per statement (8 bound parameters a row stays far below SQLite's limit)
_labels = table_of(AssetLabel)
_changes = table_of(LabelChange)
_asset_tags = table_of(AssetTag)


class MissingAssetsError(NotFoundError):
    """Asset ids a change named that do not exist (``asset_ids``: all of them, ascending)."""

    def __init__(self, asset_ids: Sequence[int]) -> None:
        self.asset_ids = list(asset_ids)
        shown = ", ".join(str(i) for i in self.asset_ids[:20])
        more = f" and {len(self.asset_ids) - 20} more" if len(self.asset_ids) > 20 else ""
        super().__init__(f"asset(s) do not exist: {shown}{more}")


@dataclass(frozen=True, slots=True)
class LabelState:
    """What a label row says (the audit trail's before/after)."""

    manual: bool = False
    embedded: bool = False
    review: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing said: the row must not exist."""
        return not (self.manual or self.embedded or self.review is not None)

    def as_dict(self) -> dict[str, Any] | None:
        """The JSON stored in ``label_changes`` (None: no row)."""
        if self.empty:
            return None
        return {"manual": self.manual, "embedded": self.embedded, "review": self.review}


_NO_ROW = LabelState()


def apply_action(state: LabelState, action: LabelAction | str) -> LabelState:
    """The state after ``action`` (add: the manual flag; remove: the manual and the embedded
    flag, a person taking the tag off the asset, the file's keyword included; accept/reject/
    unreview: the review decision; embed: the embedded flag)."""
    act = LabelAction(action)
    if act is LabelAction.ADD:
        return LabelState(True, state.embedded, state.review)
    if act is LabelAction.REMOVE:
        return LabelState(False, False, state.review)
    if act is LabelAction.EMBED:
        return LabelState(state.manual, True, state.review)
    review = {
        LabelAction.ACCEPT: Review.ACCEPTED.value,
        LabelAction.REJECT: Review.REJECTED.value,
        LabelAction.UNREVIEW: None,
    }[act]
    return LabelState(state.manual, state.embedded, review)


def _check_key(key: str, label: str) -> None:
    if not key or not label.strip():
        raise ValueError("a label needs a non-empty name")
    if len(key) > MAX_LABEL_LENGTH or len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"a label is at most {MAX_LABEL_LENGTH} characters")


def missing_assets(session: Session, asset_ids: Sequence[int], *, lock: bool = False) -> list[int]:
    """The ids of ``asset_ids`` with no asset row, ascending.

    ``lock`` takes the row locks an update of the assets would (``FOR NO KEY UPDATE`` on
    PostgreSQL; SQLite serializes writers anyway): two concurrent changes of the same assets'
    labels then run one after the other, so each reads the state the other left.
    """
    found: set[int] = set()
    for part in chunks(sorted(set(asset_ids))):
        stmt = sa.select(Asset.id).where(Asset.id.in_(part)).order_by(Asset.id)
        if lock:
            stmt = stmt.with_for_update(key_share=True)
        found.update(int(i) for i in session.scalars(stmt))
    return sorted(set(asset_ids) - found)


def change_labels(
    session: Session,
    asset_ids: Sequence[int],
    key: str,
    label: str,
    action: LabelAction | str,
    actor: str,
) -> tuple[int, int]:
    """Apply one action to the label ``key`` of many assets, in the caller's transaction.

    Rows that end up saying nothing are deleted; the others are inserted or updated (``label``
    is written on insert and by ``add``; other actions keep the stored display text). One
    ``label_changes`` row is written per asset whose state changed.

    Args:
        asset_ids: the assets (duplicates count once), at most ``MAX_ASSETS_PER_CHANGE``.
        key: the label key (:func:`indexer.db.labels.label_key` of the name).
        label: the display text.
        action: add, remove, accept, reject, unreview or embed.
        actor: who (an API key's name and id, ``cli:<user>``), stored with each change.

    Returns:
        (changed, unchanged) asset counts.

    Raises:
        MissingAssetsError: some assets do not exist (all named; nothing changed).
        ValueError: no ids, too many ids, or an empty or overlong key/label/actor.
    """
    act = LabelAction(action)
    ids = sorted({int(i) for i in asset_ids})
    if not ids:
        raise ValueError("no asset ids given")
    if len(ids) > MAX_ASSETS_PER_CHANGE:
        raise ValueError(f"at most {MAX_ASSETS_PER_CHANGE} assets per change, got {len(ids)}")
    _check_key(key, label)
    if not actor or len(actor) > MAX_ACTOR_LENGTH:
        raise ValueError(f"actor must be 1..{MAX_ACTOR_LENGTH} characters")
    missing = missing_assets(session, ids, lock=True)
    if missing:
        raise MissingAssetsError(missing)

    current = _rows(session, ids, key)
    upserts: list[dict[str, Any]] = []
    deletes: list[int] = []
    audit: list[dict[str, Any]] = []
    for asset_id in ids:
        row = current.get(asset_id)
        before = _NO_ROW if row is None else row[0]
        after = apply_action(before, act)
        if after == before:
            continue
        if after.empty:
            deletes.append(asset_id)
        else:
            shown = label if row is None or act is LabelAction.ADD else row[1]
            upserts.append(
                {
                    "asset_id": asset_id,
                    "key": key,
                    "label": shown,
                    "manual": after.manual,
                    "embedded": after.embedded,
                    "review": after.review,
                    "updated_by": actor,
                }
            )
        audit.append(
            {
                "asset_id": asset_id,
                "key": key,
                "action": act.value,
                # SQL NULL for "no row" (a plain None would be stored as JSON null)
                "before": _json(before),
                "after": _json(after),
                "actor": actor,
            }
        )
    for part in chunks(deletes, _BATCH):
        session.execute(
            sa.delete(_labels).where(_labels.c.key == key, _labels.c.asset_id.in_(part))
        )
    for batch in chunks(upserts, _BATCH):
        stmt = upsert_insert(session, _labels).values(list(batch))
        stmt = stmt.on_conflict_do_update(
            index_elements=["asset_id", "key"],
            set_={
                "label": stmt.excluded.label,
                "manual": stmt.excluded.manual,
                "embedded": stmt.excluded.embedded,
                "review": stmt.excluded.review,
                "updated_by": stmt.excluded.updated_by,
                "updated_at": db_now(),
            },
        )
        session.execute(stmt)
    for records in chunks(audit, _BATCH):
        session.execute(sa.insert(_changes).values(list(records)))
    record_asset_event(
        session,
        EventType.ASSET_TAGS_CHANGED,
        [a["asset_id"] for a in audit],
        key=key,
        label=label,
        action=act.value,
    )
    return len(audit), len(ids) - len(audit)


def _json(state: LabelState) -> Any:
    value = state.as_dict()
    return sa.null() if value is None else value


def _rows(
    session: Session, asset_ids: Sequence[int], key: str
) -> dict[int, tuple[LabelState, str]]:
    """The label rows of ``key`` on ``asset_ids``: asset id -> (state, display text)."""
    found: dict[int, tuple[LabelState, str]] = {}
    for part in chunks(asset_ids):
        stmt = sa.select(
            _labels.c.asset_id,
            _labels.c.manual,
            _labels.c.embedded,
            _labels.c.review,
            _labels.c.label,
        ).where(_labels.c.key == key, _labels.c.asset_id.in_(part))
        for asset_id, manual, embedded, review, label in session.execute(stmt):
            found[int(asset_id)] = (LabelState(bool(manual), bool(embedded), review), label)
    return found


def labels_of(session: Session, asset_id: int) -> list[AssetLabel]:
    """Every label row of one asset, by key."""
    stmt = sa.select(AssetLabel).where(AssetLabel.asset_id == asset_id).order_by(AssetLabel.key)
    return list(session.scalars(stmt))


def history(session: Session, asset_id: int, limit: int = 100) -> list[LabelChange]:
    """The recorded label changes of one asset, newest first.

    Raises:
        ValueError: limit outside 1..10000.
    """
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be in 1..10000")
    stmt = (
        sa.select(LabelChange)
        .where(LabelChange.asset_id == asset_id)
        .order_by(LabelChange.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


# ---------- the review queue ----------


@dataclass(frozen=True, slots=True)
class QueueItem:
    """An asset waiting for a decision on one tag: its score and how far it is from the
    tag's threshold."""

    asset_id: int
    score: float
    distance: float


@dataclass(frozen=True, slots=True)
class QueueCursor:
    """Where a queue page ended: the last (score, asset id) taken from each side of the
    threshold (None: that side not read yet), for one tag."""

    tag_id: int
    above: tuple[float, int] | None = None
    below: tuple[float, int] | None = None

    def encode(self) -> str:
        """An opaque URL-safe text."""
        raw = json.dumps({"t": self.tag_id, "a": self.above, "b": self.below}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, tag_id: int) -> QueueCursor:
        """The cursor ``text`` stands for.

        Raises:
            InvalidCursorError: not a queue cursor, or one of another tag's queue.
        """
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            cursor = cls(int(raw["t"]), _position(raw["a"]), _position(raw["b"]))
        except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise InvalidCursorError("not a review queue cursor") from None
        if cursor.tag_id != tag_id:
            raise InvalidCursorError("the cursor belongs to another tag's queue")
        return cursor


def _position(value: Any) -> tuple[float, int] | None:
    if value is None:
        return None
    score, asset_id = value
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise TypeError("score")
    if isinstance(asset_id, bool) or not isinstance(asset_id, int):
        raise TypeError("asset id")
    if not 0.0 <= float(score) <= 1.0 or not 1 <= asset_id < 2**63:
        raise ValueError("out of range")
    return float(score), asset_id


def _real(value: float) -> sa.ColumnElement[float]:
    # Compared as a 4-byte REAL, like the stored scores (PostgreSQL would compare in double
    # precision, where a REAL read back no longer equals itself and paging would repeat rows).
    return sa.cast(sa.literal(float(value), sa.Float()), Real)


def review_queue(
    session: Session,
    tag: Tag,
    limit: int = 50,
    after: QueueCursor | None = None,
    scope: CollectionScope = EVERYTHING,
) -> tuple[list[QueueItem], QueueCursor | None]:
    """Assets with a stored score for ``tag`` and no decision yet (no review, not manual),
    nearest the tag's effective threshold first (``|score - threshold|``, then asset id).

    Two index range scans of ``(tag_id, score, asset_id)`` walk away from the threshold, one
    up and one down, each stopping after ``limit + 1`` rows, merged here: a common tag's
    hundreds of thousands of scores are never sorted as a whole.

    Returns:
        (items, cursor of the next page or None when this was the last).

    Raises:
        ValueError: limit outside 1..1000.
    """
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be in 1..1000")
    cursor = after or QueueCursor(tag.id)
    threshold = tag.effective_threshold
    above = _side(session, tag, threshold, cursor.above, up=True, limit=limit + 1, scope=scope)
    below = _side(session, tag, threshold, cursor.below, up=False, limit=limit + 1, scope=scope)
    merged = sorted(
        [(abs(s - threshold), a, s, True) for s, a in above]
        + [(abs(s - threshold), a, s, False) for s, a in below]
    )
    page = merged[:limit]
    last_above, last_below = cursor.above, cursor.below
    for _, asset_id, score, is_above in page:
        if is_above:
            last_above = (score, asset_id)
        else:
            last_below = (score, asset_id)
    items = [QueueItem(a, s, d) for d, a, s, _ in page]
    more = len(merged) > limit
    return items, (QueueCursor(tag.id, last_above, last_below) if more else None)


def _side(
    session: Session,
    tag: Tag,
    threshold: float,
    start: tuple[float, int] | None,
    *,
    up: bool,
    limit: int,
    scope: CollectionScope = EVERYTHING,
) -> list[tuple[float, int]]:
    """(score, asset id) of undecided assets on one side of the threshold, nearest first:
    ``score >= threshold`` ascending (up) or ``score < threshold`` descending, after ``start``."""
    scores = _asset_tags.alias("q")
    decided = _labels.alias("l")
    key = label_key(tag.english)
    stmt = sa.select(scores.c.score, scores.c.asset_id).where(
        scores.c.tag_id == tag.id,
        ~sa.exists().where(
            decided.c.asset_id == scores.c.asset_id,
            decided.c.key == key,
            sa.or_(decided.c.manual.is_(True), decided.c.review.is_not(None)),
        ),
        *scope.asset_conditions(scores.c.asset_id),  # a collection-limited key's assets only
    )
    if up:
        stmt = stmt.where(scores.c.score >= _real(threshold))
        if start is not None:
            stmt = stmt.where(
                sa.tuple_(scores.c.score, scores.c.asset_id) > sa.tuple_(_real(start[0]), start[1])
            )
        stmt = stmt.order_by(scores.c.score.asc(), scores.c.asset_id.asc())
    else:
        stmt = stmt.where(scores.c.score < _real(threshold))
        if start is not None:
            # descending by score; within one score ascending asset ids, like the merge's ties
            stmt = stmt.where(
                sa.or_(
                    scores.c.score < _real(start[0]),
                    sa.and_(scores.c.score == _real(start[0]), scores.c.asset_id > start[1]),
                )
            )
        stmt = stmt.order_by(scores.c.score.desc(), scores.c.asset_id.asc())
    return [(float(s), int(a)) for s, a in session.execute(stmt.limit(limit))]
