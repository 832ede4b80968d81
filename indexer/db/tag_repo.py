"""Data access for the tag vocabulary and per-tag scores.

Every function runs inside the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from indexer.db._sql import bulk_insert, chunks, table_of, upsert_insert
from indexer.db.errors import NotFoundError, UnknownTagError
from indexer.db.tags import AssetTag, Tag, TagOrigin
from ram_pp.vocab import TagVocabulary

_tags = table_of(Tag)
_asset_tags = table_of(AssetTag)


@dataclass(frozen=True, slots=True)
class ScoredTag:
    """A tag of an asset with its score and whether it passes the tag's threshold."""

    tag_id: int
    english: str
    chinese: str | None
    score: float
    threshold: float
    above_threshold: bool


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def per_asset_rows(
    session: Session,
    asset_ids: Sequence[int],
    columns: Sequence[str],
    condition: Any,
    *,
    alias: str = "m",
) -> tuple[sa.Select[Any], Any]:
    """A SELECT of ``asset_tags`` rows of ``asset_ids`` (``columns`` of the alias returned, which
    ``condition(alias)`` may also filter on), probing the primary key once per asset.

    On PostgreSQL each id is a LATERAL primary-key probe (``OFFSET 0`` keeps it from being
    flattened into a hash join over all of the tag's rows, which the planner picked for a common
    tag). With asset_tags hash-partitioned by asset_id an ``asset_id IN (...)`` list was probed
    in full in every partition (9 ms instead of 1.4 ms for a page of 50 hits at 2 M assets,
    docs/scale.md); by tag_id, the tag terms prune the probe to their partitions. SQLite keeps
    the plain IN list.

    Returns:
        (statement, the asset_tags alias) so the caller can order by the alias's columns.
    """
    if session.get_bind().dialect.name != "postgresql":
        probe = _asset_tags.alias(alias)
        stmt = sa.select(*(probe.c[c] for c in columns)).where(
            probe.c.asset_id.in_(list(asset_ids)), condition(probe)
        )
        return stmt, probe
    wanted = (
        sa.func.unnest(sa.cast(list(asset_ids), postgresql.ARRAY(sa.BigInteger)))
        .table_valued("id")
        .render_derived(name="q")
    )
    inner = _asset_tags.alias(f"{alias}_probe")
    lateral = (
        sa.select(*(inner.c[c] for c in columns))
        .where(inner.c.asset_id == wanted.c.id, condition(inner))
        .offset(0)
        .lateral(alias)
    )
    return sa.select(*(lateral.c[c] for c in columns)).select_from(wanted).join(
        lateral, sa.true()
    ), lateral


def ensure_vocabulary(session: Session, model_name: str, vocab: TagVocabulary) -> np.ndarray:
    """Make sure every tag of ``vocab`` exists for ``model_name``; return their ids.

    Idempotent and safe to run from several workers at once (inserts use ON CONFLICT DO
    NOTHING). Names, Chinese names, thresholds and logit positions of existing built-in tags are
    brought up to date; built-in tags no longer in the vocabulary lose their position. Threshold
    overrides are kept.

    Args:
        session: the unit of work.
        model_name: the model the vocabulary belongs to.
        vocab: names and thresholds in logit order.

    Returns:
        (T,) int64 tag ids, ``ids[i]`` is the tag of logit ``i``.

    Raises:
        ValueError: duplicate English names in ``vocab``, or a name already used by a concept tag.
    """
    if not model_name:
        raise ValueError("model_name is empty")
    english = list(vocab.english)
    if len(set(english)) != len(english):
        dupes = sorted({n for n in english if english.count(n) > 1})[:5]
        raise ValueError(f"vocabulary has duplicate English names: {dupes}")
    thresholds = [float(t) for t in vocab.thresholds]
    wanted = {name: (pos, vocab.chinese[pos], thresholds[pos]) for pos, name in enumerate(english)}

    def load() -> dict[str, tuple[int, int | None, str | None, float, str]]:
        stmt = sa.select(
            _tags.c.english, _tags.c.id, _tags.c.position, _tags.c.chinese,
            _tags.c.threshold, _tags.c.origin,
        ).where(_tags.c.model_name == model_name)  # fmt: skip
        return {row[0]: tuple(row[1:]) for row in session.execute(stmt)}  # type: ignore[misc]

    existing = load()
    clashes = [n for n in english if n in existing and existing[n][4] != TagOrigin.BUILTIN.value]
    if clashes:
        raise ValueError(f"vocabulary names already used by concept tags: {clashes[:5]}")
    new_rows = [
        {
            "model_name": model_name,
            "english": name,
            "chinese": chinese,
            "threshold": threshold,
            "position": pos,
            "origin": TagOrigin.BUILTIN.value,
        }
        for name, (pos, chinese, threshold) in wanted.items()
        if name not in existing
    ]
    if new_rows:
        stmt = upsert_insert(session, _tags).on_conflict_do_nothing(
            index_elements=["model_name", "english"]
        )
        session.execute(stmt, new_rows)
    updates = [
        {"b_id": row[0], "b_position": pos, "b_chinese": chinese, "b_threshold": threshold}
        for name, row in existing.items()
        if name in wanted
        for pos, chinese, threshold in [wanted[name]]
        if (row[1], row[2]) != (pos, chinese) or not np.isclose(row[3], threshold, atol=1e-6)
    ]
    updates += [
        {"b_id": row[0], "b_position": None, "b_chinese": row[2], "b_threshold": row[3]}
        for name, row in existing.items()
        if name not in wanted and row[1] is not None and row[4] == TagOrigin.BUILTIN.value
    ]
    if updates:
        session.execute(
            sa.update(_tags)
            .where(_tags.c.id == sa.bindparam("b_id"))
            .values(
                position=sa.bindparam("b_position"),
                chinese=sa.bindparam("b_chinese"),
                threshold=sa.bindparam("b_threshold"),
            ),
            updates,
        )
    current = load() if new_rows else existing
    return np.array([current[name][0] for name in english], dtype=np.int64)


def get_tag(session: Session, tag_id: int) -> Tag | None:
    """The tag row, or None."""
    return session.get(Tag, tag_id)


def list_tags(
    session: Session,
    model_name: str,
    *,
    prefix: str | None = None,
    origin: TagOrigin | str | None = None,
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
    visible: Any = None,
) -> list[Tag]:
    """Tags of a model, optionally those whose English (case-insensitive) or Chinese name starts
    with ``prefix``; ordered by English name (unique per model), after the English name
    ``after`` when given (keyset paging: a tag added meanwhile shifts no page). ``visible``:
    an SQL condition limiting them (a collection-limited key's view).

    Raises:
        ValueError: limit outside 1..10000 or negative offset.
    """
    if not 1 <= limit <= 10_000 or offset < 0:
        raise ValueError("limit must be in 1..10000 and offset >= 0")
    stmt = sa.select(Tag).where(Tag.model_name == model_name)
    if prefix:
        pattern = _escape_like(prefix) + "%"
        stmt = stmt.where(
            sa.or_(
                sa.func.lower(Tag.english).like(pattern.lower(), escape="\\"),
                Tag.chinese.like(pattern, escape="\\"),
            )
        )
    if origin is not None:
        stmt = stmt.where(Tag.origin == TagOrigin(origin).value)
    if after is not None:
        stmt = stmt.where(Tag.english > after)
    if visible is not None:
        stmt = stmt.where(visible)
    stmt = stmt.order_by(Tag.english).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def resolve_tags(
    session: Session, model_name: str, names: Sequence[str | int]
) -> dict[str | int, list[Tag]]:
    """Map tag names (English, case-insensitive, or Chinese) or tag ids to the model's tags.

    A Chinese name can match several tags (the built-in list repeats some Chinese names), so each
    key maps to a list.

    Raises:
        UnknownTagError: for names or ids matching no tag of the model.
    """
    result: dict[str | int, list[Tag]] = {}
    ids = [n for n in names if isinstance(n, int)]
    texts = [n for n in names if isinstance(n, str)]
    if ids:
        rows = session.scalars(sa.select(Tag).where(Tag.id.in_(ids), Tag.model_name == model_name))
        by_id = {t.id: t for t in rows}
        for i in ids:
            if i in by_id:
                result[i] = [by_id[i]]
    if texts:
        lowered = {t.strip().lower() for t in texts}
        stripped = {t.strip() for t in texts}
        stmt = sa.select(Tag).where(
            Tag.model_name == model_name,
            sa.or_(sa.func.lower(Tag.english).in_(lowered), Tag.chinese.in_(stripped)),
        )
        candidates = list(session.scalars(stmt))
        for text in texts:
            key = text.strip()
            lower = key.lower()
            matches = [t for t in candidates if t.english.lower() == lower or t.chinese == key]
            if matches:
                result[text] = sorted(matches, key=lambda t: t.id)
    unknown = [n for n in names if n not in result]
    if unknown:
        raise UnknownTagError(unknown, model_name)
    return result


def set_threshold_override(session: Session, tag_id: int, threshold: float | None) -> Tag:
    """Set (or clear with None) a tag's threshold override; takes effect at once for search.

    Raises:
        NotFoundError: no such tag.
        ValueError: threshold outside [0, 1].
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    tag = session.get(Tag, tag_id)
    if tag is None:
        raise NotFoundError(f"no tag with id {tag_id}")
    tag.threshold_override = threshold
    session.flush()
    return tag


def write_tag_scores(
    session: Session,
    tag_id: int,
    asset_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    score_floor: float | None = None,
) -> int:
    """Store one tag's scores for many assets (retroactive scoring of a promoted concept).

    Existing scores of this tag for these assets are replaced; scores below the floor are not
    stored (and any old row for them is removed).

    Returns:
        Rows inserted.

    Raises:
        ValueError: lengths differ or scores are not probabilities.
    """
    if score_floor is None:
        from indexer.settings import get_settings

        score_floor = get_settings().index.score_floor
    ids = np.asarray(asset_ids, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float32)
    if ids.shape != values.shape or ids.ndim != 1:
        raise ValueError(f"{ids.shape} asset ids but {values.shape} scores")
    if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 1)):
        raise ValueError("scores must be probabilities in [0, 1]")
    if session.get_bind().dialect.name == "postgresql":
        # Find this tag's existing rows with one primary-key probe per asset (in the tag's one
        # partition), then delete just those: a new concept has none (backfill 1 tag x 20k
        # assets at 2 M: 154 ms, docs/scale.md).
        existing: list[int] = []
        for part in chunks(ids.tolist(), 10_000):
            stmt, _ = per_asset_rows(session, part, ("asset_id",), lambda t: t.c.tag_id == tag_id)
            existing += [int(a) for (a,) in session.execute(stmt)]
        if existing:
            session.execute(
                sa.delete(_asset_tags).where(
                    _asset_tags.c.asset_id == sa.bindparam("b_asset"),
                    _asset_tags.c.tag_id == tag_id,
                ),
                [{"b_asset": a} for a in existing],
            )
    else:
        for part in chunks(ids.tolist()):
            session.execute(
                sa.delete(_asset_tags).where(
                    _asset_tags.c.tag_id == tag_id, _asset_tags.c.asset_id.in_(part)
                )
            )
    keep = values >= score_floor
    rows = [(a, tag_id, s) for a, s in zip(ids[keep].tolist(), values[keep].tolist(), strict=True)]
    bulk_insert(session, _asset_tags, ("asset_id", "tag_id", "score"), rows)
    return len(rows)


def get_asset_tags(
    session: Session, asset_id: int, *, include_below_threshold: bool = False
) -> list[ScoredTag]:
    """The stored tag scores of one asset, best first.

    By default only tags the model outputs (score strictly above the effective threshold, as
    RAM++ does); ``include_below_threshold`` adds every stored score (>= the score floor).
    """
    effective = sa.func.coalesce(Tag.threshold_override, Tag.threshold)
    stmt = (
        sa.select(Tag.id, Tag.english, Tag.chinese, AssetTag.score, effective)
        .join(AssetTag, AssetTag.tag_id == Tag.id)
        .where(AssetTag.asset_id == asset_id)
        .order_by(AssetTag.score.desc(), Tag.id)
    )
    if not include_below_threshold:
        stmt = stmt.where(AssetTag.score > effective)
    return [
        ScoredTag(int(i), en, zh, float(s), float(t), float(s) > float(t))
        for i, en, zh, s, t in session.execute(stmt)
    ]
