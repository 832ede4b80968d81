"""Engine and session factories: caching per URL, a fresh engine after fork, SQLite pragmas,
commit/rollback of a unit of work."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import get_engine, get_sessionmaker, session_scope

pytest_plugins = ["tests.db_fixtures"]


def _child_engine_report(url: str, parent_engine_id: int, queue: multiprocessing.Queue) -> None:
    engine = get_engine(url)
    with session_scope(url) as s:
        count = s.scalar(sa.select(sa.func.count()).select_from(db.Asset))
    queue.put((id(engine) != parent_engine_id, count))


def test_engine_is_cached_per_url_and_rebuilt_after_fork(db_url: str) -> None:
    engine = get_engine(db_url)
    assert get_engine(db_url) is engine
    assert get_sessionmaker(db_url) is get_sessionmaker(db_url)
    with session_scope(db_url) as s:
        db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"fork").hexdigest())
    # The parent's pool now holds a live connection; the forked child must not reuse it.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_engine_report, args=(db_url, id(engine), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (True, 1)
    with session_scope(db_url) as s:  # the parent's engine still works
        assert s.scalar(sa.select(sa.func.count()).select_from(db.Asset)) == 1


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(sqlite_migrated_url: str) -> None:
    with get_engine(sqlite_migrated_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_session_scope_rolls_back_on_error(db_url: str) -> None:
    with pytest.raises(RuntimeError), session_scope(db_url) as s:
        db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"rollback").hexdigest())
        raise RuntimeError("boom")
    with session_scope(db_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(db.Asset)) == 0


def test_unsupported_urls_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        db.create_engine_for("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        db.create_engine_for("mysql+pymysql://u@localhost/x")
    nested = tmp_path / "a" / "b" / "ramdex.sqlite3"
    engine = db.create_engine_for(f"sqlite:///{nested}")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    engine.dispose()
    assert nested.is_file()
