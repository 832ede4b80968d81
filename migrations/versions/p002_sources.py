"""Sources (object storage and watched folders) and the objects each scan saw.

Revision ID: p002
Revises: p001
"""

from __future__ import annotations

from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "p002"
down_revision: str | Sequence[str] | None = "p001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the sources tables."""


def downgrade() -> None:
    """Drop the sources tables."""
