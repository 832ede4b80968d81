"""What a search asks and what it answers, as plain data (no HTTP, no SQL).

A :class:`SearchRequest` combines its parts with AND: ``text`` (a free-text concept, scored by
RAM++'s open-set head over the stored image embeddings) or ``similar_to`` / ``image`` (image
similarity) rank; tag terms (``all``, ``any``, ``none``, English or Chinese names) filter, and
rank when nothing else does; ``mime`` and the creation range filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from indexer.search.errors import InvalidQueryError
from indexer.search.timing import Phases

Sort = Literal["relevance", "date"]
ReasonKind = Literal["tag", "concept", "similar"]

MAX_LIMIT = 200  # hits per page
MAX_ASSET_ID = 2**63 - 1  # assets.id is a BIGINT
MAX_TEXT = 500  # characters of a free-text concept
TAG_SOURCES = ("model", "concept", "manual", "embedded")  # indexer.db.labels.TagSource


@dataclass(frozen=True)
class QueryImage:
    """An image to search similar to: its unit-norm image embedding c and the sha256 of its
    bytes (ties cursors and cached rankings to it)."""

    vector: np.ndarray
    digest: str


@dataclass(frozen=True)
class SearchRequest:
    """One search (every part optional; an empty request lists done assets newest first).

    Attributes:
        text: free-text concept (retroactive search), e.g. ``"navy"`` or ``"a red kite"``.
        descriptions: how the concept looks ("navy, a dark deep blue colour"); RAM++ scores an
            open-set concept by its descriptions. Without them, prompt templates filled with
            ``text`` stand in (as a concept's backfill does).
        all: tags every hit must have.
        any: tags of which every hit must have at least one.
        none: tags no hit may have.
        similar_to: rank by image similarity to this asset (it is left out of the hits).
        image: rank by image similarity to this query image.
        min_score: a tag matches when its score is >= this, instead of above its threshold.
        sort: ``relevance`` (score, similarity or concept probability) or ``date`` (newest first).
        limit: hits per page, 1..200.
        cursor: ``next_cursor`` of the previous page of the same search.
        mime: media types (``image/png``) or prefixes (``image/*``).
        created_after, created_before: ``created_after <= created_at < created_before``.
        sources: which provenances of a tag count in tag terms (``model``, ``concept``,
            ``manual``, ``embedded``); empty: all (manual, embedded and accepted tags always
            match, rejected never; indexer/db/tag_match.py).
        narrower: tag terms also match the taxonomy's narrower concepts ("animal" finds
            dogs); synonyms always match.
        collection_ids: only assets of these collections (a collection-limited key's, or a
            search within collections); None: the whole archive. A filter like the others:
            planned by selectivity, so a small collection is scored exactly, never recalled
            from the whole archive and then filtered.

    Raises:
        InvalidQueryError: contradictory or out-of-range parts (text with a similar image, a
            limit outside 1..200, an empty date range...).
    """

    text: str | None = None
    descriptions: Sequence[str] = ()
    all: Sequence[str] = ()
    any: Sequence[str] = ()
    none: Sequence[str] = ()
    similar_to: int | None = None
    image: QueryImage | None = field(default=None, compare=False)
    min_score: float | None = None
    sort: Sort = "relevance"
    limit: int = 40
    cursor: str | None = None
    mime: Sequence[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    sources: Sequence[str] = ()
    narrower: bool = False
    collection_ids: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.collection_ids is not None:
            object.__setattr__(self, "collection_ids", frozenset(self.collection_ids))
        for name in ("descriptions", "all", "any", "none", "mime", "sources"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        text = self.text.strip() if self.text is not None else None
        object.__setattr__(self, "text", text or None)
        if self.text is not None and len(self.text) > MAX_TEXT:
            raise InvalidQueryError(f"text is limited to {MAX_TEXT} characters")
        if self.similar_to is not None and (
            isinstance(self.similar_to, bool)
            or not isinstance(self.similar_to, int)
            or not 1 <= self.similar_to <= MAX_ASSET_ID
        ):
            raise InvalidQueryError(f"similar_to must be an asset id in 1..{MAX_ASSET_ID}")
        if self.similar_to is not None and self.image is not None:
            raise InvalidQueryError("give either an asset or an image to search similar to")
        if self.descriptions and not self.text:
            raise InvalidQueryError("descriptions describe a text concept: give the text too")
        if self.text and self.similar:
            raise InvalidQueryError("give either text or a similar image, not both")
        if self.min_score is not None and not (
            math.isfinite(self.min_score) and 0.0 <= self.min_score <= 1.0
        ):
            raise InvalidQueryError(f"min_score must be in [0, 1], not {self.min_score}")
        unknown = sorted(set(self.sources) - set(TAG_SOURCES))
        if unknown:
            raise InvalidQueryError(
                f"unknown tag source {', '.join(map(repr, unknown))}: use {', '.join(TAG_SOURCES)}"
            )
        if self.sort not in ("relevance", "date"):
            raise InvalidQueryError(f"sort must be 'relevance' or 'date', not {self.sort!r}")
        if isinstance(self.limit, bool) or not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidQueryError(f"limit must be in 1..{MAX_LIMIT}, not {self.limit}")
        if (
            self.created_after is not None
            and self.created_before is not None
            and self.created_after >= self.created_before
        ):
            raise InvalidQueryError("created_after must be before created_before")

    @property
    def similar(self) -> bool:
        """Whether the search ranks by image similarity."""
        return self.similar_to is not None or self.image is not None

    @property
    def filtering(self) -> bool:
        """Whether anything besides the ranking narrows the assets (tags, type, date or
        collections)."""
        return bool(
            self.tags
            or self.mime
            or self.created_after
            or self.created_before
            or self.collection_ids is not None
        )

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag name the request uses."""
        return (*self.all, *self.any, *self.none)


@dataclass(frozen=True)
class Reason:
    """Why an asset matched: a tag and its score, the concept's probability, or similarity.

    Attributes:
        kind: ``tag``, ``concept`` or ``similar``.
        name: the tag's English name, the concept's name, or what the asset is similar to.
        name_zh: the tag's Chinese name (tags only, when it has one).
        score: the tag score, concept probability or cosine similarity.
        above_threshold: concept reasons: whether the probability passes the concept's
            calibrated threshold.
        sources: tag reasons: what made the tag match (model, concept, manual, embedded).
        review: tag reasons: ``accepted`` or ``rejected`` when a curator decided.
        expanded_from: tag reasons: the query term the taxonomy expanded to this tag (a
            synonym or a narrower concept), when it is not the tag itself.
    """

    kind: ReasonKind
    name: str
    score: float
    name_zh: str | None = None
    above_threshold: bool | None = None
    sources: tuple[str, ...] = ()
    review: str | None = None
    expanded_from: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """One asset in a page of results.

    Attributes:
        asset_id: the asset.
        score: its ranking score (None when only filters apply).
        reasons: why it matched, the ranking reason first.
        source: where it was first seen (a file path or URL; None if it has no source).
        status, mime, width, height, created_at: facts about the asset (for listings).
        frames: for a video or animation, the moments that matched, best first
            (:class:`indexer.search.frames.FrameHit`: ``timestamp_s``, ``score``).
    """

    asset_id: int
    score: float | None
    reasons: tuple[Reason, ...]
    source: str | None
    status: str
    mime: str | None
    width: int | None
    height: int | None
    created_at: datetime
    frames: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SearchPage:
    """One page of results.

    Attributes:
        hits: the page, in order.
        next_cursor: pass it as ``cursor`` for the next page (None on the last page).
        model_id: the model whose scores and embeddings answered.
        pending_reindex: assets scored by another model, not searchable until re-indexed.
        concept_threshold: the free-text concept's calibrated threshold (concept searches).
        timings: where the time went (:class:`~indexer.search.timing.Phases`: seconds per
            phase, and whether the ranking was built or cached).
    """

    hits: list[SearchHit]
    next_cursor: str | None
    model_id: str
    pending_reindex: int = 0
    concept_threshold: float | None = None
    timings: Phases = field(default_factory=Phases, compare=False, repr=False)
