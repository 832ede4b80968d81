"""HTTP <-> the search service: the API's search request (pydantic, the HTTP contract) becomes an
:class:`indexer.search.SearchRequest`, the service's page becomes a :class:`SearchPageOut`.

What search means (tag filters, concepts, similar images, ranking, paging) lives in
:mod:`indexer.search`; its errors are answered as problem documents by ``api.services``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.model_info import model_name
from api.problems import ProblemError
from api.schemas import (
    AssetSummary,
    FrameOut,
    Reason,
    SearchHitOut,
    SearchPageOut,
    SearchRequest,
)
from api.services import Services
from indexer.db.assets import Asset
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.search import QueryImage, SearchHit, SearchService
from indexer.search import SearchRequest as Query
from indexer.search.timing import Phases

PAGE = "page"  # Server-Timing phase: the service's page turned into the API's


def thumbnail_url(asset_id: int) -> str:
    """Where the web UI and clients fetch an asset's thumbnail."""
    return f"/assets/{asset_id}/thumbnail"


def asset_summaries(session: Session, ids: Sequence[int]) -> dict[int, AssetSummary]:
    """Grid views of assets, without loading thumbnails or embeddings."""
    if not ids:
        return {}
    cols = (Asset.id, Asset.status, Asset.mime, Asset.width, Asset.height, Asset.created_at)
    rows = session.execute(sa.select(*cols).where(Asset.id.in_(list(ids))))
    return {
        int(r.id): AssetSummary(
            id=int(r.id),
            status=r.status,
            mime=r.mime,
            width=r.width,
            height=r.height,
            created_at=r.created_at,
            thumbnail_url=thumbnail_url(int(r.id)),
        )
        for r in rows
    }


def search_collections(req: SearchRequest, scope: CollectionScope) -> frozenset[int] | None:
    """The collections a search is limited to: those asked (each must be one the key sees),
    else the key's own (None: the whole archive, for an unrestricted key asking none).

    Raises:
        ProblemError: 404 for a collection the key does not see.
    """
    if not req.collection:
        return scope.collection_ids
    for collection_id in req.collection:
        if not scope.sees_collection(collection_id):
            raise ProblemError(404, f"collection {collection_id} does not exist", kind="not-found")
    return frozenset(req.collection)


def to_query(
    req: SearchRequest, image: QueryImage | None = None, scope: CollectionScope = EVERYTHING
) -> Query:
    """The service's request for an HTTP search request (and an uploaded query image), limited
    to what ``scope`` (the calling key) sees.

    Raises:
        InvalidQueryError: contradictory parts (text with a similar image, an empty date range).
    """
    return Query(
        text=req.text,
        descriptions=req.descriptions,
        all=req.all,
        any=req.any,
        none=req.none,
        similar_to=req.similar_to,
        image=image,
        min_score=req.min_score,
        sources=req.sources,
        narrower=req.narrower,
        sort=req.sort,
        limit=req.limit,
        cursor=req.cursor,
        mime=req.mime,
        created_after=req.created_after,
        created_before=req.created_before,
        collection_ids=search_collections(req, scope),
    )


def hit_out(hit: SearchHit) -> SearchHitOut:
    """A service hit as the API shows it (the asset's summary, its score and reasons)."""
    asset = AssetSummary(
        id=hit.asset_id,
        status=hit.status,
        mime=hit.mime,
        width=hit.width,
        height=hit.height,
        created_at=hit.created_at,
        thumbnail_url=thumbnail_url(hit.asset_id),
    )
    reasons = [
        Reason(
            kind=r.kind,
            name=r.name,
            name_zh=r.name_zh,
            score=r.score,
            above_threshold=r.above_threshold,
            sources=list(r.sources) if r.sources else None,
            review=r.review,  # type: ignore[arg-type]
            expanded_from=r.expanded_from,
        )
        for r in hit.reasons
    ]
    frames = [FrameOut(timestamp_s=f.timestamp_s, score=f.score) for f in hit.frames]
    return SearchHitOut(asset=asset, score=hit.score, reasons=reasons, frames=frames)


def run_search(
    services: Services,
    session: Session,
    req: SearchRequest,
    *,
    image: QueryImage | None = None,
    phases: Phases | None = None,
    scope: CollectionScope = EVERYTHING,
) -> SearchPageOut:
    """One page of results for a search request (blocking: call it from a worker thread).

    Args:
        services: the app's services (the archive the service searches).
        session: the request's database session.
        req: the search.
        image: an uploaded query image, encoded (similar search by upload).
        phases: where each phase's time is recorded (the ``Server-Timing`` header's).
        scope: what the calling key sees (its collections; docs/collections.md).

    Raises:
        indexer.search errors (bad combinations, unknown tags, bad cursors, missing assets),
        answered as problem documents by the app's handlers.
    """
    phases = phases if phases is not None else Phases()
    query = to_query(req, image, scope)
    page = SearchService(services).search(query, session=session, phases=phases)
    with phases.phase(PAGE):
        return SearchPageOut(
            hits=[hit_out(h) for h in page.hits],
            next_cursor=page.next_cursor,
            model=model_name(services),
            pending_reindex=page.pending_reindex,
            concept_threshold=page.concept_threshold,
        )
