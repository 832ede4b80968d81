"""Import open-set concepts (upstream's ``[{"Concept": ["desc", ...]}]`` files) into the archive.

Imported concepts go where the API and search see them: the database's concepts table, for the
configured model (``GET /concepts`` lists them). :func:`backfill_imported` then makes them tags
at once, the same way ``POST /concepts`` does: a ``backfill`` job per concept that encodes its
descriptions, calibrates its threshold, promotes it to a tag and scores every stored asset
(:mod:`indexer.concept_backfill`), run by a model worker when a broker is configured, in this
process otherwise.

Importing again merges by name (case-insensitive): new descriptions replace the old ones. A
concept that is already a tag keeps its scores unless it is backfilled again with the new
descriptions, and a name that belongs to another tag (a built-in one) is refused: the two could
not be told apart in searches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.concept_repo import create_concept, find_concept, update_concept
from indexer.db.concepts import Concept as ConceptRow
from indexer.db.concepts import ConceptStatus
from indexer.db.job_repo import create_job
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.db.tags import Tag
from indexer.settings import Settings
from ram_pp.concepts import Concept

log = logging.getLogger(__name__)

Action = Literal["created", "updated", "unchanged", "refused"]


@dataclass
class ImportedConcept:
    """What importing one concept did.

    Attributes:
        name: the concept's name as stored.
        action: created, updated (new descriptions), unchanged, or refused (``reason`` says why).
        concept_id: its row (None when refused).
        promoted: it is a tag already (scored over the archive).
        reason: why it was refused.
        job_id: its backfill job, once one was started.
        backfill_error: why its backfill failed (embedded mode).
    """

    name: str
    action: Action
    concept_id: int | None = None
    promoted: bool = False
    reason: str | None = None
    job_id: int | None = None
    backfill_error: str | None = None


def _clashing_tag(session: Session, model_id: str, name: str, own: ConceptRow | None) -> Tag | None:
    """A tag of the model with this name that is not the concept's own tag."""
    stmt = sa.select(Tag).where(
        Tag.model_name == model_id, sa.func.lower(Tag.english) == name.lower()
    )
    tag = session.scalars(stmt).first()
    if tag is None or (own is not None and own.tag_id == tag.id):
        return None
    return tag


def store_concepts(
    settings: Settings, model_id: str, concepts: Sequence[Concept], *, backfill: bool = False
) -> list[ImportedConcept]:
    """Store concepts for a model in one transaction (new ones as ``draft``).

    Args:
        settings: the archive's database.
        model_id: the stored id of the model that will score them (``configured_model_id``).
        concepts: validated concepts (``ram_pp.concepts.load_upstream_json``).
        backfill: the caller backfills them next, so a concept that is a tag already may take
            new descriptions (without it such a concept is refused: its scores would no longer
            match its descriptions).

    Returns:
        One outcome per concept, in order.
    """
    outcomes: list[ImportedConcept] = []
    with session_scope(settings.database_url) as session:
        for concept in concepts:
            row = find_concept(session, model_id, concept.name)
            tag = _clashing_tag(session, model_id, concept.name, row)
            if tag is not None:
                outcomes.append(
                    ImportedConcept(
                        concept.name,
                        "refused",
                        reason=f"the model already has a {tag.origin} tag named {tag.english!r}; "
                        "rename the concept",
                    )
                )
                continue
            descriptions = list(concept.descriptions)
            if row is None:
                row = create_concept(
                    session, model_name=model_id, name=concept.name, descriptions=descriptions
                )
                outcomes.append(ImportedConcept(row.name, "created", row.id))
                continue
            promoted = row.status == ConceptStatus.PROMOTED.value
            if list(row.descriptions or []) == descriptions:
                outcomes.append(ImportedConcept(row.name, "unchanged", row.id, promoted))
            elif promoted and not backfill:
                outcomes.append(
                    ImportedConcept(
                        row.name,
                        "refused",
                        row.id,
                        promoted,
                        reason="it is a tag already, scored with its old descriptions; import "
                        "with --backfill to re-score it with the new ones",
                    )
                )
            else:
                update_concept(session, row.id, descriptions=descriptions)
                outcomes.append(ImportedConcept(row.name, "updated", row.id, promoted))
    return outcomes


def needs_backfill(outcome: ImportedConcept) -> bool:
    """Whether backfilling this import outcome changes anything (a concept that is a tag with
    the same descriptions is done already)."""
    if outcome.concept_id is None or outcome.action == "refused":
        return False
    return outcome.action != "unchanged" or not outcome.promoted


def backfill_imported(
    settings: Settings,
    outcomes: Sequence[ImportedConcept],
    *,
    on_start: Callable[[ImportedConcept], None] | None = None,
) -> list[ImportedConcept]:
    """Make imported concepts tags: one ``backfill`` job each, as ``POST /concepts`` starts.

    With a broker the jobs are queued for the model workers (follow them with
    :func:`indexer.jobs.wait_for_job`); without one they run here, one after the other, with the
    configured model. A failed backfill is recorded on its job and concept and in
    ``backfill_error``; the others still run.

    Returns:
        The outcomes that were backfilled (``job_id`` set).
    """
    todo = [o for o in outcomes if needs_backfill(o)]
    if not todo:
        return []
    with session_scope(settings.database_url) as session:
        for outcome in todo:
            job = create_job(
                session, kind=JobKind.BACKFILL, params={"concept_id": outcome.concept_id}
            )
            session.flush()
            outcome.job_id = job.id
    if settings.broker.url:  # a model worker scores the archive (it has the model, maybe a GPU)
        from indexer.tasks import start_backfill

        for outcome in todo:
            if on_start is not None:
                on_start(outcome)
            start_backfill(outcome.concept_id, outcome.job_id, settings=settings)  # type: ignore[arg-type]
        return todo
    from indexer.archive import Archive

    with Archive(settings) as archive:
        for outcome in todo:
            if on_start is not None:
                on_start(outcome)
            try:
                archive.backfill_concept(outcome.concept_id, outcome.job_id)  # type: ignore[arg-type]
            except Exception as exc:  # recorded on the job and the concept; go on with the rest
                outcome.backfill_error = f"{type(exc).__name__}: {exc}"
                log.debug("backfill of %s failed", outcome.name, exc_info=True)
    return todo
