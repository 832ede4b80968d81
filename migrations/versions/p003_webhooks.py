"""Events (the outbox), webhook subscriptions and their deliveries.

Revision ID: p003
Revises: p002
"""

from __future__ import annotations

from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "p003"
down_revision: str | Sequence[str] | None = "p002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the webhooks tables."""


def downgrade() -> None:
    """Drop the webhooks tables."""
