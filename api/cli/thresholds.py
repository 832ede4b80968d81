"""``ramdex thresholds``: per-tag thresholds learned from review decisions.

``suggest`` shows, for each reviewed tag of the configured model, its evidence (reviews,
positives, negatives), the threshold now and the one suggested for a target precision, with
the estimated precision and recall before and after (:mod:`indexer.thresholds`,
docs/thresholds.md). ``apply`` writes the suggestions as threshold overrides (search uses them
at once: scores are stored), ``reset`` clears overrides. Errors a person can fix (an unknown
tag, a target out of range) are one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from indexer.thresholds import Suggestion

app = typer.Typer(
    help="Per-tag thresholds learned from review decisions: suggest and apply.",
    no_args_is_help=True,
)

TargetOption = Annotated[
    float,
    typer.Option("--target-precision", min=0.01, max=1.0, help="Precision each tag should reach."),
]
TargetForOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target-for",
        metavar="TAG=P",
        help="A tag's own target precision, over --target-precision (repeatable).",
    ),
]
TagOption = Annotated[
    list[str] | None,
    typer.Option(
        "--tag", metavar="NAME", help="Only this tag (repeatable; default: every reviewed tag)."
    ),
]
MinReviewsOption = Annotated[
    int, typer.Option("--min-reviews", min=0, help="Reviews a tag needs for a suggestion.")
]
MinClassOption = Annotated[
    int,
    typer.Option(
        "--min-each", min=0, help="Positives and negatives (each) a tag needs for a suggestion."
    ),
]
LowerOption = Annotated[
    bool,
    typer.Option(
        "--allow-lower",
        help="Also lower thresholds where precision is above the target (more recall).",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Model id of the tags (default: the configured model)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@contextmanager
def _archive(model: str | None) -> Iterator[tuple[Session, str]]:
    """A session on the configured archive (schema migrated) and the model id; unknown tags
    and bad values become one-line errors."""
    from indexer.db.errors import UnknownTagError
    from indexer.db.session import session_scope
    from indexer.models import ModelNotAvailableError, configured_model_id
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    if model is None:
        try:
            model = configured_model_id(settings)
        except ModelNotAvailableError as exc:  # only the id is needed here
            raise RamdexError(str(exc), hint="or name the tags' model with --model") from None
    with session_scope(settings.database_url) as session:
        try:
            yield session, model
        except UnknownTagError as exc:
            raise RamdexError(
                str(exc),
                hint="name a tag of the model in English or Chinese (`ramdex search` shows them "
                "beside each hit)",
            ) from None
        except ValueError as exc:
            raise RamdexError(str(exc)) from None


def _targets(values: list[str] | None) -> dict[str, float]:
    targets: dict[str, float] = {}
    for value in values or []:
        name, sep, number = value.rpartition("=")
        try:
            target = float(number)
        except ValueError:
            target = -1.0
        if not sep or not name.strip() or not 0.0 < target <= 1.0:
            raise RamdexError(
                f"--target-for {value!r} is not TAG=P",
                hint="give a tag name and a precision in (0, 1], for example dog=0.95",
            )
        targets[name.strip()] = target
    return targets


def _suggest(
    session: Session,
    model_id: str,
    target: float,
    target_for: list[str] | None,
    tags: list[str] | None,
    min_reviews: int,
    min_each: int,
    allow_lower: bool,
) -> list[Suggestion]:
    from indexer.thresholds import EvidenceRule, suggest_thresholds

    return suggest_thresholds(
        session,
        model_id,
        target=target,
        targets=_targets(target_for),
        names=tags,
        rule=EvidenceRule(min_reviews, min_each, min_each),
        lower=allow_lower,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(s: Suggestion) -> str:
    after = s.after
    if s.suggested is None:
        change, p_after, r_after = "-", "-", "-"
    else:
        change = f"{s.suggested:.4g}" if s.changes else "keep"
        p_after, r_after = (
            _pct(after.precision if after else None),
            _pct(after.recall if after else None),
        )
    return (
        f"{s.tag[:24]:<24} {s.reviews:>7} {f'+{s.positives}/-{s.negatives}':>9} "
        f"{s.current:>6.4g} -> {change:<7} {_pct(s.before.precision):>5} -> {p_after:<5} "
        f"{_pct(s.before.recall):>5} -> {r_after:<5}"
    )


def _table(suggestions: list[Suggestion], target: float) -> None:
    if not suggestions:
        typer.echo(
            "no reviewed tags: accept or reject model tags first (`ramdex review queue TAG`)"
        )
        return
    typer.echo(f"target precision {target:g} (estimated over the archive's stored scores)")
    typer.echo(
        f"{'tag':<24} {'reviews':>7} {'+/-':>9} {'threshold now -> new':<20} "
        f"{'precision':<14} {'recall':<14}"
    )
    for s in suggestions:
        typer.echo(_row(s))
    for s in suggestions:
        if s.reason:
            typer.echo(f"  {s.tag}: {s.reason}")
        elif s.after is not None and not s.confident and s.changes:
            low = s.after.precision_low
            typer.echo(
                f"  {s.tag}: {s.after.reviewed_true_above} of {s.after.reviewed_above} reviewed "
                f"above {s.suggested:.4g} are true (95% Wilson lower bound "
                f"{_pct(low)}): more reviews would firm this up"
            )


def _json(s: Suggestion) -> dict[str, Any]:
    return {**asdict(s), "changes": s.changes}


@app.command("suggest")
def suggest(
    target: TargetOption = 0.9,
    target_for: TargetForOption = None,
    tag: TagOption = None,
    min_reviews: MinReviewsOption = 10,
    min_each: MinClassOption = 3,
    allow_lower: LowerOption = False,
    model: ModelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Suggest thresholds from review decisions, with their evidence (nothing is changed)."""
    with _archive(model) as (session, model_id):
        found = _suggest(
            session, model_id, target, target_for, tag, min_reviews, min_each, allow_lower
        )
    if as_json:
        typer.echo(
            json.dumps(
                {"model_id": model_id, "target": target, "tags": [_json(s) for s in found]},
                ensure_ascii=False,
            )
        )
        return
    _table(found, target)


@app.command("apply")
def apply(
    target: TargetOption = 0.9,
    target_for: TargetForOption = None,
    tag: TagOption = None,
    min_reviews: MinReviewsOption = 10,
    min_each: MinClassOption = 3,
    allow_lower: LowerOption = False,
    model: ModelOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write the suggested thresholds as threshold overrides (search uses them at once).

    Only tags with enough evidence whose suggestion changes their threshold are written.
    """
    from indexer.thresholds import apply_suggestions

    with _archive(model) as (session, model_id):
        found = _suggest(
            session, model_id, target, target_for, tag, min_reviews, min_each, allow_lower
        )
        changing = [s for s in found if s.changes]
        if not as_json:
            _table(found, target)
        if changing and not yes and not as_json:
            names = ", ".join(s.tag for s in changing[:8]) + (" ..." if len(changing) > 8 else "")
            if not typer.confirm(f"set {len(changing)} thresholds ({names})?"):
                typer.echo("nothing changed")
                raise typer.Exit(1)
        elif changing and not yes:
            raise RamdexError("apply --json changes thresholds only with --yes")
        applied = apply_suggestions(session, changing)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model_id": model_id,
                    "applied": [
                        {"tag": s.tag, "tag_id": s.tag_id, "from": s.current, "to": s.suggested}
                        for s in applied
                    ],
                },
                ensure_ascii=False,
            )
        )
        return
    typer.echo(f"{len(applied)} thresholds set" if applied else "no threshold to change")


@app.command("reset")
def reset(
    tag: TagOption = None,
    model: ModelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Clear threshold overrides: the model's thresholds apply again.

    The named tags' overrides, or by default every override of the model.
    """
    from indexer.thresholds import reset_overrides

    with _archive(model) as (session, model_id):
        cleared = reset_overrides(session, model_id, tag)
    if as_json:
        typer.echo(json.dumps({"model_id": model_id, "cleared": cleared}))
        return
    typer.echo(f"{cleared} threshold overrides cleared")
