"""Collections: named groups of assets, and the collections an API key is limited to.

An asset belongs to any number of collections (``asset_collections``; a source's assets go to
the source's collection). An API key either sees every collection (``api_keys.all_collections``
true, the default and what keys made before collections existed get) or only those listed in
``api_key_collections``: a key limited to collections whose rows were all deleted sees nothing,
never everything (the flag, not the absence of rows, says "unrestricted").
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, UtcDateTime

# Longest collection name accepted (characters).
MAX_COLLECTION_NAME = 200


class Collection(Base):
    """A named group of assets (a team's, a client's, a source's)."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(MAX_COLLECTION_NAME), unique=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())


class AssetCollection(Base):
    """An asset's membership of a collection.

    The primary key leads with the collection so "the assets of collection C" is one index
    range (search within a collection); the second index answers "the collections of asset A".
    """

    __tablename__ = "asset_collections"

    collection_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())

    __table_args__ = (sa.Index("ix_asset_collections_asset_id", "asset_id"),)


class ApiKeyCollection(Base):
    """A collection an API key is limited to (only read when the key's ``all_collections`` is
    false)."""

    __tablename__ = "api_key_collections"

    api_key_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    collection_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
