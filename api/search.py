"""Search: tag filters, free-text concepts and similar images, ranked and paged one way.

- Tags only: the storage layer's boolean tag search (keyset pages, ranked by tag score).
- Free text: scored as an open-set concept over the stored token embeddings (FAISS shortlist,
  then exact RAM++ scores; every asset when the archive is smaller than the shortlist), ranked by
  the concept's probability; the concept's calibrated threshold comes with the page.
- Similar: FAISS over the stored image embeddings, ranked by cosine similarity.

Tag-only searches with ``sort=date`` return every matching asset newest first (the storage layer's
date order, keyset-paged). Concept and similar searches recall at most :data:`RECALL` assets by
relevance; tag, type and date filters then apply to that ranked list; ``sort=date`` orders the
recalled assets newest first. Pages of such lists use offset cursors tied to the query, and the
ranked list is cached for a minute so that paging does not score again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from api.model_info import model_name
from api.problems import ProblemError
from api.schemas import AssetSummary, Reason, SearchHitOut, SearchPageOut, SearchRequest
from api.services import Services
from indexer.archive import Archive
from indexer.db.assets import Asset, AssetStatus
from indexer.db.errors import UnknownTagError

# The storage layer's tag-term SQL is reused so that filters here mean exactly what tag search
# means: thresholds, min_score, mime prefixes, half-open date range.
from indexer.db.search import (
    MatchedTag,
    asset_filters,
    has_tag_term,
    matched_tags,
    search_by_tags,
)
from indexer.db.tag_repo import resolve_tags
from indexer.db.vectors import decode_vector
from indexer.retroactive import Mode

RECALL = 1000  # relevance-ranked assets recalled for concept and similar search
_OFFSET_PREFIX = "o."


@dataclass(frozen=True)
class Ranked:
    """Assets ranked by one relevance signal, best first."""

    ids: np.ndarray
    scores: np.ndarray
    kind: str  # "concept" or "similar"
    name: str
    threshold: float | None = None


# ---------- cursors ----------
def _query_digest(req: SearchRequest, extra: str) -> str:
    body = req.model_dump(mode="json", exclude={"cursor", "limit"})
    raw = json.dumps(body, sort_keys=True) + "|" + extra
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _encode_offset(offset: int, digest: str) -> str:
    raw = json.dumps({"o": offset, "q": digest}, separators=(",", ":")).encode()
    return _OFFSET_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_offset(cursor: str, digest: str) -> int:
    try:
        raw = cursor.removeprefix(_OFFSET_PREFIX)
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        offset, query = int(data["o"]), data["q"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProblemError(400, "invalid cursor", kind="invalid-cursor") from exc
    if query != digest or not 0 <= offset <= RECALL:
        raise ProblemError(
            400,
            "the cursor belongs to another query; start again without it",
            kind="invalid-cursor",
        )
    return offset


# ---------- rankings ----------
def concept_ranking(services: Archive, text: str) -> Ranked:
    """Assets ranked by the free-text concept's RAM++ probability (two-stage search)."""
    from ram_pp.concepts import encode_concepts, make_concept

    store = services.token_store()
    if store is None or len(store) == 0:
        return Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), "concept", text, 0.5)
    try:
        concept = make_concept(text)
    except ValueError as exc:
        raise ProblemError(422, str(exc), kind="validation") from exc
    with services.timer("encode_text"):
        bank = services.cache("banks").get_or_build(
            concept.name, lambda: encode_concepts([concept], services.text_encoder())
        )
    searcher = services.searcher()
    mode: Mode = "exhaustive" if len(store) <= searcher.shortlist else "two_stage"
    with services.timer(f"concept_{mode}"):
        result = searcher.search(bank, names=[concept.name], top_k=RECALL, mode=mode)[0]
    return Ranked(result.ids, result.scores, "concept", concept.name, result.threshold)


def similar_ranking(
    services: Archive, vector: np.ndarray, name: str, exclude: int | None = None
) -> Ranked:
    """Assets ranked by cosine similarity of their image embedding to ``vector``."""
    index = services.vector_index()
    with services.timer("similar_search"):
        all_scores, all_ids = index.search(
            np.asarray(vector, np.float32).reshape(1, -1), RECALL + 1
        )
    ids, scores = all_ids[0], all_scores[0].astype(np.float32)
    keep = ids != (exclude if exclude is not None else -1)
    return Ranked(ids[keep][:RECALL].astype(np.int64), scores[keep][:RECALL], "similar", name)


def asset_vector(session: Session, asset_id: int) -> np.ndarray:
    """The stored image embedding c of an asset.

    Raises:
        ProblemError: 404 when the asset does not exist, 409 when it has no embedding yet.
    """
    row = session.execute(
        sa.select(Asset.embedding, Asset.embedding_dim, Asset.status).where(Asset.id == asset_id)
    ).one_or_none()
    if row is None:
        raise ProblemError(404, f"asset {asset_id} does not exist", kind="not-found")
    if row.embedding is None or not row.embedding_dim:
        raise ProblemError(
            409,
            f"asset {asset_id} has no image embedding yet (status {row.status})",
            kind="not-indexed",
        )
    return decode_vector(row.embedding, row.embedding_dim)


# ---------- filters and pages ----------
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
            thumbnail_url=f"/assets/{int(r.id)}/thumbnail",
        )
        for r in rows
    }


@dataclass
class _Terms:
    all_terms: list[list[Any]]
    any_tags: list[Any]
    none_tags: list[Any]

    @property
    def positive(self) -> list[Any]:
        return [t for term in self.all_terms for t in term] + self.any_tags


def _unknown(exc: UnknownTagError) -> ProblemError:
    return ProblemError(422, str(exc), kind="unknown-tag", unknown=[str(n) for n in exc.names])


def _resolve(session: Session, model_id: str, req: SearchRequest) -> _Terms:
    names = [*req.all, *req.any, *req.none]
    try:
        resolved = resolve_tags(session, model_id, names) if names else {}
    except UnknownTagError as exc:
        raise _unknown(exc) from exc
    return _Terms(
        [resolved[n] for n in req.all],
        [t for n in req.any for t in resolved[n]],
        [t for n in req.none for t in resolved[n]],
    )


def _filter(session: Session, ranked: Ranked, terms: _Terms, req: SearchRequest) -> Ranked:
    """Keep the ranked assets that pass the tag, type and date filters (order kept).

    Without filters the list is kept as it is: it comes from the index of done assets, and
    assets deleted since are dropped when the page is read.
    """
    if not (req.all or req.any or req.none or req.mime or req.created_after or req.created_before):
        return ranked
    conditions = asset_filters(req.mime or None, req.created_after, req.created_before)
    for term in terms.all_terms:
        conditions.append(has_tag_term(Asset.__table__.c.id, term, req.min_score))
    if terms.any_tags:
        conditions.append(has_tag_term(Asset.__table__.c.id, terms.any_tags, req.min_score))
    if terms.none_tags:
        conditions.append(~has_tag_term(Asset.__table__.c.id, terms.none_tags, req.min_score))
    conditions.append(Asset.__table__.c.status == AssetStatus.DONE.value)
    stmt = sa.select(Asset.__table__.c.id).where(
        Asset.__table__.c.id.in_(ranked.ids.tolist()), *conditions
    )
    allowed = np.fromiter((int(i) for i in session.execute(stmt).scalars()), np.int64)
    keep = np.isin(ranked.ids, allowed)
    return Ranked(ranked.ids[keep], ranked.scores[keep], ranked.kind, ranked.name, ranked.threshold)


def _by_date(session: Session, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` ordered newest first (ties: higher id first)."""
    if not len(ids):
        return np.zeros(0, np.int64)
    created = dict(
        session.execute(
            sa.select(Asset.id, Asset.created_at).where(Asset.id.in_(ids.tolist()))
        ).all()
    )
    return np.array(
        sorted(range(len(ids)), key=lambda i: (created[int(ids[i])], int(ids[i])), reverse=True),
        dtype=np.int64,
    )


def _tag_reasons(matched: Sequence[MatchedTag]) -> list[Reason]:
    return [Reason(kind="tag", name=m.english, name_zh=m.chinese, score=m.score) for m in matched]


def _ranked_page(
    session: Session, ranked: Ranked, terms: _Terms, req: SearchRequest, digest: str
) -> tuple[list[SearchHitOut], str | None]:
    order = _by_date(session, ranked.ids) if req.sort == "date" else np.arange(len(ranked.ids))
    offset = _decode_offset(req.cursor, digest) if req.cursor else 0
    chosen = order[offset : offset + req.limit]
    ids = [int(ranked.ids[i]) for i in chosen]
    summaries = asset_summaries(session, ids)
    matched = matched_tags(session, ids, terms.positive, req.min_score)
    hits = []
    for i in chosen:
        asset_id, score = int(ranked.ids[i]), float(ranked.scores[i])
        if asset_id not in summaries:
            continue  # deleted since the ranking was cached
        reason = Reason(
            kind=ranked.kind,  # type: ignore[arg-type]
            name=ranked.name,
            score=score,
            above_threshold=None if ranked.threshold is None else score > ranked.threshold,
        )
        hits.append(
            SearchHitOut(
                asset=summaries[asset_id],
                score=score,
                reasons=[reason, *_tag_reasons(matched.get(asset_id, ()))],
            )
        )
    end = offset + req.limit
    return hits, _encode_offset(end, digest) if end < len(order) else None


def _tag_page(
    session: Session, model_id: str, req: SearchRequest
) -> tuple[list[SearchHitOut], str | None]:
    if req.cursor and req.cursor.startswith(_OFFSET_PREFIX):
        raise ProblemError(400, "the cursor belongs to another query", kind="invalid-cursor")
    try:
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
        )
    except UnknownTagError as exc:
        raise _unknown(exc) from exc
    except ValueError as exc:
        raise ProblemError(400, str(exc), kind="invalid-cursor") from exc
    summaries = asset_summaries(session, [h.asset_id for h in page.hits])
    hits = [
        SearchHitOut(asset=summaries[h.asset_id], score=h.score, reasons=_tag_reasons(h.tags))
        for h in page.hits
        if h.asset_id in summaries
    ]
    return hits, page.next_cursor


def run_search(
    services: Services,
    session: Session,
    req: SearchRequest,
    *,
    image_vector: np.ndarray | None = None,
    image_digest: str = "",
) -> SearchPageOut:
    """One page of results for a search request (blocking: call it from a worker thread).

    Args:
        services: the app's services (model, index, token store, caches).
        session: the request's database session.
        req: the search.
        image_vector: the embedding of an uploaded query image (similar search by upload).
        image_digest: sha256 of that image (ties cursors and cache entries to it).

    Raises:
        ProblemError: bad combinations, unknown tags, bad cursors, missing assets.
    """
    if req.created_after and req.created_before and req.created_after >= req.created_before:
        raise ProblemError(422, "created_after must be before created_before", kind="validation")
    similar = req.similar_to is not None or image_vector is not None
    if req.text and similar:
        raise ProblemError(422, "give either text or a similar image, not both", kind="validation")
    model_id = services.model_id()
    digest = _query_digest(req, f"{model_id}|{image_digest}")
    pending = services.pending_reindex(session, model_id)

    if not req.text and not similar:  # the storage layer resolves the tag names itself
        hits, next_cursor = _tag_page(session, model_id, req)
        return SearchPageOut(
            hits=hits, next_cursor=next_cursor, pending_reindex=pending, model=model_name(services)
        )

    terms = _resolve(session, model_id, req)

    cache = services.cache("rankings")
    if req.text:
        text = req.text.strip()
        ranked = cache.get_or_build(
            f"concept|{model_id}|{text}", lambda: concept_ranking(services, text)
        )
    elif image_vector is not None:
        ranked = cache.get_or_build(
            f"image|{model_id}|{image_digest}",
            lambda: similar_ranking(services, image_vector, "uploaded image"),
        )
    else:
        target = int(req.similar_to)  # type: ignore[arg-type]
        vector = asset_vector(session, target)
        ranked = cache.get_or_build(
            f"asset|{model_id}|{target}",
            lambda: similar_ranking(services, vector, f"asset {target}", exclude=target),
        )
    ranked = _filter(session, ranked, terms, req)
    hits, next_cursor = _ranked_page(session, ranked, terms, req, digest)
    return SearchPageOut(
        hits=hits,
        next_cursor=next_cursor,
        pending_reindex=pending,
        model=model_name(services),
        concept_threshold=ranked.threshold if ranked.kind == "concept" else None,
    )
