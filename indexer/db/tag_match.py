"""What "the asset has tag T" means in every search: model scores and people's labels together.

A tag term matches an asset (issue 13, docs/review.md) when

- a label (``asset_labels``, keyed by the tag's name) says ``manual`` or ``review =
  accepted``, or ``embedded`` (a keyword of the file) and not ``review = rejected``; or
- the asset's stored score for T is above T's effective threshold (or ``>= min_score``) and
  no label says ``review = rejected``.

A person's word wins: a manual tag over a rejection, a rejection over the model and the file.

``sources`` narrows that to some provenances: ``model`` (built-in tags' scores), ``concept``
(promoted concepts' scores), ``manual``, ``embedded``; an ``accepted`` review counts for the
score sources.

Archives mostly carry no labels for a query's tags, and then the SQL is exactly the score-only
term (same plans, partitions pruned): :func:`tag_match` probes once per search which of the
query's names carry any label and only those get the label conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import table_of
from indexer.db.base import Real
from indexer.db.labels import AssetLabel, Review, TagSource, label_key
from indexer.db.tags import AssetTag, Tag, TagOrigin

ALL_SOURCES = frozenset(TagSource)
LABEL_SCORE = 1.0  # what a label-only match ranks and reports as: a person or the file said so
_asset_tags = table_of(AssetTag)
_labels = table_of(AssetLabel)


@dataclass(frozen=True)
class FreeKeyword:
    """A query name outside the model's vocabulary (a manual tag or a file's keyword): it
    matches labels only. Shaped like a :class:`Tag` where a term's tags are read; ``id`` is
    negative and unique within one search."""

    id: int
    english: str
    chinese: str | None = None
    origin: str = "keyword"
    effective_threshold: float = 1.0


TermTag = Tag | FreeKeyword  # what a search term's tags are


@dataclass(frozen=True)
class TagMatch:
    """How one search matches tags.

    Attributes:
        min_score: match scores ``>= min_score`` instead of above each tag's threshold.
        sources: which provenances count (default all).
        labelled: the query's tag keys that carry at least one label (probed by
            :func:`tag_match`); other keys get the score-only condition.
        expanded_from: key -> query name, for tags the taxonomy added to a term (a hit's
            reason says "car" for "automobile").
    """

    min_score: float | None = None
    sources: frozenset[TagSource] = ALL_SOURCES
    labelled: frozenset[str] = frozenset()
    expanded_from: Mapping[str, str] = field(default_factory=dict)

    def uses_score(self, tag: TermTag) -> bool:
        """Whether ``tag``'s stored scores count under these sources (a free keyword has none)."""
        if tag.origin == TagOrigin.CONCEPT.value:
            return TagSource.CONCEPT in self.sources
        return tag.origin == TagOrigin.BUILTIN.value and TagSource.MODEL in self.sources

    def label_flags(self, alias: Any) -> list[sa.ColumnElement[bool]]:
        """The label columns that make a positive match under these sources."""
        flags: list[sa.ColumnElement[bool]] = []
        if TagSource.MANUAL in self.sources:
            flags.append(alias.c.manual.is_(True))
        if TagSource.EMBEDDED in self.sources:  # a file's keyword, unless a person rejected it
            flags.append(
                sa.and_(
                    alias.c.embedded.is_(True),
                    sa.or_(alias.c.review.is_(None), alias.c.review != Review.REJECTED.value),
                )
            )
        if self.sources & {TagSource.MODEL, TagSource.CONCEPT}:
            flags.append(alias.c.review == Review.ACCEPTED.value)
        return flags


def match_sources(
    *,
    score_source: str | None,
    above: bool,
    manual: bool = False,
    embedded: bool = False,
    review: str | None = None,
) -> tuple[str, ...]:
    """The rule above in Python, for views that read the rows (the review view, exports, a
    hit's reasons): the sources that make one tag match on one asset, empty when it does not.

    Args:
        score_source: ``model`` or ``concept`` for a vocabulary tag (None: a free keyword).
        above: its stored score passes the threshold (or ``min_score``).
        manual, embedded, review: the asset's label for the tag.
    """
    sources: list[str] = []
    if score_source and review != Review.REJECTED.value:
        if above or review == Review.ACCEPTED.value:
            sources.append(score_source)
    if manual:
        sources.append(TagSource.MANUAL.value)
    if embedded and review != Review.REJECTED.value:
        sources.append(TagSource.EMBEDDED.value)
    return tuple(sources)


def score_source(tag: TermTag) -> str | None:
    """``model`` or ``concept`` by the tag's origin; None for a free keyword."""
    if tag.origin == TagOrigin.CONCEPT.value:
        return TagSource.CONCEPT.value
    return TagSource.MODEL.value if tag.origin == TagOrigin.BUILTIN.value else None


def tag_key(tag: TermTag) -> str:
    """The label key of a vocabulary tag (its English name, case-folded)."""
    return label_key(tag.english)


def labelled_keys(session: Session, keys: Iterable[str]) -> frozenset[str]:
    """Which of ``keys`` carry at least one label: one index probe per key, in one statement."""
    wanted = sorted(set(keys))
    if not wanted:
        return frozenset()
    probes = [
        sa.select(sa.literal(k, sa.String()).label("k")).where(
            sa.exists().where(_labels.c.key == k)
        )
        for k in wanted
    ]
    stmt = probes[0] if len(probes) == 1 else sa.union_all(*probes)
    return frozenset(str(k) for k in session.execute(stmt).scalars())


def tag_match(
    session: Session,
    tags: Iterable[TermTag],
    *,
    min_score: float | None = None,
    sources: Iterable[str] | None = None,
    expanded_from: Mapping[str, str] | None = None,
) -> TagMatch:
    """The :class:`TagMatch` of a search over ``tags`` (every tag of the query, negative
    terms included).

    Raises:
        ValueError: an unknown source name.
    """
    chosen = ALL_SOURCES if sources is None else frozenset(TagSource(s) for s in sources)
    if not chosen:
        raise ValueError("sources must name at least one of " + ", ".join(TagSource))
    labelled = labelled_keys(session, (tag_key(t) for t in tags))
    return TagMatch(min_score, chosen, labelled, dict(expanded_from or {}))


def real(value: float) -> sa.ColumnElement[float]:
    """A bound float compared as a 4-byte REAL, like the stored scores and thresholds.

    Without the cast PostgreSQL compares in double precision, where a REAL read back as its
    shortest decimal text no longer equals itself (keyset paging would repeat rows, and a score
    equal to its threshold would pass the strict ``>``).
    """
    return sa.cast(sa.literal(float(value), sa.Float()), Real)


def not_rejected(asset_id: Any, key: str) -> sa.ColumnElement[bool]:
    """No label rejects the tag named ``key`` on the asset."""
    probe = _labels.alias()
    return ~sa.exists().where(
        probe.c.asset_id == asset_id, probe.c.key == key, probe.c.review == Review.REJECTED.value
    )


def score_term(alias: Any, tags: Sequence[TermTag], match: TagMatch) -> sa.ColumnElement[bool]:
    """``alias`` (an ``asset_tags`` row) is a matching score of one of ``tags``."""
    parts = []
    for t in tags:
        if not match.uses_score(t):
            continue
        bound = (
            alias.c.score >= real(match.min_score)
            if match.min_score is not None
            else alias.c.score > real(t.effective_threshold)
        )
        part = sa.and_(alias.c.tag_id == t.id, bound)
        if tag_key(t) in match.labelled:
            part = sa.and_(part, not_rejected(alias.c.asset_id, tag_key(t)))
        parts.append(part)
    return sa.or_(*parts) if parts else sa.false()


def label_keys(tags: Sequence[TermTag], match: TagMatch) -> list[str]:
    """The keys of ``tags`` whose labels can match (labelled ones, with a source that counts)."""
    keys = {tag_key(t) for t in tags} & match.labelled
    return sorted(keys) if keys and match.label_flags(_labels) else []


def label_term(alias: Any, keys: Sequence[str], match: TagMatch) -> sa.ColumnElement[bool]:
    """``alias`` (an ``asset_labels`` row) is a positive label of one of ``keys``."""
    return sa.and_(alias.c.key.in_(list(keys)), sa.or_(*match.label_flags(alias)))


def has_tag_term(asset_id_col: Any, tags: Sequence[TermTag], match: TagMatch) -> Any:
    """SQL condition: the asset has one of ``tags`` (by score or by label, as above); the
    meaning of a tag term in every search."""
    probe = _asset_tags.alias()
    keys = label_keys(tags, match)
    if not keys:
        return sa.exists().where(probe.c.asset_id == asset_id_col, score_term(probe, tags, match))
    label = _labels.alias()
    # One EXISTS over a UNION ALL, not EXISTS OR EXISTS: PostgreSQL plans the OR as two hashed
    # subplans that read every asset having the tag (48k rows: 16 -> 94 ms for two tags at
    # 200k assets, benchmarks/bench_labels.py); the union stays a per-asset probe of two
    # primary-key/index lookups that stops at the first row.
    scored = (
        sa.select(sa.literal(1))
        .select_from(probe)
        .where(probe.c.asset_id == asset_id_col, score_term(probe, tags, match))
        .correlate_except(probe)
    )
    labelled = (
        sa.select(sa.literal(1))
        .select_from(label)
        .where(label.c.asset_id == asset_id_col, label_term(label, keys, match))
        .correlate_except(label)
    )
    return sa.union_all(scored, labelled).exists()
