"""``ramdex collections``: named groups of assets, and what keys limited to them see.

``create``, ``list``, ``show``, ``delete``; ``add`` / ``remove`` put assets in or take them out
(the assets stay in the archive). Keys are limited with ``ramdex keys create --collection NAME``
(docs/collections.md). The command line is the archive's administrator: it sees every
collection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from indexer.db.collection_repo import CollectionInfo

app = typer.Typer(help="Collections of assets (keys can be limited to them).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
RefArgument = Annotated[str, typer.Argument(help="The collection's name or id.")]
AssetIds = Annotated[list[int], typer.Argument(help="Asset ids.", min=1)]


@contextmanager
def _session() -> Iterator[Session]:
    """A unit of work on the configured archive's database (schema migrated first)."""
    from indexer.db.session import session_scope
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    url = get_settings().database_url
    ensure_schema(url)
    with session_scope(url) as session:
        yield session


def _as_dict(info: CollectionInfo) -> dict[str, object]:
    created = info.created_at
    return {
        "id": info.id,
        "name": info.name,
        "description": info.description,
        "asset_count": info.asset_count,
        "created_at": created.isoformat() if hasattr(created, "isoformat") else created,
    }


def _known(session: Session, ref: str) -> CollectionInfo:
    from indexer import collection_service as service
    from indexer.db.collection_scope import EVERYTHING
    from indexer.db.errors import NotFoundError

    try:
        return service.get_collection(session, EVERYTHING, ref)
    except NotFoundError as exc:
        raise RamdexError(
            f"no collection {ref!r}", hint="see `ramdex collections list` for the names"
        ) from exc


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name, unique in the archive.")],
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="What the collection holds.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an empty collection."""
    from indexer import collection_service as service
    from indexer.db.collection_scope import EVERYTHING
    from indexer.db.errors import DuplicateError

    with _session() as session:
        try:
            info = service.create_collection(session, EVERYTHING, name, description)
        except DuplicateError as exc:
            raise RamdexError(str(exc), hint="choose another name") from exc
        except ValueError as exc:
            raise RamdexError(str(exc), hint="give a name of letters, words or dashes") from exc
        session.commit()
    if as_json:
        typer.echo(json.dumps(_as_dict(info)))
    else:
        typer.echo(f"created collection {info.id} {info.name!r}")


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List collections with their asset counts."""
    from indexer import collection_service as service
    from indexer.db.collection_scope import EVERYTHING

    with _session() as session:
        found = service.list_collections(session, EVERYTHING)
    if as_json:
        typer.echo(json.dumps([_as_dict(c) for c in found]))
        return
    if not found:
        typer.echo("no collections (create one with `ramdex collections create NAME`)", err=True)
    for c in found:
        typer.echo(f"{c.id:>6}  {c.asset_count:>10} assets  {c.name}")


@app.command("show")
def show(ref: RefArgument, as_json: JsonOption = False) -> None:
    """Show one collection and the keys limited to it."""
    from api.auth import list_keys
    from indexer.db.collection_repo import key_collections

    with _session() as session:
        info = _known(session, ref)
        keys = [k for k in list_keys(session) if not k.all_collections and k.revoked_at is None]
        limits = key_collections(session, [k.id for k in keys])
        limited = [k.key_id for k in keys if info.id in limits.get(k.id, [])]
    if as_json:
        typer.echo(json.dumps({**_as_dict(info), "keys": limited}))
        return
    typer.echo(f"collection {info.id} {info.name!r}: {info.asset_count} assets")
    if info.description:
        typer.echo(f"  {info.description}")
    typer.echo(f"  keys limited to it: {', '.join(limited) or 'none'}")


@app.command("delete")
def delete(
    ref: RefArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a collection: its assets stay in the archive, its concepts go, keys limited to
    it lose it."""
    from indexer import collection_service as service
    from indexer.db.collection_scope import EVERYTHING

    with _session() as session:
        info = _known(session, ref)
        if not yes and not typer.confirm(
            f"delete collection {info.name!r} ({info.asset_count} assets stay in the archive)?"
        ):
            raise typer.Abort()
        service.delete_collection(session, EVERYTHING, info.id)
        session.commit()
    typer.echo(f"deleted collection {info.id} {info.name!r}")


def _membership(ref: str, asset_ids: list[int], add: bool) -> None:
    from indexer import collection_service as service
    from indexer.db.collection_scope import EVERYTHING

    with _session() as session:
        info = _known(session, ref)
        try:
            change = (service.add_assets if add else service.remove_assets)(
                session, EVERYTHING, info.id, asset_ids
            )
        except service.MissingAssetsError as exc:
            raise RamdexError(str(exc), hint="`ramdex search` lists asset ids") from exc
        except ValueError as exc:
            raise RamdexError(str(exc), hint="split the ids over several calls") from exc
        session.commit()
    verb = "added to" if add else "removed from"
    typer.echo(
        f"{change.changed} assets {verb} {info.name!r} ({change.unchanged} already "
        f"{'in' if add else 'out of'} it)"
    )


@app.command("add")
def add(ref: RefArgument, asset_ids: AssetIds) -> None:
    """Put assets into a collection."""
    _membership(ref, asset_ids, add=True)


@app.command("remove")
def remove(ref: RefArgument, asset_ids: AssetIds) -> None:
    """Take assets out of a collection (they stay in the archive)."""
    _membership(ref, asset_ids, add=False)
