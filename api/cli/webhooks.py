"""``ramdex webhooks``: subscribe URLs to events, see deliveries, replay them.

``add`` registers a URL for event types (optionally only assets of some collections) and prints
the signing secret once; ``list``, ``remove``; ``deliveries`` shows each delivery's status,
attempts and last answer; ``replay`` sends one again now; ``test`` sends a ping; ``dispatch``
runs one dispatcher pass here (an embedded archive that no ``ramdex serve`` or worker serves).
Bad input (a non-http(s) or private URL, an unknown event type or collection) is one
``error:`` line and exit 2. docs/webhooks.md has the payloads and the signature scheme.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from indexer.settings import Settings

app = typer.Typer(
    help="Webhooks: signed, batched POSTs when assets, tags, concepts and jobs change.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@contextmanager
def _archive() -> Iterator[tuple[Session, Settings]]:
    """A session on the configured archive (schema migrated) and the settings."""
    from indexer.db.session import session_scope
    from indexer.settings import get_settings
    from indexer.stores import ensure_schema

    settings = get_settings()
    ensure_schema(settings.database_url)
    with session_scope(settings.database_url) as session:
        yield session, settings


def _hook_or_exit(session: Session, webhook_id: int):  # noqa: ANN202 - a Webhook row
    from indexer.db.webhook_repo import get_webhook

    hook = get_webhook(session, webhook_id)
    if hook is None:
        raise RamdexError(f"no webhook with id {webhook_id}", hint="see: ramdex webhooks list")
    return hook


@app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="http(s) URL the deliveries are POSTed to.")],
    events: Annotated[
        str,
        typer.Option(
            "--events",
            help="Comma-separated event types: asset.done, asset.failed, asset.tags_changed, "
            "concept.backfilled, job.done.",
        ),
    ],
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection", metavar="NAME", help="Only assets of this collection (repeatable)."
        ),
    ] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="Signing secret (default: generated).")
    ] = None,
    max_events: Annotated[
        int, typer.Option("--max-events", min=1, max=1000, help="Most events per delivery.")
    ] = 100,
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait", min=0.0, max=3600.0, help="Seconds an event waits for a fuller batch."
        ),
    ] = 5.0,
    description: Annotated[str | None, typer.Option("--description", help="A note.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a webhook; prints its id and signing secret (shown this once)."""
    from indexer.webhooks.subscriptions import add_webhook, collection_ids_by_name

    with _archive() as (session, settings):
        ids = collection_ids_by_name(session, collection) if collection else None
        new = add_webhook(
            session,
            settings,
            url=url,
            event_types=events.split(","),
            collection_ids=ids,
            secret=secret,
            description=description,
            max_events=max_events,
            max_wait_s=max_wait,
            created_by=f"cli:{getpass.getuser()}",
        )
        session.commit()
        hook_id = new.webhook.id
    if as_json:
        typer.echo(json.dumps({"id": hook_id, "secret": new.secret}))
        return
    typer.echo(f"webhook {hook_id}: {url}")
    typer.echo(f"secret: {new.secret}")
    typer.echo("Keep the secret: it is not shown again (docs/webhooks.md: verifying signatures).")


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """Every webhook (without secrets)."""
    from indexer.db.webhook_repo import list_webhooks

    with _archive() as (session, _):
        rows = [
            {
                "id": h.id,
                "url": h.url,
                "events": list(h.event_types),
                "collection_ids": h.collection_ids,
                "active": h.active,
                "max_events": h.max_events,
                "max_wait_s": h.max_wait_s,
            }
            for h in list_webhooks(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("No webhooks. Add one: ramdex webhooks add URL --events asset.done")
    for r in rows:
        scope = (
            "all assets" if r["collection_ids"] is None else f"collections {r['collection_ids']}"
        )
        typer.echo(f"{r['id']:>4}  {r['url']}  {','.join(r['events'])}  ({scope})")


@app.command("remove")
def remove(webhook_id: Annotated[int, typer.Argument(help="Webhook id.")]) -> None:
    """Remove a webhook with its queue and delivery history."""
    from indexer.db.webhook_repo import delete_webhook

    with _archive() as (session, _):
        _hook_or_exit(session, webhook_id)
        delete_webhook(session, webhook_id)
        session.commit()
    typer.echo(f"webhook {webhook_id} removed")


@app.command("deliveries")
def deliveries(
    webhook_id: Annotated[int, typer.Argument(help="Webhook id.")],
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only this status: pending, delivered, failed, dead."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Most rows.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """A webhook's deliveries, newest first, with attempts and the last answer."""
    from indexer.db.events import DeliveryStatus
    from indexer.db.webhook_repo import list_deliveries

    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise RamdexError(
            f"unknown status {status!r}", hint="one of: pending, delivered, failed, dead"
        )
    with _archive() as (session, _):
        _hook_or_exit(session, webhook_id)
        rows = [
            {
                "id": d.id,
                "status": d.status,
                "events": d.event_count,
                "attempts": d.attempts,
                "last_status_code": d.last_status_code,
                "last_error": d.last_error,
                "next_attempt_at": _iso(d.next_attempt_at),
                "created_at": _iso(d.created_at),
            }
            for d in list_deliveries(session, webhook_id, status=status, limit=limit)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("No deliveries yet.")
    for r in rows:
        answer = r["last_status_code"] or "-"
        extra = f"  {r['last_error']}" if r["last_error"] else ""
        typer.echo(
            f"{r['id']:>6}  {r['status']:<9}  {r['events']:>4} events  "
            f"{r['attempts']} attempts  HTTP {answer}{extra}"
        )


@app.command("replay")
def replay(
    webhook_id: Annotated[int, typer.Argument(help="Webhook id.")],
    delivery_id: Annotated[int, typer.Argument(help="Delivery id (see: deliveries).")],
) -> None:
    """Send a delivery again now (same body, new signature); prints how it went."""
    from indexer.db.webhook_repo import get_delivery, replay_delivery
    from indexer.webhooks.dispatcher import send_now

    with _archive() as (session, settings):
        _hook_or_exit(session, webhook_id)
        if get_delivery(session, webhook_id, delivery_id) is None:
            raise RamdexError(
                f"webhook {webhook_id} has no delivery {delivery_id}",
                hint=f"see: ramdex webhooks deliveries {webhook_id}",
            )
        if not replay_delivery(session, delivery_id):
            raise RamdexError("the delivery is being sent right now", hint="try again shortly")
        session.commit()
    _report(settings, webhook_id, delivery_id, send_now(settings, delivery_id))


@app.command("test")
def test(webhook_id: Annotated[int, typer.Argument(help="Webhook id.")]) -> None:
    """Send a ping event now; prints how the receiver answered."""
    from indexer.db.events import PING
    from indexer.db.webhook_repo import add_delivery
    from indexer.webhooks.batching import delivery_body
    from indexer.webhooks.dispatcher import send_now

    with _archive() as (session, settings):
        _hook_or_exit(session, webhook_id)
        ping = (0, PING, {"message": "ramdex webhook test"}, datetime.now(UTC))
        delivery_id = add_delivery(session, webhook_id, delivery_body(webhook_id, [ping]), 1)
        session.commit()
    _report(settings, webhook_id, delivery_id, send_now(settings, delivery_id))


@app.command("dispatch")
def dispatch() -> None:
    """Run one dispatcher pass here: queue new events, send what is due."""
    from indexer.webhooks.dispatcher import dispatch_once

    with _archive() as (_, settings):
        pass
    report = dispatch_once(settings, prune_now=True)
    typer.echo(json.dumps(report.to_dict()))


def _report(settings: Settings, webhook_id: int, delivery_id: int, status: str) -> None:
    from indexer.db.session import session_scope
    from indexer.db.webhook_repo import get_delivery

    with session_scope(settings.database_url) as session:
        row = get_delivery(session, webhook_id, delivery_id)
        assert row is not None
        line = f"delivery {delivery_id}: {row.status} after {row.attempts} attempt(s)"
        if row.last_status_code:
            line += f", HTTP {row.last_status_code}"
        if row.last_error:
            line += f" ({row.last_error})"
    typer.echo(line)
    if status != "delivered":
        raise typer.Exit(1)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
