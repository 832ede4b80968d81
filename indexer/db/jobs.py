"""Jobs: long-running ingest / reindex / backfill runs with progress counters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, BigIntPK, JsonType, UtcDateTime, check_in, db_now


class JobKind(StrEnum):
    """What a job does."""

    INGEST = "ingest"
    REINDEX = "reindex"
    BACKFILL = "backfill"


class JobStatus(StrEnum):
    """pending -> running -> done | failed | cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Job(Base):
    """A job and its progress: ``done + failed`` of ``total`` items processed."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(
        sa.String(16), default=JobStatus.PENDING.value, server_default=JobStatus.PENDING.value
    )
    total: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    done: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    # While ``pending`` (sources being registered): the registering process and how long its
    # heartbeat is good for. A pending job whose lease ran out lost its registering process.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(160))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The collection the job works for (an upload or ingest by a collection-limited key, a
    # collection's concept, a source's scan): only keys seeing it see the job. NULL: global.
    collection_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("collections.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("kind", tuple(JobKind)), name="kind"),
        sa.CheckConstraint(check_in("status", tuple(JobStatus)), name="status"),
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
    )


class JobOutcome(StrEnum):
    """How an asset ended, as far as one job is concerned."""

    DONE = "done"
    FAILED = "failed"


class JobAsset(Base):
    """The assets a job waits for: its ledger.

    A job's ``total`` counts these rows (plus sources that never became assets); ``outcome`` is
    set once, when the asset ends, by whichever process finished it, and counted into the job's
    ``done`` or ``failed`` in the same transaction. So a job tells the truth however its assets
    were finished: by its own run, another run that resumed them, or the reconciler.
    """

    __tablename__ = "job_assets"

    job_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    outcome: Mapped[str | None] = mapped_column(sa.String(8))

    __table_args__ = (
        sa.CheckConstraint(
            "outcome IS NULL OR " + check_in("outcome", tuple(JobOutcome)), name="outcome"
        ),
        # Crediting an asset's open rows when it ends.
        sa.Index("ix_job_assets_asset_id_outcome", "asset_id", "outcome"),
    )
