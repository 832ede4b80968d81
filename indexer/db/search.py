"""Boolean tag search over stored scores: all / any / none, score and asset filters, paging.

Ranking: by the score of the first ``all_`` tag, or when ``all_`` is empty by the best score among
the matching ``any_`` tags; ties by asset id, newest first. With no tag terms, assets (status
``done``) come newest first with no score. Paging is keyset (``cursor``), stable under inserts.

A tag "matches" an asset when its stored score is strictly above the tag's effective threshold
(override, else the model's threshold; RAM++ outputs a tag when prob > threshold), or, when
``min_score`` is given, when the score is >= ``min_score`` (for every term, ``none`` included).
Only scores >= the score floor are stored, so ``min_score`` below the floor finds nothing more.
People's labels count too (:mod:`indexer.db.tag_match`): a manual, embedded or accepted tag
matches and ranks as :data:`~indexer.db.tag_match.LABEL_SCORE`; a rejected one never matches.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import table_of
from indexer.db.assets import Asset, AssetStatus
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.errors import CursorOutOfRangeError, InvalidCursorError
from indexer.db.labels import AssetLabel
from indexer.db.query_terms import resolve_terms
from indexer.db.tag_match import (
    LABEL_SCORE,
    FreeKeyword,
    TagMatch,
    TermTag,
    has_tag_term,
    label_keys,
    label_term,
    match_sources,
    real,
    score_source,
    score_term,
    tag_key,
    tag_match,
)
from indexer.db.tag_repo import per_asset_rows
from indexer.db.tags import AssetTag

MAX_LIMIT = 1000
MAX_ID = 2**63 - 1  # assets.id is a BIGINT
MAX_JULIAN_DAY = 5373484.5  # 9999-12-31, the last day a datetime holds
_assets = table_of(Asset)
_asset_tags = table_of(AssetTag)
_labels = table_of(AssetLabel)


@dataclass(frozen=True, slots=True)
class MatchedTag:
    """A query tag that matched the asset: its score (``LABEL_SCORE`` when a label made it
    match), its sources (``model``, ``concept``, ``manual``, ``embedded``) and review state."""

    tag_id: int
    english: str
    chinese: str | None
    score: float
    sources: tuple[str, ...] = ("model",)
    review: str | None = None
    expanded_from: str | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One asset in a result page: its ranking score (None without tag terms) and the positive
    query tags it matched, best first."""

    asset_id: int
    score: float | None
    tags: tuple[MatchedTag, ...]


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of hits and the cursor of the next page (None on the last page)."""

    hits: list[SearchHit]
    next_cursor: str | None


def _encode_cursor(score: float | None, asset_id: int) -> str:
    raw = json.dumps({"s": score, "i": asset_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_fields(cursor: str, what: str) -> dict[str, Any]:
    """The JSON object inside a cursor.

    Raises:
        InvalidCursorError: not base64url JSON holding an object.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursorError(f"invalid search cursor {cursor[:40]!r}{what}") from exc
    if not isinstance(data, dict):
        raise InvalidCursorError(f"invalid search cursor {cursor[:40]!r}{what}")
    return data


def _cursor_id(data: dict[str, Any], cursor: str) -> int:
    """The cursor's asset id, range-checked: an id past BIGINT would overflow in the database."""
    if "i" not in data:
        raise InvalidCursorError(f"invalid search cursor {cursor[:40]!r}")
    asset_id = data["i"]
    if isinstance(asset_id, bool) or not isinstance(asset_id, int) or not 1 <= asset_id <= MAX_ID:
        raise CursorOutOfRangeError(f"search cursor asset id out of range 1..{MAX_ID}")
    return asset_id


def _decode_cursor(cursor: str) -> tuple[float | None, int]:
    """(score, asset id) of a score-ordered cursor; the score is a probability or None.

    Raises:
        InvalidCursorError: malformed; CursorOutOfRangeError: values out of range.
    """
    data = _cursor_fields(cursor, "")
    if "s" not in data:
        raise InvalidCursorError(f"invalid search cursor {cursor[:40]!r}")
    score, asset_id = data["s"], _cursor_id(data, cursor)
    if score is not None and (
        isinstance(score, bool)
        or not isinstance(score, int | float)
        or not (math.isfinite(score) and 0.0 <= score <= 1.0)
    ):
        raise CursorOutOfRangeError("search cursor score must be a probability in [0, 1]")
    return (None if score is None else float(score)), asset_id


def asset_filters(
    mime: str | Sequence[str] | None, since: datetime | None, until: datetime | None
) -> list[sa.ColumnElement[bool]]:
    """SQL conditions on the asset itself: mime types (``image/*`` prefixes allowed) and the
    half-open creation range [since, until)."""
    filters: list[sa.ColumnElement[bool]] = []
    if mime:
        kinds = [mime] if isinstance(mime, str) else list(mime)
        alternatives = [
            _assets.c.mime.like(k[:-1] + "%") if k.endswith("/*") else _assets.c.mime == k
            for k in kinds
        ]
        filters.append(sa.or_(*alternatives))
    if since is not None:
        filters.append(_assets.c.created_at >= since)
    if until is not None:
        filters.append(_assets.c.created_at < until)
    return filters


def search_by_tags(
    session: Session,
    *,
    model_name: str,
    all_: Sequence[str | int] = (),
    any_: Sequence[str | int] = (),
    none: Sequence[str | int] = (),
    min_score: float | None = None,
    mime: str | Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
    order: Literal["score", "date"] = "score",
    sources: Sequence[str] | None = None,
    narrower: bool = False,
    scope: CollectionScope = EVERYTHING,
) -> SearchPage:
    """Assets matching a boolean tag query, best first (or newest first), one page at a time.

    Args:
        session: the unit of work.
        model_name: whose vocabulary the tag names belong to.
        all_: tags the asset must have (names, English or Chinese, or tag ids).
        any_: tags of which the asset must have at least one.
        none: tags the asset must not have.
        min_score: use this score bound instead of the tags' thresholds.
        mime: exact media types or ``"image/*"`` prefixes.
        since, until: ``since <= created_at < until``.
        limit: page size, 1..1000.
        cursor: ``next_cursor`` of the previous page.
        order: ``score`` (the ranking above) or ``date``: every matching asset, newest
            ``created_at`` first (ties by id), keyset-paged like the score order.
        sources: count only these provenances (``model``, ``concept``, ``manual``,
            ``embedded``; default all, see :mod:`indexer.db.tag_match`).
        scope: a collection-limited caller's: only assets of its collections (an EXISTS on
            ``asset_collections`` beside the other asset filters, probed by its primary key),
            and tag names it may see.

    Returns:
        A :class:`SearchPage`.

    Raises:
        UnknownTagError: a name matches no tag of the model.
        ValueError: bad limit, min_score or cursor.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be in [0, 1], got {min_score}")
    if order not in ("score", "date"):
        raise ValueError(f"order must be 'score' or 'date', got {order!r}")
    if session.get_bind().dialect.name == "postgresql":
        # Plan each statement for its own tag ids and thresholds: a cached generic plan cannot
        # prune asset_tags' partitions at plan time and costs them all (common tag AND NOT
        # another: 0.8 ms custom, 34 ms generic at 2 M assets; docs/scale.md). This transaction.
        session.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
    names = [*all_, *any_, *none]
    terms = (
        resolve_terms(session, model_name, names, narrower=narrower, scope=scope) if names else {}
    )
    all_terms = [terms[n].tags for n in all_]
    any_tags = [t for n in any_ for t in terms[n].tags]
    none_tags = [t for n in none for t in terms[n].tags]
    expanded = {k: v for term in terms.values() for k, v in term.expanded_from.items()}
    match = tag_match(
        session,
        [*(t for term in all_terms for t in term), *any_tags, *none_tags],
        min_score=min_score,
        sources=sources,
        expanded_from=expanded,
    )
    filters = asset_filters(mime, since, until) + scope.asset_conditions(_assets.c.id)
    ordered_by_date = order == "date" and bool(all_terms or any_tags)
    after = _decode_cursor(cursor) if cursor and not ordered_by_date else None

    if not all_terms and not any_tags:
        rows = _search_assets_only(session, none_tags, match, filters, limit, after)
        hits = [SearchHit(int(i), None, ()) for i, _ in rows[:limit]]
        more = len(rows) > limit
        return SearchPage(hits, _encode_cursor(None, hits[-1].asset_id) if more else None)

    rank_tags = all_terms[0] if all_terms else any_tags
    positive = [t for term in all_terms for t in term] + any_tags
    if order == "date":
        return _date_page(
            session, all_terms, any_tags, none_tags, match, filters, limit, cursor, positive
        )
    if after is not None and after[0] is None:
        raise InvalidCursorError("cursor does not belong to a tag query")
    rows = _ranked_rows(
        session,
        rank_tags,
        filters=lambda asset_id: (
            _filters(asset_id, all_terms, any_tags, none_tags, match)
            + ([sa.exists().where(_assets.c.id == asset_id, *filters)] if filters else [])
        ),
        match=match,
        limit=limit,
        after=after,  # type: ignore[arg-type]
    )
    page = rows[:limit]
    matched = matched_tags(session, [a for a, _ in page], positive, match)
    hits = [SearchHit(a, s, matched.get(a, ())) for a, s in page]
    next_cursor = _encode_cursor(hits[-1].score, hits[-1].asset_id) if len(rows) > limit else None
    return SearchPage(hits, next_cursor)


def _filters(
    asset_id: Any,
    all_terms: list[list[TermTag]],
    any_tags: list[TermTag],
    none_tags: list[TermTag],
    match: TagMatch,
) -> list[Any]:
    """Conditions on a candidate asset besides its ranking tag (each a PK probe)."""
    conditions: list[Any] = [has_tag_term(asset_id, term, match) for term in all_terms[1:]]
    if all_terms and any_tags:
        conditions.append(has_tag_term(asset_id, any_tags, match))
    if none_tags:
        conditions.append(~has_tag_term(asset_id, none_tags, match))
    return conditions


def _ranked_rows(
    session: Session,
    rank_tags: Sequence[TermTag],
    *,
    filters: Any,
    match: TagMatch,
    limit: int,
    after: tuple[float, int] | None,
) -> list[tuple[int, float]]:
    """Up to ``limit + 1`` (asset id, best ranking-tag score) pairs, best first.

    One branch per ranking tag, each an index range scan of ``(tag_id, score, asset_id)`` read
    backwards; PostgreSQL merges them (Merge Append) and stops early, so the work is
    proportional to the page, not to how many assets carry the tags. An asset can appear once
    per ranking tag; its first row in the merged order carries its best score, so reading
    ``(limit + 1) * len(rank_tags)`` rows and keeping first occurrences gives the page exactly.
    When the ranking tags carry labels, one more branch reads the positive labels (ranked as
    ``LABEL_SCORE``, above every model score of the same asset).
    """
    scored_tags = [t for t in rank_tags if match.uses_score(t)]
    keys = label_keys(rank_tags, match)
    several = len(scored_tags) + (1 if keys else 0) > 1
    row_limit = (limit + 1) * (len(scored_tags) + len(keys))
    postgres = session.get_bind().dialect.name == "postgresql"
    cursor = None if after is None else sa.tuple_(real(after[0]), after[1])

    def seen_before(asset_id: Any) -> sa.ColumnElement[bool]:
        """The asset had a ranking row at or above the cursor (it was on an earlier page)."""
        assert cursor is not None
        seen = _asset_tags.alias()
        earlier: list[Any] = [
            sa.exists().where(
                seen.c.asset_id == asset_id,
                score_term(seen, scored_tags, match),
                sa.tuple_(seen.c.score, seen.c.asset_id) >= cursor,
            )
        ]
        if keys:
            mark = _labels.alias()
            earlier.append(
                sa.exists().where(
                    mark.c.asset_id == asset_id,
                    label_term(mark, keys, match),
                    sa.tuple_(real(LABEL_SCORE), mark.c.asset_id) >= cursor,
                )
            )
        return sa.or_(*earlier)

    branches: list[sa.Select[Any]] = []
    for tag in scored_tags:
        d = _asset_tags.alias(f"d{len(branches)}")
        branch = sa.select(d.c.asset_id, d.c.score).where(
            score_term(d, [tag], match), *filters(d.c.asset_id)
        )
        if cursor is not None:
            branch = branch.where(sa.tuple_(d.c.score, d.c.asset_id) < cursor)
            if several:  # skip assets whose best row was on an earlier page
                branch = branch.where(~seen_before(d.c.asset_id))
        if postgres and several:
            # ordered, limited branches let PostgreSQL plan a Merge Append (SQLite does not
            # accept ORDER BY inside a UNION member)
            branch = branch.order_by(d.c.score.desc(), d.c.asset_id.desc()).limit(row_limit)
        branches.append(branch)
    if keys:
        mark = _labels.alias("marks")
        score = real(LABEL_SCORE).label("score")
        branch = sa.select(mark.c.asset_id, score).where(
            label_term(mark, keys, match),
            sa.exists().where(
                _assets.c.id == mark.c.asset_id, _assets.c.status == AssetStatus.DONE.value
            ),
            *filters(mark.c.asset_id),
        )
        if cursor is not None:
            branch = branch.where(sa.tuple_(real(LABEL_SCORE), mark.c.asset_id) < cursor)
            if several:
                branch = branch.where(~seen_before(mark.c.asset_id))
        if postgres and several:
            branch = branch.order_by(mark.c.asset_id.desc()).limit(row_limit)
        branches.append(branch)
    if not branches:
        return []
    score_col: Any
    id_col: Any
    if several:
        union = sa.union_all(*branches).subquery("ranked")
        score_col, id_col = union.c.score, union.c.asset_id
        stmt = sa.select(id_col, score_col)
    else:
        stmt = branches[0]
        score_col, id_col = stmt.selected_columns.score, stmt.selected_columns.asset_id
    stmt = stmt.order_by(score_col.desc(), id_col.desc()).limit(row_limit)
    out: list[tuple[int, float]] = []
    seen_ids: set[int] = set()
    for asset_id, score in session.execute(stmt):
        if asset_id not in seen_ids:
            seen_ids.add(asset_id)
            out.append((int(asset_id), float(score)))
            if len(out) > limit:
                break
    return out


def _date_key(session: Session) -> sa.ColumnElement[Any]:
    """The column date order sorts on. SQLite keeps ``created_at`` as text in two layouts (with and
    without fractional seconds), which do not compare as strings: its Julian day number does."""
    if session.get_bind().dialect.name == "sqlite":
        return sa.func.julianday(_assets.c.created_at)
    return _assets.c.created_at


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_date_cursor(key: Any, asset_id: int) -> str:
    # PostgreSQL: exact microseconds since the epoch; SQLite: the Julian day float as read.
    value = (key - _EPOCH) // timedelta(microseconds=1) if isinstance(key, datetime) else key
    kind = "us" if isinstance(key, datetime) else "jd"
    raw = json.dumps({kind: value, "i": asset_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_date_cursor(cursor: str, dialect: str) -> tuple[Any, int]:
    """(date key, asset id) of a date-ordered cursor of this database backend: microseconds
    since the epoch on PostgreSQL, a Julian day number on SQLite.

    Raises:
        InvalidCursorError: malformed; CursorOutOfRangeError: values out of range, or the
            cursor was made by the other backend.
    """
    data = _cursor_fields(cursor, " for a date-ordered query")
    if "us" not in data and "jd" not in data:
        raise InvalidCursorError(f"invalid search cursor {cursor[:40]!r} for a date-ordered query")
    asset_id = _cursor_id(data, cursor)
    kind = "jd" if dialect == "sqlite" else "us"
    value = data.get(kind)
    if kind == "us":
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return _EPOCH + timedelta(microseconds=value), asset_id
            except OverflowError:
                pass
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= MAX_JULIAN_DAY
    ):
        return float(value), asset_id
    raise CursorOutOfRangeError(
        f"date cursor out of range or made by another database backend (this one is {dialect})"
    )


def _date_page(
    session: Session,
    all_terms: list[list[TermTag]],
    any_tags: list[TermTag],
    none_tags: list[TermTag],
    match: TagMatch,
    filters: list[sa.ColumnElement[bool]],
    limit: int,
    cursor: str | None,
    positive: list[TermTag],
) -> SearchPage:
    """Every matching asset, newest first: the database walks assets by ``created_at`` and probes
    each one's tags (or, for a rare tag, reads the tag's rows and sorts them: its planner's
    choice); keyset pages on (created_at, id)."""
    key = _date_key(session)
    conditions = [has_tag_term(_assets.c.id, term, match) for term in all_terms]
    if any_tags:
        conditions.append(has_tag_term(_assets.c.id, any_tags, match))
    if none_tags:
        conditions.append(~has_tag_term(_assets.c.id, none_tags, match))
    stmt = sa.select(_assets.c.id, key.label("k")).where(
        _assets.c.status == AssetStatus.DONE.value, *filters, *conditions
    )
    if cursor:
        at, asset_id = _decode_date_cursor(cursor, session.get_bind().dialect.name)
        bound = sa.literal(at, _assets.c.created_at.type) if isinstance(at, datetime) else at
        # (key, id) < (bound, asset_id), written so that ``key <= bound`` can start the index walk
        stmt = stmt.where(key <= bound, sa.or_(key < bound, _assets.c.id < asset_id))
    if session.get_bind().dialect.name == "postgresql":
        # The walk stops after a page of matches; starting a parallel worker for it costs more
        # than the walk (docs/indexes.md: newest 50 of a common tag 58 -> 8 ms). This transaction
        # only.
        session.execute(sa.text("SET LOCAL max_parallel_workers_per_gather = 0"))
    rows = session.execute(stmt.order_by(key.desc(), _assets.c.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    matched = matched_tags(session, [int(r.id) for r in page], positive, match)
    rank_ids = {t.id for t in (all_terms[0] if all_terms else any_tags)}
    hits = []
    for r in page:
        tags = matched.get(int(r.id), ())
        score = max((m.score for m in tags if m.tag_id in rank_ids), default=None)
        hits.append(SearchHit(int(r.id), score, tags))
    more = len(rows) > limit
    return SearchPage(hits, _encode_date_cursor(page[-1].k, int(page[-1].id)) if more else None)


def _search_assets_only(
    session: Session,
    none_tags: Sequence[TermTag],
    match: TagMatch,
    filters: list[sa.ColumnElement[bool]],
    limit: int,
    after: tuple[float | None, int] | None,
) -> list[Any]:
    stmt = sa.select(_assets.c.id, sa.null()).where(
        _assets.c.status == AssetStatus.DONE.value, *filters
    )
    if none_tags:
        stmt = stmt.where(~has_tag_term(_assets.c.id, none_tags, match))
    if after is not None:
        stmt = stmt.where(_assets.c.id < after[1])
    return list(session.execute(stmt.order_by(_assets.c.id.desc()).limit(limit + 1)).all())


def matched_tags(
    session: Session, asset_ids: list[int], tags: Sequence[TermTag], match: TagMatch
) -> dict[int, tuple[MatchedTag, ...]]:
    """For each asset, which of ``tags`` it matched, with what score and by which sources (a
    hit's reasons), best first."""
    if not asset_ids or not tags:
        return {}
    by_id = {t.id: t for t in tags}
    scores: dict[tuple[int, int], float] = {}
    # one primary-key probe per asset (asset_tags is hash-partitioned on PostgreSQL)
    stmt, _ = per_asset_rows(
        session, asset_ids, ("asset_id", "tag_id", "score"), lambda t: score_term(t, tags, match)
    )
    for asset_id, tag_id, score in session.execute(stmt):
        scores[(int(asset_id), int(tag_id))] = float(score)
    marks: dict[tuple[int, str], Any] = {}
    keys = label_keys(tags, match)
    if keys:
        label = _labels.alias()
        rows = session.execute(
            sa.select(label).where(
                label.c.asset_id.in_([int(a) for a in asset_ids]), label_term(label, keys, match)
            )
        )
        marks = {(int(r.asset_id), str(r.key)): r for r in rows}
    out: dict[int, list[MatchedTag]] = {}
    for asset_id in asset_ids:
        found = []
        for tag in by_id.values():
            score = scores.get((asset_id, tag.id))
            mark = marks.get((asset_id, tag_key(tag)))
            if score is None and mark is None:
                continue
            sources = match_sources(
                score_source=score_source(tag),
                above=score is not None,  # score_term kept only passing scores
                manual=bool(mark is not None and mark.manual),
                embedded=bool(mark is not None and mark.embedded),
                review=None if mark is None else mark.review,
            )
            review = None if mark is None else mark.review
            keyword = isinstance(tag, FreeKeyword) and mark is not None
            found.append(
                MatchedTag(
                    tag.id,
                    mark.label if keyword else tag.english,  # type: ignore[union-attr]
                    tag.chinese,
                    LABEL_SCORE if mark is not None else float(score),  # type: ignore[arg-type]
                    sources,
                    review,
                    match.expanded_from.get(tag_key(tag)),
                )
            )
        if found:
            found.sort(key=lambda m: (-m.score, m.tag_id))
            out[asset_id] = found
    return {k: tuple(v) for k, v in out.items()}


def count_matching_assets(session: Session, conditions: Sequence[Any]) -> int:
    """How many done assets pass ``conditions`` (a filter's selectivity, for the filtered
    vector search planner: one ``COUNT``, answered from the indexes the conditions use)."""
    stmt = sa.select(sa.func.count()).where(_assets.c.status == AssetStatus.DONE.value, *conditions)
    return int(session.execute(stmt).scalar_one())


def matching_asset_ids(
    session: Session,
    conditions: Sequence[Any],
    among: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[int]:
    """Ids of the done assets passing ``conditions`` (optionally only ``among`` these; at most
    ``limit``, lowest ids first)."""
    stmt = sa.select(_assets.c.id).where(_assets.c.status == AssetStatus.DONE.value, *conditions)
    if among is not None:
        stmt = stmt.where(_assets.c.id.in_([int(i) for i in among]))
    stmt = stmt.order_by(_assets.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [int(i) for i in session.execute(stmt).scalars()]
