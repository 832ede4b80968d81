"""Bulk-ingest manifests: ``manifests`` (durable offsets) and ``manifest_rows`` (staged rows).

Revision ID: m001
Revises: s001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import BigIntPK, JsonType, UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "m001"
down_revision: str | Sequence[str] | None = "s001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the two manifest tables."""
    op.create_table(
        "manifests",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("rows_registered", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("rows_malformed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("rows_ingested", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("complete", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UtcDateTime(), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifests")),
        sa.UniqueConstraint("key", name=op.f("uq_manifests_key")),
    )
    op.create_table(
        "manifest_rows",
        sa.Column("manifest_id", sa.BigInteger(), nullable=False),
        sa.Column("row_no", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("metadata", JsonType, nullable=True),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifests.id"],
            name=op.f("fk_manifest_rows_manifest_id_manifests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", "row_no", name=op.f("pk_manifest_rows")),
    )
    op.create_index("ix_manifest_rows_uri", "manifest_rows", ["uri"])


def downgrade() -> None:
    """Drop the manifest tables."""
    op.drop_index("ix_manifest_rows_uri", table_name="manifest_rows")
    op.drop_table("manifest_rows")
    op.drop_table("manifests")
