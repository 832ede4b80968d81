"""Distributed concept backfill: ``backfill_parts`` (one row per range of asset ids, its cursor).

Revision ID: b001
Revises: m001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "b001"
down_revision: str | Sequence[str] | None = "m001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the parts table (existing backfill jobs have no parts and run as one part)."""
    op.create_table(
        "backfill_parts",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("id_lo", sa.BigInteger(), nullable=False),
        sa.Column("id_hi", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=True),
        sa.Column("done", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(160), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')",
            name=op.f("ck_backfill_parts_status"),
        ),
        sa.CheckConstraint("id_lo <= id_hi", name=op.f("ck_backfill_parts_range")),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_backfill_parts_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "part", name=op.f("pk_backfill_parts")),
    )
    op.create_index(
        "ix_backfill_parts_status_lease_until", "backfill_parts", ["status", "lease_until"]
    )


def downgrade() -> None:
    """Drop the parts table."""
    op.drop_index("ix_backfill_parts_status_lease_until", table_name="backfill_parts")
    op.drop_table("backfill_parts")
