"""``ramdex tags [PREFIX]``: the tags an archive can be searched by (names in English and
Chinese, thresholds, where each came from), and optionally how many assets carry each."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from indexer.errors import RamdexError

app = typer.Typer()


class Format(StrEnum):
    text = "text"
    json = "json"


class Origin(StrEnum):
    model = "model"
    concept = "concept"


def _assets_carrying(session: Any, tags: list[Any]) -> dict[int, int]:
    """How many done assets carry each tag by the rule every search uses
    (:func:`indexer.db.tag_match.has_tag_term`: a score above the threshold unless rejected,
    or a manual, accepted or embedded label), so a count equals what ``ramdex search --all
    TAG`` finds. One ``COUNT`` per tag."""
    from indexer.db._sql import table_of
    from indexer.db.assets import Asset
    from indexer.db.search import count_matching_assets
    from indexer.db.tag_match import has_tag_term, tag_match

    assets = table_of(Asset)
    match = tag_match(session, tags)
    return {
        int(t.id): count_matching_assets(session, [has_tag_term(assets.c.id, [t], match)])
        for t in tags
    }


@app.command("tags")
def tags(
    prefix: Annotated[
        str | None,
        typer.Argument(metavar="[PREFIX]", help="English (any case) or Chinese name prefix."),
    ] = None,
    origin: Annotated[
        Origin | None, typer.Option(help="Only the model's own tags, or promoted concepts.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many to list.")] = 100,
    counts: Annotated[
        bool,
        typer.Option(
            "--counts",
            help="Also count the assets carrying each tag (as `ramdex search --all TAG` finds).",
        ),
    ] = False,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
) -> None:
    """List the tags you can search by (`ramdex search --all TAG`), alphabetically."""
    from indexer.archive import Archive
    from indexer.db.tag_repo import list_tags
    from indexer.models import model_name_for_id
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    with Archive(settings) as archive, archive.sessions() as session:
        model_id = archive.model_id()
        rows = list_tags(
            session, model_id, prefix=(prefix or "").strip() or None, origin=origin, limit=limit
        )
        carried = _assets_carrying(session, rows) if counts else {}
    if not rows:
        what = f" starting with {prefix!r}" if prefix else ""
        raise RamdexError(
            f"no tags{what} are stored for the configured model "
            f"({model_name_for_id(model_id, settings)})",
            hint="tags are stored with the first ingest (`ramdex ingest FOLDER`)"
            if not prefix
            else "try a shorter prefix, or none",
            exit_code=1,
        )
    listed = [
        {
            "name": t.english,
            "name_zh": t.chinese,
            "threshold": round(t.effective_threshold, 4),
            "origin": t.origin,
            **({"assets": carried.get(t.id, 0)} if counts else {}),
        }
        for t in rows
    ]
    if output is Format.json:
        typer.echo(json.dumps(listed, ensure_ascii=False, indent=2))
        return
    for tag in listed:
        zh = tag["name_zh"] if tag["name_zh"] and tag["name_zh"] != tag["name"] else ""
        extra = f"  {tag['assets']:>7} assets" if counts else ""
        origin_note = "" if tag["origin"] == "model" else "  (concept)"
        typer.echo(
            f"{tag['name']:<28} {zh:<12} threshold {tag['threshold']:.2f}{extra}{origin_note}"
        )
    if len(rows) == limit:
        typer.echo(f"(first {limit}; --limit N or a PREFIX for more)", err=True)
