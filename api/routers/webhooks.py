"""Routes under /webhooks: subscriptions, their deliveries, replay and a test ping (admin).

- ``POST /webhooks``: register a URL for event types (the secret is in this answer only).
- ``GET /webhooks``, ``GET /webhooks/{id}``, ``DELETE /webhooks/{id}``.
- ``GET /webhooks/{id}/deliveries``: newest first, with status, attempts, last answer.
- ``POST /webhooks/{id}/deliveries/{delivery_id}/replay``: send it again now.
- ``POST /webhooks/{id}/test``: send a ``ping`` now and answer with how it went.

A key limited to collections sees and creates only webhooks limited to its collections
(others answer 404; creating one for other collections or for every asset answers 403).
docs/webhooks.md has the payloads and the signature scheme.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import MAX_INT32, MAX_INT64, AdminKey, ServicesDep, SessionDep
from api.problems import ProblemError, not_found
from indexer.db.events import PING, DeliveryStatus, Webhook, WebhookDelivery
from indexer.db.webhook_repo import (
    add_delivery,
    delete_webhook,
    get_delivery,
    get_webhook,
    list_deliveries,
    list_webhooks,
    replay_delivery,
)
from indexer.webhooks.batching import delivery_body
from indexer.webhooks.dispatcher import send_now
from indexer.webhooks.errors import WebhookError
from indexer.webhooks.subscriptions import MAX_EVENTS_PER_DELIVERY, MAX_WAIT_S, add_webhook

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=MAX_INT32, description="webhook id")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_INT64, description="delivery id")]


class WebhookIn(BaseModel):
    """A new subscription."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL to POST to")
    events: list[str] = Field(min_length=1, max_length=16, description="event types")
    collection_ids: list[Annotated[int, Field(ge=1, le=MAX_INT32)]] | None = Field(
        default=None, max_length=1000, description="only assets of these collections"
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, description="signing secret (generated)"
    )
    description: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00]*$")
    max_events: int = Field(default=100, ge=1, le=MAX_EVENTS_PER_DELIVERY)
    max_wait_s: float = Field(default=5.0, ge=0.0, le=MAX_WAIT_S)


class WebhookOut(BaseModel):
    """A subscription (``secret`` only in the answer that created it)."""

    id: int
    url: str
    events: list[str]
    collection_ids: list[int] | None
    active: bool
    description: str | None
    created_by: str
    max_events: int
    max_wait_s: float
    created_at: datetime | None
    secret: str | None = None


class WebhookPage(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    """One delivery: its events and every attempt's outcome so far."""

    id: int
    webhook_id: int
    status: DeliveryStatus
    event_count: int
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime | None
    delivered_at: datetime | None
    body: dict[str, Any]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


def _out(hook: Webhook, secret: str | None = None) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        url=hook.url,
        events=list(hook.event_types),
        collection_ids=None if hook.collection_ids is None else list(hook.collection_ids),
        active=hook.active,
        description=hook.description,
        created_by=hook.created_by,
        max_events=hook.max_events,
        max_wait_s=hook.max_wait_s,
        created_at=hook.created_at,
        secret=secret,
    )


def _delivery_out(row: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        status=DeliveryStatus(row.status),
        event_count=row.event_count,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        body=json.loads(row.body),
    )


def _sees(principal: Principal, hook: Webhook) -> bool:
    """A restricted key sees a webhook only when all its collections are the key's."""
    if principal.collection_ids is None:
        return True
    return hook.collection_ids is not None and set(hook.collection_ids) <= principal.collection_ids


def _visible(session: Session, principal: Principal, webhook_id: int) -> Webhook:
    hook = get_webhook(session, webhook_id)
    if hook is None or not _sees(principal, hook):
        raise not_found("webhook", webhook_id)
    return hook


@router.post("", status_code=201, response_model=WebhookOut, summary="Register a webhook")
def create(
    body: WebhookIn, principal: AdminKey, services: ServicesDep, session: SessionDep
) -> WebhookOut:
    if principal.collection_ids is not None:
        wanted = set(body.collection_ids or ())
        if body.collection_ids is None or not wanted <= principal.collection_ids:
            raise ProblemError(
                403,
                "this key is limited to collections: a webhook it creates needs collection_ids, "
                "all of them the key's",
                kind="forbidden",
            )
    try:
        new = add_webhook(
            session,
            services.settings,
            url=body.url,
            event_types=body.events,
            collection_ids=body.collection_ids,
            secret=body.secret,
            description=body.description,
            max_events=body.max_events,
            max_wait_s=body.max_wait_s,
            created_by=f"{principal.name} ({principal.key_id})"
            if principal.key_id
            else principal.name,
        )
    except WebhookError as exc:
        raise ProblemError(422, str(exc), kind="invalid-webhook") from None
    session.commit()
    return _out(new.webhook, new.secret)


@router.get("", response_model=WebhookPage, summary="Webhooks this key sees")
def index(principal: AdminKey, session: SessionDep) -> WebhookPage:
    return WebhookPage(items=[_out(h) for h in list_webhooks(session) if _sees(principal, h)])


@router.get("/{webhook_id}", response_model=WebhookOut, summary="One webhook")
def show(webhook_id: WebhookId, principal: AdminKey, session: SessionDep) -> WebhookOut:
    return _out(_visible(session, principal, webhook_id))


@router.delete(
    "/{webhook_id}", status_code=204, response_class=Response, summary="Remove a webhook"
)
def remove(webhook_id: WebhookId, principal: AdminKey, session: SessionDep) -> Response:
    _visible(session, principal, webhook_id)
    delete_webhook(session, webhook_id)
    session.commit()
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryPage, summary="A webhook's deliveries"
)
def deliveries(
    webhook_id: WebhookId,
    principal: AdminKey,
    session: SessionDep,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT64, description="delivery id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryPage:
    _visible(session, principal, webhook_id)
    rows = list_deliveries(session, webhook_id, status=status, before_id=before, limit=limit)
    return DeliveryPage(items=[_delivery_out(r) for r in rows])


def _sent(
    services: ServicesDep, session: Session, webhook_id: int, delivery_id: int
) -> DeliveryOut:
    send_now(services.settings, delivery_id)
    session.expire_all()
    row = get_delivery(session, webhook_id, delivery_id)
    if row is None:  # removed meanwhile
        raise not_found("delivery", delivery_id)
    return _delivery_out(row)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    summary="Send a delivery again now (its attempts counted afresh)",
)
def replay(
    webhook_id: WebhookId,
    delivery_id: DeliveryId,
    principal: AdminKey,
    services: ServicesDep,
    session: SessionDep,
) -> DeliveryOut:
    _visible(session, principal, webhook_id)
    if get_delivery(session, webhook_id, delivery_id) is None:
        raise not_found("delivery", delivery_id)
    if not replay_delivery(session, delivery_id):
        raise ProblemError(
            409, "the delivery is being sent right now; try again in a moment", kind="conflict"
        )
    session.commit()
    return _sent(services, session, webhook_id, delivery_id)


@router.post(
    "/{webhook_id}/test", response_model=DeliveryOut, summary="Send a ping now and report it"
)
def ping(
    webhook_id: WebhookId, principal: AdminKey, services: ServicesDep, session: SessionDep
) -> DeliveryOut:
    _visible(session, principal, webhook_id)
    event = (0, PING, {"message": "ramdex webhook test"}, datetime.now(UTC))
    delivery_id = add_delivery(session, webhook_id, delivery_body(webhook_id, [event]), 1)
    session.commit()
    return _sent(services, session, webhook_id, delivery_id)
