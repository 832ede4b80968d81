"""``ramdex sources``: S3-compatible prefixes and folders ingested into a collection, re-scanned
incrementally (docs/sources.md).

``add`` checks the source (the bucket is there and listable, the folder exists) and stores it;
the scheduler that ``ramdex worker``, an embedded ``ramdex serve`` and ``ramdex sources watch``
run scans it from then on; ``scan`` scans now, in the foreground; ``list`` shows each source's
last scan and counts; ``remove`` forgets a source (its assets stay). Every failure a person can
fix is a :class:`~indexer.errors.RamdexError` printed by the root group's error handler.
"""

from __future__ import annotations

import json
import signal
from typing import Annotated, Any

import typer

from indexer.errors import RamdexError

app = typer.Typer(
    help="Object-storage prefixes and (watched) folders, scanned into a collection.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _settings() -> Any:
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    return settings


def _interval(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "never"


@app.command("add")
def add_command(
    uri: Annotated[
        str, typer.Argument(help="s3://BUCKET/PREFIX, or a folder path.", metavar="SOURCE")
    ],
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection",
            help="Collection (name or id) the source's assets join; created when absent. "
            "Default: one named after the source.",
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", help="Take only keys matching this glob (repeatable; default: images)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Skip keys or folders matching this glob (repeatable)."),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Watch the folder: new files ingested in seconds.")
    ] = False,
    interval: Annotated[
        str | None,
        typer.Option(
            "--interval",
            help="Time between full re-scans: 30s, 5m, 2h, 1d "
            "(default: sources.default_interval_s).",
        ),
    ] = None,
    copy_originals: Annotated[
        bool,
        typer.Option(
            "--copy-originals",
            help="Copy originals into the media store (default: read them from the source).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Add a source (checked first); its scans run from the scheduler or `sources scan`."""
    from indexer.db.errors import DuplicateError
    from indexer.sources.manage import add_source

    settings = _settings()
    try:
        view = add_source(
            settings,
            uri,
            collection=collection,
            include=include or (),
            exclude=exclude or (),
            watch=watch,
            interval=interval,
            copy_originals=copy_originals,
        )
    except DuplicateError as exc:
        raise RamdexError(str(exc), hint="`ramdex sources list` shows it") from exc
    if as_json:
        typer.echo(json.dumps(view.to_dict()))
        return
    typer.echo(
        f"source {view.id}: {view.uri} -> collection {view.collection!r} "
        f"(every {_interval(view.interval_s)}{', watched' if view.watch else ''})"
    )
    typer.echo(
        f"next: `ramdex sources scan {view.id}` scans it now; `ramdex worker`, `ramdex serve` "
        "or `ramdex sources watch` scan it on schedule",
        err=True,
    )


@app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """Sources with their last scan (time, status, error) and counts."""
    from indexer.db.session import session_scope
    from indexer.sources.manage import list_views

    settings = _settings()
    with session_scope(settings.database_url) as session:
        rows = list_views(session)
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in rows]))
        return
    if not rows:
        typer.echo("no sources; add one with `ramdex sources add s3://BUCKET/PREFIX`", err=True)
        return
    for v in rows:
        c = v.counts
        flags = f"every {_interval(v.interval_s)}" + (", watched" if v.watch else "")
        flags += ", copies originals" if v.copy_originals else ""
        typer.echo(f"{v.id}  {v.uri}  [{v.kind}; {flags}] -> {v.collection}")
        typer.echo(
            f"    last scan {_when(v.last_scan_at)}: {v.last_status}"
            + (f" (job {v.last_job_id})" if v.last_job_id else "")
            + f"; objects {c.objects}, assets {c.assets}, gone {c.gone}, failed {c.failed}"
        )
        if v.last_counts:
            lc = v.last_counts
            typer.echo(
                f"    that scan: listed {lc.get('listed', 0)}, new {lc.get('new', 0)}, "
                f"changed {lc.get('changed', 0)}, gone {lc.get('gone', 0)}, "
                f"failed {lc.get('failed', 0)} in {lc.get('elapsed_s', 0)} s"
            )
        if v.last_error:
            typer.echo(f"    error: {v.last_error}")


def _source_id(text: str) -> int:
    if not text.isdigit():
        raise RamdexError(
            f"{text!r} is not a source id", hint="`ramdex sources list` shows the ids"
        )
    return int(text)


@app.command("scan")
def scan_command(
    source: Annotated[
        str, typer.Argument(help="Source id, or 'all' for every source.", metavar="ID")
    ],
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Scan now, in the foreground: new and changed objects ingested, vanished ones gone."""
    from indexer.db.session import session_scope
    from indexer.db.source_repo import get_source, list_sources
    from indexer.sources.scan import scan_source

    settings = _settings()
    with session_scope(settings.database_url) as session:
        if source == "all":
            ids = [int(s.id) for s in list_sources(session)]
        else:
            sid = _source_id(source)
            if get_source(session, sid) is None:
                raise RamdexError(f"no source {sid}", hint="`ramdex sources list` shows them")
            ids = [sid]
    reports = [
        scan_source(settings, sid, wait=True, progress=progress, raise_errors=source != "all")
        for sid in ids
    ]
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "source_id": r.source_id,
                        "job_id": r.job_id,
                        "error": r.error,
                        "skipped": r.skipped,
                        **r.counts(),
                    }
                    for r in reports
                ]
            )
        )
    else:
        for r in reports:
            if r.skipped:
                typer.echo(f"source {r.source_id}: another scan of it is running; skipped")
            elif r.error:
                typer.echo(f"source {r.source_id}: error: {r.error}")
            else:
                typer.echo(
                    f"source {r.source_id}: listed {r.listed}, new {r.new}, changed {r.changed}, "
                    f"unchanged {r.unchanged}, gone {r.gone}, failed {r.failed}"
                    + (f" (job {r.job_id})" if r.job_id else "")
                    + f" in {r.elapsed_s:.1f} s"
                )
    if any(r.error for r in reports):
        raise typer.Exit(1)


@app.command("remove")
def remove_command(
    source: Annotated[str, typer.Argument(help="Source id.", metavar="ID")],
) -> None:
    """Forget a source: no more scans; its assets stay in the archive and its collection."""
    from indexer.sources.manage import remove_source

    sid = _source_id(source)
    if not remove_source(_settings(), sid):
        raise RamdexError(f"no source {sid}", hint="`ramdex sources list` shows them")
    typer.echo(f"source {sid} removed (its assets stay)")


@app.command("watch")
def watch_command() -> None:
    """Run the scheduler in the foreground: due scans and watched folders, until Ctrl-C."""
    from indexer.sources.scheduler import SourceScheduler

    settings = _settings()
    scheduler = SourceScheduler(settings, wait=bool(settings.broker.url))
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop(timeout_s=0))
    typer.echo(
        f"scanning due sources every {settings.sources.tick_s:g} s and watching folders "
        "(Ctrl-C stops)",
        err=True,
    )
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass
