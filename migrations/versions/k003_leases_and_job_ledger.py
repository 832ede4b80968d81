"""processing leases, dispatch times and the job ledger (ingest recovers by itself)

Revision ID: k003
Revises: k002
Create Date: 2026-12-01 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "k003"
down_revision: str | Sequence[str] | None = "k002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add asset and job leases, ``assets.dispatched_at``, the reconciler's indexes and
    ``job_assets`` (which assets each job waits for, and how each ended) and ``service_leases``
    (one reconciler at a time)."""
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=160), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("ix_assets_model_name_status", table_name="assets")
    op.create_index(
        "ix_assets_model_name_status_updated_at", "assets", ["model_name", "status", "updated_at"]
    )
    op.create_index("ix_assets_status_lease_until", "assets", ["status", "lease_until"])
    op.create_index("ix_assets_status_dispatched_at", "assets", ["status", "dispatched_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=160), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "job_assets",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=True),
        sa.CheckConstraint(
            "outcome IS NULL OR outcome IN ('done', 'failed')",
            name=op.f("ck_job_assets_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_job_assets_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_assets_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "asset_id", name=op.f("pk_job_assets")),
    )
    op.create_index("ix_job_assets_asset_id_outcome", "job_assets", ["asset_id", "outcome"])
    op.create_table(
        "service_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=160), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_leases")),
    )


def downgrade() -> None:
    """Drop the job ledger, the leases and the reconciler's indexes."""
    op.drop_table("service_leases")
    op.drop_index("ix_job_assets_asset_id_outcome", table_name="job_assets")
    op.drop_table("job_assets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
    op.drop_index("ix_assets_status_dispatched_at", table_name="assets")
    op.drop_index("ix_assets_status_lease_until", table_name="assets")
    op.drop_index("ix_assets_model_name_status_updated_at", table_name="assets")
    op.create_index("ix_assets_model_name_status", "assets", ["model_name", "status"])
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("dispatched_at")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
