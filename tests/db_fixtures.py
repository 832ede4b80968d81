"""Database fixtures for the storage tests (import the fixtures into a test module).

Databases are real: a PostgreSQL database created for this test session on the shared server
(through the ``test`` database, dropped afterwards, so the shared ``test`` database is never
touched) and a SQLite file; the schema is always built by running the Alembic migrations.

Usage in a test module::

    pytest_plugins = ["tests.db_fixtures"]

``db_url`` is parametrised over both backends and empties every table before each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
# Children before parents, for DELETE on SQLite.
TABLES = [
    "webhook_deliveries",
    "webhook_pending_events",
    "webhooks",
    "events",
    "source_objects",
    "sources",
    "api_key_collections",
    "asset_collections",
    "collections",
    "label_changes",
    "asset_labels",
    "taxonomy_broader",
    "taxonomy_terms",
    "asset_tags",
    "asset_sources",
    "concepts",
    "tags",
    "job_assets",
    "jobs",
    "assets",
]


@contextmanager
def fresh_postgres_database(prefix: str = "ramdex_db_test") -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped (forcibly) afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL_TEMPLATE.format(name=name)
    finally:
        from indexer.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_postgres(url: str) -> None:
    """Empty a PostgreSQL database completely (schema dropped) and forget its engines, so the
    next use migrates it afresh."""
    from indexer.db.session import dispose_engines
    from indexer.stores import _schema_ready

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    dispose_engines()
    _schema_ready.discard(url)


def clear_tables(url: str) -> None:
    """Delete every row of the ramdex tables and reset id sequences."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            else:
                for table in TABLES:
                    conn.execute(sa.text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_migrated_url() -> Iterator[str]:
    """A PostgreSQL database migrated to head, shared by this session's storage tests."""
    from indexer.migrate import upgrade_database

    with fresh_postgres_database("ramdex_db_test") as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_migrated_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated to head, shared by this session's storage tests."""
    from indexer.migrate import upgrade_database

    url = f"sqlite:///{tmp_path_factory.mktemp('db-sqlite') / 'ramdex.sqlite3'}"
    upgrade_database(url)
    return url


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("sqlite"),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty, migrated database; each test using it runs on PostgreSQL and SQLite."""
    name = "pg_migrated_url" if request.param == "postgresql" else "sqlite_migrated_url"
    url: str = request.getfixturevalue(name)
    clear_tables(url)
    return url


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("sqlite"),
    ],
)
def module_db_url(request: pytest.FixtureRequest) -> str:
    """Like ``db_url`` but emptied once per test module (for read-only tests sharing data)."""
    name = "pg_migrated_url" if request.param == "postgresql" else "sqlite_migrated_url"
    url: str = request.getfixturevalue(name)
    clear_tables(url)
    return url
