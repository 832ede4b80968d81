"""Routes under /collections: named groups of assets, and what a collection-limited key sees.

- ``GET /collections`` (read): the collections the key sees, with asset counts.
- ``GET /collections/{id}`` (read): one of them (404 for one it does not see).
- ``POST /collections`` and ``DELETE /collections/{id}`` (admin, not limited to collections).
- ``POST`` / ``DELETE /collections/{id}/assets`` (write): put visible assets in, take them out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import MAX_INT64, AdminKey, CollectionId, ReadKey, ScopeDep, SessionDep, WriteKey
from api.problems import ProblemError
from indexer import collection_service as service
from indexer.db.collection_repo import CollectionInfo
from indexer.db.collections import MAX_COLLECTION_NAME
from indexer.db.errors import DuplicateError, NotFoundError

router = APIRouter(prefix="/collections", tags=["collections"])


class CollectionIn(BaseModel):
    """A new collection."""

    name: str = Field(min_length=1, max_length=MAX_COLLECTION_NAME, pattern=r"^[^\x00-\x1f\x7f]*$")
    description: str | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")


class CollectionOut(BaseModel):
    """A collection and how many assets it holds."""

    id: int
    name: str
    description: str | None
    asset_count: int
    created_at: datetime


class CollectionPage(BaseModel):
    items: list[CollectionOut]


class CollectionAssetsIn(BaseModel):
    """Assets to put into (or take out of) a collection."""

    asset_ids: list[Annotated[int, Field(ge=1, le=MAX_INT64)]] = Field(
        min_length=1, max_length=service.MAX_ASSETS_PER_CALL
    )


class CollectionAssetsOut(BaseModel):
    """How many assets the call changed (the others already were so)."""

    changed: int
    unchanged: int


def collection_out(info: CollectionInfo) -> CollectionOut:
    return CollectionOut(
        id=info.id,
        name=info.name,
        description=info.description,
        asset_count=info.asset_count,
        created_at=info.created_at,  # type: ignore[arg-type]
    )


def _not_found(exc: NotFoundError) -> ProblemError:
    if isinstance(exc, service.MissingAssetsError):
        return ProblemError(404, str(exc), kind="not-found", missing=exc.asset_ids)
    return ProblemError(404, str(exc), kind="not-found")


@router.get("", response_model=CollectionPage, summary="The collections this key sees")
def collections(_: ReadKey, scope: ScopeDep, session: SessionDep) -> CollectionPage:
    return CollectionPage(
        items=[collection_out(c) for c in service.list_collections(session, scope)]
    )


@router.post("", status_code=201, response_model=CollectionOut, summary="Create a collection")
def create(
    body: CollectionIn, _: AdminKey, scope: ScopeDep, session: SessionDep, response: Response
) -> CollectionOut:
    try:
        info = service.create_collection(session, scope, body.name, body.description)
    except DuplicateError as exc:
        raise ProblemError(409, str(exc), kind="conflict") from exc
    except ValueError as exc:
        raise ProblemError(422, str(exc), kind="validation") from exc
    session.commit()
    response.headers["Location"] = f"/collections/{info.id}"
    return collection_out(info)


@router.get("/{collection_id}", response_model=CollectionOut, summary="One collection")
def collection(
    collection_id: CollectionId, _: ReadKey, scope: ScopeDep, session: SessionDep
) -> CollectionOut:
    try:
        return collection_out(service.get_collection(session, scope, collection_id))
    except NotFoundError as exc:
        raise _not_found(exc) from exc


@router.delete(
    "/{collection_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a collection (its assets stay in the archive)",
)
def delete(
    collection_id: CollectionId, _: AdminKey, scope: ScopeDep, session: SessionDep
) -> Response:
    try:
        service.delete_collection(session, scope, collection_id)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{collection_id}/assets",
    response_model=CollectionAssetsOut,
    summary="Put assets into a collection",
)
def add_assets(
    collection_id: CollectionId,
    body: CollectionAssetsIn,
    _: WriteKey,
    scope: ScopeDep,
    session: SessionDep,
) -> CollectionAssetsOut:
    try:
        change = service.add_assets(session, scope, collection_id, body.asset_ids)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    session.commit()
    return CollectionAssetsOut(changed=change.changed, unchanged=change.unchanged)


@router.delete(
    "/{collection_id}/assets",
    response_model=CollectionAssetsOut,
    summary="Take assets out of a collection (they stay in the archive)",
)
def remove_assets(
    collection_id: CollectionId,
    body: CollectionAssetsIn,
    _: WriteKey,
    scope: ScopeDep,
    session: SessionDep,
) -> CollectionAssetsOut:
    try:
        change = service.remove_assets(session, scope, collection_id, body.asset_ids)
    except NotFoundError as exc:
        raise _not_found(exc) from exc
    session.commit()
    return CollectionAssetsOut(changed=change.changed, unchanged=change.unchanged)
