"""Registering webhooks: every value checked before anything is stored.

The secret is generated unless given, stored (it must sign) and returned once: listings never
show it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.collections import Collection
from indexer.db.events import EventType, Webhook
from indexer.db.webhook_repo import create_webhook
from indexer.settings import Settings
from indexer.webhooks.errors import WebhookError
from indexer.webhooks.signing import new_secret
from indexer.webhooks.urls import check

MAX_EVENTS_PER_DELIVERY = 1000
MAX_WAIT_S = 3600.0
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class NewWebhook:
    """A webhook just stored, with its secret (shown this once)."""

    webhook: Webhook
    secret: str


def parse_event_types(names: Iterable[str]) -> list[str]:
    """Known event type names, deduplicated, in the order given.

    Raises:
        WebhookError: none, or an unknown one.
    """
    known = [t.value for t in EventType]
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in known:
            raise WebhookError(
                f"unknown event type {name!r}", hint=f"event types: {', '.join(known)}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise WebhookError("a webhook needs at least one event type", hint=", ".join(known))
    return out


def add_webhook(
    session: Session,
    settings: Settings,
    *,
    url: str,
    event_types: Iterable[str],
    created_by: str,
    collection_ids: Iterable[int] | None = None,
    secret: str | None = None,
    description: str | None = None,
    max_events: int = 100,
    max_wait_s: float = 5.0,
) -> NewWebhook:
    """Check and store a webhook in the caller's transaction.

    Raises:
        WebhookError: a URL that is not http(s) or resolves to a non-public address (unless
            ``ingest.allow_private_urls``), an unknown event type or collection, limits out of
            range, a short secret.
    """
    types = parse_event_types(event_types)
    check(url, allow_private=settings.ingest.allow_private_urls)
    if not 1 <= int(max_events) <= MAX_EVENTS_PER_DELIVERY:
        raise WebhookError(f"max events per delivery must be 1 to {MAX_EVENTS_PER_DELIVERY}")
    if not 0.0 <= float(max_wait_s) <= MAX_WAIT_S:
        raise WebhookError(f"max wait must be 0 to {MAX_WAIT_S:g} seconds")
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise WebhookError(f"a webhook secret needs at least {MIN_SECRET_LENGTH} characters")
    collections = None
    if collection_ids is not None:
        collections = sorted({int(c) for c in collection_ids})
        found = set(
            session.execute(sa.select(Collection.id).where(Collection.id.in_(collections)))
            .scalars()
            .all()
        )
        missing = [c for c in collections if c not in found]
        if missing or not collections:
            raise WebhookError(
                f"no collection with id {', '.join(map(str, missing))}"
                if missing
                else "an empty collection list would receive nothing (omit it for every asset)"
            )
    secret = secret or new_secret()
    hook = create_webhook(
        session,
        url=url.strip(),
        secret=secret,
        event_types=types,
        collection_ids=collections,
        active=True,
        description=description,
        created_by=created_by[:200],
        max_events=int(max_events),
        max_wait_s=float(max_wait_s),
    )
    return NewWebhook(hook, secret)


def collection_ids_by_name(session: Session, names: Iterable[str]) -> list[int]:
    """Collection ids for names (the CLI's ``--collection``).

    Raises:
        WebhookError: an unknown name.
    """
    ids: list[int] = []
    for name in names:
        found = session.execute(
            sa.select(Collection.id).where(Collection.name == name)
        ).scalar_one_or_none()
        if found is None:
            raise WebhookError(f"no collection named {name!r}")
        ids.append(int(found))
    return ids
