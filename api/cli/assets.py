"""``ramdex assets show ID | delete ID``: one asset's facts, sources and tags; delete it from the
database, the token store, the similarity index and the media store (as ``DELETE /assets/ID``)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from api.cli.moments import clock

app = typer.Typer(help="Look at or delete one asset.", no_args_is_help=True)

AssetIdArgument = Annotated[
    int, typer.Argument(min=1, max=2**63 - 1, metavar="ID", help="Asset id (from `ramdex search`).")
]


class Format(StrEnum):
    text = "text"
    json = "json"


def _missing(asset_id: int) -> Exception:
    from indexer.errors import RamdexError

    return RamdexError(
        f"asset {asset_id} does not exist", hint="`ramdex search` lists assets with their ids"
    )


def asset_json(session: Any, asset_id: int, model_name: Any) -> dict[str, Any] | None:
    """An asset's facts, sources and every stored tag score (None: no such asset)."""
    from indexer.db.asset_repo import get_asset, list_sources
    from indexer.db.companion_repo import list_companions
    from indexer.db.frame_repo import read_frames
    from indexer.db.tag_repo import get_asset_tags

    row = get_asset(session, asset_id)
    if row is None:
        return None
    return {
        "id": row.id,
        "status": row.status,
        "error": row.error,
        "mime": row.mime,
        "width": row.width,
        "height": row.height,
        "bytes": row.size_bytes,
        "sha256": row.sha256,
        "model": model_name(row.model_name) if row.model_name else None,
        "model_id": row.model_name,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "kind": row.kind,
        "duration_s": row.duration_s,
        "codec": row.codec,
        "frames": [
            {"idx": f.idx, "timestamp_s": f.timestamp_s}
            for f in read_frames(session, [asset_id]).get(asset_id, [])
        ],
        "sources": [
            {"uri": s.uri, "first_seen": s.first_seen.isoformat()}
            for s in list_sources(session, asset_id)
        ],
        "companions": [
            {"uri": c.uri, "role": c.role, "mime": c.mime}
            for c in list_companions(session, asset_id)
        ],
        "tags": [
            {
                "name": t.english,
                "name_zh": t.chinese,
                "score": t.score,
                "threshold": t.threshold,
                "above_threshold": t.above_threshold,
            }
            for t in get_asset_tags(session, asset_id, include_below_threshold=True)
        ],
    }


@app.command("show")
def show(
    asset_id: AssetIdArgument,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
    all_tags: Annotated[
        bool, typer.Option("--all-tags", help="Also list stored scores below the thresholds.")
    ] = False,
) -> None:
    """Show an asset: status, type, size, where it was seen and its tags."""
    from indexer.archive import Archive
    from indexer.models import model_name_for_id
    from indexer.settings import get_settings

    settings = get_settings()
    with Archive(settings) as archive, archive.sessions() as session:
        shown = asset_json(session, asset_id, lambda mid: model_name_for_id(mid, settings))
    if shown is None:
        raise _missing(asset_id)
    if output is Format.json:
        typer.echo(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    size = f"{shown['width']}x{shown['height']}" if shown["width"] else "size unknown"
    typer.echo(f"asset {shown['id']}: {shown['status']}, {shown['mime'] or '?'}, {size}")
    if shown["error"]:
        typer.echo(f"  error: {shown['error']}")
    typer.echo(f"  model: {shown['model'] or '-'}   ingested {shown['created_at']}")
    if shown["kind"] == "video":
        length = f"{shown['duration_s']:.1f} s" if shown["duration_s"] else "length unknown"
        typer.echo(f"  video: {length}, {shown['codec'] or 'codec unknown'}")
    if shown["frames"]:
        moments = ", ".join(clock(f["timestamp_s"]) for f in shown["frames"][:12])
        more = f" (+{len(shown['frames']) - 12} more)" if len(shown["frames"]) > 12 else ""
        typer.echo(f"  frames: {len(shown['frames'])} at {moments}{more}")
    for source in shown["sources"]:
        typer.echo(f"  source: {source['uri']}")
    for companion in shown["companions"]:
        typer.echo(f"  with: {companion['uri']} ({companion['role']})")
    tags = [t for t in shown["tags"] if all_tags or t["above_threshold"]]
    label = "stored scores" if all_tags else "tags"
    typer.echo(f"  {label}: " + (", ".join(_tag_text(t) for t in tags) or "none"))


def _tag_text(tag: dict[str, Any]) -> str:
    zh = f" ({tag['name_zh']})" if tag["name_zh"] and tag["name_zh"] != tag["name"] else ""
    return f"{tag['name']}{zh} {tag['score']:.3f}"


@app.command("delete")
def delete(
    asset_id: AssetIdArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an asset: its row, sources and scores, its stored embeddings and its files in the
    media store (files it was ingested from are never touched)."""
    from indexer.archive import Archive
    from indexer.db.asset_repo import get_asset
    from indexer.settings import get_settings

    with Archive(get_settings()) as archive:
        with archive.sessions() as session:
            if get_asset(session, asset_id) is None:
                raise _missing(asset_id)
        if not yes:
            typer.confirm(f"delete asset {asset_id}?", abort=True)
        if not archive.delete_asset(asset_id):
            raise _missing(asset_id)  # deleted meanwhile
    typer.echo(f"deleted asset {asset_id}")
