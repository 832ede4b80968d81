"""API keys of the HTTP service: only a hash of each secret is stored."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, UtcDateTime


class ApiKey(Base):
    """One API key: public id, sha256 of its secret, scopes, and its life.

    ``scopes`` is a comma-separated subset of ``read,write,admin``; ``revoked_at`` set means the
    key no longer works (rows are kept so audit logs keep resolving key ids);
    ``all_collections`` false limits the key to its ``api_key_collections`` rows.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(200))
    scopes: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # False: the key sees only the collections listed for it in ``api_key_collections``
    # (indexer.db.collections); true: every collection.
    all_collections: Mapped[bool] = mapped_column(
        sa.Boolean, default=True, server_default=sa.true()
    )
