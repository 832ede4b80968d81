"""Search: tag filters, free-text concepts, similar images (``GET``/``POST /search``) and
similar-to-an-uploaded-image (``POST /search/image``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from api.deps import ReadKey, ScopeDep, ServicesDep, SessionDep
from api.problems import ProblemError
from api.query_image import query_decode_options, release_memory
from api.ratelimit import CostlyGateDep
from api.schemas import Cursor, SearchPageOut, SearchRequest
from api.search import run_search
from api.server_timing import request_phases
from api.services import Services
from indexer.search import QueryImage, SearchService
from indexer.settings import Settings


def _query_image(services: Services, data: bytes) -> QueryImage:
    """A query image encoded by the search service, decoded no larger than the model needs
    (422 for a huge non-JPEG; see api/query_image.py)."""
    side = services.tagging_engine().preprocess.image_size
    options = query_decode_options(services.settings, data, side)
    try:
        return SearchService(services).query_image(data, options)
    finally:
        release_memory()  # the decoded full-size image is garbage now: hand its heap back


def build_router(settings: Settings) -> APIRouter:
    """The search routes; the query-image upload is capped at ``api.max_upload_bytes``."""
    router = APIRouter(prefix="/search", tags=["search"])

    @router.get("", response_model=SearchPageOut, summary="Search (query parameters)")
    def search_get(
        request: Request,
        params: Annotated[SearchRequest, Query()],
        _: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
        costly: CostlyGateDep,
    ) -> SearchPageOut:
        with costly.slot() if params.text else nullcontext():  # concepts: 429 past the limit
            return run_search(
                services, session, params, phases=request_phases(request), scope=scope
            )

    @router.post("", response_model=SearchPageOut, summary="Search (JSON body)")
    def search_post(
        request: Request,
        body: SearchRequest,
        _: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
        costly: CostlyGateDep,
    ) -> SearchPageOut:
        with costly.slot() if body.text else nullcontext():  # concepts: 429 past the limit
            return run_search(services, session, body, phases=request_phases(request), scope=scope)

    @router.post(
        "/image",
        response_model=SearchPageOut,
        summary="Assets similar to an uploaded image",
        max_body_size=settings.api.max_upload_bytes,
    )
    def search_image(
        request: Request,
        file: Annotated[UploadFile, File(description="the query image")],
        _: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
        costly: CostlyGateDep,
        limit: Annotated[int, Form(ge=1, le=200)] = 40,
        cursor: Annotated[Cursor | None, Form()] = None,
    ) -> SearchPageOut:
        phases = request_phases(request)
        data = file.file.read()
        if not data:
            raise ProblemError(422, "the query image is empty", kind="bad-image")
        with costly.slot(), phases.phase("encode_image"):  # the image model: 429 past the limit
            image = _query_image(services, data)
        page = SearchRequest(limit=limit, cursor=cursor)
        return run_search(services, session, page, image=image, phases=phases, scope=scope)

    return router
