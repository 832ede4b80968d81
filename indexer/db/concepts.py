"""Open-set concepts: a name plus descriptions whose text embeddings form a label bank."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, JsonType, Real, UtcDateTime, check_in, db_now


class ConceptStatus(StrEnum):
    """draft: no embeddings yet; ready: searchable; promoted: became a tag; failed."""

    DRAFT = "draft"
    READY = "ready"
    PROMOTED = "promoted"
    FAILED = "failed"


class Concept(Base):
    """A user-defined concept scored against stored token embeddings (retroactive search).

    ``embeddings`` holds ``embedding_count`` x ``embedding_dim`` little-endian float32 values, one
    unit-norm row per description, in the order of ``descriptions``.
    """

    __tablename__ = "concepts"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(256))
    descriptions: Mapped[list[Any]] = mapped_column(JsonType)
    embeddings: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    embedding_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    embedding_dim: Mapped[int | None] = mapped_column(sa.SmallInteger)
    text_encoder: Mapped[str | None] = mapped_column(sa.String(256))
    threshold: Mapped[float] = mapped_column(Real, default=0.5, server_default="0.5")
    status: Mapped[str] = mapped_column(
        sa.String(16), default=ConceptStatus.DRAFT.value, server_default=ConceptStatus.DRAFT.value
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    tag_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("tags.id", ondelete="SET NULL")
    )
    # NULL: a global concept; else it belongs to (and is seen only through) that collection.
    collection_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("status", tuple(ConceptStatus)), name="status"),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
    )


# A name is unique per model and scope: global (NULL, counted as 0) or one collection.
sa.Index(
    "uq_concepts_model_name_scope_name",
    Concept.model_name,
    sa.func.coalesce(Concept.collection_id, 0),
    Concept.name,
    unique=True,
)
