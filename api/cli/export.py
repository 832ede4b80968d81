"""``ramdex export``: assets with their tags out of ramdex: XMP sidecars, CSV, JSON.

``xmp`` writes a sidecar beside each local original (or under ``--out``, mirroring names) with
the selected tags as dc:subject and, when the taxonomy has a hierarchy, lr:hierarchicalSubject;
originals are never written. ``csv`` and ``json`` write one record per asset with tags, scores
and sources. All three take the same selection: ``--tag/--any/--none`` (a tag query, as
``ramdex search`` takes it), ``--asset-id``, or every ingested asset. docs/metadata.md.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from indexer.archive import Archive
    from indexer.exports import Selection

app = typer.Typer(
    help="Export assets with their tags: XMP sidecars, CSV, JSON.", no_args_is_help=True
)

SOURCES = ("model", "concept", "manual", "embedded")
ALL_SOURCES = ",".join(SOURCES)


class Naming(StrEnum):
    ext = "ext"
    replace = "replace"


TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", "--all", metavar="TAG", help="Tag every asset must have (repeatable)."),
]
AnyOption = Annotated[
    list[str] | None,
    typer.Option("--any", metavar="TAG", help="Assets have at least one of these (repeatable)."),
]
NoneOption = Annotated[
    list[str] | None,
    typer.Option("--none", metavar="TAG", help="Tag no asset may have (repeatable)."),
]
IdOption = Annotated[
    list[int] | None,
    typer.Option("--asset-id", metavar="ID", help="Export these assets only (repeatable)."),
]
SourcesOption = Annotated[
    str,
    typer.Option(
        "--sources",
        metavar="LIST",
        help="Tag sources to export, comma-separated: model, concept, manual, embedded.",
    ),
]
ProgressOption = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bar (default: when a terminal)."),
]


def parse_sources(text: str) -> frozenset[Any]:
    """The ``--sources`` list as TagSource values.

    Raises:
        RamdexError: an unknown source, or none.
    """
    from indexer.db.labels import TagSource

    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise RamdexError(
            f"--sources {text!r}: unknown source {', '.join(unknown) or '(none given)'}",
            hint=f"give a comma-separated list of {', '.join(SOURCES)}",
        )
    return frozenset(TagSource(n) for n in names)


def _selection(
    tag: list[str] | None,
    any_: list[str] | None,
    none: list[str] | None,
    asset_id: list[int] | None,
    sources: str,
) -> Selection:
    from indexer.exports import Selection

    if asset_id and (tag or any_ or none):
        raise RamdexError("--asset-id cannot be combined with --tag/--any/--none")
    return Selection(
        asset_ids=tuple(asset_id) if asset_id else None,
        all_=tuple(tag or ()),
        any_=tuple(any_ or ()),
        none=tuple(none or ()),
        sources=parse_sources(sources),
    )


@contextmanager
def _archive() -> Iterator[tuple[Archive, str]]:
    from indexer.archive import Archive
    from indexer.settings import get_settings

    with Archive(get_settings()) as archive:
        yield archive, archive.model_id()


@contextmanager
def _explained_tags() -> Iterator[None]:
    """An unknown tag name in the query as one ``error:`` line."""
    from indexer.db.errors import UnknownTagError

    try:
        yield
    except UnknownTagError as exc:
        shown = ", ".join(repr(str(n)) for n in exc.names)
        raise RamdexError(
            f"unknown tag {shown} for model {exc.model_name}",
            hint="give a tag the model outputs (English or Chinese; `ramdex search` shows them "
            "beside each hit), a taxonomy term, or a keyword a person or a file added",
        ) from None


def _total(archive: Archive, selection: Selection) -> int | None:
    """How many assets the export covers, when known without running the query."""
    if selection.asset_ids is not None:
        return len(set(selection.asset_ids))
    if selection.is_query:
        return None
    import sqlalchemy as sa

    from indexer.db.assets import Asset, AssetStatus

    with archive.sessions() as session:
        return int(
            session.scalar(sa.select(sa.func.count()).where(Asset.status == AssetStatus.DONE.value))
            or 0
        )


@contextmanager
def _bar(total: int | None, enabled: bool | None, desc: str) -> Iterator[Any]:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    with tqdm(total=total, desc=desc, unit="img", disable=not show, dynamic_ncols=True) as bar:
        yield bar


@app.command("xmp")
def xmp(
    tag: TagOption = None,
    any_: AnyOption = None,
    none: NoneOption = None,
    asset_id: IdOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write sidecars under this folder, mirroring the originals' paths "
            "(default: beside each original).",
        ),
    ] = None,
    relative_to: Annotated[
        Path | None,
        typer.Option("--relative-to", help="With --out: mirror paths relative to this folder."),
    ] = None,
    sidecar_name: Annotated[
        Naming,
        typer.Option("--sidecar-name", help="ext: photo.jpg.xmp; replace: photo.xmp (Lightroom)."),
    ] = Naming.ext,
    model_prefix: Annotated[
        str, typer.Option("--model-prefix", help="Mark unconfirmed model tags, e.g. 'ai:'.")
    ] = "",
    model_suffix: Annotated[
        str, typer.Option("--model-suffix", help="Mark unconfirmed model tags, e.g. ' (ai)'.")
    ] = "",
    sources: SourcesOption = ALL_SOURCES,
    progress: ProgressOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Write XMP sidecars (dc:subject, lr:hierarchicalSubject) for the selected assets.

    Examples: ramdex export xmp;  ramdex export xmp --tag dog --out /tmp/sidecars;
    ramdex export xmp --sidecar-name replace --model-prefix ai:
    """
    from indexer.exports import XmpOptions, export_xmp
    from indexer.keywords import SidecarName, exiftool_path

    selection = _selection(tag, any_, none, asset_id, sources)
    if relative_to is not None and out is None:
        raise RamdexError("--relative-to needs --out")
    exiftool_path()  # before opening anything: missing ExifTool is one clear error
    options = XmpOptions(
        naming=SidecarName(sidecar_name.value),
        out=out.absolute() if out else None,
        relative_to=relative_to.absolute() if relative_to else None,
        model_prefix=model_prefix,
        model_suffix=model_suffix,
    )
    with _archive() as (archive, model_id), _explained_tags():
        with _bar(_total(archive, selection), progress, "xmp") as bar:
            counts = export_xmp(archive.sessions, model_id, selection, options, on_page=bar.update)
    if as_json:
        typer.echo(json.dumps(counts.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(
            f"{counts.written} sidecars written for {counts.assets} assets"
            + (f", {counts.skipped} without a local original (use --out)" if counts.skipped else "")
            + (f", {len(counts.failed)} failed" if counts.failed else "")
        )
        for sidecar, reason in counts.failed[:10]:
            typer.echo(f"failed: {sidecar}: {reason}", err=True)
    if counts.failed:
        raise typer.Exit(1)


def _table(kind: str, tag, any_, none, asset_id, sources, out, progress) -> None:  # noqa: ANN001
    from indexer.exports import iter_csv, iter_export_assets, iter_json, write_text

    selection = _selection(tag, any_, none, asset_id, sources)
    with _archive() as (archive, model_id), _explained_tags():
        exported = 0

        with _bar(_total(archive, selection), progress if out else False, kind) as bar:

            def on_page(n: int) -> None:
                nonlocal exported
                exported += n  # counted here: a disabled bar counts nothing
                bar.update(n)

            pages = iter_export_assets(archive.sessions, model_id, selection, on_page=on_page)
            chunks = iter_csv(pages) if kind == "csv" else iter_json(pages, model_id)
            write_text(chunks, out)
    if out is not None:
        typer.echo(f"wrote {out} ({exported} assets)", err=True)


OutFile = Annotated[
    Path | None, typer.Option("--out", help="Write to this file (default: standard output).")
]


@app.command("csv")
def csv_(
    tag: TagOption = None,
    any_: AnyOption = None,
    none: NoneOption = None,
    asset_id: IdOption = None,
    sources: SourcesOption = ALL_SOURCES,
    out: OutFile = None,
    progress: ProgressOption = None,
) -> None:
    """One CSV row per asset: facts, source URIs, tag names and each tag's score and sources.

    Example: ramdex export csv --tag dog --out dogs.csv
    """
    _table("csv", tag, any_, none, asset_id, sources, out, progress)


@app.command("json")
def json_(
    tag: TagOption = None,
    any_: AnyOption = None,
    none: NoneOption = None,
    asset_id: IdOption = None,
    sources: SourcesOption = ALL_SOURCES,
    out: OutFile = None,
    progress: ProgressOption = None,
) -> None:
    """One JSON object per asset with its tags, scores and sources.

    Example: ramdex export json --out assets.json
    """
    _table("json", tag, any_, none, asset_id, sources, out, progress)
