"""``ramdex taxonomy``: the vocabulary file: synonyms, preferred labels, hierarchy.

``import`` checks a CSV or SKOS-like JSON file (docs/taxonomy.md) and stores it, replacing the
stored taxonomy in one transaction (``--merge``: on top of it); ``show`` describes one term (its
preferred labels, aliases, parents, children) or lists every concept; ``export`` writes the
stored taxonomy back as a file; ``stats`` counts it. ramdex ships no taxonomy: the built-in tag
list has none (examples/taxonomy-example.csv is a small example).

Every failure a person can fix (a file with an error, named by line or entry; an unknown term)
is a :class:`~indexer.errors.RamdexError` printed by the root group's error handler.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="The vocabulary file: synonyms, preferred labels, hierarchy.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


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


@app.command("import")
def import_command(
    file: Annotated[
        Path, typer.Argument(help="A vocabulary file: .csv or .json (docs/taxonomy.md).")
    ],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace/--merge",
            help="Replace the stored taxonomy (default), or merge the file on top of it "
            "(its concepts replace stored ones of the same preferred English label).",
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check the file; store nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a vocabulary file and store it (all or nothing: an error changes nothing)."""
    from indexer.db.taxonomy_repo import check_concepts, import_concepts, result_of
    from indexer.taxonomy import read_file

    concepts = read_file(file)
    with _session() as session:
        if dry_run:
            result = result_of(check_concepts(session, concepts, merge=not replace))
        else:
            result = import_concepts(session, concepts, merge=not replace)
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, **asdict(result)}, ensure_ascii=False))
        return
    verb = "checked" if dry_run else ("stored" if replace else "merged")
    typer.echo(
        f"{verb}: {result.concepts} concepts, {result.terms} names, {result.edges} broader edges"
    )
    if result.bare:
        typer.echo(f"broader tag names without a row of their own: {', '.join(result.bare)}")
    _say_what_matches(concepts)


def _say_what_matches(concepts: list[Any]) -> None:
    """How many of the file's concepts name a tag of the configured model: a vocabulary made
    for another model imports fine and then matches nothing, which should not be a surprise."""
    import sqlalchemy as sa

    from indexer.db.labels import label_key
    from indexer.db.tags import Tag
    from indexer.models import ModelNotAvailableError, configured_model_id
    from indexer.settings import get_settings

    try:
        model_id = configured_model_id(get_settings())
    except ModelNotAvailableError:
        return
    with _session() as session:
        english = {label_key(e) for e in session.scalars(
            sa.select(Tag.english).where(Tag.model_name == model_id)
        )}  # fmt: skip
        chinese = set(session.scalars(sa.select(Tag.chinese).where(Tag.model_name == model_id)))
    if not english:
        return  # nothing ingested yet: the tags are not known to the archive
    named = sum(
        1
        for c in concepts
        if any(
            label_key(n) in english or n in chinese
            for n in [*c.pref.values(), *(a for names in c.alt.values() for a in names)]
        )
    )
    typer.echo(f"{named} of {len(concepts)} concepts name a tag of the configured model")
    if named == 0:
        typer.echo(
            "warning: no concept names a tag the model outputs, so search finds only what "
            "people and files labelled with these names (check the file is for this model)",
            err=True,
        )


@app.command("show")
def show_command(
    term: Annotated[
        str | None, typer.Argument(help="Any name of a concept (English, Chinese, a synonym).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show one term's concept (preferred labels, aliases, parents, children), or every concept."""
    from indexer.db import taxonomy_repo as repo

    with _session() as session:
        if term is None:
            _show_all(repo.load(session), as_json=as_json)
            return
        info = repo.describe(session, term)
    if info is None:
        raise RamdexError(
            f"the taxonomy has no term {term!r}",
            hint="`ramdex taxonomy show` lists every concept; import a vocabulary with "
            "`ramdex taxonomy import FILE`",
        )
    if as_json:
        typer.echo(json.dumps(asdict(info), ensure_ascii=False, indent=1))
        return
    head = info.label if info.matched == info.label else f"{info.label} (matched {info.matched!r})"
    typer.echo(f"{head}  [key {info.key}]")
    for lang, label in info.labels.items():
        typer.echo(f"  preferred {lang}: {label}")
    alts = [f"{a.label} ({a.lang})" for a in info.aliases if not a.preferred]
    typer.echo(f"  aliases: {', '.join(alts) or '-'}")
    typer.echo(f"  parents: {', '.join(p.label for p in info.parents) or '-'}")
    typer.echo(f"  children: {', '.join(c.label for c in info.children) or '-'}")


def _show_all(taxonomy: object, *, as_json: bool) -> None:
    from indexer.taxonomy import Taxonomy, to_json

    assert isinstance(taxonomy, Taxonomy)
    if as_json:
        typer.echo(to_json(taxonomy), nl=False)
        return
    if not taxonomy.concepts:
        typer.echo("the taxonomy is empty: import one with `ramdex taxonomy import FILE`")
        return
    for concept in taxonomy.concepts.values():
        names = [v for k, v in concept.pref.items() if k != "en"]
        names += [n for alts in concept.alt.values() for n in alts]
        line = concept.label + (f" ({', '.join(names)})" if names else "")
        if concept.broader:
            line += " < " + ", ".join(taxonomy.concepts[b].label for b in concept.broader)
        typer.echo(line)


@app.command("export")
def export_command(
    file: Annotated[
        Path, typer.Argument(help="Where to write: .csv or .json; - for stdout (JSON).")
    ],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the file's suffix).")
    ] = None,
) -> None:
    """Write the stored taxonomy as a vocabulary file (imported back: the same taxonomy)."""
    from indexer.db.taxonomy_repo import load
    from indexer.taxonomy import to_csv, to_json

    chosen = (fmt or (file.suffix[1:] if file.suffix else "json")).lower()
    if chosen not in ("csv", "json"):
        raise RamdexError(
            f"cannot tell the format of {str(file)!r}",
            hint="name a .csv or .json file, or give --format csv|json",
        )
    with _session() as session:
        taxonomy = load(session)
    text = to_csv(taxonomy) if chosen == "csv" else to_json(taxonomy)
    if str(file) == "-":
        typer.echo(text, nl=False)
        return
    try:
        file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RamdexError(
            f"cannot write {file}: {exc.strerror}", hint="give a writable path"
        ) from None
    typer.echo(f"wrote {len(taxonomy.concepts)} concepts to {file}")


@app.command("stats")
def stats_command(as_json: JsonOption = False) -> None:
    """Count the stored taxonomy: concepts, names per language, broader edges, depth."""
    from indexer.db.taxonomy_repo import stats

    with _session() as session:
        found = stats(session)
    if as_json:
        typer.echo(json.dumps(asdict(found)))
        return
    langs = ", ".join(f"{k} {v}" for k, v in found.terms_by_lang.items()) or "-"
    typer.echo(f"concepts: {found.concepts}")
    typer.echo(f"names: {found.terms} ({langs})")
    typer.echo(f"broader edges: {found.edges} (roots {found.roots}, depth {found.depth})")
