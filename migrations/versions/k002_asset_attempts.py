"""processing attempts per asset (poison-file protection)

Revision ID: k002
Revises: k001
Create Date: 2026-11-29 19:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "k002"
down_revision: str | Sequence[str] | None = "k001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``assets.attempts``: how often processing of the asset was started."""
    with op.batch_alter_table("assets") as batch:
        batch.add_column(
            sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Drop ``assets.attempts``."""
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("attempts")
