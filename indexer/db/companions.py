"""Companion files of an asset: the camera JPEG of a RAW+JPEG pair (docs/media.md).

A RAW+JPEG pair (same folder, same base name) is one asset when ``media.raw_jpeg_pairs`` is on:
the RAW is the master (its bytes are the asset, its path the metadata write-back target), the
JPEG is recorded here. A companion is not an asset and not a source of one: counts, facets,
exports and the XMP write-back read ``assets`` / ``asset_sources`` and never see it (an XMP
sidecar next to the JPEG would be the RAW's own ``IMG_0001.xmp``).

``uri`` is unique: one file is the companion of one master. When the RAW at that path changes
(new bytes, a new asset), the JPEG follows the new master.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.assets import MAX_URI_BYTES
from indexer.db.base import Base, BigIntPK, UtcDateTime, check_in


class CompanionRole(StrEnum):
    """What a companion file is to its asset."""

    JPEG = "jpeg"  # the camera's JPEG of a RAW+JPEG pair


class AssetCompanion(Base):
    """A file recorded with an asset without being one: where it is, what it held, when seen."""

    __tablename__ = "asset_companions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE")
    )
    uri: Mapped[str] = mapped_column(sa.String(MAX_URI_BYTES))
    role: Mapped[str] = mapped_column(sa.String(16))
    mime: Mapped[str | None] = mapped_column(sa.String(100))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("uri"),
        sa.CheckConstraint(check_in("role", tuple(CompanionRole)), name="role"),
        sa.Index("ix_asset_companions_asset_id", "asset_id"),
    )
