"""``ramdex ingest``, ``ramdex worker``, ``ramdex jobs`` and ``ramdex reindex``.

Register with ``("api.cli.ingest", "app", None)`` in ``api/cli/__init__.py`` (top-level commands).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from indexer.threads import apply_policy

app = typer.Typer()

EXIT_FAILED_ITEMS = 1  # some sources failed (the others were ingested)
EXIT_UNUSABLE = 2  # nothing could run: configuration, model or database problem


def _die(message: str, code: int = EXIT_UNUSABLE) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _named(data: dict[str, Any], model: Any) -> dict[str, Any]:
    """``data`` with ``model`` the model's human name and ``model_id`` its stored id."""
    return {**data, "model": model.name, "model_id": data.get("model")}


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=1, default=str) + "\n")


@app.command("ingest")
def ingest_command(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Files, folders (walked recursively) and http(s) URLs."),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            "--manifest",
            help="A CSV or Parquet file with a url/path column (optional id, other columns "
            "kept as metadata): registered in batches, resumable.",
        ),
    ] = None,
    register_only: Annotated[
        bool,
        typer.Option(
            "--register-only", help="With --manifest: only register its rows (no processing)."
        ),
    ] = False,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", help="Glob of files to take from folders (repeatable; default: images)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Glob of files or folders to skip (repeatable)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="With a broker: wait for the workers to finish (default) or return once queued.",
        ),
    ] = True,
    retry_failed: Annotated[
        bool, typer.Option(help="Queue again assets that failed in an earlier run.")
    ] = False,
    follow_symlinks: Annotated[bool, typer.Option(help="Enter symlinked folders.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    show_failures: Annotated[int, typer.Option(help="Failures listed in the summary.")] = 20,
) -> None:
    """Ingest images: hash, deduplicate, thumbnail, tag with RAM++, store and index them.

    Exit code 0 when every source was ingested or was a duplicate, 1 when some failed (each
    with a reason), 2 when nothing could run (model, database or broker unavailable).
    """
    apply_policy("ingest")  # before torch loads: decoding threads beside the model
    from api.cli.model_notice import announce_configured
    from indexer.celery_app import require_broker
    from indexer.ingest.pipeline import ingest
    from indexer.jobs import JobStalledError
    from indexer.settings import get_settings

    if manifest is not None:
        if sources:
            _die("give either --manifest FILE or sources, not both")
        _ingest_manifest(manifest, wait, retry_failed, register_only, as_json, show_failures)
        return
    if not sources:
        _die("nothing to ingest: give files, folders or URLs, or --manifest FILE")
    try:
        require_broker(get_settings())  # at once, not after a minute of publish retries
        model = announce_configured(get_settings())  # the demo model says what it is, once
        summary = ingest(
            sources,
            include=include or None,
            exclude=exclude or (),
            wait=wait,
            retry_failed=retry_failed,
            follow_symlinks=follow_symlinks,
        )
    except JobStalledError as exc:
        _die(str(exc))
    except KeyboardInterrupt:
        # Registered work is stored: the workers (or the next run) finish it; the job stays
        # truthful (a registration cut short is failed, a waiting client just leaves).
        typer.echo(
            "interrupted: what was registered is kept and finished by the workers (or by "
            "running the same `ramdex ingest` again); see `ramdex jobs`",
            err=True,
        )
        raise typer.Exit(130) from None
    if summary.submitted == 0:
        _die(
            "no images found in " + ", ".join(sources) + " (looked for the image extensions; "
            "use --include GLOB to take other files)",
            EXIT_FAILED_ITEMS,
        )
    if as_json:
        _print_json({**summary.to_dict(), "model": model.name, "model_digest": model.short_digest})
    else:
        resumed = f" ({summary.resumed} resumed)" if summary.resumed else ""
        typer.echo(
            f"job {summary.job_id} (model {model.label}): {summary.submitted} "
            f"source{'' if summary.submitted == 1 else 's'} in "
            f"{summary.elapsed_s:.1f} s "
            f"({summary.rate:.1f}/s): {summary.done} done{resumed}, {summary.duplicate} "
            f"duplicate, {summary.failed} failed"
            + (f", {summary.queued} queued" if summary.queued else "")
            + (
                f", {summary.paired} RAW+JPEG pair{'' if summary.paired == 1 else 's'} grouped"
                if summary.paired
                else ""
            )
        )
        if summary.recovered:
            typer.echo(f"  also finished {summary.recovered} assets earlier runs left unfinished")
        for failure in summary.failures[:show_failures]:
            typer.echo(f"  failed: {failure.source}: {failure.reason}")
        if summary.failed > show_failures:
            typer.echo(f"  ... and {summary.failed - show_failures} more (use --json for all)")
        if summary.queued:
            typer.echo(f"follow it with: ramdex jobs {summary.job_id}")
    if summary.failed:
        raise typer.Exit(EXIT_FAILED_ITEMS)


def _ingest_manifest(
    manifest: str,
    wait: bool,
    retry_failed: bool,
    register_only: bool,
    as_json: bool,
    show_failures: int,
) -> None:
    """``ramdex ingest --manifest FILE``: stage the rows (resumable), then ingest them."""
    from pathlib import Path

    from api.cli.model_notice import announce_configured
    from indexer.celery_app import require_broker
    from indexer.ingest.manifest import ingest_manifest, manifest_format, manifest_stage_text
    from indexer.jobs import JobStalledError
    from indexer.settings import get_settings

    settings = get_settings()
    path = Path(manifest).expanduser()
    manifest_format(path)  # a missing file or an unknown format: exit 2 before anything
    if not register_only:
        require_broker(settings)
        announce_configured(settings)
    try:
        summary = ingest_manifest(
            path,
            settings=settings,
            wait=wait,
            retry_failed=retry_failed,
            stage_only=register_only,
        )
    except JobStalledError as exc:
        _die(str(exc))
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the rows registered so far are kept; run the same command again to "
            "continue where it stopped",
            err=True,
        )
        raise typer.Exit(130) from None
    stage = summary.stage
    if stage.rows_total and stage.malformed >= stage.rows_total:
        first = stage.malformed_examples[0] if stage.malformed_examples else ""
        _die(f"--manifest {manifest}: no usable row ({stage.malformed} malformed; {first})")
    if as_json:
        _print_json(summary.to_dict())
    else:
        typer.echo(manifest_stage_text(summary.stage))
        for example in summary.stage.malformed_examples[:show_failures]:
            typer.echo(f"  skipped: {example}")
        if not register_only:
            typer.echo(
                f"ingest: {summary.submitted} sources in {len(summary.job_ids)} jobs: "
                f"{summary.done} done ({summary.resumed} resumed), {summary.duplicate} "
                f"duplicate, {summary.failed} failed"
                + (f", {summary.queued} queued" if summary.queued else "")
            )
            for failure in summary.failures[:show_failures]:
                typer.echo(f"  failed: {failure.source}: {failure.reason}")
    if summary.failed or summary.stage.malformed:
        raise typer.Exit(EXIT_FAILED_ITEMS)


@app.command("worker")
def worker_command(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to consume (default: the model and default queues)."
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes. Each model process loads its own model: use 1 per GPU.",
        ),
    ] = 1,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    hostname: Annotated[
        str | None,
        typer.Option(
            help="Worker name (default: ramdex@<host>, which container health checks ping); "
            "give each worker on one machine its own, e.g. --hostname gpu0@%h."
        ),
    ] = None,
) -> None:
    """Run a Celery worker for ramdex tasks (needs RAMDEX_BROKER__URL)."""
    apply_policy("worker")  # before torch loads (indexer.celery_app sets the same)
    from indexer.settings import get_settings

    settings = get_settings()
    if not settings.broker.url:
        _die(
            "no broker configured: set RAMDEX_BROKER__URL (redis://... or amqp://...); "
            "without one, `ramdex ingest` runs the tasks in-process and needs no worker"
        )
    from api.cli.model_notice import announce_configured
    from indexer.celery_app import app as celery_app
    from indexer.stores import ensure_schema

    # The schema first (migrations are idempotent and safe to race): on a new database the
    # reconciler and webhook threads would otherwise log a missing table every few seconds.
    ensure_schema(settings.database_url)
    announce_configured(settings)  # model workers tag with it: the demo model says so
    wanted = queues or f"{settings.broker.model_queue},{settings.broker.default_queue}"
    argv = [
        "worker",
        f"--queues={wanted}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    argv.append(f"--hostname={hostname or 'ramdex@%h'}")
    celery_app.worker_main(argv=argv)


def _format_job(view: Any) -> str:
    eta = f", ETA {view.eta_s:.0f} s" if view.eta_s is not None else ""
    rate = f", {view.rate:.1f}/s" if view.rate else ""
    parts = ""
    if view.parts:
        parts = f", parts {view.parts['done']}/{view.parts['total']} done"
    line = (
        f"{view.id:>6}  {view.kind:<8} {view.status:<9} {view.processed}/{view.total} "
        f"({view.done} done, {view.failed} failed{rate}{eta}{parts})"
    )
    if view.error:
        line += f"\n        error: {view.error.splitlines()[0]}"
    return line


@app.command("jobs")
def jobs_command(
    job_id: Annotated[int | None, typer.Argument(help="One job's details.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Jobs listed.")] = 20,
    watch: Annotated[bool, typer.Option(help="Follow the job until it finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show ingest, reindex and concept backfill jobs with their progress."""
    from indexer.jobs import get_job_view, recent_jobs, wait_for_job
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    url = get_settings().database_url
    ensure_schema(url)
    if job_id is None:
        views = recent_jobs(url, limit)
        if as_json:
            _print_json([v.to_dict() for v in views])
        elif not views:
            typer.echo("no jobs yet")
        else:
            for view in views:
                typer.echo(_format_job(view))
        return
    view = get_job_view(url, job_id)
    if view is None:
        _die(f"no job with id {job_id}", 1)
    if watch and not view.finished:
        from tqdm import tqdm

        with tqdm(total=view.total, unit="img", desc=f"job {job_id}") as bar:

            def update(current: Any) -> None:
                bar.total = current.total
                bar.n = current.processed
                bar.refresh()

            view = wait_for_job(url, job_id, on_update=update)
    if as_json:
        _print_json(view.to_dict())
        return
    typer.echo(_format_job(view))
    failures = view.params.get("failures") or []
    for failure in failures:
        typer.echo(f"  failed: {failure.get('source')}: {failure.get('reason')}")


@app.command("reindex")
def reindex_command(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many assets.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count the assets that need it.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the workers.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-score assets that the configured model has not scored (after a model change).

    Resumable: run it again after an interruption and it continues. Unfinished work earlier
    runs left (interrupted ingests, dead workers) is taken over first.
    """
    apply_policy("ingest")  # an embedded reindex is ingest's model processing
    from api.cli.model_notice import announce_configured
    from indexer.celery_app import require_broker
    from indexer.jobs import JobStalledError
    from indexer.reindex import pending_counts, reindex
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    model = announce_configured(settings)  # the demo model says what it is, once
    if dry_run:
        counts = pending_counts(settings)
        if as_json:
            _print_json(_named(counts.to_dict(), model))
        else:
            typer.echo(
                f"model {model.label}: {counts.other_model} assets scored by another "
                f"model, {counts.pending} pending or in progress"
            )
        return
    require_broker(settings)  # at once, not after a minute of publish retries
    try:
        summary = reindex(settings, limit=limit, wait=wait)
    except JobStalledError as exc:
        _die(str(exc))
    if as_json:
        _print_json(_named(summary.to_dict(), model))
    else:
        typer.echo(
            f"job {summary.job_id}: model {model.label}: {summary.queued} queued, "
            f"{summary.done} done, {summary.failed} failed in {summary.elapsed_s:.1f} s"
        )
        if summary.recovered:
            typer.echo(f"  also took over {summary.recovered} assets earlier runs left unfinished")
    if summary.failed:
        raise typer.Exit(EXIT_FAILED_ITEMS)
