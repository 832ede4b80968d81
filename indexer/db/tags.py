"""Tag vocabulary (per model) and per-asset tag scores."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, Real, UtcDateTime, check_in


class TagOrigin(StrEnum):
    """Where a tag came from: the model's built-in vocabulary or a promoted concept."""

    BUILTIN = "builtin"
    CONCEPT = "concept"


class Tag(Base):
    """One tag of a model's vocabulary.

    ``position`` is the tag's logit index for built-in tags (NULL for concept tags). The
    effective threshold is ``threshold_override`` when set, else ``threshold``.
    """

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(sa.String(128))
    position: Mapped[int | None] = mapped_column(sa.Integer)
    english: Mapped[str] = mapped_column(sa.String(256))
    chinese: Mapped[str | None] = mapped_column(sa.String(256))
    threshold: Mapped[float] = mapped_column(Real)
    threshold_override: Mapped[float | None] = mapped_column(Real)
    origin: Mapped[str] = mapped_column(sa.String(16), default=TagOrigin.BUILTIN.value)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("model_name", "english"),
        sa.CheckConstraint(check_in("origin", tuple(TagOrigin)), name="origin"),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
        sa.CheckConstraint(
            "threshold_override IS NULL OR (threshold_override >= 0 AND threshold_override <= 1)",
            name="threshold_override",
        ),
    )

    @property
    def effective_threshold(self) -> float:
        """The threshold in force: the override when set, else the model's threshold."""
        return self.threshold if self.threshold_override is None else self.threshold_override


# Case-insensitive prefix search: lower(english) LIKE 'abc%'. text_pattern_ops makes the btree
# usable for LIKE under any database collation on PostgreSQL (SQLite ignores operator classes).
sa.Index(
    "ix_tags_model_name_english_prefix",
    Tag.model_name,
    sa.func.lower(Tag.english).label("english_lower"),
    postgresql_ops={"english_lower": "text_pattern_ops"},
)
sa.Index(
    "ix_tags_model_name_chinese_prefix",
    Tag.model_name,
    Tag.chinese,
    postgresql_ops={"chinese": "text_pattern_ops"},
)


# Hash partitions of asset_tags on PostgreSQL (migration s001; fixed when it ran).
ASSET_TAG_PARTITIONS = 16
_PARTITION_PREFIX = "asset_tags_p"


def not_a_partition(name: str | None, type_: str, parent_names: object = None) -> bool:
    """Alembic ``include_name`` hook: False for asset_tags' partitions and their indexes.

    The partitions are created by migration s001 and mirror the partitioned parent, which the
    models describe; autogenerate must neither drop them nor compare them as tables of their own.
    """
    return not (name or "").startswith(_PARTITION_PREFIX)


class AssetTag(Base):
    """A tag score (sigmoid probability) of an asset, stored when >= the score floor.

    On PostgreSQL the table is ``PARTITION BY HASH (tag_id)`` into ``ASSET_TAG_PARTITIONS``
    partitions ``asset_tags_p00`` .. (created by migration s001, never by ``create_all``): every
    tag term of a search, and a concept backfill, touches one partition (pruned at plan time);
    a per-asset read probes every partition's primary key (docs/scale.md). SQLite keeps one
    plain table.
    """

    __tablename__ = "asset_tags"

    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True
    )
    score: Mapped[float] = mapped_column(Real)

    __table_args__ = (
        # "Assets with tag X scoring >= s, best first": an index range scan (read backwards for
        # ORDER BY score DESC, asset_id DESC) that stops after LIMIT rows; covering, so on
        # PostgreSQL it is an index-only scan. The PK (asset_id, tag_id) serves per-asset detail
        # and the EXISTS probes of multi-tag queries.
        sa.Index("ix_asset_tags_tag_id_score_asset_id", "tag_id", "score", "asset_id"),
        {"postgresql_partition_by": "HASH (tag_id)"},
    )
