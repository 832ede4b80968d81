"""Initial schema: assets, sources, tags, asset tag scores, concepts, jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Hand-written to match ``indexer.db`` exactly (tests compare the migrated schema with the models).
See docs/indexes.md for why each index exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    """Create all tables and indexes."""
    op.create_table(
        "assets",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("mime", sa.String(100), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=True),
        sa.Column("storage_path", sa.Text(), nullable=True),
        sa.Column("thumbnail_path", sa.Text(), nullable=True),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=True),
        sa.Column("token_shard", sa.Integer(), nullable=True),
        sa.Column("token_offset", sa.BigInteger(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_dim", sa.SmallInteger(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'done', 'failed')", name=op.f("ck_assets_status")
        ),
        sa.CheckConstraint(
            "size_bytes IS NULL OR size_bytes >= 0", name=op.f("ck_assets_size_bytes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("sha256", name=op.f("uq_assets_sha256")),
    )
    op.create_index("ix_assets_status", "assets", ["status"])
    op.create_index("ix_assets_created_at", "assets", ["created_at"])
    op.create_index("ix_assets_mime", "assets", ["mime"])
    op.create_index("ix_assets_model_name_status", "assets", ["model_name", "status"])

    op.create_table(
        "asset_sources",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.String(2048), nullable=False),
        _timestamp("first_seen"),
        _timestamp("last_seen"),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_sources_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_sources")),
        sa.UniqueConstraint("asset_id", "uri", name=op.f("uq_asset_sources_asset_id_uri")),
    )
    op.create_index("ix_asset_sources_uri", "asset_sources", ["uri"])

    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("english", sa.String(256), nullable=False),
        sa.Column("chinese", sa.String(256), nullable=True),
        sa.Column("threshold", sa.REAL(), nullable=False),
        sa.Column("threshold_override", sa.REAL(), nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("origin IN ('builtin', 'concept')", name=op.f("ck_tags_origin")),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_tags_threshold")),
        sa.CheckConstraint(
            "threshold_override IS NULL OR (threshold_override >= 0 AND threshold_override <= 1)",
            name=op.f("ck_tags_threshold_override"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("model_name", "english", name=op.f("uq_tags_model_name_english")),
    )
    # Prefix search on lower(english); text_pattern_ops lets LIKE 'abc%' use the btree under any
    # collation (PostgreSQL only; SQLite gets the plain expression index).
    postgres = op.get_context().dialect.name == "postgresql"
    opclass = " text_pattern_ops" if postgres else ""
    op.create_index(
        "ix_tags_model_name_english_prefix",
        "tags",
        ["model_name", sa.text(f"lower(english){opclass}")],
    )
    op.create_index(
        "ix_tags_model_name_chinese_prefix",
        "tags",
        ["model_name", "chinese"],
        postgresql_ops={"chinese": "text_pattern_ops"},
    )

    op.create_table(
        "asset_tags",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.REAL(), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_tags_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name=op.f("fk_asset_tags_tag_id_tags"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("asset_id", "tag_id", name=op.f("pk_asset_tags")),
    )
    op.create_index(
        "ix_asset_tags_tag_id_score_asset_id", "asset_tags", ["tag_id", "score", "asset_id"]
    )

    op.create_table(
        "concepts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("descriptions", JSON, nullable=False),
        sa.Column("embeddings", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("embedding_dim", sa.SmallInteger(), nullable=True),
        sa.Column("text_encoder", sa.String(256), nullable=True),
        sa.Column("threshold", sa.REAL(), server_default="0.5", nullable=False),
        sa.Column("status", sa.String(16), server_default="draft", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("tag_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(
            "status IN ('draft', 'ready', 'promoted', 'failed')", name=op.f("ck_concepts_status")
        ),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_concepts_threshold")),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name=op.f("fk_concepts_tag_id_tags"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concepts")),
        sa.UniqueConstraint("model_name", "name", name=op.f("uq_concepts_model_name_name")),
    )

    op.create_table(
        "jobs",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("done", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("params", JSON, nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint("kind IN ('ingest', 'reindex', 'backfill')", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])


def downgrade() -> None:
    """Drop everything (children before parents)."""
    op.drop_table("jobs")
    op.drop_table("concepts")
    op.drop_table("asset_tags")
    op.drop_table("tags")
    op.drop_table("asset_sources")
    op.drop_table("assets")
