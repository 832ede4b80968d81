"""Data access for open-set concepts (create, read, update, delete, promote to a tag).

Every function runs inside the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import rowcount, truncate_text
from indexer.db.concepts import Concept, ConceptStatus
from indexer.db.errors import DuplicateError, NotFoundError
from indexer.db.tags import Tag, TagOrigin
from indexer.db.vectors import decode_vectors, encode_vectors

UNIT_NORM_TOLERANCE = 1e-3


def _check_descriptions(descriptions: Sequence[str]) -> list[str]:
    items = [d.strip() for d in descriptions]
    if not items or any(not d for d in items):
        raise ValueError("a concept needs at least one non-empty description")
    return items


def _check_embeddings(embeddings: np.ndarray, count: int) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != count or array.shape[1] == 0:
        raise ValueError(f"expected ({count}, dim) description embeddings, got {array.shape}")
    norms = np.linalg.norm(array, axis=1)
    if not np.all(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE):
        raise ValueError("description embeddings must be L2-normalised rows")
    return array


def create_concept(
    session: Session,
    *,
    model_name: str,
    name: str,
    descriptions: Sequence[str],
    embeddings: np.ndarray | None = None,
    text_encoder: str | None = None,
    threshold: float = 0.5,
    collection_id: int | None = None,
) -> Concept:
    """Create a concept; ``ready`` when embeddings are given, else ``draft``.

    Args:
        model_name: the model whose open-set head will score it.
        name: unique per model and scope (global, or one collection).
        descriptions: texts encoded into the concept's label bank.
        embeddings: (len(descriptions), d) unit-norm rows, in description order.
        text_encoder: name of the encoder that produced ``embeddings``.
        threshold: probability above which the concept is output (upstream uses 0.5).
        collection_id: the collection it belongs to (None: global, seen by every key).

    Raises:
        DuplicateError: a concept with this name exists for the model in that scope.
        ValueError: empty name/descriptions, bad embeddings or threshold.
    """
    name = name.strip()
    if not name or not model_name:
        raise ValueError("concept name and model_name must not be empty")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    texts = _check_descriptions(descriptions)
    if get_concept_by_name(session, model_name, name, collection_id=collection_id) is not None:
        raise DuplicateError(f"concept {name!r} already exists for model {model_name!r}")
    concept = Concept(
        model_name=model_name,
        collection_id=collection_id,
        name=name,
        descriptions=texts,
        text_encoder=text_encoder,
        threshold=threshold,
        status=ConceptStatus.DRAFT.value,
        embedding_count=0,
    )
    if embeddings is not None:
        _set_embeddings(concept, embeddings, text_encoder)
    session.add(concept)
    session.flush()
    return concept


def _set_embeddings(concept: Concept, embeddings: np.ndarray, encoder: str | None) -> None:
    array = _check_embeddings(embeddings, len(concept.descriptions))
    concept.embeddings = encode_vectors(array)
    concept.embedding_count, concept.embedding_dim = int(array.shape[0]), int(array.shape[1])
    if encoder is not None:
        concept.text_encoder = encoder
    if concept.status == ConceptStatus.DRAFT.value:
        concept.status = ConceptStatus.READY.value


def get_concept(session: Session, concept_id: int) -> Concept | None:
    """The concept, or None."""
    return session.get(Concept, concept_id)


def get_concept_by_name(
    session: Session, model_name: str, name: str, *, collection_id: int | None = None
) -> Concept | None:
    """The model's concept with this exact name in one scope (global when ``collection_id`` is
    None), or None."""
    scope = (
        Concept.collection_id.is_(None)
        if collection_id is None
        else Concept.collection_id == collection_id
    )
    stmt = sa.select(Concept).where(
        Concept.model_name == model_name, Concept.name == name.strip(), scope
    )
    return session.scalars(stmt).one_or_none()


def find_concept(
    session: Session, model_name: str, name: str, visible: Any = None
) -> Concept | None:
    """The model's concept with this name in any case (the API keeps names unique per model
    and scope ignoring case), or None. ``visible``: an SQL condition on ``concepts`` limiting
    which are seen (a collection-limited key's); a collection's own concept wins over a global
    one of the same name."""
    stmt = sa.select(Concept).where(
        Concept.model_name == model_name, sa.func.lower(Concept.name) == name.strip().lower()
    )
    if visible is not None:
        stmt = stmt.where(visible)
    # Collection concepts first (NULL sorts last on PostgreSQL, first on SQLite: explicit).
    stmt = stmt.order_by(Concept.collection_id.is_(None), Concept.id)
    return session.scalars(stmt).first()


def list_concepts(
    session: Session,
    model_name: str | None = None,
    *,
    status: ConceptStatus | str | None = None,
    visible: Any = None,
) -> list[Concept]:
    """Concepts, newest first, optionally of one model and one status; ``visible`` an SQL
    condition on ``concepts`` (a collection-limited key's view)."""
    stmt = sa.select(Concept).order_by(Concept.id.desc())
    if visible is not None:
        stmt = stmt.where(visible)
    if model_name is not None:
        stmt = stmt.where(Concept.model_name == model_name)
    if status is not None:
        stmt = stmt.where(Concept.status == ConceptStatus(status).value)
    return list(session.scalars(stmt))


def update_concept(
    session: Session,
    concept_id: int,
    *,
    descriptions: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    text_encoder: str | None = None,
    threshold: float | None = None,
    status: ConceptStatus | str | None = None,
    error: str | None = None,
) -> Concept:
    """Change a concept. New descriptions without embeddings drop the old embeddings (back to
    ``draft``): they no longer describe the texts.

    Raises:
        NotFoundError: no such concept.
        ValueError: bad values (as for :func:`create_concept`).
    """
    concept = session.get(Concept, concept_id)
    if concept is None:
        raise NotFoundError(f"no concept with id {concept_id}")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        concept.threshold = threshold
    if descriptions is not None:
        concept.descriptions = _check_descriptions(descriptions)
        if embeddings is None:
            concept.embeddings, concept.embedding_count, concept.embedding_dim = None, 0, None
            if concept.status == ConceptStatus.READY.value:
                concept.status = ConceptStatus.DRAFT.value
    if embeddings is not None:
        _set_embeddings(concept, embeddings, text_encoder)
    elif text_encoder is not None:
        concept.text_encoder = text_encoder
    if status is not None:
        concept.status = ConceptStatus(status).value
    if error is not None:
        concept.error = truncate_text(error)
    session.flush()
    return concept


def delete_concept(session: Session, concept_id: int) -> bool:
    """Delete a concept (a tag it was promoted to stays). Returns whether it existed."""
    result = session.execute(sa.delete(Concept).where(Concept.id == concept_id))
    return rowcount(result) > 0


def concept_embeddings(concept: Concept) -> np.ndarray:
    """The concept's (count, dim) float32 description embeddings.

    Raises:
        ValueError: the concept has no embeddings yet.
    """
    if concept.embeddings is None or not concept.embedding_dim:
        raise ValueError(f"concept {concept.name!r} has no description embeddings yet")
    return decode_vectors(concept.embeddings, concept.embedding_dim)


def tag_name_of(session: Session, concept: Concept) -> str:
    """The name of the tag a concept becomes: its own name for a global concept; for a
    collection's, the name followed by the collection's in brackets (``logo [team-a]``), so
    that two collections' concepts of one name make two tags (tags are one vocabulary per
    model, and people's labels are keyed by tag name)."""
    if concept.collection_id is None:
        return concept.name
    from indexer.db.collections import Collection

    owner = session.get(Collection, concept.collection_id)
    suffix = f" [{owner.name if owner is not None else concept.collection_id}]"
    return concept.name[: max(1, 256 - len(suffix))] + suffix[:255]


def promote_concept(session: Session, concept_id: int, *, chinese: str | None = None) -> Tag:
    """Make a concept a permanent tag of its model (origin ``concept``), status ``promoted``.

    The caller then stores the concept's scores for existing assets with
    :func:`~indexer.db.tag_repo.write_tag_scores`.

    Raises:
        NotFoundError: no such concept.
        DuplicateError: the model already has a tag with this name.
        ValueError: the concept has no embeddings.
    """
    concept = session.get(Concept, concept_id)
    if concept is None:
        raise NotFoundError(f"no concept with id {concept_id}")
    if concept.tag_id is not None:
        tag = session.get(Tag, concept.tag_id)
        if tag is not None:
            return tag
    if concept.embeddings is None:
        raise ValueError(f"concept {concept.name!r} has no embeddings; it cannot become a tag")
    english = tag_name_of(session, concept)
    clash = session.scalars(
        sa.select(Tag).where(Tag.model_name == concept.model_name, Tag.english == english)
    ).one_or_none()
    if clash is not None:
        raise DuplicateError(f"model {concept.model_name!r} already has a tag {english!r}")
    tag = Tag(
        model_name=concept.model_name,
        english=english,
        chinese=chinese,
        threshold=concept.threshold,
        origin=TagOrigin.CONCEPT.value,
    )
    session.add(tag)
    session.flush()
    concept.tag_id = tag.id
    concept.status = ConceptStatus.PROMOTED.value
    session.flush()
    return tag
