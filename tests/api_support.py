"""Fixtures and helpers shared by the API tests (imported by tests/test_api_*.py).

Databases are real: a fresh PostgreSQL database created over the ``test`` database for the test
session (dropped afterwards), or a SQLite file; both built by running the Alembic migrations.
The model is the tiny random ``test_micro`` config; the broker is the embedded (in-process) mode.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import create_key
from indexer.db.session import create_engine_for
from indexer.settings import Settings

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "test_micro"


def upgrade(url: str) -> None:
    """Build the schema by running the migrations to head."""
    from indexer.migrate import upgrade_database

    upgrade_database(url)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    name = f"ramdex_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for this test session."""
    url = f"sqlite:///{tmp_path_factory.mktemp('api-sqlite') / 'ramdex.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both backends."""
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


def make_settings(home: Path, db_url: str, **api: object) -> Settings:
    """Settings for a test app: own home folder, given database, tiny random model."""
    return Settings(
        home=home,
        database={"url": db_url},
        model={"name": MODEL, "device": "cpu"},
        broker={"url": ""},
        api={"require_auth": True, **api},
    )


@pytest.fixture(scope="session")
def settings_for():
    """``settings_for(home, db_url, **api)``: settings for a test app (see make_settings)."""
    return make_settings


@dataclass
class Keys:
    """Bearer headers for one key of each scope."""

    read: dict[str, str]
    write: dict[str, str]
    admin: dict[str, str]


def make_keys(db_url: str) -> Keys:
    """Create one key per scope directly in the database."""
    from sqlalchemy.orm import Session

    engine = create_engine_for(db_url)
    try:
        with Session(engine) as session:
            tokens = {
                s: create_key(session, name=f"test-{s}", scopes=[s]).token
                for s in ("read", "write", "admin")
            }
            session.commit()
    finally:
        engine.dispose()
    return Keys(**{s: {"Authorization": f"Bearer {t}"} for s, t in tokens.items()})


@pytest.fixture(scope="session")
def api_env(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Keys, Settings]]:
    """A running app (lifespan entered) on one backend, with keys of every scope."""
    settings = make_settings(tmp_path_factory.mktemp("home"), db_url)
    keys = make_keys(db_url)
    with TestClient(create_app(settings)) as client:
        yield client, keys, settings
