"""Sources: S3-compatible object-storage prefixes and folders that ramdex scans (and watches),
and the objects each scan saw.

A ``sources`` row is what a person added (``ramdex sources add``): its kind, URI, globs, the
collection its assets go to, how often it is scanned, whether originals are copied into the
media store, and how its last scan went. ``source_objects`` holds one row per key (S3 object key
or path relative to the folder) the source listed, with the ETag/size/mtime seen when it was
registered, so a re-scan reads only new and changed objects; an object no longer listed gets
``gone_at`` (its asset stays in the archive: it is "gone from that source").
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.assets import MAX_URI_BYTES
from indexer.db.base import Base, JsonType, UtcDateTime, check_in


class SourceKind(StrEnum):
    """Where a source's objects live."""

    S3 = "s3"
    FOLDER = "folder"


class ScanStatus(StrEnum):
    """How a source's last scan went: never scanned, running, ok, or error (``last_error``)."""

    NEVER = "never"
    RUNNING = "running"
    OK = "ok"
    ERROR = "error"


class Source(Base):
    """An object-storage prefix or a folder whose images are ingested into a collection."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    uri: Mapped[str] = mapped_column(sa.String(MAX_URI_BYTES), unique=True)
    include: Mapped[list[str]] = mapped_column(JsonType, default=list)
    exclude: Mapped[list[str]] = mapped_column(JsonType, default=list)
    collection_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE")
    )
    watch: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    interval_s: Mapped[int] = mapped_column(sa.Integer, default=300, server_default="300")
    copy_originals: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    # Scheduling: the next full scan is due at this time (NULL: now).
    next_scan_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_scan_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status: Mapped[str] = mapped_column(
        sa.String(16), default=ScanStatus.NEVER.value, server_default=ScanStatus.NEVER.value
    )
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_job_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The last scan's figures: listed, new, changed, unchanged, gone, failed, elapsed_s.
    last_counts: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    __table_args__ = (
        sa.CheckConstraint(check_in("kind", tuple(SourceKind)), name="kind"),
        sa.CheckConstraint(check_in("last_status", tuple(ScanStatus)), name="last_status"),
        sa.CheckConstraint("interval_s >= 1", name="interval_s"),
        sa.Index("ix_sources_collection_id", "collection_id"),
    )


class SourceObject(Base):
    """One key a source listed: what it was when registered, its asset, and whether it is gone.

    ``etag`` is NULL for folders (size and mtime say whether a file changed); ``asset_id`` is
    NULL while the object could not be read (``error`` says why: it is read again next scan) or
    after its asset was deleted.
    """

    __tablename__ = "source_objects"

    source_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(MAX_URI_BYTES), primary_key=True)
    etag: Mapped[str | None] = mapped_column(sa.String(200))
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    mtime: Mapped[datetime | None] = mapped_column(UtcDateTime)
    asset_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="SET NULL")
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    gone_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (sa.Index("ix_source_objects_asset_id", "asset_id"),)
