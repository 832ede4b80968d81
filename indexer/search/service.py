"""The search service: tag filters, free-text concepts and similar images, ranked and paged one
way for every caller (the API translates HTTP to it, ``ramdex search`` the command line).

- Tags only: the storage layer's boolean tag search (keyset pages, ranked by tag score, or every
  match newest first with ``sort="date"``).
- Free text: scored as an open-set concept over the stored token embeddings; the concept's
  calibrated threshold comes with the page and each hit says whether it passes it.
- Similar: FAISS over the stored image embeddings, by cosine similarity.

Concept and similar searches recall at most :data:`~indexer.search.rankings.RECALL` assets by
relevance; with tag, type or date filters that recall is planned by the filter's selectivity
(:mod:`indexer.search.filtered`: the passing set scored directly when small, the vector index
searched with an id selector or widening when large), never "recall, then filter", so a rare
filter still fills its pages; ``sort="date"`` orders the recalled assets newest first. Pages of
such lists use offset cursors tied to the query, and the ranked list is cached for a minute so
that paging does not score again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.assets import Asset, AssetSource, AssetStatus
from indexer.db.collection_scope import CollectionScope
from indexer.db.concept_repo import find_concept
from indexer.db.query_terms import resolve_terms

# The storage layer's tag-term SQL is reused so that filters here mean exactly what tag search
# means: thresholds, min_score, mime prefixes, half-open date range.
from indexer.db.search import MatchedTag, asset_filters, matched_tags, search_by_tags
from indexer.db.tag_match import TagMatch, TermTag, has_tag_term, tag_match
from indexer.search.cursors import decode_offset, encode_offset, is_offset_cursor, query_digest
from indexer.search.errors import AssetNotFoundError, InvalidCursorError
from indexer.search.filtered import (
    FilteredCandidates,
    SqlFilter,
    database_reader,
    similar_filtered,
)
from indexer.search.frames import FrameHit, fold_frames, tag_frames
from indexer.search.rankings import (
    RECALL,
    Ranked,
    asset_vector,
    concept_ranking,
    query_image,
    similar_ranking,
)
from indexer.search.request import QueryImage, Reason, SearchHit, SearchPage, SearchRequest
from indexer.search.timing import DB, FILTER, ROWS, Phases

if TYPE_CHECKING:
    from indexer.archive import Archive
    from ram_pp.preprocess import DecodeOptions


@dataclass
class _Terms:
    """The request's tag names resolved to the model's tags."""

    all_terms: list[list[TermTag]]
    any_tags: list[TermTag]
    none_tags: list[TermTag]
    match: TagMatch

    @property
    def positive(self) -> list[TermTag]:
        return [t for term in self.all_terms for t in term] + self.any_tags


class SearchService:
    """Searches one archive.

    Args:
        archive: the archive (database, model, token store, vector index, caches).
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def search(
        self, req: SearchRequest, session: Session | None = None, phases: Phases | None = None
    ) -> SearchPage:
        """One page of results (blocking: the model may run).

        Args:
            req: the search.
            session: a database session to use (default: one of the archive's, for this call).
            phases: where to record the time of each phase (the page's ``timings`` come from
                it; default: a new one).

        Raises:
            UnknownTagError: a tag name matches no tag of the model (``names`` lists them).
            InvalidCursorError: a cursor that is malformed or of another query
                (:class:`CursorOutOfRangeError`: well-formed but out of range).
            InvalidQueryError: the text makes no concept.
            AssetNotFoundError, NotIndexedError: ``similar_to`` names no usable asset.
            ModelNotAvailableError, TextEncoderNotAvailableError: the model cannot run here.
        """
        phases = phases if phases is not None else Phases()
        with self._session(session) as db:
            return self._search(db, req, phases)

    def query_image(self, data: bytes, options: DecodeOptions | None = None) -> QueryImage:
        """Encode a query image for ``SearchRequest(image=...)`` (see
        :func:`indexer.search.rankings.query_image`)."""
        return query_image(self.archive, data, options)

    @contextmanager
    def _session(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session
            return
        with self.archive.sessions() as own:
            yield own

    def _search(self, session: Session, req: SearchRequest, phases: Phases) -> SearchPage:
        archive = self.archive
        with phases.phase(DB):
            model_id = archive.model_id()
            pending = archive.pending_reindex(session, model_id)
            if pending and req.collection_ids is not None:  # the collections' share only
                pending = _pending_in(session, model_id, _scope(req))

        if not req.text and not req.similar:  # the storage layer resolves the tag names itself
            with phases.phase(ROWS):
                hits, next_cursor = self._tag_page(session, model_id, req)
            return SearchPage(hits, next_cursor, model_id, pending, timings=phases)

        if req.similar_to is not None and not _scope(req).sees_asset(session, req.similar_to):
            raise AssetNotFoundError(f"asset {req.similar_to} does not exist")
        with phases.phase(DB):
            terms = _resolve(session, model_id, req)
        filtering = req.filtering
        ranked = self._ranking(session, model_id, req, phases, terms if filtering else None)
        with phases.phase(DB):
            ranked, frames = _fold(session, ranked, req)
        if filtering:
            with phases.phase(FILTER):
                ranked = _filter(session, ranked, terms, req)
        image_digest = req.image.digest if req.image is not None else ""
        collections = "" if req.collection_ids is None else ",".join(map(str, _scope(req).ids))
        digest = query_digest(req, f"{model_id}|{image_digest}|{collections}")
        with phases.phase(ROWS):
            hits, next_cursor = _ranked_page(session, ranked, terms, req, digest, frames)
        threshold = ranked.threshold if ranked.kind == "concept" else None
        return SearchPage(hits, next_cursor, model_id, pending, threshold, timings=phases)

    def _ranking(
        self,
        session: Session,
        model_id: str,
        req: SearchRequest,
        phases: Phases,
        terms: _Terms | None = None,
    ) -> Ranked:
        """The request's relevance ranking, from the cache when it was built a moment ago
        (``phases.notes["ranking"]`` says which: ``built`` or ``cached``); restricted to the
        filters when ``terms`` is given (planned by selectivity, ``phases.notes["plan"]``)."""
        archive = self.archive
        cache = archive.cache("rankings")
        phases.notes["ranking"] = "cached"
        allowed = SqlFilter(session, _conditions(terms, req)) if terms is not None else None
        scope = "" if terms is None else "|filtered|" + repr(_filter_key(req))

        def built(build: Callable[[], Ranked]) -> Callable[[], Ranked]:
            def run() -> Ranked:
                phases.notes["ranking"] = "built"
                return build()

            return run

        if req.text:
            text, described = req.text, tuple(req.descriptions)
            if not described:  # a stored concept (imported, or made by the API) has its own
                with phases.phase(DB):
                    stored = find_concept(
                        session, model_id, text, visible=_scope(req).concept_condition()
                    )
                described = tuple(stored.descriptions or ()) if stored is not None else ()
            candidates = None
            if allowed is not None:
                index = archive.vector_index()
                reader = database_reader(session, index.model_name or model_id)
                candidates = FilteredCandidates(index, allowed, reader)
            return cache.get_or_build(
                "|".join(("concept", model_id, text, *described)) + scope,
                built(lambda: concept_ranking(archive, text, described, phases, candidates)),
            )
        if req.image is not None:
            image = req.image
            if allowed is not None:
                return cache.get_or_build(
                    f"image|{model_id}|{image.digest}{scope}",
                    built(
                        lambda: Ranked(
                            *similar_filtered(
                                archive, session, image.vector, allowed, RECALL, phases=phases
                            ),
                            "similar",
                            "query image",
                        )
                    ),
                )
            return cache.get_or_build(
                f"image|{model_id}|{image.digest}",
                built(
                    lambda: similar_ranking(
                        archive, image.vector, "query image", phases=phases, session=session
                    )
                ),
            )
        target = int(req.similar_to)  # type: ignore[arg-type]
        with phases.phase(DB):
            vector = asset_vector(session, target)
        if allowed is not None:
            return cache.get_or_build(
                f"asset|{model_id}|{target}{scope}",
                built(
                    lambda: Ranked(
                        *similar_filtered(
                            archive, session, vector, allowed, RECALL, target, phases
                        ),
                        "similar",
                        f"asset {target}",
                    )
                ),
            )
        return cache.get_or_build(
            f"asset|{model_id}|{target}",
            built(
                lambda: similar_ranking(
                    archive,
                    vector,
                    f"asset {target}",
                    exclude=target,
                    phases=phases,
                    session=session,
                )
            ),
        )

    def _tag_page(
        self, session: Session, model_id: str, req: SearchRequest
    ) -> tuple[list[SearchHit], str | None]:
        if req.cursor and is_offset_cursor(req.cursor):
            raise InvalidCursorError("the cursor belongs to another query")
        page = search_by_tags(
            session,
            model_name=model_id,
            all_=req.all,
            any_=req.any,
            none=req.none,
            min_score=req.min_score,
            mime=req.mime or None,
            since=req.created_after,
            until=req.created_before,
            limit=req.limit,
            cursor=req.cursor,
            order="date" if req.sort == "date" else "score",
            sources=req.sources or None,
            narrower=req.narrower,
            scope=_scope(req),
        )
        facts = asset_facts(session, [h.asset_id for h in page.hits])
        multi = [h.asset_id for h in page.hits if h.asset_id in facts and facts[h.asset_id].kind]
        tag_ids = sorted({t.tag_id for h in page.hits for t in h.tags if "model" in t.sources})
        moments = tag_frames(session, multi, tag_ids) if multi else {}
        hits = [
            _hit(facts[h.asset_id], h.score, _tag_reasons(h.tags), moments.get(h.asset_id, ()))
            for h in page.hits
            if h.asset_id in facts  # deleted meanwhile
        ]
        return hits, page.next_cursor


def asset_facts(session: Session, ids: Sequence[int]) -> dict[int, Any]:
    """Status, type, size, creation time and first source of assets (no thumbnails or
    embeddings loaded), by id; missing ids are left out."""
    if not ids:
        return {}
    first_source = (
        sa.select(AssetSource.uri)
        .where(AssetSource.asset_id == Asset.id)
        .order_by(AssetSource.id)
        .limit(1)
        .scalar_subquery()
    )
    cols = (
        Asset.id,
        Asset.status,
        Asset.mime,
        Asset.width,
        Asset.height,
        Asset.created_at,
        Asset.kind,
    )
    rows = session.execute(
        sa.select(*cols, first_source.label("source")).where(Asset.id.in_(list(ids)))
    )
    return {int(r.id): r for r in rows}


def _hit(
    row: Any, score: float | None, reasons: Sequence[Reason], frames: Sequence[FrameHit] = ()
) -> SearchHit:
    return SearchHit(
        asset_id=int(row.id),
        score=score,
        reasons=tuple(reasons),
        source=row.source,
        status=row.status,
        mime=row.mime,
        width=row.width,
        height=row.height,
        created_at=row.created_at,
        frames=tuple(frames),
    )


def _fold(
    session: Session, ranked: Ranked, req: SearchRequest
) -> tuple[Ranked, dict[int, tuple[FrameHit, ...]]]:
    """The ranking over assets: frame keys mapped to their video (best position kept), the
    query asset's own frames left out, the frames that ranked kept for the hits."""
    ids, scores, frames = fold_frames(
        session,
        ranked.ids,
        ranked.scores,
        exclude=int(req.similar_to) if req.similar_to is not None else None,
        min_score=ranked.threshold if ranked.kind == "concept" else None,
    )
    if len(ids) == len(ranked.ids) and not frames:
        return ranked, {}
    return Ranked(ids, scores, ranked.kind, ranked.name, ranked.threshold), frames


def _pending_in(session: Session, model_id: str, scope: CollectionScope) -> int:
    """Done assets of the scope scored by another model (the archive's count would tell a
    collection-limited key how many assets other collections hold)."""
    table = Asset.__table__.c
    stmt = sa.select(sa.func.count()).where(
        table.status == AssetStatus.DONE.value,
        table.model_name != model_id,
        *scope.asset_conditions(table.id),
    )
    return int(session.execute(stmt).scalar_one())


def _scope(req: SearchRequest) -> CollectionScope:
    """The collections a request is limited to, as a scope (unrestricted without)."""
    return CollectionScope(req.collection_ids)


def _resolve(session: Session, model_id: str, req: SearchRequest) -> _Terms:
    names = list(req.tags)
    terms = (
        resolve_terms(session, model_id, names, narrower=req.narrower, scope=_scope(req))
        if names
        else {}
    )
    all_terms = [terms[n].tags for n in req.all]
    any_tags = [t for n in req.any for t in terms[n].tags]
    none_tags = [t for n in req.none for t in terms[n].tags]
    everything = [t for term in all_terms for t in term] + any_tags + none_tags
    match = tag_match(
        session,
        everything,
        min_score=req.min_score,
        sources=req.sources or None,
        expanded_from={k: v for t in terms.values() for k, v in t.expanded_from.items()},
    )
    return _Terms(all_terms, any_tags, none_tags, match)


def _filter(session: Session, ranked: Ranked, terms: _Terms, req: SearchRequest) -> Ranked:
    """Keep the ranked assets that pass the tag, type and date filters (order kept).

    Without filters the list is kept as it is: it comes from the index of done assets, and
    assets deleted since are dropped when the page is read.
    """
    if not req.filtering:
        return ranked
    ids = Asset.__table__.c.id
    conditions = _conditions(terms, req)
    conditions.append(Asset.__table__.c.status == AssetStatus.DONE.value)
    stmt = sa.select(ids).where(ids.in_(ranked.ids.tolist()), *conditions)
    allowed = np.fromiter((int(i) for i in session.execute(stmt).scalars()), np.int64)
    return ranked.keep(np.isin(ranked.ids, allowed))


def _conditions(terms: _Terms, req: SearchRequest) -> list[Any]:
    """The request's tag, type and date filters as SQL conditions on ``assets``."""
    ids = Asset.__table__.c.id
    conditions: list[Any] = asset_filters(req.mime or None, req.created_after, req.created_before)
    conditions += _scope(req).asset_conditions(ids)
    for term in terms.all_terms:
        conditions.append(has_tag_term(ids, term, terms.match))
    if terms.any_tags:
        conditions.append(has_tag_term(ids, terms.any_tags, terms.match))
    if terms.none_tags:
        conditions.append(~has_tag_term(ids, terms.none_tags, terms.match))
    return conditions


def _filter_key(req: SearchRequest) -> tuple[Any, ...]:
    """What a filtered ranking depends on besides its query (its cache key's other part)."""
    return (
        req.all,
        req.any,
        req.none,
        req.min_score,
        req.mime,
        req.created_after,
        req.created_before,
        req.sources,
        req.narrower,
        None if req.collection_ids is None else tuple(sorted(req.collection_ids)),
    )


def _by_date(session: Session, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` ordered newest first (ties: higher id first); ids deleted since
    the ranking was built go last."""
    if not len(ids):
        return np.zeros(0, np.int64)
    created = dict(
        session.execute(
            sa.select(Asset.id, Asset.created_at).where(Asset.id.in_(ids.tolist()))
        ).all()
    )
    present = [i for i in range(len(ids)) if int(ids[i]) in created]
    gone = [i for i in range(len(ids)) if int(ids[i]) not in created]
    present.sort(key=lambda i: (created[int(ids[i])], int(ids[i])), reverse=True)
    return np.array(present + gone, dtype=np.int64)


def _tag_reasons(matched: Sequence[MatchedTag]) -> list[Reason]:
    return [
        Reason(
            "tag",
            m.english,
            m.score,
            name_zh=m.chinese,
            sources=m.sources,
            review=m.review,
            expanded_from=m.expanded_from,
        )
        for m in matched
    ]


def _ranked_page(
    session: Session,
    ranked: Ranked,
    terms: _Terms,
    req: SearchRequest,
    digest: str,
    frames: dict[int, tuple[FrameHit, ...]] | None = None,
) -> tuple[list[SearchHit], str | None]:
    order = _by_date(session, ranked.ids) if req.sort == "date" else np.arange(len(ranked.ids))
    offset = decode_offset(req.cursor, digest, RECALL) if req.cursor else 0
    chosen = order[offset : offset + req.limit]
    ids = [int(ranked.ids[i]) for i in chosen]
    facts = asset_facts(session, ids)
    matched = matched_tags(session, ids, terms.positive, terms.match)
    hits = []
    for i in chosen:
        asset_id, score = int(ranked.ids[i]), float(ranked.scores[i])
        if asset_id not in facts:
            continue  # deleted since the ranking was cached
        threshold = ranked.threshold
        reason = Reason(
            ranked.kind,  # type: ignore[arg-type]
            ranked.name,
            score,
            above_threshold=None if threshold is None else score > threshold,
        )
        tags = _tag_reasons(matched.get(asset_id, ()))
        moments = (frames or {}).get(asset_id, ())
        hits.append(_hit(facts[asset_id], score, [reason, *tags], moments))
    end = offset + req.limit
    return hits, encode_offset(end, digest) if end < len(order) else None
