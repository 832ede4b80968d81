"""Collections of assets, API keys limited to collections, concepts and jobs per collection.

Existing archives get no collection (every asset outside any) and every existing key keeps
seeing everything (``all_collections`` true); existing concepts and jobs stay global. A
concept's name is unique per model and scope (global, or one collection): two collections may
each have a concept of the same name.

Revision ID: p001
Revises: l001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "p001"
down_revision: str | Sequence[str] | None = "l001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the collection tables; add ``api_keys.all_collections``,
    ``concepts.collection_id`` (concept names unique per scope) and ``jobs.collection_id``."""
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_collections_name")),
    )
    op.create_table(
        "asset_collections",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("added_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_asset_collections_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_collections_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "asset_id", name=op.f("pk_asset_collections")),
    )
    op.create_index("ix_asset_collections_asset_id", "asset_collections", ["asset_id"])
    op.create_table(
        "api_key_collections",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_collections_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_api_key_collections_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "collection_id", name=op.f("pk_api_key_collections")),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("all_collections", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    with op.batch_alter_table("concepts") as batch:
        batch.add_column(sa.Column("collection_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_concepts_collection_id_collections"),
            "collections",
            ["collection_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.drop_constraint("uq_concepts_model_name_name", type_="unique")
    # NULL (global) counts as collection 0, so two global concepts still cannot share a name.
    op.create_index(
        "uq_concepts_model_name_scope_name",
        "concepts",
        ["model_name", sa.text("coalesce(collection_id, 0)"), "name"],
        unique=True,
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("collection_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_jobs_collection_id_collections"),
            "collections",
            ["collection_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_jobs_collection_id", ["collection_id"])


def downgrade() -> None:
    """Drop them (collection memberships, key limits and per-collection concepts' scope lost)."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_collection_id")
        batch.drop_constraint("fk_jobs_collection_id_collections", type_="foreignkey")
        batch.drop_column("collection_id")
    op.drop_index("uq_concepts_model_name_scope_name", table_name="concepts")
    with op.batch_alter_table("concepts") as batch:
        batch.create_unique_constraint("uq_concepts_model_name_name", ["model_name", "name"])
    with op.batch_alter_table("concepts") as batch:
        batch.drop_constraint("fk_concepts_collection_id_collections", type_="foreignkey")
        batch.drop_column("collection_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("all_collections")
    op.drop_table("api_key_collections")
    op.drop_index("ix_asset_collections_asset_id", table_name="asset_collections")
    op.drop_table("asset_collections")
    op.drop_table("collections")
