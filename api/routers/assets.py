"""Assets: upload, register by URL or server path, read, thumbnail, original, delete."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from api.deps import (
    MAX_INT32,
    MAX_INT64,
    AdminKey,
    AssetId,
    ReadKey,
    ScopeDep,
    ServicesDep,
    SessionDep,
    WriteKey,
)
from api.model_info import model_name
from api.problems import ProblemError, not_found
from api.redact import hide_path, hide_paths_in_text, sees_server_paths
from api.routers.jobs import job_out
from api.schemas import (
    Accepted,
    AssetOut,
    AssetPage,
    AssetTagOut,
    CompanionOut,
    Cursor,
    RegisterRequest,
    SourceOut,
    StoredFrameOut,
)
from api.search import asset_summaries
from api.submit import check_sources, submit_sources, submit_upload
from indexer import collection_uploads
from indexer.allowed_roots import PathNotAllowedError, check_server_paths
from indexer.db.asset_repo import get_asset, list_sources
from indexer.db.assets import Asset, AssetStatus
from indexer.db.collection_repo import collections_of_assets
from indexer.db.collection_scope import CollectionScope
from indexer.db.companion_repo import list_companions
from indexer.db.errors import NotFoundError
from indexer.db.frame_repo import read_frames
from indexer.db.job_repo import get_job
from indexer.db.tag_repo import get_asset_tags
from indexer.settings import Settings

_IMMUTABLE = "private, max-age=31536000, immutable"  # content-addressed: bytes never change


def _cursor(asset_id: int) -> str:
    return base64.urlsafe_b64encode(str(asset_id).encode()).decode().rstrip("=")


def _after(cursor: str) -> int:
    """The asset id a cursor continues after; 422 for anything a page never handed out (an id
    outside 1..2**63-1 would overflow the database's BIGINT: a 500 before)."""
    invalid = ProblemError(
        422, "invalid cursor: pass next_cursor from the previous page", kind="invalid-cursor"
    )
    try:
        value = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except ValueError as exc:
        raise invalid from exc
    if not 1 <= value <= MAX_INT64:
        raise invalid
    return value


def original_response(
    session: Session, scope: CollectionScope, row: Asset, media_dir: Path
) -> FileResponse:
    """The asset's stored original (Range requests answered), named as it came in; 404 when
    it is not in the media store. Only files inside the media store are served, whatever a
    row says."""
    path = Path(row.storage_path) if row.storage_path else None
    if path is None or not _inside(path, media_dir) or not path.is_file():
        raise ProblemError(404, f"the original of asset {row.id} is not stored", kind="not-found")
    return FileResponse(
        path,
        media_type=row.mime or "application/octet-stream",
        headers={"Cache-Control": _IMMUTABLE, "X-Content-Type-Options": "nosniff"},
        content_disposition_type="inline",
        filename=download_name(session, scope, row.id, path),
    )


def download_name(session: Session, scope: CollectionScope, asset_id: int, stored: Path) -> str:
    """The name a download is saved under: the file name the asset came in as (its first
    source), with the stored file's extension when it has none; the stored name (its sha256)
    for a collection-limited key, which sees no source."""
    if not scope.restricted:
        for source in list_sources(session, asset_id):
            name = re.split(r"[\\/]", source.uri.removeprefix("upload:").split("?")[0])[-1]
            if name:
                return name if Path(name).suffix else name + stored.suffix
    return stored.name


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_allowed_paths(paths: list[str], settings: Settings) -> None:
    """Refuse server paths outside ``storage.allowed_roots`` (all of them when none are set),
    with one message whether or not the file exists.

    Raises:
        ProblemError: 403 naming the first refused path.
    """
    try:
        check_server_paths(paths, settings.storage.allowed_roots)
    except PathNotAllowedError as exc:
        raise ProblemError(
            403, f"{exc.path[:200]!r}: {exc.reason}", kind="path-not-allowed"
        ) from exc


def visible_asset(session: Session, scope: CollectionScope, asset_id: int) -> Asset:
    """The asset when it exists and the key sees it; else 404 (the same answer for both, so
    a collection-limited key never learns that another collection's asset exists)."""
    row = get_asset(session, asset_id)
    if row is None or not scope.sees_asset(session, asset_id):
        raise not_found("asset", asset_id)
    return row


def _target(session: Session, scope: CollectionScope, requested: int | None) -> int | None:
    """The collection new assets go to (403/422 from the scope; 404: no such collection)."""
    try:
        return collection_uploads.upload_target(session, scope, requested)
    except NotFoundError as exc:
        raise ProblemError(404, str(exc), kind="not-found") from exc


CollectionForm = Annotated[
    int | None,
    Form(
        ge=1,
        le=MAX_INT32,
        description="the collection the asset goes to (a key limited to several collections "
        "must say which; one limited to one: that one by default)",
    ),
]


def build_router(settings: Settings) -> APIRouter:
    """The asset routes; uploads are capped at ``api.max_upload_bytes``."""
    router = APIRouter(prefix="/assets", tags=["assets"])

    @router.get("", response_model=AssetPage, summary="Assets, newest first")
    def assets(
        _: ReadKey,
        scope: ScopeDep,
        session: SessionDep,
        status: Annotated[AssetStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[Cursor | None, Query()] = None,
    ) -> AssetPage:
        stmt = (
            sa.select(Asset.id)
            .where(*scope.asset_conditions(Asset.id))
            .order_by(Asset.id.desc())
            .limit(limit + 1)
        )
        if status is not None:
            stmt = stmt.where(Asset.status == status.value)
        if cursor:
            stmt = stmt.where(Asset.id < _after(cursor))
        ids = [int(i) for i in session.scalars(stmt)]
        found = asset_summaries(session, ids[:limit])
        return AssetPage(
            items=[found[i] for i in ids[:limit] if i in found],
            next_cursor=_cursor(ids[limit - 1]) if len(ids) > limit else None,
        )

    @router.get("/{asset_id}", response_model=AssetOut, summary="One asset with tags and sources")
    def asset(
        asset_id: AssetId,
        principal: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
    ) -> AssetOut:
        row = visible_asset(session, scope, asset_id)
        hidden = scope.hidden_tag_ids(session)  # other collections' concept tags
        tags = [
            t
            for t in get_asset_tags(session, asset_id, include_below_threshold=True)
            if t.tag_id not in hidden
        ]
        # A collection-limited key sees no source URI: the same bytes may have come in through
        # another collection, whose paths and URLs are that collection's (docs/collections.md).
        sources = [] if scope.restricted else list_sources(session, asset_id)
        companions = [] if scope.restricted else list_companions(session, asset_id)
        shown = sees_server_paths(principal, services.settings) and not scope.restricted
        memberships = collections_of_assets(session, [asset_id]).get(asset_id, [])
        frames = read_frames(session, [asset_id]).get(asset_id, [])
        return AssetOut(
            id=row.id,
            status=row.status,
            mime=row.mime,
            width=row.width,
            height=row.height,
            created_at=row.created_at,
            thumbnail_url=f"/assets/{asset_id}/thumbnail",
            sha256=row.sha256,
            bytes=row.size_bytes,
            error=row.error if shown or not row.error else hide_paths_in_text(row.error),
            model=model_name(services, row.model_name) if row.model_name else None,
            model_id=row.model_name,
            updated_at=row.updated_at,
            original_url=f"/assets/{asset_id}/original",
            collections=[c for c in memberships if scope.sees_collection(c)],
            sources=[
                SourceOut(
                    uri=s.uri if shown else hide_path(s.uri),
                    first_seen=s.first_seen,
                    last_seen=s.last_seen,
                )
                for s in sources
            ],
            companions=[
                CompanionOut(
                    uri=c.uri if shown else hide_path(c.uri),
                    role=c.role,
                    mime=c.mime,
                    bytes=c.size_bytes,
                    sha256=c.sha256,
                    first_seen=c.first_seen,
                    last_seen=c.last_seen,
                )
                for c in companions
            ],
            kind=row.kind,
            duration_s=row.duration_s,
            codec=row.codec,
            frames=[StoredFrameOut(idx=f.idx, timestamp_s=f.timestamp_s) for f in frames],
            tags=[
                AssetTagOut(
                    id=t.tag_id,
                    name=t.english,
                    name_zh=t.chinese,
                    score=t.score,
                    threshold=t.threshold,
                    above_threshold=t.above_threshold,
                )
                for t in tags
            ],
        )

    @router.get(
        "/{asset_id}/thumbnail",
        summary="The asset's thumbnail (WebP)",
        response_class=Response,
        responses={
            200: {"content": {"image/webp": {"schema": {"type": "string", "format": "binary"}}}}
        },
    )
    def thumbnail(
        asset_id: AssetId,
        request: Request,
        _: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
    ) -> Response:
        row = visible_asset(session, scope, asset_id)
        etag = f'"t-{row.sha256}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Cache-Control": _IMMUTABLE}
        if row.thumbnail:
            return Response(row.thumbnail, media_type="image/webp", headers=headers)
        path = Path(row.thumbnail_path) if row.thumbnail_path else None
        if path is not None and _inside(path, services.settings.media_dir) and path.is_file():
            return FileResponse(path, media_type="image/webp", headers=headers)
        raise ProblemError(
            404, f"asset {asset_id} has no thumbnail (status {row.status})", kind="not-found"
        )

    @router.get(
        "/{asset_id}/original",
        summary="The original file",
        response_class=Response,
        responses={
            200: {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                }
            }
        },
    )
    def original(
        asset_id: AssetId, _: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
    ) -> Response:
        row = visible_asset(session, scope, asset_id)
        return original_response(session, scope, row, services.settings.media_dir)

    @router.post(
        "",
        status_code=202,
        response_model=Accepted,
        summary="Upload an image; it is tagged in the background",
        max_body_size=settings.api.max_upload_bytes,
        responses={
            200: {"model": Accepted, "description": "the same bytes are already an asset"},
            413: {"description": "the file is over the upload limit"},
            422: {"description": "not a supported image, or empty"},
        },
    )
    def upload(
        file: Annotated[UploadFile, File(description="the image file")],
        _: WriteKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
        response: Response,
        collection: CollectionForm = None,
    ) -> Accepted:
        target = _target(session, scope, collection)
        # With a collection, the asset (new, failed or a duplicate) and its job are the
        # collection's before this answers.
        job_id, registered = submit_upload(services, file.file, file.filename, target)
        registered = collection_uploads.as_seen_by(session, scope, job_id, registered)
        if registered.state == "failed":
            raise ProblemError(
                422,
                registered.reason or "the file cannot be ingested",
                kind="bad-image",
                asset_id=registered.asset_id,
                job_id=job_id,
            )
        job = get_job(session, job_id)
        assert job is not None  # created by submit_upload just now
        asset_id = int(registered.asset_id)  # type: ignore[arg-type]
        if registered.state == "duplicate":
            response.status_code = 200
            return Accepted(job=job_out(job), duplicates=[asset_id])
        return Accepted(job=job_out(job), asset_ids=[asset_id])

    @router.post(
        "/register",
        status_code=202,
        response_model=Accepted,
        summary="Ingest URLs or files and folders on the server (admin)",
        responses={
            403: {"description": "a path outside storage.allowed_roots, or server paths are off"}
        },
    )
    def register(
        body: RegisterRequest,
        _: AdminKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
    ) -> Accepted:
        sources = check_sources(body.urls, body.paths)
        check_allowed_paths(body.paths, services.settings)
        target = _target(session, scope, body.collection)
        job_id = submit_sources(services, sources, collection_id=target)
        job = get_job(session, job_id)
        assert job is not None  # created by submit_sources just now
        return Accepted(job=job_out(job))

    @router.delete(
        "/{asset_id}",
        status_code=204,
        response_class=Response,
        summary="Delete an asset from the database, the indexes and the media store",
    )
    def delete(
        asset_id: AssetId, _: WriteKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
    ) -> Response:
        visible_asset(session, scope, asset_id)
        if collection_uploads.leave_other_collections(session, scope, asset_id):
            # Also in collections this key does not see: it leaves the key's collections
            # only; the other collections keep it (docs/collections.md).
            session.commit()
            return Response(status_code=204)
        session.rollback()
        if not services.delete_asset(asset_id):  # the row, then the stores and caches
            raise not_found("asset", asset_id)
        return Response(status_code=204)

    return router
