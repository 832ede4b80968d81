"""Small SQL helpers shared by the data-access modules (private)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

T = TypeVar("T")

# Bound parameters per statement stay well below SQLite's limit (32766) and PostgreSQL's (65535).
IN_CHUNK = 5000


def table_of(model: Any) -> sa.Table:
    """The Core table of a mapped class (typed, for statements built on tables)."""
    return cast(sa.Table, model.__table__)


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE or DELETE result."""
    return int(cast(CursorResult[Any], result).rowcount)


def upsert_insert(session: Session, table: sa.Table) -> Any:
    """A dialect ``INSERT`` that supports ``on_conflict_do_nothing/do_update``."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported database dialect {name!r}")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def truncate_text(text: str, limit: int = 4000) -> str:
    """``text`` cut to ``limit`` characters (error messages can be huge tracebacks)."""
    return text if len(text) <= limit else text[: limit - 15] + " ...[truncated]"


def bulk_insert(
    session: Session, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (about 3x faster than
    executemany for tag scores), executemany elsewhere."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        import psycopg

        driver = session.connection().connection.driver_connection
        assert driver is not None, "no DBAPI connection"
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as exc:
            # The same exception types as any other statement (IntegrityError,
            # OperationalError, ...), so callers' retry and error handling see no difference.
            raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
        return
    session.execute(sa.insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
