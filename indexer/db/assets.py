"""Assets (one row per distinct content, keyed by SHA-256) and every source URI seen for them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, BigIntPK, UtcDateTime, check_in, db_now

# Longest source URI accepted, in UTF-8 bytes: keeps (asset_id, uri) under PostgreSQL's btree
# entry limit (about 2.7 kB).
MAX_URI_BYTES = 2048


class AssetStatus(StrEnum):
    """Lifecycle of an asset: pending -> processing -> done | failed."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class Asset(Base):
    """One distinct file content (deduplicated by SHA-256) and what the model made of it.

    ``embedding`` is the unit-norm image embedding c as little-endian float32 bytes of
    ``embedding_dim`` values. Token embeddings E live in the token store: ``token_shard`` and
    ``token_offset`` locate them (``token_shard IS NULL`` means no tokens stored).
    """

    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    mime: Mapped[str | None] = mapped_column(sa.String(100))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(
        sa.String(16), default=AssetStatus.PENDING.value, server_default=AssetStatus.PENDING.value
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Processing runs started and not known to have ended: a file that kills its worker (a
    # decoder crash) is redelivered, and this count stops it after a few tries.
    attempts: Mapped[int] = mapped_column(sa.SmallInteger, default=0, server_default="0")
    # The processing lease of an unfinished asset: the process that promised to dispatch or
    # process it, and until when (renewed while it works). An expired lease means that process
    # died: the work is runnable again (indexer.ingest.reconcile).
    lease_owner: Mapped[str | None] = mapped_column(sa.String(160))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When a message for this pending asset was last sent to the model queue (NULL: never).
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    model_name: Mapped[str | None] = mapped_column(sa.String(128))
    storage_path: Mapped[str | None] = mapped_column(sa.Text)
    thumbnail_path: Mapped[str | None] = mapped_column(sa.Text)
    thumbnail: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    token_shard: Mapped[int | None] = mapped_column(sa.Integer)
    token_offset: Mapped[int | None] = mapped_column(sa.BigInteger)
    embedding: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    embedding_dim: Mapped[int | None] = mapped_column(sa.SmallInteger)
    # What the file is (indexer.frames.MediaKind: video, raw, animated; NULL = a still image),
    # and a video's or animation's length and codec (docs/media.md).
    kind: Mapped[str | None] = mapped_column(sa.String(16))
    duration_s: Mapped[float | None] = mapped_column(sa.Float)
    codec: Mapped[str | None] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("status", tuple(AssetStatus)), name="status"),
        sa.CheckConstraint("size_bytes IS NULL OR size_bytes >= 0", name="size_bytes"),
        sa.Index("ix_assets_status", "status"),
        sa.Index("ix_assets_created_at", "created_at"),
        sa.Index("ix_assets_mime", "mime"),
        # Reindex: "done assets scored by a model other than M" is two ranges of this index;
        # the newest done asset of a model (is its FAISS index stale?) is its last entry.
        sa.Index("ix_assets_model_name_status_updated_at", "model_name", "status", "updated_at"),
        # The reconciler: expired leases, and pending assets never or long ago dispatched.
        sa.Index("ix_assets_status_lease_until", "status", "lease_until"),
        sa.Index("ix_assets_status_dispatched_at", "status", "dispatched_at"),
    )

    @property
    def has_tokens(self) -> bool:
        """Whether the token store holds this asset's token embeddings E."""
        return self.token_shard is not None


class AssetSource(Base):
    """A place an asset was seen (file path or URL), with first and last sighting."""

    __tablename__ = "asset_sources"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE")
    )
    uri: Mapped[str] = mapped_column(sa.String(MAX_URI_BYTES))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())

    __table_args__ = (
        sa.UniqueConstraint("asset_id", "uri"),
        sa.Index("ix_asset_sources_uri", "uri"),
    )
