"""``ramdex concepts``: import open-set concepts and show the descriptions a concept would use.

Until concepts live in the database, imported concepts are kept as one JSON file in the upstream
format under the data directory (``<home>/concepts/concepts.json``); importing again merges by
name (a re-imported concept replaces the old one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Open-set concepts: import and inspect.", no_args_is_help=True)


def concepts_file(home: Path | None = None) -> Path:
    """Where imported concepts are kept (``<home>/concepts/concepts.json``)."""
    if home is None:
        from indexer.settings import get_settings

        home = get_settings().home
    return Path(home) / "concepts" / "concepts.json"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help='Upstream JSON: [{"Concept": ["desc", ...]}, ...].')],
    out: Annotated[
        Path | None, typer.Option(help="Concepts file to merge into (default: in the data dir).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only validate and summarise.")] = False,
) -> None:
    """Validate a concepts file and store its concepts."""
    from ram_pp.concepts import load_upstream_json, save_upstream_json

    try:
        concepts = load_upstream_json(file)
    except FileNotFoundError:
        _fail(f"no such file: {file}")
    except ValueError as exc:
        _fail(str(exc))
    counts = [len(c.descriptions) for c in concepts]
    typer.echo(
        f"{len(concepts)} concepts, {sum(counts)} descriptions "
        f"({min(counts)}-{max(counts)} per concept)"
    )
    for c in concepts[:10]:
        typer.echo(f"  {c.name}: {len(c.descriptions)} descriptions")
    if len(concepts) > 10:
        typer.echo(f"  ... and {len(concepts) - 10} more")
    if dry_run:
        return
    target = out or concepts_file()
    merged = {}
    if target.is_file():
        try:
            merged = {c.name.lower(): c for c in load_upstream_json(target)}
        except ValueError as exc:
            _fail(f"existing concepts file {target} is unreadable: {exc}")
    replaced = sum(c.name.lower() in merged for c in concepts)
    merged.update({c.name.lower(): c for c in concepts})
    save_upstream_json(list(merged.values()), target)
    typer.echo(f"stored in {target} ({len(merged)} concepts, {replaced} replaced)")


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
        Path | None, typer.Option(help="Concepts file to look the name up in.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the descriptions that would be used for a concept.

    An imported concept keeps its stored descriptions (plus any given with --description);
    otherwise they are built from your descriptions, the templates and, when configured, the LLM.
    """
    from indexer.settings import get_settings
    from ram_pp.concepts import Concept, LlmDescriber, LlmError, load_upstream_json, make_concept

    settings = get_settings()
    stored = concepts or concepts_file(settings.home)
    known = {}
    if stored.is_file():
        try:
            known = {c.name.lower(): c for c in load_upstream_json(stored)}
        except ValueError as exc:
            _fail(f"concepts file {stored} is unreadable: {exc}")
    source = "imported"
    try:
        if name.strip().lower() in known:
            base = known[name.strip().lower()]
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
