"""``ramdex search``: search the archive from the command line, as ``POST /search`` does.

TEXT is a free-text concept scored over the stored embeddings (retroactive search: the image
model does not run again); ``--all/--any/--none`` filter by tags (English or Chinese names);
``--similar`` ranks by image similarity to an asset or an image file. Everything goes through
:class:`indexer.search.SearchService`, the same service the API uses.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.cli.moments import clock

if TYPE_CHECKING:
    from indexer.archive import Archive
    from indexer.search import SearchHit, SearchPage, SearchRequest

app = typer.Typer()


class Sort(StrEnum):
    relevance = "relevance"
    date = "date"


class Format(StrEnum):
    text = "text"
    json = "json"


class TagSourceChoice(StrEnum):
    """indexer.db.labels.TagSource, for the option's choices (no storage import at start)."""

    model = "model"
    concept = "concept"
    manual = "manual"
    embedded = "embedded"


@app.command("search")
def search(
    text: Annotated[
        str | None,
        typer.Argument(
            help="Free-text concept, e.g. 'navy' or 'a red kite' (scored over stored embeddings)."
        ),
    ] = None,
    all_: Annotated[
        list[str] | None,
        typer.Option("--all", metavar="TAG", help="Tag every hit must have (repeatable)."),
    ] = None,
    any_: Annotated[
        list[str] | None,
        typer.Option("--any", metavar="TAG", help="Hits have at least one of these (repeatable)."),
    ] = None,
    none: Annotated[
        list[str] | None,
        typer.Option("--none", metavar="TAG", help="Tag no hit may have (repeatable)."),
    ] = None,
    similar: Annotated[
        str | None,
        typer.Option(
            "--similar",
            metavar="ASSET_ID|IMAGE",
            help="Rank by image similarity to this asset id or image file.",
        ),
    ] = None,
    description: Annotated[
        list[str] | None,
        typer.Option(
            "--description",
            metavar="TEXT",
            help="How the TEXT concept looks (repeatable); default: prompt templates.",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            metavar="P",
            help="A tag matches at score >= P instead of above its threshold.",
        ),
    ] = None,
    source: Annotated[
        list[TagSourceChoice] | None,
        typer.Option(
            "--source",
            help="Count only tags of this provenance in tag terms (repeatable; default all: "
            "manual, embedded and accepted tags always match, rejected never).",
        ),
    ] = None,
    narrower: Annotated[
        bool,
        typer.Option(
            "--narrower",
            help="Tag terms also match narrower concepts of the taxonomy (animal: dogs, cats).",
        ),
    ] = False,
    sort: Annotated[Sort, typer.Option(help="Order of the hits.")] = Sort.relevance,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Hits to show.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Next page: the cursor the previous page printed.")
    ] = None,
    mime: Annotated[
        list[str] | None,
        typer.Option("--type", metavar="MIME", help="Media type, e.g. image/png or image/*."),
    ] = None,
    after: Annotated[
        datetime | None, typer.Option("--after", help="Ingested at or after this time.")
    ] = None,
    before: Annotated[
        datetime | None, typer.Option("--before", help="Ingested before this time.")
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="text or json.")] = Format.text,
) -> None:
    """Search the archive by tags, a free-text concept or a similar image.

    Examples: ramdex search --all red --none circle;  ramdex search navy;
    ramdex search --similar 42;  ramdex search --similar photo.jpg --format json
    """
    from api.cli.model_notice import announce_configured
    from indexer.archive import Archive
    from indexer.search import SearchService
    from indexer.settings import get_settings

    settings = get_settings()
    described = announce_configured(settings)
    with Archive(settings) as archive:
        service = SearchService(archive)
        try:
            req = _request(
                service,
                text=text,
                descriptions=description or [],
                all_=all_ or [],
                any_=any_ or [],
                none=none or [],
                similar=similar,
                min_score=min_score,
                sources=[s.value for s in source or []],
                narrower=narrower,
                sort=sort.value,
                limit=limit,
                cursor=cursor,
                mime=mime or [],
                after=after,
                before=before,
            )
            page = service.search(req)
        except Exception as exc:
            explained = _explained(exc, archive, described.name, all_, any_, none)
            if explained is exc:
                raise
            raise explained from exc
    if output is Format.json:
        typer.echo(json.dumps(page_json(page, described.name), ensure_ascii=False, indent=2))
    else:
        _print_page(page, described.name)


def _request(
    service: Any,
    *,
    text: str | None,
    descriptions: list[str],
    all_: list[str],
    any_: list[str],
    none: list[str],
    similar: str | None,
    min_score: float | None,
    sort: str,
    limit: int,
    sources: list[str] = [],  # noqa: B006 - read only
    narrower: bool = False,
    cursor: str | None,
    mime: list[str],
    after: datetime | None,
    before: datetime | None,
) -> SearchRequest:
    """The service's request for the command's options (``--similar`` an id or a file)."""
    from indexer.errors import RamdexError
    from indexer.search import SearchRequest

    similar_to, image = None, None
    if similar is not None:
        if similar.strip().isdigit():
            similar_to = int(similar)
        else:
            path = Path(similar).expanduser()
            if not path.is_file():
                raise RamdexError(
                    f"--similar {similar!r} is neither an asset id nor an image file",
                    hint="give an asset id from `ramdex search`, or the path of an image",
                )
            image = service.query_image(path.read_bytes())
    return SearchRequest(
        text=text,
        descriptions=descriptions,
        all=all_,
        any=any_,
        none=none,
        similar_to=similar_to,
        image=image,
        min_score=min_score,
        sources=sources,
        narrower=narrower,
        sort=sort,  # type: ignore[arg-type]
        limit=limit,
        cursor=cursor,
        mime=mime,
        created_after=_utc(after),
        created_before=_utc(before),
    )


def _utc(moment: datetime | None) -> datetime | None:
    """A time given without a zone is UTC (as the archive stores times)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _explained(
    exc: Exception,
    archive: Archive,
    model: str,
    all_: list[str] | None,
    any_: list[str] | None,
    none: list[str] | None,
) -> Exception:
    """The search's errors as one-line errors naming the option to fix (others unchanged:
    the command line's error handler explains settings, database and model problems)."""
    from indexer.archive import NothingIngestedError, TextEncoderNotAvailableError
    from indexer.errors import RamdexError
    from indexer.search import (
        AssetNotFoundError,
        BadImageError,
        InvalidCursorError,
        InvalidQueryError,
        NotIndexedError,
        UnknownTagError,
    )

    if isinstance(exc, UnknownTagError):
        return _unknown_tags(exc, archive, model, all_ or [], any_ or [], none or [])
    if isinstance(exc, AssetNotFoundError | NotIndexedError | BadImageError):
        return RamdexError(f"--similar: {exc}")
    if isinstance(exc, InvalidCursorError):
        return RamdexError(f"--cursor: {exc}", hint="start again without --cursor")
    if isinstance(exc, InvalidQueryError):
        return RamdexError(str(exc))
    if isinstance(exc, NothingIngestedError):
        return RamdexError(
            "nothing is ingested yet, so there is nothing to search",
            hint="run `ramdex ingest FOLDER` first",
        )
    if isinstance(exc, TextEncoderNotAvailableError):
        return RamdexError(str(exc))
    return exc


def _unknown_tags(
    exc: Any, archive: Archive, model: str, all_: list[str], any_: list[str], none: list[str]
) -> Exception:
    from indexer.errors import RamdexError

    def option(name: str) -> str:
        for flag, names in (("--all", all_), ("--any", any_), ("--none", none)):
            if any(str(n).strip().lower() == str(name).strip().lower() for n in names):
                return flag
        return "tag"

    unknown = [str(n) for n in exc.names]
    shown = ", ".join(f"{option(n)} {n!r}" for n in unknown)
    close = difflib.get_close_matches(unknown[0], _tag_names(archive), n=3)
    hint = (
        "did you mean " + " or ".join(repr(c) for c in close) + "?"
        if close
        else "tags are the model's English or Chinese tag names"
    )
    return RamdexError(f"unknown tag {shown} for model {model}", hint=hint)


def _tag_names(archive: Archive) -> list[str]:
    """English names of the configured model's tags (for "did you mean")."""
    import sqlalchemy as sa

    from indexer.db.tags import Tag

    with archive.sessions() as session:
        return list(
            session.scalars(sa.select(Tag.english).where(Tag.model_name == archive.model_id()))
        )


# ---------- output ----------
def hit_json(hit: SearchHit) -> dict[str, Any]:
    """One hit for JSON output: asset id, source path, score and why it matched."""
    return {
        "asset_id": hit.asset_id,
        "source": hit.source,
        "score": hit.score,
        "reasons": [
            {
                "kind": r.kind,
                "name": r.name,
                "name_zh": r.name_zh,
                "score": r.score,
                "above_threshold": r.above_threshold,
                "sources": list(r.sources) or None,
                "review": r.review,
                "expanded_from": r.expanded_from,
            }
            for r in hit.reasons
        ],
        "mime": hit.mime,
        "width": hit.width,
        "height": hit.height,
        "created_at": hit.created_at.isoformat(),
        # A video's (or animation's) moments that matched, best first, as the API gives them.
        "frames": [
            {"timestamp_s": f.timestamp_s, "score": f.score} for f in getattr(hit, "frames", ())
        ],
    }


def page_json(page: SearchPage, model: str) -> dict[str, Any]:
    """A page for JSON output (the model named as people know it, its stored id beside it)."""
    return {
        "model": model,
        "model_id": page.model_id,
        "hits": [hit_json(h) for h in page.hits],
        "next_cursor": page.next_cursor,
        "concept_threshold": page.concept_threshold,
        "pending_reindex": page.pending_reindex,
    }


def reason_text(reason: Any) -> str:
    """``red 0.981 (红色)``, ``concept 'navy' 0.912 (above its threshold)``, ``similar 0.77``."""
    if reason.kind == "tag":
        zh = f" ({reason.name_zh})" if reason.name_zh and reason.name_zh != reason.name else ""
        via = f" for {reason.expanded_from!r}" if reason.expanded_from else ""
        people = [s for s in reason.sources if s in ("manual", "embedded")]
        if reason.review:
            people.append(reason.review)
        said = f" [{', '.join(people)}]" if people else ""
        return f"{reason.name}{zh}{via} {reason.score:.3f}{said}"
    if reason.kind == "concept":
        passes = {True: ", above its threshold", False: ", below its threshold", None: ""}
        return f"concept {reason.name!r} {reason.score:.3f}{passes[reason.above_threshold]}"
    return f"similar to {reason.name}: {reason.score:.3f}"


def _moments(hit: SearchHit) -> str:
    """`` at 0:12.5, 0:48.0``: where in a video the hit matched (best first, at most three)."""
    frames = list(getattr(hit, "frames", ()))[:3]
    return " at " + ", ".join(clock(f.timestamp_s) for f in frames) if frames else ""


def _print_page(page: SearchPage, model: str) -> None:
    threshold = (
        f"; concept threshold {page.concept_threshold:.3f}"
        if page.concept_threshold is not None
        else ""
    )
    typer.echo(f"{len(page.hits)} hit(s), model {model}{threshold}")
    for hit in page.hits:
        score = "    -" if hit.score is None else f"{hit.score:.3f}"
        why = "; ".join(reason_text(r) for r in hit.reasons) or "listed"
        typer.echo(f"{hit.asset_id:>8}  {score}  {hit.source or '-'}{_moments(hit)}  [{why}]")
    if page.pending_reindex:
        typer.echo(
            f"{page.pending_reindex} asset(s) scored by another model are not searched: "
            "run `ramdex reindex`",
            err=True,
        )
    if page.next_cursor:
        typer.echo(f"more: add --cursor {page.next_cursor}")
