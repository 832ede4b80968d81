"""``ramdex serve`` (the HTTP API and web UI) and ``ramdex keys ...`` (API keys)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from api.auth import Scope

app = typer.Typer()
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="bind address (default: settings api.host)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default: settings api.port)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="server processes")] = 1,
    migrate: Annotated[
        bool, typer.Option(help="upgrade the database schema before serving")
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API and the web UI (settings from RAMDEX_* variables)."""
    import uvicorn

    from indexer.settings import get_settings

    settings = get_settings()
    if migrate:
        from indexer.migrate import upgrade_database

        upgrade_database(settings.database_url)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
    )


@keys_app.command("create")
def create(
    scope: Annotated[
        list[Scope], typer.Option("--scope", "-s", help="read, write or admin (repeatable)")
    ],
    name: Annotated[str, typer.Option(help="who or what the key is for")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from api.auth import create_key
    from indexer.db.session import session_scope

    with session_scope() as session:
        key = create_key(session, name=name, scopes=scope)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "key_id": key.key_id,
                    "name": key.name,
                    "scopes": list(key.scopes),
                    "token": key.token,
                }
            )
        )
    else:
        typer.echo(key.token)
        typer.echo(
            f"key {key.key_id} ({key.name}; {', '.join(key.scopes)}): store it now, "
            "it cannot be shown again",
            err=True,
        )


@keys_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List keys (ids, names, scopes, use; never secrets)."""
    from api.auth import list_keys
    from indexer.db.session import session_scope

    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "scopes": k.scopes.split(","),
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked": k.revoked_at is not None,
            }
            for k in list_keys(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = "revoked" if row["revoked"] else f"last used {row['last_used_at'] or 'never'}"
        typer.echo(f"{row['key_id']}  {','.join(row['scopes']):<16} {row['name']}  ({state})")


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id (rdx_<id>_...)")]) -> None:
    """Revoke a key: it stops working at once."""
    from api.auth import revoke_key
    from indexer.db.session import session_scope

    with session_scope() as session:
        found = revoke_key(session, key_id)
    if not found:
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
