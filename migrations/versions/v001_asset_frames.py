"""video, RAW and animated assets: asset kind and video facts, frames with timestamps

Revision ID: v001
Revises: p003
Create Date: 2027-01-12 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "v001"
down_revision: str | Sequence[str] | None = "p003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``assets.kind``, ``duration_s``, ``codec`` and the ``asset_frames`` table.

    Plain ``ADD COLUMN`` on both databases (no SQLite batch rebuild of ``assets``, so nothing
    that hangs on the table is recreated)."""
    op.add_column("assets", sa.Column("kind", sa.String(16), nullable=True))
    op.add_column("assets", sa.Column("duration_s", sa.Float(), nullable=True))
    op.add_column("assets", sa.Column("codec", sa.String(32), nullable=True))
    op.create_table(
        "asset_frames",
        sa.Column(
            "asset_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "assets.id", ondelete="CASCADE", name=op.f("fk_asset_frames_asset_id_assets")
            ),
            nullable=False,
        ),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("timestamp_s", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_dim", sa.SmallInteger(), nullable=True),
        sa.Column("score_tags", sa.LargeBinary(), nullable=True),
        sa.Column("score_values", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("asset_id", "idx", name=op.f("pk_asset_frames")),
        sa.CheckConstraint("idx >= 0", name=op.f("ck_asset_frames_idx")),
    )


def downgrade() -> None:
    """Drop the frames table and the asset columns.

    Plain ``DROP COLUMN`` (SQLite >= 3.35) rather than a batch rebuild: rebuilding ``assets``
    drops the old table, and with foreign keys on that cascades into every asset's tags."""
    op.drop_table("asset_frames")
    for column in ("codec", "duration_s", "kind"):
        op.drop_column("assets", column)
