"""Engine and session factories: one engine per (process, URL), created lazily.

Engines hold connection pools, which must not cross ``fork()``: the cache is keyed by process id,
so a forked Celery worker builds its own engine on first use (the parent's pool is dropped without
closing the parent's connections, as SQLAlchemy recommends).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}
_pid = os.getpid()

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _settings_url() -> str:
    from indexer.settings import get_settings

    return get_settings().database_url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite (ON DELETE CASCADE needs them); WAL lets readers
    # run during a write; busy_timeout makes concurrent writers wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine_for(url: str, *, echo: bool = False, pool_size: int = 5) -> Engine:
    """A new engine for ``url`` with ramdex's per-backend settings (not cached).

    Args:
        url: SQLAlchemy URL, ``postgresql+psycopg://...`` or ``sqlite:///path``.
        echo: log SQL.
        pool_size: connections kept per process (PostgreSQL).

    Raises:
        ValueError: for a backend other than PostgreSQL or SQLite.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ValueError("in-memory SQLite is not supported: each connection sees its own DB")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, echo=echo, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        # pre_ping: survive a database restart between units of work.
        return sa.create_engine(
            parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    raise ValueError(f"unsupported database backend {backend!r} in {parsed!r}")


def _check_fork() -> None:
    global _pid
    if os.getpid() != _pid:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()
        _makers.clear()
        _pid = os.getpid()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database), built once.

    Args:
        url: SQLAlchemy URL; None means ``get_settings().database_url``.
    """
    from indexer.settings import get_settings

    url = url or _settings_url()
    with _lock:
        _check_fork()
        engine = _engines.get(url)
        if engine is None:
            db = get_settings().database
            engine = create_engine_for(url, echo=db.echo, pool_size=db.pool_size)
            _engines[url] = engine
        return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """The cached session factory for ``url``.

    Sessions keep loaded attributes after commit (``expire_on_commit=False``) so returned rows
    stay readable once the unit of work has ended.
    """
    url = url or _settings_url()
    engine = get_engine(url)
    with _lock:
        maker = _makers.get(url)
        if maker is None:
            maker = sessionmaker(bind=engine, expire_on_commit=False)
            _makers[url] = maker
        return maker


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One unit of work: a session in a transaction, committed on success, rolled back on error.

    Example:
        >>> with session_scope() as session:
        ...     asset_id, created = get_or_create_asset_by_sha(session, sha256=digest)
    """
    with get_sessionmaker(url).begin() as session:
        yield session


def dispose_engines() -> None:
    """Close every cached engine's pool (tests, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()


def dialect_name(session: Session) -> str:
    """``"postgresql"`` or ``"sqlite"`` for the session's bind."""
    return session.get_bind().dialect.name
