"""Sources: S3-compatible prefixes and folders scanned into a collection (docs/sources.md).

Reading needs a read key, adding, scanning and removing an admin key. A key limited to
collections sees and manages only sources of its collections: naming another collection (or
none, which would create one) is 403, another collection's source answers 404 like a missing
one. Folder sources must lie inside ``storage.allowed_roots``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from api.auth import Principal
from api.deps import MAX_INT32, AdminKey, ReadKey, ServicesDep, SessionDep
from api.problems import ProblemError, not_found
from api.redact import hide_path, hide_paths_in_text, sees_server_paths
from indexer.db.errors import DuplicateError
from indexer.db.source_repo import request_scan
from indexer.sources.errors import SourceError
from indexer.sources.manage import (
    CollectionForbidden,
    SourceView,
    add_source,
    get_view,
    list_views,
    remove_source,
)

router = APIRouter(prefix="/sources", tags=["sources"])

SourceId = Annotated[int, Path(ge=1, le=MAX_INT32, description="source id")]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00]*$")]
_Glob = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]*$")]
_Interval = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[^\x00]*$")]


class SourceCreate(BaseModel):
    """A source to add (the same options as ``ramdex sources add``)."""

    uri: _Text = Field(description="s3://BUCKET/PREFIX, or a folder inside storage.allowed_roots")
    collection: _Text | None = Field(
        default=None,
        description="collection name or id (created when absent); default: one named after "
        "the source (keys limited to collections must name one of theirs)",
    )
    include: list[_Glob] = Field(default_factory=list, max_length=100)
    exclude: list[_Glob] = Field(default_factory=list, max_length=100)
    watch: bool = Field(default=False, description="watch the folder (folders only)")
    interval: _Interval | None = Field(default=None, description="30s, 5m, 2h, 1d")
    copy_originals: bool = False


class SourceCountsOut(BaseModel):
    objects: int = Field(description="objects listed and present")
    assets: int = Field(description="of those, with an asset")
    gone: int = Field(description="objects no longer listed (their assets stay)")
    failed: int = Field(description="present objects unreadable or whose asset failed")


class SourceOut(BaseModel):
    """A source, its last scan and its counts."""

    id: int
    kind: str
    uri: str
    include: list[str]
    exclude: list[str]
    collection_id: int
    collection: str | None
    watch: bool
    interval_s: int
    copy_originals: bool
    created_at: datetime | None
    last_scan_at: datetime | None
    next_scan_at: datetime | None
    last_status: str
    last_error: str | None
    last_job_id: int | None
    last_counts: dict[str, Any]
    counts: SourceCountsOut


class SourcePage(BaseModel):
    items: list[SourceOut]


class ScanAccepted(BaseModel):
    source: SourceOut
    detail: str


def _out(view: SourceView, hide: bool) -> SourceOut:
    data = view.to_dict()
    if hide and view.kind == "folder":
        data["uri"] = hide_path(view.uri)
        data["last_error"] = hide_paths_in_text(view.last_error) if view.last_error else None
    return SourceOut.model_validate(data)


def _visible(session: Any, source_id: int, principal: Principal) -> SourceView:
    view = get_view(session, source_id)
    if view is None or not principal.sees_collection(view.collection_id):
        raise not_found("source", source_id)
    return view


@router.get("", response_model=SourcePage, summary="Sources with their last scan and counts")
def sources(principal: ReadKey, services: ServicesDep, session: SessionDep) -> SourcePage:
    hide = not sees_server_paths(principal, services.settings)
    rows = list_views(session, principal.collection_ids)
    return SourcePage(items=[_out(v, hide) for v in rows])


@router.post("", status_code=201, response_model=SourceOut, summary="Add a source (checked)")
async def create(body: SourceCreate, principal: AdminKey, services: ServicesDep) -> SourceOut:
    def run() -> SourceView:
        return add_source(
            services.settings,
            body.uri,
            collection=body.collection,
            include=body.include,
            exclude=body.exclude,
            watch=body.watch,
            interval=body.interval,
            copy_originals=body.copy_originals,
            require_roots=True,
            allowed_collections=principal.collection_ids,
        )

    try:
        view = await run_in_threadpool(run)  # the bucket check waits on the network
    except CollectionForbidden as exc:
        raise ProblemError(403, str(exc), kind="forbidden") from exc
    except DuplicateError as exc:
        raise ProblemError(409, str(exc), kind="conflict") from exc
    except SourceError as exc:
        # Bad input, and a store that is missing, refuses or does not answer: the request
        # names a source that cannot be added (problem kind says which).
        raise ProblemError(422, str(exc), kind=exc.kind) from exc
    return _out(view, hide=False)


@router.get("/{source_id}", response_model=SourceOut, summary="One source")
def source(
    source_id: SourceId, principal: ReadKey, services: ServicesDep, session: SessionDep
) -> SourceOut:
    view = _visible(session, source_id, principal)
    return _out(view, hide=not sees_server_paths(principal, services.settings))


@router.post(
    "/{source_id}/scan",
    status_code=202,
    response_model=ScanAccepted,
    summary="Scan a source now (the scheduler's next tick, or this server's background)",
)
def scan(
    source_id: SourceId, principal: AdminKey, services: ServicesDep, session: SessionDep
) -> ScanAccepted:
    view = _visible(session, source_id, principal)
    settings = services.settings
    if settings.sources.scheduler:
        # Due now: whichever process holds the scheduler scans it within sources.tick_s.
        request_scan(session, source_id)
        session.commit()
        detail = f"due now: the scheduler scans it within {settings.sources.tick_s:g} s"
    else:
        from indexer.sources.scan import scan_source

        def run() -> None:
            proc = services.processor() if not settings.broker.url else None
            scan_source(settings, source_id, processor=proc, wait=False)

        services.background(run)
        detail = "queued on this server"
    return ScanAccepted(source=_out(view, hide=False), detail=detail)


@router.delete(
    "/{source_id}",
    status_code=204,
    response_class=Response,
    summary="Remove a source (its assets stay in the archive and its collection)",
)
def delete(
    source_id: SourceId, principal: AdminKey, services: ServicesDep, session: SessionDep
) -> Response:
    _visible(session, source_id, principal)
    session.rollback()
    remove_source(services.settings, source_id)
    return Response(status_code=204)
