"""Tag provenance and curation: ``asset_labels``, ``label_changes``; taxonomy tables.

Existing archives keep every model score; they start with no labels (every model tag
unreviewed) and an empty taxonomy.

Revision ID: l001
Revises: b001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import BigIntPK, JsonType, UtcDateTime, db_now

# revision identifiers, used by Alembic.
revision: str = "l001"
down_revision: str | Sequence[str] | None = "b001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the label, audit and taxonomy tables."""
    op.create_table(
        "asset_labels",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("embedded", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("review", sa.String(16), nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False, server_default=db_now()),
        sa.CheckConstraint(
            "review IS NULL OR review IN ('accepted', 'rejected')",
            name=op.f("ck_asset_labels_review"),
        ),
        sa.CheckConstraint(
            "manual OR embedded OR review IS NOT NULL",
            name=op.f("ck_asset_labels_says_something"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_labels_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("asset_id", "key", name=op.f("pk_asset_labels")),
    )
    op.create_index("ix_asset_labels_key_asset_id", "asset_labels", ["key", "asset_id"])
    op.create_table(
        "label_changes",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("before", JsonType, nullable=True),
        sa.Column("after", JsonType, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False, server_default=db_now()),
        sa.CheckConstraint(
            "action IN ('add', 'remove', 'accept', 'reject', 'unreview', 'embed')",
            name=op.f("ck_label_changes_action"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_label_changes_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_changes")),
    )
    op.create_index("ix_label_changes_asset_id_id", "label_changes", ["asset_id", "id"])
    op.create_table(
        "taxonomy_terms",
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("concept", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("lang", sa.String(8), nullable=False),
        sa.Column("preferred", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_taxonomy_terms")),
    )
    op.create_index("ix_taxonomy_terms_concept", "taxonomy_terms", ["concept"])
    op.create_table(
        "taxonomy_broader",
        sa.Column("concept", sa.String(256), nullable=False),
        sa.Column("broader", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("concept", "broader", name=op.f("pk_taxonomy_broader")),
    )
    op.create_index("ix_taxonomy_broader_broader", "taxonomy_broader", ["broader"])


def downgrade() -> None:
    """Drop them (labels, review decisions and the taxonomy are lost)."""
    op.drop_index("ix_taxonomy_broader_broader", table_name="taxonomy_broader")
    op.drop_table("taxonomy_broader")
    op.drop_index("ix_taxonomy_terms_concept", table_name="taxonomy_terms")
    op.drop_table("taxonomy_terms")
    op.drop_index("ix_label_changes_asset_id_id", table_name="label_changes")
    op.drop_table("label_changes")
    op.drop_index("ix_asset_labels_key_asset_id", table_name="asset_labels")
    op.drop_table("asset_labels")
