"""Liveness, readiness and Prometheus metrics (no key needed), and who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.auth import ordered
from api.deps import ReadKey, ServicesDep
from api.problems import ProblemError
from api.schemas import CheckOut, Health, Me, Ready

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
    out = {name: CheckOut(ok=c.ok, detail=c.detail) for name, c in checks.items()}
    if not all(c.ok for c in checks.values()):
        failing = ", ".join(name for name, c in checks.items() if not c.ok)
        raise ProblemError(
            503,
            f"not ready: {failing}",
            kind="not-ready",
            headers={"Retry-After": "5"},
            checks={k: v.model_dump() for k, v in out.items()},
        )
    return Ready(status="ok", checks=out)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    body, content_type = await run_in_threadpool(services.metrics.render)
    return Response(body, media_type=content_type)


@router.get("/me", response_model=Me, summary="The calling key's name and scopes", tags=["auth"])
def me(principal: ReadKey) -> Me:
    return Me(key_id=principal.key_id, name=principal.name, scopes=ordered(principal.scopes))
