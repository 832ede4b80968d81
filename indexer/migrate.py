"""Run the Alembic migrations programmatically (CLI, API start-up, workers, tests).

The schema is owned by ``migrations/`` (never ``create_all``). Concurrent upgrades are safe on
PostgreSQL: ``migrations/env.py`` takes an advisory lock.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from indexer.db.session import create_engine_for

# migrations/ sits at the repository root, next to the indexer package (editable installs and
# the Docker image keep that layout).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _resolve_url(url: str | None) -> str:
    if url:
        return url
    from indexer.settings import get_settings

    return get_settings().database_url


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for ramdex's migrations, bound to ``url`` (default: settings).

    Raises:
        FileNotFoundError: the migrations directory is missing (package installed without it).
    """
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found in {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not a config option: ConfigParser would treat '%' in passwords
    # as interpolation.
    config.attributes["url"] = _resolve_url(url)
    return config


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default: settings) up to ``revision``."""
    with warnings.catch_warnings():
        # SQLite's batch migrations reflect the tables a rebuilt table refers to; reflection
        # skips ``tags``' expression index (lower(english)), which batch mode never rebuilds.
        # Harmless, and it would greet every new user on their first command.
        warnings.filterwarnings(
            "ignore", message="Skipped unsupported reflection of expression-based index"
        )
        command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str | None, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``"base"`` drops every table)."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision in ``migrations/versions``."""
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused")).get_current_head()


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None: not migrated yet)."""
    engine = create_engine_for(_resolve_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str | None = None) -> bool:
    """Whether the database is at the head revision."""
    return current_revision(url) == head_revision()
