"""``ramdex db``: migrate the database schema (Alembic)."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.errors import database_url_option

app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        callback=database_url_option,
        help="SQLAlchemy URL (default: RAMDEX_DATABASE__URL or the SQLite file).",
    ),
]


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _url(url: str | None) -> str:
    from indexer.settings import get_settings

    return url or get_settings().database_url


@app.command("upgrade")
def upgrade_command(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from indexer.migrate import current_revision, upgrade_database

    target = _url(url)
    upgrade_database(target, revision)
    typer.echo(f"{_shown(target)}: at revision {current_revision(target)}")


@app.command("downgrade")
def downgrade_command(
    revision: Annotated[str, typer.Argument(help="Target revision, or 'base' to drop all.")],
    url: UrlOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm dropping every table.")] = False,
) -> None:
    """Revert migrations down to REVISION ('base' removes every ramdex table and its data)."""
    from indexer.migrate import current_revision, downgrade_database

    target = _url(url)
    if revision == "base" and not yes:
        typer.echo("error: downgrading to base deletes all data; add --yes to confirm", err=True)
        raise typer.Exit(2)
    downgrade_database(target, revision)
    typer.echo(f"{_shown(target)}: at revision {current_revision(target) or 'base'}")


@app.command("current")
def current_command(url: UrlOption = None) -> None:
    """Show the database's revision and the newest one; exit 1 when behind."""
    from indexer.migrate import current_revision, head_revision

    target = _url(url)
    current, head = current_revision(target), head_revision()
    typer.echo(f"{_shown(target)}: revision {current or 'none'} (head {head})")
    if current != head:
        raise typer.Exit(1)
