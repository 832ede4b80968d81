"""``ramdex serve`` (the HTTP API and web UI) and ``ramdex keys ...`` (API keys)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from api.auth import Scope
from indexer.settings import ApiSettings

# Shown in --help; the running values come from the settings (nothing is read at import).
_DEFAULT_HOST = ApiSettings.model_fields["host"].default
_DEFAULT_PORT = ApiSettings.model_fields["port"].default

app = typer.Typer()
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help=f"bind address (default: RAMDEX_API__HOST, else {_DEFAULT_HOST})"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help=f"port (default: RAMDEX_API__PORT, else {_DEFAULT_PORT})"),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="server processes")] = 1,
    migrate: Annotated[
        bool, typer.Option(help="upgrade the database schema before serving")
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API and the web UI (settings from RAMDEX_* variables).

    Connection limits come from the api.* settings (docs/deploy.md, "Limits"): request heads over
    api.max_header_bytes get 431, heads slower than api.header_timeout_s and body gaps longer than
    api.body_timeout_s get 408, idle keep-alive connections close after api.keep_alive_s, and
    more than api.max_concurrency connections or requests get 503.
    """
    from indexer.threads import apply_policy

    apply_policy("serve")  # before torch loads, inherited by uvicorn's worker processes
    import uvicorn

    from api.http_guard import GuardedH11Protocol
    from indexer.settings import get_settings

    settings = get_settings()
    api = settings.api
    if api.metrics_access == "bind" and workers > 1:
        typer.echo(
            "error: api.metrics_access=bind serves /metrics from one process: run --workers 1 "
            "per container, or set RAMDEX_API__METRICS_ACCESS=key",
            err=True,
        )
        raise typer.Exit(2)
    if migrate:
        from indexer.migrate import upgrade_database

        upgrade_database(settings.database_url)
    from api.cli.model_notice import announce_configured

    announce_configured(settings)  # the demo model says what it is (the web UI shows a banner)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or api.host,
        port=port or api.port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
        # h11 (not httptools): the only uvicorn protocol that bounds the request head.
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=api.max_header_bytes,
        timeout_keep_alive=api.keep_alive_s,
        limit_concurrency=api.max_concurrency,
    )


@keys_app.command("create")
def create(
    scope: Annotated[
        list[Scope], typer.Option("--scope", "-s", help="read, write or admin (repeatable)")
    ],
    name: Annotated[str, typer.Option(help="who or what the key is for")] = "cli",
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            "-c",
            help="limit the key to this collection, by name or id (repeatable; default: the "
            "key sees every collection)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from api.auth import create_key
    from indexer.db.collection_repo import resolve_collection
    from indexer.db.errors import NotFoundError
    from indexer.db.session import session_scope
    from indexer.errors import RamdexError

    with session_scope() as session:
        limits: list[int] | None = None
        if collection:
            limits = []
            for ref in collection:
                try:
                    limits.append(resolve_collection(session, ref).id)
                except NotFoundError as exc:
                    raise RamdexError(
                        f"no collection {ref!r}",
                        hint="see `ramdex collections list`, or create it with "
                        "`ramdex collections create NAME`",
                    ) from exc
        key = create_key(session, name=name, scopes=scope, collection_ids=limits)
        names = _collection_names(session, key.collection_ids)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "key_id": key.key_id,
                    "name": key.name,
                    "scopes": list(key.scopes),
                    "collections": names,
                    "token": key.token,
                }
            )
        )
    else:
        typer.echo(key.token)
        limited = f"; only collections {', '.join(names)}" if names is not None else ""
        typer.echo(
            f"key {key.key_id} ({key.name}; {', '.join(key.scopes)}{limited}): store it now, "
            "it cannot be shown again",
            err=True,
        )


def _collection_names(session: Any, collection_ids: Sequence[int] | None) -> list[str] | None:
    """The names of these collections (None: unrestricted)."""
    if collection_ids is None:
        return None
    from indexer.db.collection_repo import get_collection

    found = [get_collection(session, c) for c in collection_ids]
    return [c.name for c in found if c is not None]


@keys_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List keys (ids, names, scopes, use; never secrets)."""
    from api.auth import list_keys
    from indexer.db.collection_repo import key_collections
    from indexer.db.session import session_scope

    with session_scope() as session:
        keys = list_keys(session)
        limits = key_collections(session, [k.id for k in keys])
        rows: list[dict[str, Any]] = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "scopes": k.scopes.split(","),
                # None: every collection; a list (maybe emptied by deletions): only those
                "collections": None
                if k.all_collections
                else _collection_names(session, limits.get(k.id, [])),
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked": k.revoked_at is not None,
            }
            for k in keys
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = "revoked" if row["revoked"] else f"last used {row['last_used_at'] or 'never'}"
        seen = row["collections"]
        where = "all collections" if seen is None else "only " + (", ".join(seen) or "nothing")
        typer.echo(
            f"{row['key_id']}  {','.join(row['scopes']):<16} {row['name']}  [{where}]  ({state})"
        )


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
