"""Routes under /exports: XMP sidecars written on the server, CSV and JSON streamed out.

- ``POST /exports/xmp`` (write key): writes a sidecar beside each local original of the listed
  assets, or of a tag query's assets, or of every asset; answers with the counts. Sidecars are
  only ever written beside originals registered from server paths (never into a folder the
  caller names), so a key cannot make the server write anywhere else.
- ``GET /exports/assets.csv`` and ``GET /exports/assets.json`` (read key): streamed, a page of
  assets at a time; server paths in ``source_uris`` are hidden from read keys (api/redact.py).

The tags exported are those a default search matches (indexer/exports.py; docs/metadata.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.deps import ReadKey, ScopeDep, ServicesDep, WriteKey
from api.problems import ProblemError
from api.redact import hide_path, sees_server_paths
from api.schemas import TagName
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.labels import TagSource

router = APIRouter(prefix="/exports", tags=["exports"])

MAX_ASSET_IDS = 10_000
MAX_INT64 = 2**63 - 1


class XmpExportRequest(BaseModel):
    """Which assets get sidecars and how they are written."""

    asset_ids: list[Annotated[int, Field(ge=1, le=MAX_INT64)]] | None = Field(
        default=None, max_length=MAX_ASSET_IDS, description="these assets (else the tag query)"
    )
    all: list[TagName] = Field(default_factory=list, max_length=50, description="tags required")
    any: list[TagName] = Field(default_factory=list, max_length=50, description="at least one of")
    none: list[TagName] = Field(default_factory=list, max_length=50, description="tags excluded")
    sources: list[TagSource] = Field(
        default_factory=lambda: list(TagSource), min_length=1, description="tag sources exported"
    )
    sidecar_name: Literal["ext", "replace"] = Field(
        default="ext", description="ext: photo.jpg.xmp; replace: photo.xmp"
    )
    model_prefix: str = Field(default="", max_length=32, description="marks unconfirmed model tags")
    model_suffix: str = Field(default="", max_length=32, description="marks unconfirmed model tags")


class XmpFailure(BaseModel):
    sidecar: str
    reason: str


class XmpExportResult(BaseModel):
    """What the export did."""

    assets: int = Field(description="assets selected")
    written: int = Field(description="sidecars written")
    skipped: int = Field(description="assets with no local original (a URL or an upload)")
    empty: int = Field(description="assets with no tag to export and no sidecar yet")
    failed: int = Field(description="sidecars that could not be written")
    failures: list[XmpFailure] = Field(description="the first 20 failures")


def _exiftool_or_503() -> None:
    from indexer.keywords import ExifToolMissingError, exiftool_path

    try:
        exiftool_path()
    except ExifToolMissingError as exc:
        raise ProblemError(503, f"{exc.message}; {exc.hint}", kind="exiftool-missing") from None


def _check_tags(
    services: ServicesDep, model_id: str, names: list[str], scope: CollectionScope = EVERYTHING
) -> None:
    """Unknown query tags answer 422 before anything streams (UnknownTagError's handler)."""
    if names:
        from indexer.db.query_terms import resolve_terms

        with services.sessions() as session:  # the names search takes: tags, synonyms, keywords
            resolve_terms(session, model_id, names, scope=scope)


@router.post(
    "/xmp", response_model=XmpExportResult, summary="Write XMP sidecars beside the originals"
)
def export_xmp(
    body: XmpExportRequest, _: WriteKey, scope: ScopeDep, services: ServicesDep
) -> XmpExportResult:
    from indexer import exports
    from indexer.keywords import SidecarName

    # Sidecars land beside originals on the server, which may be files another collection
    # registered (the same bytes): only a key not limited to collections writes them.
    scope.require_unrestricted("writing XMP sidecars beside the server's originals")
    if body.asset_ids is not None and (body.all or body.any or body.none):
        raise ProblemError(422, "give asset_ids or a tag query, not both", kind="validation")
    _exiftool_or_503()
    model_id = services.model_id()
    _check_tags(services, model_id, [*body.all, *body.any, *body.none])
    selection = exports.Selection(
        asset_ids=tuple(body.asset_ids) if body.asset_ids is not None else None,
        all_=tuple(body.all),
        any_=tuple(body.any),
        none=tuple(body.none),
        sources=frozenset(body.sources),
    )
    options = exports.XmpOptions(
        naming=SidecarName(body.sidecar_name),
        model_prefix=body.model_prefix,
        model_suffix=body.model_suffix,
    )
    counts = exports.export_xmp(services.sessions, model_id, selection, options)
    return XmpExportResult.model_validate(counts.to_dict())


TagQuery = Annotated[list[TagName] | None, Query(max_length=50)]
SourcesQuery = Annotated[
    list[TagSource] | None, Query(description="tag sources exported (default: all)")
]


def _stream(
    kind: Literal["csv", "json"],
    principal: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    all_: list[str] | None,
    any_: list[str] | None,
    none: list[str] | None,
    sources: list[TagSource] | None,
) -> StreamingResponse:
    from indexer import exports

    model_id = services.model_id()
    _check_tags(services, model_id, [*(all_ or []), *(any_ or []), *(none or [])], scope)
    selection = exports.Selection(
        all_=tuple(all_ or ()),
        any_=tuple(any_ or ()),
        none=tuple(none or ()),
        sources=frozenset(sources or TagSource),
        scope=scope,
    )
    hide = None if sees_server_paths(principal, services.settings) else hide_path
    pages = exports.iter_export_assets(services.sessions, model_id, selection)
    chunks: Iterator[str] = (
        exports.iter_csv(pages, hide) if kind == "csv" else exports.iter_json(pages, model_id, hide)
    )
    media = "text/csv; charset=utf-8" if kind == "csv" else "application/json"
    return StreamingResponse(
        (c.encode("utf-8") for c in chunks),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="assets.{kind}"'},
    )


@router.get(
    "/assets.csv",
    summary="Assets with tags, scores and sources as CSV (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def assets_csv(
    principal: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    all_: Annotated[TagQuery, Query(alias="all")] = None,
    any_: Annotated[TagQuery, Query(alias="any")] = None,
    none: TagQuery = None,
    sources: SourcesQuery = None,
) -> StreamingResponse:
    return _stream("csv", principal, scope, services, all_, any_, none, sources)


@router.get(
    "/assets.json",
    summary="Assets with tags, scores and sources as JSON (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
def assets_json(
    principal: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    all_: Annotated[TagQuery, Query(alias="all")] = None,
    any_: Annotated[TagQuery, Query(alias="any")] = None,
    none: TagQuery = None,
    sources: SourcesQuery = None,
) -> StreamingResponse:
    return _stream("json", principal, scope, services, all_, any_, none, sources)
