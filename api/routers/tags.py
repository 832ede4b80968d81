"""Tags of the configured model: list, prefix search (autocomplete), threshold overrides."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from api.deps import AdminKey, ReadKey, ScopeDep, ServicesDep, SessionDep, TagId
from api.problems import ProblemError, not_found
from api.schemas import Cursor, TagName, TagOut, TagPage, ThresholdUpdate
from indexer.db.collection_scope import CollectionScope
from indexer.db.labels import label_key
from indexer.db.tag_repo import get_tag, list_tags, set_threshold_override
from indexer.db.tags import Tag, TagOrigin
from indexer.db.taxonomy_repo import TagRelations, tag_relations

router = APIRouter(prefix="/tags", tags=["tags"])


def tag_out(tag: Tag, relations: TagRelations | None = None) -> TagOut:
    """The API view of a tag, with its taxonomy parents and aliases (AWS's Parents/Aliases)."""
    rel = relations or TagRelations()
    return TagOut(
        id=tag.id,
        name=tag.english,
        name_zh=tag.chinese,
        origin=tag.origin,  # type: ignore[arg-type]
        threshold=tag.effective_threshold,
        model_threshold=tag.threshold,
        threshold_override=tag.threshold_override,
        parents=rel.parents,
        aliases=rel.aliases,
    )


def _with_relations(session: Session, tag: Tag) -> TagOut:
    return tag_out(tag, tag_relations(session, [tag.english]).get(label_key(tag.english)))


def _cursor(english: str) -> str:
    """An opaque cursor continuing after the tag named ``english`` (tags page by name)."""
    return base64.urlsafe_b64encode(english.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    """The English name a cursor continues after; 422 for anything a page never handed out."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        name = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not name:  # every tag has a name: an empty one was never handed out
        raise ProblemError(
            422, "invalid cursor: pass next_cursor from the previous page", kind="invalid-cursor"
        )
    return name


@router.get("", response_model=TagPage, summary="List tags, or those starting with a prefix")
def tags(
    _: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
    prefix: Annotated[
        TagName | None, Query(description="English (any case) or Chinese prefix")
    ] = None,
    origin: Annotated[TagOrigin | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
) -> TagPage:
    rows = list_tags(
        session,
        services.model_id(),
        prefix=prefix.strip() if prefix else None,
        origin=origin,
        limit=limit + 1,
        after=_after(cursor) if cursor else None,
        visible=scope.tag_condition(Tag.id),  # other collections' concept tags left out
    )
    more = len(rows) > limit
    page = rows[:limit]
    relations = tag_relations(session, [t.english for t in page])  # a few queries per page
    return TagPage(
        items=[tag_out(t, relations.get(label_key(t.english))) for t in page],
        next_cursor=_cursor(rows[limit - 1].english) if more else None,
    )


@router.get("/{tag_id}", response_model=TagOut, summary="One tag")
def tag(
    tag_id: TagId, _: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> TagOut:
    return _with_relations(session, _visible_tag(session, scope, services.model_id(), tag_id))


def _visible_tag(session: Session, scope: CollectionScope, model_id: str, tag_id: int) -> Tag:
    """The model's tag when the key sees it (not another collection's concept's); else 404."""
    row = get_tag(session, tag_id)
    if row is None or row.model_name != model_id or tag_id in scope.hidden_tag_ids(session):
        raise not_found("tag", tag_id)
    return row


@router.patch("/{tag_id}", response_model=TagOut, summary="Set or clear a tag's threshold override")
def set_threshold(
    tag_id: TagId,
    body: ThresholdUpdate,
    _: AdminKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
) -> TagOut:
    _visible_tag(session, scope, services.model_id(), tag_id)
    # A threshold changes what every collection's searches match.
    scope.require_unrestricted("a tag's threshold")
    try:
        row = set_threshold_override(session, tag_id, body.threshold_override)
    except ValueError as exc:
        raise ProblemError(422, str(exc), kind="validation") from exc
    session.commit()
    return _with_relations(session, row)
