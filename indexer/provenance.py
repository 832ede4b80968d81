"""The tags of assets with where each comes from, read in one batch: the provenance view that
the review commands (indexer/review.py) and the exports (indexer/exports.py) show.

For each asset: every stored score of the model's tags and every label (indexer/db/labels.py),
one :class:`TagOnAsset` per name, with ``sources`` by THE rule of
:func:`indexer.db.tag_match.match_sources` (what makes the tag match a default search; empty
when it does not). Callers choose what to show: the review view keeps matching and labelled
tags, an export the matching tags of the sources it wants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.labels import AssetLabel, TagSource, label_key
from indexer.db.tag_match import match_sources
from indexer.db.tag_repo import per_asset_rows
from indexer.db.tags import Tag, TagOrigin


@dataclass
class TagOnAsset:
    """One tag (or free keyword) of one asset and where it comes from.

    Attributes:
        key: the label key (case-folded English tag name, or the keyword).
        name: the tag's English name, or the keyword as written.
        tag_id, chinese, threshold: the vocabulary tag's (None for a free keyword); threshold
            is the effective one (the override when set).
        score: the stored model score (None when none is stored).
        sources: what makes it match (``model``/``concept``, ``manual``, ``embedded``).
        review, manual, embedded: the asset's label for it.
        matches: whether a default tag search matches it (``sources`` is not empty).
    """

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

    @property
    def labelled(self) -> bool:
        """A person or the file said something about it."""
        return self.manual or self.embedded or self.review is not None

    @property
    def model_only(self) -> bool:
        """Only the model says so: no review, not manual, not embedded."""
        return self.review is None and set(self.sources) <= {"model", "concept"}

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the exports' CSV tag_details and JSON)."""
        return {
            "name": self.name, "key": self.key, "chinese": self.chinese, "tag_id": self.tag_id,
            "score": None if self.score is None else round(self.score, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "sources": self.sources, "review": self.review,
        }  # fmt: skip


def _score_source(tag: Tag) -> str:
    return (TagSource.CONCEPT if tag.origin == TagOrigin.CONCEPT.value else TagSource.MODEL).value


def tags_on_assets(
    session: Session, model_name: str, asset_ids: Sequence[int]
) -> dict[int, list[TagOnAsset]]:
    """Every stored score (of ``model_name``'s tags) and every label of each asset, unordered.

    Three statements whatever the number of assets: the scores (one primary-key probe per asset,
    asset_tags being hash-partitioned on PostgreSQL), the labels, and the tags they name.
    """
    ids = [int(a) for a in dict.fromkeys(asset_ids)]
    if not ids:
        return {}
    stmt, _ = per_asset_rows(session, ids, ("asset_id", "tag_id", "score"), lambda t: sa.true())
    scores = [(int(a), int(t), float(s)) for a, t, s in session.execute(stmt)]
    labels = list(session.scalars(sa.select(AssetLabel).where(AssetLabel.asset_id.in_(ids))))
    keys = {row.key for row in labels}
    tag_ids = {t for _, t, _ in scores}
    conditions = [Tag.id.in_(sorted(tag_ids))] if tag_ids else []
    if keys:  # labelled vocabulary tags the asset may have no stored score for
        conditions.append(sa.func.lower(Tag.english).in_(sorted(keys)))
    tags = (
        list(
            session.scalars(sa.select(Tag).where(Tag.model_name == model_name, sa.or_(*conditions)))
        )
        if conditions
        else []
    )
    by_id = {t.id: t for t in tags}
    by_key = {label_key(t.english): t for t in sorted(tags, key=lambda t: -t.id)}

    found: dict[int, dict[str, TagOnAsset]] = {a: {} for a in ids}

    def entry(asset_id: int, key: str, name: str, tag: Tag | None) -> TagOnAsset:
        views = found[asset_id]
        if key not in views:
            views[key] = TagOnAsset(key, tag.english if tag else name)
            if tag is not None:
                views[key].tag_id, views[key].chinese = tag.id, tag.chinese
                views[key].threshold = tag.effective_threshold
        return views[key]

    for asset_id, tag_id, score in scores:
        tag = by_id.get(tag_id)
        if tag is not None:  # another model's score: not this vocabulary
            entry(asset_id, label_key(tag.english), tag.english, tag).score = score
    for row in labels:
        view = entry(row.asset_id, row.key, row.label, by_key.get(row.key))
        view.review, view.manual, view.embedded = row.review, row.manual, row.embedded
    for views in found.values():
        for view in views.values():
            tag = by_key.get(view.key) if view.tag_id is not None else None
            above = (
                view.score is not None
                and view.threshold is not None
                and view.score > view.threshold
            )
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
    return {a: list(v.values()) for a, v in found.items()}
