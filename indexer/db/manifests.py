"""Bulk-ingest manifests: a manifest file staged row by row, with its durable offsets.

``manifests.rows_registered`` is the manifest offset: the rows before it are in
``manifest_rows`` (committed in the same transaction as the offset), so a run killed at any
point continues after it. ``rows_ingested`` is how far the staged rows were handed to ingest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, BigIntPK, JsonType, UtcDateTime


class Manifest(Base):
    """One manifest file (identified by its absolute path, size and mtime) and its offsets."""

    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    path: Mapped[str] = mapped_column(sa.Text)
    format: Mapped[str] = mapped_column(sa.String(16))
    rows_registered: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    rows_malformed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    rows_ingested: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    complete: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())


class ManifestRow(Base):
    """A valid manifest row: its source (URL or absolute path), external id and metadata."""

    __tablename__ = "manifest_rows"

    manifest_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True
    )
    row_no: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    uri: Mapped[str] = mapped_column(sa.Text)
    external_id: Mapped[str | None] = mapped_column(sa.Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)

    __table_args__ = (sa.Index("ix_manifest_rows_uri", "uri"),)
