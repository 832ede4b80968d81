"""Alembic environment for ramdex (online and offline migrations, SQLite and PostgreSQL).

The database URL comes from, in order: ``config.attributes["url"]`` (set by
``indexer.migrate``), ``-x url=...`` on the alembic command line, ``sqlalchemy.url`` in the
config, and finally ``indexer.settings.get_settings().database_url``. A caller can also hand over
an open connection as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from indexer.db import Base
from indexer.db.session import create_engine_for
from indexer.db.tags import not_a_partition

config = context.config
target_metadata = Base.metadata

# Any 64-bit constant: serialises concurrent "upgrade head" runs (API and workers starting
# together) on PostgreSQL.
_PG_LOCK_KEY = 0x72616D646578  # "ramdex"


def _url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        from indexer.settings import get_settings

        url = get_settings().database_url
    return str(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: later migrations use batch mode (copy and move).
        render_as_batch=True,
        # asset_tags' hash partitions (PostgreSQL) are not models of their own
        include_name=not_a_partition,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        connection.commit()
    try:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            connection.commit()


def run_migrations_online() -> None:
    """Run migrations on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine_for(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
