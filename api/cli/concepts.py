"""``ramdex concepts``: import open-set concepts into the archive, list them, and show the
descriptions a concept would use.

Imported concepts are stored in the database for the configured model, where ``GET /concepts``,
the web UI and search see them (:mod:`indexer.concept_import`); ``--backfill`` makes them tags
at once. Concepts imported by older versions sit in ``<home>/concepts/concepts.json``: import
that file to bring them into the archive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Open-set concepts: import, list and inspect.", no_args_is_help=True)

EXIT_FAILED_ITEMS = 1  # some concepts were refused or failed (the others were stored)
EXIT_BAD_INPUT = 2  # nothing was stored: the file is missing or not a concepts file


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(file: Path) -> list[Any]:
    from ram_pp.concepts import load_upstream_json

    try:
        return load_upstream_json(file)
    except FileNotFoundError:
        _fail(f"no such file: {file}")
    except IsADirectoryError:
        _fail(f"{file} is a folder; give a concepts JSON file")
    except ValueError as exc:
        _fail(f'{exc} (expected upstream\'s format: [{{"Concept": ["description", ...]}}])')
    raise AssertionError("unreachable")


def _summary(concepts: list[Any]) -> None:
    counts = [len(c.descriptions) for c in concepts]
    typer.echo(
        f"{len(concepts)} concepts, {sum(counts)} descriptions "
        f"({min(counts)}-{max(counts)} per concept)"
    )
    for c in concepts[:10]:
        typer.echo(f"  {c.name}: {len(c.descriptions)} descriptions")
    if len(concepts) > 10:
        typer.echo(f"  ... and {len(concepts) - 10} more")


def _configured() -> tuple[Any, str, Any]:
    """Settings, stored model id and description of the configured model (schema migrated)."""
    from indexer.models import configured_model_id, describe_configured_model
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    return settings, configured_model_id(settings), describe_configured_model(settings)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help='Upstream JSON: [{"Concept": ["desc", ...]}, ...].')],
    backfill: Annotated[
        bool,
        typer.Option(
            "--backfill",
            help="Make them tags now: score every archived asset for each concept.",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="With a broker: wait for the workers' backfill jobs."
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only validate and summarise; store nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON.")] = False,
) -> None:
    """Store the concepts of a file in the archive, for the configured model.

    Importing again merges by name: new descriptions replace the old ones. Exit code 0 when every
    concept was stored (and backfilled), 1 when any was refused or its backfill failed, 2 when
    the file is not a concepts file.
    """
    from dataclasses import asdict

    from indexer.concept_import import store_concepts

    concepts = _load(file)
    if not as_json:
        _summary(concepts)
    if dry_run:
        return
    settings, model_id, model = _configured()
    outcomes = store_concepts(settings, model_id, concepts, backfill=backfill)
    counts = {a: sum(o.action == a for o in outcomes) for a in ("created", "updated", "unchanged")}
    refused = [o for o in outcomes if o.action == "refused"]
    if not as_json:
        typer.echo(
            f"stored for model {model.label}: {counts['created']} created, "
            f"{counts['updated']} updated, {counts['unchanged']} unchanged, "
            f"{len(refused)} refused"
        )
        for outcome in refused:
            typer.echo(f"  refused {outcome.name!r}: {outcome.reason}", err=True)
    failed = len(refused)
    if backfill:
        failed += _backfill(settings, outcomes, wait=wait, quiet=as_json)
    elif not as_json and any(o.concept_id and not o.promoted for o in outcomes):
        typer.echo(
            "search them by name with `ramdex search TEXT` (or the web UI); "
            "`ramdex concepts import FILE --backfill` makes them tags"
        )
    if as_json:
        payload = {
            "model": model.name,
            "model_id": model_id,
            "concepts": [asdict(o) for o in outcomes],
        }
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=1))
    if failed:
        raise typer.Exit(EXIT_FAILED_ITEMS)


def _backfill(settings: Any, outcomes: list[Any], *, wait: bool, quiet: bool) -> int:
    """Run (embedded) or queue (broker) the backfills; returns how many failed."""
    from api.cli.model_notice import announce_configured
    from indexer.concept_import import backfill_imported
    from indexer.jobs import get_job_view, wait_for_job

    announce_configured(settings)  # the demo model's tags are synthetic: say so before scoring
    url = settings.database_url

    def started(outcome: Any) -> None:
        if not quiet:
            verb = "queued" if settings.broker.url else "scoring the archive for"
            typer.echo(f"{verb} {outcome.name!r} (job {outcome.job_id}) ...")

    done = backfill_imported(settings, outcomes, on_start=started)
    if settings.broker.url and not wait:
        if not quiet:
            typer.echo("follow them with `ramdex jobs JOB_ID --watch`")
        return 0
    failed = 0
    for outcome in done:
        view = (
            wait_for_job(url, outcome.job_id)
            if settings.broker.url
            else get_job_view(url, outcome.job_id)
        )
        if view is None or view.status != "done" or outcome.backfill_error:
            failed += 1
            reason = outcome.backfill_error or (view.error if view is not None else "job missing")
            outcome.backfill_error = reason
            typer.echo(f"  backfill of {outcome.name!r} failed: {reason}", err=True)
        elif not quiet:
            typer.echo(f"  {outcome.name!r} is a tag: {view.done} assets scored")
    return failed


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the configured model's concepts (newest first), as GET /concepts does."""
    from indexer.db.concept_repo import list_concepts
    from indexer.db.session import session_scope

    settings, model_id, model = _configured()
    with session_scope(settings.database_url) as session:
        rows = [
            {
                "id": c.id,
                "name": c.name,
                "status": c.status,
                "descriptions": len(c.descriptions or []),
                "threshold": round(float(c.threshold), 4),
                "tag_id": c.tag_id,
            }
            for c in list_concepts(session, model_id)
        ]
    if as_json:
        typer.echo(json.dumps({"model": model.name, "concepts": rows}, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no concepts for model {model.label} yet: `ramdex concepts import FILE`")
        return
    for row in rows:
        typer.echo(
            f"{row['id']:>5}  {row['status']:<9} {row['name']}  "
            f"({row['descriptions']} descriptions, threshold {row['threshold']})"
        )


def _stored_concept(name: str) -> Any:
    """The configured model's stored concept with this name (any case), or None."""
    from indexer.db.concept_repo import find_concept
    from indexer.db.session import session_scope
    from ram_pp.concepts import Concept

    settings, model_id, _ = _configured()
    with session_scope(settings.database_url) as session:
        row = find_concept(session, model_id, name.strip())
        return None if row is None else Concept(row.name, tuple(row.descriptions or ()))


@app.command("describe")
def describe_command(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    description: Annotated[
        list[str] | None, typer.Option("--description", "-d", help="Your own description.")
    ] = None,
    templates: Annotated[bool, typer.Option(help="Add the built-in prompt templates.")] = True,
    llm: Annotated[
        bool, typer.Option(help="Ask the configured LLM endpoint (RAMDEX_LLM__URL).")
    ] = True,
    concepts: Annotated[
        Path | None,
        typer.Option(help="Look the name up in this concepts file instead of the archive."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the descriptions that would be used for a concept.

    A stored concept (imported, or created through the API) keeps its descriptions (plus any
    given with --description); otherwise they are built from your descriptions, the templates
    and, when configured, the LLM.
    """
    from indexer.settings import get_settings
    from ram_pp.concepts import Concept, LlmDescriber, LlmError, make_concept

    settings = get_settings()
    if concepts is not None:
        known = {c.name.lower(): c for c in _load(concepts)}
        base = known.get(name.strip().lower())
    else:
        base = _stored_concept(name)
    source = "imported"
    try:
        if base is not None:
            concept = Concept(base.name, (*base.descriptions, *(description or [])))
        else:
            describer = None
            if llm and settings.llm.url and settings.llm.model:
                describer = LlmDescriber(
                    settings.llm.url,
                    settings.llm.model,
                    api_key=settings.llm.api_key,
                    timeout_s=settings.llm.timeout_s,
                    cache_dir=settings.home / "cache" / "llm",
                )
            concept = make_concept(name, description or [], use_templates=templates, llm=describer)
            source = "generated" + (" with LLM" if describer else "")
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    except LlmError as exc:
        _fail(f"{exc} (use --no-llm to skip the LLM)")
    if as_json:
        typer.echo(json.dumps({concept.name: list(concept.descriptions)}, ensure_ascii=False))
        return
    typer.echo(f"{concept.name} ({source}, {len(concept.descriptions)} descriptions):")
    for text in concept.descriptions:
        typer.echo(f"  - {text}")
