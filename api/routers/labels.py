"""Routes under /labels: manual tags, review decisions, an asset's provenance and history, the
review queue (issue 13; semantics in docs/review.md, service in :mod:`indexer.review`).

Every change runs in one transaction: unknown assets or an unknown tag change nothing. The
actor recorded with a change is the calling API key's name and id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import Principal
from api.deps import MAX_INT64, AssetId, ReadKey, ScopeDep, ServicesDep, SessionDep, WriteKey
from api.problems import ProblemError
from api.schemas import Cursor, TagName
from indexer import review
from indexer.db.errors import NotFoundError, UnknownTagError
from indexer.db.label_repo import MAX_ACTOR_LENGTH, MAX_ASSETS_PER_CHANGE, MissingAssetsError
from indexer.errors import RamdexError

router = APIRouter(prefix="/labels", tags=["labels"])

Action = Literal["add", "remove", "accept", "reject", "unreview"]
Source = Literal["model", "concept", "manual", "embedded"]


class LabelChangeIn(BaseModel):
    """One action on one tag or keyword of many assets."""

    asset_ids: list[Annotated[int, Field(ge=1, le=MAX_INT64)]] = Field(
        min_length=1, max_length=MAX_ASSETS_PER_CHANGE
    )
    tag: TagName = Field(
        description="tag name (English any case, Chinese, a synonym) or, for add/remove, "
        "a free keyword"
    )
    action: Action = Field(
        description="add/remove: a manual tag; accept/reject/unreview: a model or concept "
        "tag's review decision (the tag must be in the vocabulary)"
    )


class LabelChangeOut(BaseModel):
    """How many assets the change changed (the others already were so)."""

    changed: int
    unchanged: int


class AssetTagView(BaseModel):
    """One tag of an asset, with every source that gives it."""

    key: str = Field(description="the label key (lower-cased English name, or the keyword)")
    name: str
    chinese: str | None = None
    tag_id: int | None = Field(default=None, description="None: a free keyword")
    score: float | None = Field(default=None, description="the model's stored score")
    threshold: float | None = Field(default=None, description="the tag's effective threshold")
    sources: list[Source]
    review: Literal["accepted", "rejected"] | None = None
    manual: bool
    embedded: bool
    matches: bool = Field(description="whether a default tag search matches it")


class AssetTagsOut(BaseModel):
    """Every tag an asset has by any source, matching ones first, then by score."""

    asset_id: int
    tags: list[AssetTagView]


class LabelChangeRecord(BaseModel):
    """One recorded change: ``before``/``after`` are the label's state (null: no label)."""

    id: int
    key: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    actor: str
    at: datetime


class HistoryOut(BaseModel):
    """An asset's label changes, newest first."""

    changes: list[LabelChangeRecord]


class QueueItemOut(BaseModel):
    """An undecided asset and how far its score is from the threshold."""

    asset_id: int
    score: float
    distance: float


class QueueOut(BaseModel):
    """A page of a tag's review queue, nearest the threshold first."""

    tag: str
    threshold: float
    items: list[QueueItemOut]
    next_cursor: str | None = None


def actor_of(principal: Principal) -> str:
    """Who a change is recorded as: the key's name and id ("auth disabled" when auth is off)."""
    text = principal.name if principal.key_id is None else f"{principal.name} ({principal.key_id})"
    return text[:MAX_ACTOR_LENGTH]


def _unknown_tag(exc: UnknownTagError) -> ProblemError:
    return ProblemError(404, str(exc), kind="unknown-tag", unknown=[str(n) for n in exc.names])


def _bad_name(exc: RamdexError) -> ProblemError:
    return ProblemError(422, exc.message, kind="validation")


@router.get(
    "/assets/{asset_id}", response_model=AssetTagsOut, summary="An asset's tags and their sources"
)
def asset_tags(
    asset_id: AssetId, _: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> AssetTagsOut:
    try:
        views = review.provenance(session, services.model_id(), asset_id, scope)
    except NotFoundError as exc:
        raise ProblemError(404, str(exc), kind="not-found") from exc
    return AssetTagsOut(
        asset_id=asset_id,
        tags=[AssetTagView.model_validate(v, from_attributes=True) for v in views],
    )


@router.post("", response_model=LabelChangeOut, summary="Add/remove, accept/reject tags")
def change_labels(
    body: LabelChangeIn,
    principal: WriteKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
) -> LabelChangeOut:
    model_id = services.model_id()
    try:
        result = review.change(
            session, model_id, body.asset_ids, body.tag, body.action, actor_of(principal), scope
        )
    except MissingAssetsError as exc:
        raise ProblemError(404, str(exc), kind="not-found", missing=exc.asset_ids) from exc
    except UnknownTagError as exc:
        raise _unknown_tag(exc) from exc
    except RamdexError as exc:
        raise _bad_name(exc) from exc
    session.commit()
    return LabelChangeOut(changed=result.changed, unchanged=result.unchanged)


@router.get(
    "/assets/{asset_id}/history", response_model=HistoryOut, summary="An asset's label changes"
)
def history(
    asset_id: AssetId,
    principal: ReadKey,
    scope: ScopeDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HistoryOut:
    try:
        changes = review.history(session, asset_id, limit, scope, actor_of(principal))
    except NotFoundError as exc:
        raise ProblemError(404, str(exc), kind="not-found") from exc
    return HistoryOut(
        changes=[LabelChangeRecord.model_validate(c, from_attributes=True) for c in changes]
    )


@router.get(
    "/queue", response_model=QueueOut, summary="Assets to review for a tag, most uncertain first"
)
def review_queue(
    _: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
    tag: Annotated[TagName, Query(description="a tag of the vocabulary")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
) -> QueueOut:
    try:
        page = review.queue(session, services.model_id(), tag, limit, cursor, scope)
    except UnknownTagError as exc:
        raise _unknown_tag(exc) from exc
    except RamdexError as exc:
        raise _bad_name(exc) from exc
    # an invalid cursor is answered 400 by the indexer error handlers (api/services.py)
    return QueueOut(
        tag=page.tag.english,
        threshold=page.threshold,
        items=[
            QueueItemOut(asset_id=i.asset_id, score=i.score, distance=i.distance)
            for i in page.items
        ],
        next_cursor=page.next_cursor,
    )
