"""long videos split into time-range parts that several workers share

Revision ID: v002
Revises: v001
Create Date: 2027-01-19 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "v002"
down_revision: str | Sequence[str] | None = "v001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the ``video_parts`` table (videos indexed before it have no parts)."""
    op.create_table(
        "video_parts",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("first_idx", sa.Integer(), nullable=False),
        sa.Column("max_frames", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("poster_idx", sa.Integer(), nullable=True),
        sa.Column("score_tags", sa.LargeBinary(), nullable=True),
        sa.Column("score_values", sa.LargeBinary(), nullable=True),
        sa.Column("lease_owner", sa.String(160), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')",
            name=op.f("ck_video_parts_status"),
        ),
        sa.CheckConstraint("start_s <= end_s", name=op.f("ck_video_parts_range")),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_video_parts_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("asset_id", "part", name=op.f("pk_video_parts")),
    )
    op.create_index("ix_video_parts_status_lease_until", "video_parts", ["status", "lease_until"])


def downgrade() -> None:
    """Drop the parts table."""
    op.drop_index("ix_video_parts_status_lease_until", table_name="video_parts")
    op.drop_table("video_parts")
