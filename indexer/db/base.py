"""Declarative base, naming convention and column types shared by every table.

Every constraint and index gets a deterministic name (``naming_convention``) so migrations can
drop or alter them by name on both PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; plain INTEGER on SQLite, where only "INTEGER PRIMARY KEY" is the
# auto-incrementing rowid (SQLite integers are 64-bit anyway).
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# 4-byte floats: scores and thresholds need no more, and asset_tags is the biggest table.
Real: sa.REAL[float] = sa.REAL()

# JSONB on PostgreSQL (compact, indexable), JSON text on SQLite.
JsonType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as UTC
    without an offset and read back as aware UTC datetimes. Naive inputs are taken to be UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class db_now(sa.sql.functions.FunctionElement[datetime]):  # noqa: N801 - reads like func.now
    """The database's current time for ``updated_at``: ``now()`` on PostgreSQL, and on SQLite
    ``CURRENT_TIMESTAMP`` with sub-second digits (plain ``CURRENT_TIMESTAMP`` has one-second
    resolution, too coarse to tell two writes apart in the FAISS staleness watermark)."""

    type = UtcDateTime()
    inherit_cache = True


@compiles(db_now)
def _db_now_default(element: db_now, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of all ramdex tables."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def check_in(column: str, values: tuple[str, ...]) -> str:
    """SQL text of a CHECK that ``column`` is one of ``values`` (portable, no native enums)."""
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"
