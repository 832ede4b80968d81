"""Liveness and readiness (no key needed), Prometheus metrics (as ``api.metrics_access`` says),
and who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from api.auth import Scope, ordered
from api.deps import ReadKey, ScopeDep, ServicesDep, require
from api.model_info import model_out
from api.problems import ProblemError
from api.schemas import CheckOut, Health, Me, Ready
from indexer.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves requests")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: database, broker and index are usable",
    responses={503: {"description": "a dependency is down; the problem lists every check"}},
)
async def readyz(services: ServicesDep) -> Ready:
    checks = await run_in_threadpool(services.readiness)
    model = await run_in_threadpool(model_out, services)  # named even when not ready
    out = {name: CheckOut(ok=c.ok, detail=c.detail) for name, c in checks.items()}
    if not all(c.ok for c in checks.values()):
        failing = ", ".join(name for name, c in checks.items() if not c.ok)
        raise ProblemError(
            503,
            f"not ready: {failing}",
            kind="not-ready",
            headers={"Retry-After": "5"},
            checks={k: v.model_dump() for k, v in out.items()},
            model=model.model_dump(),
        )
    return Ready(status="ok", checks=out, model=model)


@router.get("/me", response_model=Me, summary="The calling key's name and scopes", tags=["auth"])
def me(principal: ReadKey) -> Me:
    limited = principal.collection_ids
    return Me(
        key_id=principal.key_id,
        name=principal.name,
        scopes=ordered(principal.scopes),
        collection_ids=None if limited is None else sorted(limited),
    )


def _unrestricted(scope: ScopeDep) -> None:
    scope.require_unrestricted("reading the archive-wide metrics")


def build_router(settings: Settings) -> APIRouter:
    """The health routes plus ``/metrics``: open, behind a read key, or absent here when the
    metrics have their own listener (``api.metrics_access``)."""
    built = APIRouter(tags=["health"])
    built.include_router(router)
    access = settings.api.metrics_access
    if access == "bind":
        return built
    # Archive-wide counts: a key limited to collections must not read other collections'.
    guard = [Depends(require(Scope.read)), Depends(_unrestricted)] if access == "key" else []

    @built.get(
        "/metrics",
        summary="Prometheus metrics"
        + (" (a read key is needed)" if access == "key" else " (no key needed)"),
        response_class=Response,
        dependencies=guard,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(services: ServicesDep) -> Response:
        body, content_type = await run_in_threadpool(services.metrics.render)
        return Response(body, media_type=content_type)

    return built
