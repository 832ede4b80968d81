"""The FastAPI application: ``create_app(settings)`` wires routers, errors, limits, CORS and UI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from api.docs_ui import install_docs
from api.hardening import KeepConnectionAfterErrors, SecurityHeaders
from api.metrics import LatencyMiddleware, Metrics, start_metrics_listener
from api.problems import (
    PROBLEM_MEDIA_TYPE,
    PlainErrorsAsProblems,
    Problem,
    install_problem_handlers,
)
from api.ratelimit import AuthThrottle, CostlySlots
from api.routers import (
    assets,
    concepts,
    exports,
    health,
    jobs,
    labels,
    media_links,
    search,
    tags,
    taxonomy,
)
from api.routers import sources as sources_router
from api.routers.collections import router as collections_router
from api.routers.facets import router as facets_router
from api.routers.tagging import build_router as tagging_router
from api.routers.webhooks import router as webhooks_router
from api.server_timing import ServerTiming
from api.services import Services, install_indexer_error_handlers
from api.warmup import WarmUp
from indexer.settings import Settings, get_settings

STATIC_DIR = resources.files("api") / "static"


class _RamdexAPI(FastAPI):
    """FastAPI with :class:`PlainErrorsAsProblems` outside everything, the body limiter included
    (user middleware sits inside it), and :class:`KeepConnectionAfterErrors` just inside it."""

    def build_middleware_stack(self) -> ASGIApp:
        return PlainErrorsAsProblems(KeepConnectionAfterErrors(super().build_middleware_stack()))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: :func:`get_settings`).

    The lifespan opens the shared :class:`Services` on start and closes them on shutdown; routes
    reach them through the dependencies in :mod:`api.deps`.
    """
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(Services, settings, metrics)
        app.state.services = services
        listener = None
        recovery = None
        scheduler = None
        if not settings.broker.url:
            # Embedded: no worker runs a reconciler, so the server recovers what killed runs
            # left, at start and periodically, in its background thread.
            from indexer.ingest.embedded_recovery import EmbeddedRecovery

            recovery = EmbeddedRecovery(services).start()
            if settings.sources.scheduler:  # sources: due scans and watched folders
                from indexer.sources.scheduler import SourceScheduler

                scheduler = SourceScheduler(settings, processor=services.processor).start()
        hooks = None
        if settings.webhooks.enabled and not settings.broker.url:
            # Embedded: no worker dispatches webhooks, so the server does (its own thread).
            from indexer.webhooks.dispatcher import Dispatcher

            hooks = Dispatcher(settings).start()
        if settings.api.warm_start:
            services.warmup = WarmUp(services).start()  # /readyz: warming until it is done
        try:
            if settings.api.metrics_access == "bind":
                listener = start_metrics_listener(metrics, settings.api.metrics_bind)
            yield
        finally:
            if services.warmup is not None:
                await run_in_threadpool(services.warmup.stop)
            if recovery is not None:
                recovery.stop()
            if scheduler is not None:
                await run_in_threadpool(scheduler.stop)
            if hooks is not None:
                await run_in_threadpool(hooks.stop)
            if listener is not None:
                listener.shutdown()
                listener.server_close()
            await run_in_threadpool(services.close)

    app = _RamdexAPI(
        title="ramdex",
        summary="Media-asset indexing and open-set search with RAM++",
        version="0.1.0",
        lifespan=lifespan,
        # Default cap for JSON and form bodies; upload routes set their own larger cap.
        max_body_size=settings.api.max_json_bytes,
        docs_url=None,  # FastAPI's pages load Swagger UI from a CDN: install_docs serves it here
        redoc_url=None,
    )
    install_docs(app)
    install_problem_handlers(app)
    install_indexer_error_handlers(app)
    api = settings.api
    app.state.auth_throttle = AuthThrottle(api.auth_failure_limit, api.rate_limit_storage)
    app.state.costly_slots = CostlySlots(api.costly_searches_per_key)
    for router in (
        health.build_router(settings),
        assets.build_router(settings),
        search.build_router(settings),
        facets_router,  # /search/facets, /search/names: the web UI's result grid
        tagging_router(settings),  # POST /tag
        concepts.router,
        tags.router,
        jobs.router,
        labels.router,
        exports.router,
        taxonomy.router,
        sources_router.router,
        collections_router,  # /collections
        webhooks_router,
        media_links.build_router(),  # signed links: <video src> streams an original
    ):
        app.include_router(router)
    _mount_ui(app)

    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After", "Location", "Server-Timing"],
        )
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ServerTiming)  # outermost of these: its total covers the others
    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    return app


def _mount_ui(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def ui() -> FileResponse:
        return FileResponse(str(index), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """OpenAPI where every operation documents its errors as ``application/problem+json``.

    FastAPI documents 422 with its own JSON shape; this API answers every error, 422 included,
    with a problem document, so the schema says so (clients and the fuzz tests rely on it).
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for defname, definition in components["Problem"].pop("$defs", {}).items():
        components.setdefault(defname, definition)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    problem = {
        "description": "Problem details (RFC 9457)",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code in list(responses):
                if code.startswith(("4", "5")):
                    described = responses[code].get("description") or problem["description"]
                    responses[code] = {**problem, "description": described}
            responses["default"] = problem
    app.openapi_schema = schema
    return schema
