"""asset companions: the camera JPEG of a RAW+JPEG pair, recorded with its RAW asset

Revision ID: v003
Revises: v002
Create Date: 2027-01-20 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "v003"
down_revision: str | Sequence[str] | None = "v002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``asset_companions`` (a new table only: nothing existing is rebuilt)."""
    op.create_table(
        "asset_companions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.String(2048), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("mime", sa.String(100), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("first_seen", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_companions_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_companions")),
        sa.UniqueConstraint("uri", name=op.f("uq_asset_companions_uri")),
        sa.CheckConstraint("role IN ('jpeg')", name=op.f("ck_asset_companions_role")),
    )
    op.create_index("ix_asset_companions_asset_id", "asset_companions", ["asset_id"])


def downgrade() -> None:
    """Drop ``asset_companions`` (the RAW assets stay; their JPEGs are forgotten)."""
    op.drop_index("ix_asset_companions_asset_id", table_name="asset_companions")
    op.drop_table("asset_companions")
