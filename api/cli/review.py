"""`ramdex review`: manual tags, accepting or rejecting model tags, the queue, history.

The same service as ``/labels`` (:mod:`indexer.review`, docs/review.md); each change is one
transaction, recorded with the actor ``cli:<os user>``. Errors a person can fix (an unknown
asset or tag, an empty name) are one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="Review tags: manual tags, accept or reject model tags, the review queue, history.",
    no_args_is_help=True,
)

TagArgument = Annotated[
    str, typer.Argument(metavar="TAG", help="Tag name (English, Chinese, a synonym) or keyword.")
]
AssetIdsArgument = Annotated[
    list[int],
    typer.Argument(
        min=1, max=2**63 - 1, metavar="ASSET_ID", help="Asset ids (from `ramdex search`)."
    ),
]
AssetIdArgument = Annotated[
    int, typer.Argument(min=1, max=2**63 - 1, metavar="ASSET_ID", help="Asset id.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def actor() -> str:
    """Who CLI changes are recorded as: ``cli:<os user>``."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = "unknown"
    return f"cli:{user}"


@contextmanager
def _archive() -> Iterator[tuple[Session, str]]:
    """A session on the configured archive (schema migrated) and the configured model's id;
    the service's errors become one-line errors."""
    from indexer.archive import Archive
    from indexer.db.errors import InvalidCursorError, NotFoundError, UnknownTagError
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    with Archive(settings) as archive, archive.sessions() as session:
        try:
            yield session, archive.model_id()
        except UnknownTagError as exc:
            raise RamdexError(
                str(exc), hint="accept, reject, unreview and queue need a tag of the vocabulary"
            ) from None
        except NotFoundError as exc:
            raise RamdexError(
                str(exc), hint="`ramdex search` lists assets with their ids"
            ) from None
        except InvalidCursorError as exc:
            raise RamdexError(
                f"--cursor: {exc}", hint="pass next_cursor of the last page"
            ) from None
        except ValueError as exc:  # too many ids, a limit out of range
            raise RamdexError(str(exc)) from None


def _change(action: str, tag: str, asset_ids: list[int], as_json: bool) -> None:
    from indexer import review

    with _archive() as (session, model_id):
        result = review.change(session, model_id, asset_ids, tag, action, actor())
        session.commit()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "key": result.name.key,
                    "tag": result.name.label,
                    "action": action,
                    "changed": result.changed,
                    "unchanged": result.unchanged,
                },
                ensure_ascii=False,
            )
        )
        return
    kind = "tag" if result.name.tag is not None else "keyword"
    typer.echo(
        f"{action} {kind} {result.name.label!r}: {result.changed} changed, "
        f"{result.unchanged} unchanged"
    )


@app.command("add")
def add(tag: TagArgument, asset_ids: AssetIdsArgument, as_json: JsonOption = False) -> None:
    """Add a manual tag (a vocabulary tag or a free keyword) to assets."""
    _change("add", tag, asset_ids, as_json)


@app.command("remove")
def remove(tag: TagArgument, asset_ids: AssetIdsArgument, as_json: JsonOption = False) -> None:
    """Take a tag off assets: the manual tag and the file's keyword (scores and decisions stay)."""
    _change("remove", tag, asset_ids, as_json)


@app.command("accept")
def accept(tag: TagArgument, asset_ids: AssetIdsArgument, as_json: JsonOption = False) -> None:
    """Accept a model or concept tag on assets: it matches at any score."""
    _change("accept", tag, asset_ids, as_json)


@app.command("reject")
def reject(tag: TagArgument, asset_ids: AssetIdsArgument, as_json: JsonOption = False) -> None:
    """Reject a tag on assets: it never matches by score or by the file's keyword."""
    _change("reject", tag, asset_ids, as_json)


@app.command("unreview")
def unreview(tag: TagArgument, asset_ids: AssetIdsArgument, as_json: JsonOption = False) -> None:
    """Withdraw the review decision: the score against the threshold decides again."""
    _change("unreview", tag, asset_ids, as_json)


def _view_json(view: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(view)


@app.command("show")
def show(asset_id: AssetIdArgument, as_json: JsonOption = False) -> None:
    """An asset's tags with their sources, review state and whether search matches them."""
    from indexer import review

    with _archive() as (session, model_id):
        views = review.provenance(session, model_id, asset_id)
    if as_json:
        shown = {"asset_id": asset_id, "tags": [_view_json(v) for v in views]}
        typer.echo(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    if not views:
        typer.echo(f"asset {asset_id}: no tags")
        return
    width = max(len(v.name) for v in views)
    typer.echo(f"{'TAG':<{width}}  MATCH  SCORE  THRESH  REVIEW    SOURCES")
    for v in views:
        score = "-" if v.score is None else f"{v.score:.3f}"
        thresh = "-" if v.threshold is None else f"{v.threshold:.3f}"
        typer.echo(
            f"{v.name:<{width}}  {'yes' if v.matches else 'no':<5}  {score:>5}  {thresh:>6}  "
            f"{v.review or '-':<8}  {','.join(v.sources) or '-'}"
        )


@app.command("history")
def history(
    asset_id: AssetIdArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Changes shown.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """An asset's recorded label changes, newest first: who, when, before and after."""
    from indexer import review

    with _archive() as (session, _):
        changes = review.history(session, asset_id, limit)
    rows: list[dict[str, Any]] = [
        {
            "id": c.id,
            "key": c.key,
            "action": c.action,
            "before": c.before,
            "after": c.after,
            "actor": c.actor,
            "at": c.at.isoformat(),
        }
        for c in changes
    ]
    if as_json:
        typer.echo(json.dumps({"changes": rows}, ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo(f"asset {asset_id}: no label changes")
    for r in rows:
        typer.echo(
            f"{r['at']}  {r['actor']}  {r['action']} {r['key']!r}: "
            f"{_state(r['before'])} -> {_state(r['after'])}"
        )


def _state(state: dict[str, Any] | None) -> str:
    if not state:
        return "none"
    flags = [f for f in ("manual", "embedded") if state.get(f)]
    if state.get("review"):
        flags.append(str(state["review"]))
    return "+".join(flags)


@app.command("queue")
def queue(
    tag: TagArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Assets shown.")] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="next_cursor of the previous page (--json).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Assets to review for TAG: undecided ones whose score is nearest its threshold first."""
    from indexer import review

    with _archive() as (session, model_id):
        page = review.queue(session, model_id, tag, limit, cursor)
    items = [{"asset_id": i.asset_id, "score": i.score, "distance": i.distance} for i in page.items]
    if as_json:
        shown = {
            "tag": page.tag.english,
            "threshold": page.threshold,
            "items": items,
            "next_cursor": page.next_cursor,
        }
        typer.echo(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    typer.echo(
        f"{page.tag.english}: threshold {page.threshold:.3f}; {len(items)} undecided assets "
        "nearest it first"
    )
    for i in items:
        typer.echo(f"  asset {i['asset_id']}  score {i['score']:.3f}  distance {i['distance']:.3f}")
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")
