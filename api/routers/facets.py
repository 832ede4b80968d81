"""What a result grid needs beyond ``/search``: a search's total and facets
(``POST /search/facets``) and the file names of result assets (``GET /search/names``).

The summary runs the same search (:class:`indexer.search.SearchService`, through
:func:`api.search.to_query`), so whatever limits a search obeys, it obeys too.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.deps import MAX_INT64, ReadKey, ScopeDep, ServicesDep, SessionDep
from api.model_info import model_name
from api.ratelimit import CostlyGateDep
from api.schemas import SearchRequest
from api.search import to_query
from api.server_timing import request_phases
from indexer.search import SearchService
from indexer.search.facets import DEFAULT_SCAN, MAX_SCAN, summarize
from indexer.search.service import asset_facts

router = APIRouter(prefix="/search", tags=["search"])


class FacetOut(BaseModel):
    name: str = Field(description="the tag's English name, or a free keyword")
    name_zh: str | None
    tag_id: int | None = Field(description="null for a free keyword")
    count: int = Field(description="results (of those read) the tag matches")


class SummaryOut(BaseModel):
    total: int = Field(description="results found: all when exact, else at least this many")
    exact: bool = Field(description="every result was read (no more than `scan`)")
    facets: list[FacetOut] = Field(description="the most frequent tags among them, most first")
    model: str | None = Field(default=None, description="name of the model that scored them")


class AssetName(BaseModel):
    id: int
    name: str | None = Field(description="file name of the asset's first source (no folders)")


class AssetNames(BaseModel):
    items: list[AssetName]


def file_name(uri: str | None) -> str | None:
    """``upload:a.jpg``, ``/srv/x/a.jpg``, ``https://h/p/a.jpg?x=1`` -> ``a.jpg`` (never a folder:
    read keys may not see server paths, api/redact.py)."""
    if not uri:
        return None
    tail = re.split(r"[\\/]", uri.split("?", 1)[0].rstrip("/\\"))[-1]
    return tail.removeprefix("upload:") or None


@router.post("/facets", response_model=SummaryOut, summary="A search's total and top tags")
def facets(
    request: Request,
    body: SearchRequest,
    _: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
    costly: CostlyGateDep,
    top: Annotated[int, Query(ge=0, le=100, description="tags to list")] = 12,
    scan: Annotated[
        int, Query(ge=1, le=MAX_SCAN, description="results to read at most")
    ] = DEFAULT_SCAN,
) -> SummaryOut:
    """The search's result count (exact up to ``scan``) and its most frequent tags; ``limit``
    and ``cursor`` of the body are ignored."""
    request_phases(request)  # Server-Timing: the total time
    with costly.slot() if body.text else nullcontext():  # concepts: 429 past the limit, as /search
        summary = summarize(
            SearchService(services), to_query(body, scope=scope), session, top=top, scan=scan
        )
    return SummaryOut(
        total=summary.total,
        exact=summary.exact,
        facets=[FacetOut(**vars(f)) for f in summary.facets],
        model=model_name(services),
    )


@router.get("/names", response_model=AssetNames, summary="File names of assets (result cards)")
def names(
    _: ReadKey,
    scope: ScopeDep,
    session: SessionDep,
    ids: Annotated[list[Annotated[int, Field(ge=1, le=MAX_INT64)]], Query(max_length=200)],
) -> AssetNames:
    """The file name of each asset's first source, in the order asked; unknown ids (and those
    the key does not see) are left out. A key limited to collections gets no names: the
    first source may be another collection's upload (docs/collections.md)."""
    seen = scope.visible_assets(session, ids)
    facts = asset_facts(session, [i for i in ids if i in seen])
    return AssetNames(
        items=[
            AssetName(id=i, name=None if scope.restricted else file_name(facts[i].source))
            for i in ids
            if i in facts
        ]
    )
