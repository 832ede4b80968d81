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
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, server_default=sa.func.now(), onupdate=db_now()
    )

    __table_args__ = (
        sa.CheckConstraint(check_in("kind", tuple(JobKind)), name="kind"),
        sa.CheckConstraint(check_in("status", tuple(JobStatus)), name="status"),
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
    )
