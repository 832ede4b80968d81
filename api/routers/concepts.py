"""Open-set concepts: create (starts the backfill that makes it a tag), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.deps import ConceptId, ReadKey, ScopeDep, ServicesDep, SessionDep, WriteKey
from api.problems import ProblemError, not_found
from api.routers.jobs import job_out
from api.schemas import ConceptCreate, ConceptCreated, ConceptOut, ConceptPage
from indexer.db.collection_repo import get_collection
from indexer.db.collection_scope import CollectionScope
from indexer.db.concept_repo import create_concept, find_concept, get_concept, list_concepts
from indexer.db.concepts import Concept
from indexer.db.job_repo import create_job
from indexer.db.jobs import JobKind
from indexer.db.tags import Tag
from ram_pp.concepts import Concept as ConceptSpec

router = APIRouter(prefix="/concepts", tags=["concepts"])


def concept_out(concept: Concept) -> ConceptOut:
    return ConceptOut(
        id=concept.id,
        name=concept.name,
        status=concept.status,
        descriptions=list(concept.descriptions or []),
        threshold=concept.threshold,
        tag_id=concept.tag_id,
        error=concept.error,
        created_at=concept.created_at,
        collection_id=concept.collection_id,
    )


def visible_concept(
    session: Session, scope: CollectionScope, model_id: str, concept_id: int
) -> Concept:
    """The model's concept when the key sees it (global or of its collections); else 404."""
    row = get_concept(session, concept_id)
    if row is None or row.model_name != model_id or not scope.sees_concept(row):
        raise not_found("concept", concept_id)
    return row


@router.post(
    "",
    status_code=202,
    response_model=ConceptCreated,
    summary="Create a concept and start scoring every archived asset for it",
)
def create(
    body: ConceptCreate, _: WriteKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> ConceptCreated:
    settings = services.settings
    model_id = services.model_id()
    if body.generate and not (settings.llm.url and settings.llm.model):
        raise ProblemError(
            422,
            "no LLM endpoint is configured (RAMDEX_LLM__URL, RAMDEX_LLM__MODEL): "
            "give descriptions or leave generate off",
            kind="llm-unavailable",
        )
    try:
        spec = ConceptSpec(body.name, tuple(body.descriptions or ()))
    except (TypeError, ValueError) as exc:
        raise ProblemError(422, str(exc), kind="validation") from exc
    # A restricted key's concept is its collection's (403 for another's); an unrestricted
    # key's is global unless it names a collection.
    collection_id = scope.target_collection(body.collection)
    if collection_id is not None and get_collection(session, collection_id) is None:
        raise not_found("collection", collection_id)
    # Names are unique among the concepts and tags the key sees; a collection's concept
    # becomes a tag named "name [collection]" (concept_repo.tag_name_of), so another
    # collection's concept of the same name neither clashes nor shows.
    visible_tag = scope.tag_condition(Tag.id)
    if find_concept(session, model_id, spec.name, visible=scope.concept_condition()) or (
        session.scalar(
            select(Tag.id).where(
                Tag.model_name == model_id,
                func.lower(Tag.english) == spec.name.lower(),
                *([] if visible_tag is None else [visible_tag]),
            )
        )
    ):
        raise ProblemError(
            409, f"a concept or tag named {spec.name!r} already exists", kind="conflict"
        )
    concept = create_concept(
        session,
        model_name=model_id,
        name=spec.name,
        descriptions=list(spec.descriptions),
        threshold=body.threshold if body.threshold is not None else 0.5,
        collection_id=collection_id,
    )
    job = create_job(session, kind=JobKind.BACKFILL, params={"concept_id": concept.id})
    job.collection_id = collection_id  # the collection's keys follow its backfill
    session.commit()
    concept_id, job_id = concept.id, job.id
    fixed = body.threshold is not None
    if settings.broker.url:  # a model worker scores the archive (it has the model, maybe a GPU)
        from indexer.tasks import start_backfill

        start_backfill(
            concept_id, job_id, settings=settings, generate=body.generate, fixed_threshold=fixed
        )
    else:
        services.background(
            lambda: services.backfill_concept(
                concept_id, job_id, generate=body.generate, fixed_threshold=fixed
            )
        )
    return ConceptCreated(concept=concept_out(concept), job=job_out(job))


@router.get(
    "", response_model=ConceptPage, summary="Concepts of the configured model, newest first"
)
def concepts(
    _: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> ConceptPage:
    rows = list_concepts(session, services.model_id(), visible=scope.concept_condition())
    return ConceptPage(items=[concept_out(c) for c in rows])


@router.get("/{concept_id}", response_model=ConceptOut, summary="One concept")
def concept(
    concept_id: ConceptId, _: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> ConceptOut:
    return concept_out(visible_concept(session, scope, services.model_id(), concept_id))


@router.delete(
    "/{concept_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a concept and its tag",
)
def delete(
    concept_id: ConceptId, _: WriteKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> Response:
    row = visible_concept(session, scope, services.model_id(), concept_id)
    if row.collection_id is None:
        scope.require_unrestricted("deleting a global concept")  # 403 for a restricted key
    tag = session.get(Tag, row.tag_id) if row.tag_id is not None else None
    session.delete(row)
    if tag is not None:
        session.delete(tag)  # its scores go with it (ON DELETE CASCADE)
    session.commit()
    services.cache("rankings").clear()
    return Response(status_code=204)
