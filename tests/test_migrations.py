"""Alembic migrations on real databases: upgrade from empty, downgrade to base, upgrade again,
and the migrated schema equals the SQLAlchemy models (autogenerate finds no difference)."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from indexer.db import Base
from indexer.db.tags import not_a_partition
from indexer.migrate import (
    alembic_config,
    current_revision,
    downgrade_database,
    head_revision,
    is_up_to_date,
    upgrade_database,
)
from tests.db_fixtures import fresh_postgres_database

RAMDEX_TABLES = {"assets", "asset_sources", "tags", "asset_tags", "concepts", "jobs"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(
    params=[pytest.param("postgresql", marks=pytest.mark.postgres), pytest.param("sqlite")]
)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
    else:
        with fresh_postgres_database("ramdex_migrate") as url:
            yield url


def schema_diff(url: str) -> list:
    """Differences between the database schema and the models, as alembic sees them."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # SQLite cannot reflect expression indexes; alembic says so and skips that one.
            warnings.filterwarnings("ignore", message=".*expression-based index.*")
            opts = {"compare_type": True, "include_name": not_a_partition}
            context = MigrationContext.configure(conn, opts=opts)
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_matches_models(empty_url: str) -> None:
    assert current_revision(empty_url) is None

    upgrade_database(empty_url)
    assert RAMDEX_TABLES <= table_names(empty_url)
    assert current_revision(empty_url) == head_revision()
    assert is_up_to_date(empty_url)
    assert schema_diff(empty_url) == []

    downgrade_database(empty_url, "base")
    assert table_names(empty_url) <= {"alembic_version"}
    assert current_revision(empty_url) is None

    upgrade_database(empty_url)
    assert schema_diff(empty_url) == []
    assert current_revision(empty_url) == head_revision()


def test_schema_diff_detects_a_missing_index(empty_url: str) -> None:
    """Negative control: the comparison above would notice a schema that drifted."""
    upgrade_database(empty_url)
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_asset_tags_tag_id_score_asset_id"))
    engine.dispose()
    diff = schema_diff(empty_url)
    assert [d[0] for d in diff] == ["add_index"]
    assert diff[0][1].name == "ix_asset_tags_tag_id_score_asset_id"


@pytest.mark.postgres
def test_concurrent_upgrades_serialise_on_postgres() -> None:
    """Two processes upgrading one empty database at once (API and worker start-up)."""
    code = "import sys; from indexer.migrate import upgrade_database; upgrade_database(sys.argv[1])"
    with fresh_postgres_database("ramdex_migrate_race") as url:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        assert schema_diff(url) == []


def test_offline_sql_for_postgresql() -> None:
    """``alembic upgrade head --sql`` renders the PostgreSQL DDL without a server."""
    out = io.StringIO()
    config = alembic_config("postgresql+psycopg://nobody@localhost/none")
    config.output_buffer = out
    command.upgrade(config, "0001", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE asset_tags" in sql
    assert "lower(english) text_pattern_ops" in sql
    assert "JSONB" in sql


def test_alembic_ini_at_repo_root_uses_migrations(tmp_path: Path) -> None:
    """The plain ``alembic`` command works from the repository root with ``-x url=``."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-x", f"url={url}", "upgrade", "head"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == head_revision()
