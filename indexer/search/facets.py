"""A search's summary for browsing: how many assets it finds and the most frequent tags among them.

The web UI shows "N results" and facets (tags with counts, clickable to refine). Both come from the
search itself, run page after page through :class:`~indexer.search.SearchService` (so whatever
limits a search obeys, these obey too) up to ``scan`` assets; past that the count is a lower
bound (``exact`` false) and the facets describe the best ``scan`` results. A tag counts for an
asset when a default tag search would match it there (:mod:`indexer.provenance`: a score above
the threshold unless rejected, a manual, embedded or accepted label).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from indexer.db.collection_scope import CollectionScope
from indexer.provenance import tags_on_assets
from indexer.search.request import MAX_LIMIT, SearchRequest
from indexer.search.service import SearchService

DEFAULT_SCAN = 2000  # assets a summary reads at most (10 pages of 200)
MAX_SCAN = 10_000


@dataclass(frozen=True)
class Facet:
    """A tag (or free keyword) and on how many of the summarised results it matches."""

    name: str
    name_zh: str | None
    tag_id: int | None
    count: int


@dataclass(frozen=True)
class SearchSummary:
    """What a search finds, in numbers.

    Attributes:
        total: results found (all of them when ``exact``, else at least this many).
        exact: every result was read (the search has no more than ``scan`` results).
        facets: the most frequent tags among the results read, most frequent first.
        model_id: the model whose scores answered.
    """

    total: int
    exact: bool
    facets: list[Facet]
    model_id: str


def summarize(
    service: SearchService,
    req: SearchRequest,
    session: Session,
    *,
    top: int = 12,
    scan: int = DEFAULT_SCAN,
) -> SearchSummary:
    """Count ``req``'s results (up to ``scan``) and their ``top`` most frequent tags.

    ``req``'s own ``limit`` and ``cursor`` are ignored: the summary starts at the first result.

    Raises:
        The search's errors (unknown tags, bad queries, missing assets), as
        :meth:`SearchService.search` raises them.
    """
    scan = max(1, min(scan, MAX_SCAN))
    ids: list[int] = []
    cursor: str | None = None
    model_id = ""
    while len(ids) < scan:
        page = service.search(
            replace(req, limit=min(MAX_LIMIT, scan - len(ids)), cursor=cursor), session=session
        )
        model_id = page.model_id
        ids.extend(h.asset_id for h in page.hits)
        cursor = page.next_cursor
        if cursor is None:
            break
    counts: Counter[str] = Counter()
    first: dict[str, Facet] = {}
    # Tags made from the concepts of collections the search does not reach are not counted.
    hidden = CollectionScope(req.collection_ids).hidden_tag_ids(session)
    for views in tags_on_assets(session, model_id, ids).values():
        for view in views:
            if not view.matches or view.tag_id in hidden:
                continue
            counts[view.key] += 1
            first.setdefault(view.key, Facet(view.name, view.chinese, view.tag_id, 0))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], first[kv[0]].name.casefold()))
    facets = [replace(first[key], count=n) for key, n in ranked[: max(0, top)]]
    return SearchSummary(len(ids), cursor is None, facets, model_id)
