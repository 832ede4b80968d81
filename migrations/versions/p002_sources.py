"""Sources (object storage and watched folders) and the objects each scan saw.

Revision ID: p002
Revises: p001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import JsonType, UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "p002"
down_revision: str | Sequence[str] | None = "p001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the sources tables."""
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("uri", sa.String(2048), nullable=False),
        sa.Column("include", JsonType, nullable=False),
        sa.Column("exclude", JsonType, nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("watch", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("interval_s", sa.Integer(), server_default="300", nullable=False),
        sa.Column("copy_originals", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("next_scan_at", UtcDateTime(), nullable=True),
        sa.Column("last_scan_at", UtcDateTime(), nullable=True),
        sa.Column("last_status", sa.String(16), server_default="never", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_job_id", sa.BigInteger(), nullable=True),
        sa.Column("last_counts", JsonType, nullable=True),
        sa.CheckConstraint("kind IN ('s3', 'folder')", name=op.f("ck_sources_kind")),
        sa.CheckConstraint(
            "last_status IN ('never', 'running', 'ok', 'error')",
            name=op.f("ck_sources_last_status"),
        ),
        sa.CheckConstraint("interval_s >= 1", name=op.f("ck_sources_interval_s")),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_sources_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("uri", name=op.f("uq_sources_uri")),
    )
    op.create_index("ix_sources_collection_id", "sources", ["collection_id"])
    op.create_table(
        "source_objects",
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(2048), nullable=False),
        sa.Column("etag", sa.String(200), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("mtime", UtcDateTime(), nullable=True),
        sa.Column("asset_id", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seen_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("gone_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name=op.f("fk_source_objects_source_id_sources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_source_objects_asset_id_assets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("source_id", "key", name=op.f("pk_source_objects")),
    )
    op.create_index("ix_source_objects_asset_id", "source_objects", ["asset_id"])


def downgrade() -> None:
    """Drop the sources tables (the assets they brought in stay, with their collections)."""
    op.drop_index("ix_source_objects_asset_id", table_name="source_objects")
    op.drop_table("source_objects")
    op.drop_index("ix_sources_collection_id", table_name="sources")
    op.drop_table("sources")
