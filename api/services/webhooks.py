"""Webhook endpoints and deliveries for the gateway: the rules live in
`offchain.webhooks.endpoints` (shared with the CLI); this turns their errors into the
gateway's and their rows into views. A merchant sees and touches only its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from api.errors import Conflict, InvalidInput, NotFound
from api.schemas.webhooks import (
    CreateWebhookEndpointRequest,
    UpdateWebhookEndpointRequest,
    WebhookAttemptView,
    WebhookDeliveryPage,
    WebhookDeliveryView,
    WebhookEndpointList,
    WebhookEndpointView,
    WebhookEndpointWithSecret,
)
from api.services.pagination import decode_cursor, key_int, page_of
from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from offchain.webhooks import endpoints

CURSOR_TAG = "whd"


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except endpoints.NotFoundError as exc:
        raise NotFound(str(exc)) from None
    except endpoints.StateError as exc:
        raise Conflict(str(exc)) from None
    except endpoints.WebhookError as exc:
        raise InvalidInput(str(exc)) from None


def _unix(value: datetime | None) -> int | None:
    value = repo.aware(value)
    return None if value is None else int(value.timestamp())


def endpoint_view(endpoint: WebhookEndpoint) -> WebhookEndpointView:
    return WebhookEndpointView(
        id=endpoint.public_id,
        url=endpoint.url,
        description=endpoint.description,
        enabled=endpoint.enabled,
        include_unconfirmed=endpoint.include_unconfirmed,
        event_types=endpoints.event_types_of(endpoint),
        created_at=_unix(endpoint.created_at) or 0,
        previous_secret_expires_at=_unix(endpoint.previous_secret_expires_at)
        if endpoint.previous_secret
        else None,
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**endpoint_view(endpoint).model_dump(), secret=secret)


def create(
    conn: Connection, merchant: str, request: CreateWebhookEndpointRequest
) -> WebhookEndpointWithSecret:
    with _errors():
        created = endpoints.create_endpoint(
            conn,
            merchant,
            request.url,
            description=request.description,
            event_types=None
            if request.event_types is None
            else [t.value for t in request.event_types],
            include_unconfirmed=request.include_unconfirmed,
        )
    return _with_secret(created.endpoint, created.secret)


def list_endpoints(conn: Connection, merchant: str) -> WebhookEndpointList:
    return WebhookEndpointList(
        items=[endpoint_view(e) for e in endpoints.list_endpoints(conn, merchant)]
    )


def get(conn: Connection, merchant: str, endpoint_id: str) -> WebhookEndpointView:
    with _errors():
        return endpoint_view(endpoints.get_endpoint(conn, endpoint_id, merchant))


def update(
    conn: Connection, merchant: str, endpoint_id: str, request: UpdateWebhookEndpointRequest
) -> WebhookEndpointView:
    with _errors():
        endpoint = endpoints.update_endpoint(
            conn,
            endpoint_id,
            merchant,
            enabled=request.enabled,
            url=request.url,
            description=request.description,
            event_types=None
            if request.event_types is None
            else [t.value for t in request.event_types],
            include_unconfirmed=request.include_unconfirmed,
        )
    return endpoint_view(endpoint)


def delete(conn: Connection, merchant: str, endpoint_id: str) -> None:
    with _errors():
        endpoints.delete_endpoint(conn, endpoint_id, merchant)


def rotate(
    conn: Connection, merchant: str, endpoint_id: str, grace_s: int
) -> WebhookEndpointWithSecret:
    with _errors():
        rotated = endpoints.rotate_secret(conn, endpoint_id, merchant, grace_s=grace_s)
    return _with_secret(rotated.endpoint, rotated.secret)


def _delivery_views(
    conn: Connection, rows: list[WebhookDelivery], with_event: bool = False
) -> list[WebhookDeliveryView]:
    events = repo.events_by_ids(conn, [d.event_id for d in rows])
    hooks = repo.endpoints_by_ids(conn, [d.endpoint_id for d in rows])
    logs = repo.attempts_of(conn, [d.id for d in rows])
    views = []
    for d in rows:
        event = events[d.event_id]
        payload: dict[str, Any] | None = json.loads(event.payload) if with_event else None
        views.append(
            WebhookDeliveryView(
                id=d.public_id,
                endpoint_id=hooks[d.endpoint_id].public_id,
                event_id=event.event_id,
                event_type=event.type,
                final=event.final,
                status=WebhookDeliveryStatus(d.status),
                attempts=d.attempts,
                last_status_code=d.last_status_code,
                last_error=d.last_error,
                next_attempt_at=_unix(d.next_attempt_at),
                created_at=_unix(d.created_at) or 0,
                delivered_at=_unix(d.delivered_at),
                attempt_log=[
                    WebhookAttemptView(
                        number=a.number,
                        attempted_at=_unix(a.attempted_at) or 0,
                        status_code=a.status_code,
                        error=a.error,
                        duration_ms=a.duration_ms,
                        next_attempt_at=_unix(a.next_attempt_at),
                    )
                    for a in logs[d.id]
                ],
                event=payload,
            )
        )
    return views


def list_deliveries(
    conn: Connection,
    merchant: str,
    *,
    status: WebhookDeliveryStatus | None,
    endpoint_id: str | None,
    limit: int,
    cursor: str | None,
) -> WebhookDeliveryPage:
    key = decode_cursor(cursor, CURSOR_TAG, [key_int])
    internal_endpoint: int | None = None
    if endpoint_id is not None:
        with _errors():
            internal_endpoint = endpoints.get_endpoint(conn, endpoint_id, merchant).id
    rows = repo.list_deliveries(
        conn,
        merchant,
        status=None if status is None else status.value,
        endpoint_id=internal_endpoint,
        before_id=None if key is None else int(key[0]),
        limit=limit + 1,
    )
    page = page_of(rows, limit, CURSOR_TAG, lambda d: (d.id,))
    return WebhookDeliveryPage(
        items=_delivery_views(conn, page.items), next_cursor=page.next_cursor
    )


def get_delivery(conn: Connection, merchant: str, delivery_id: str) -> WebhookDeliveryView:
    with _errors():
        delivery = endpoints.get_delivery(conn, delivery_id, merchant)
    return _delivery_views(conn, [delivery], with_event=True)[0]


def replay(conn: Connection, merchant: str, delivery_id: str) -> WebhookDeliveryView:
    with _errors():
        delivery = endpoints.replay(conn, delivery_id, merchant)
    return _delivery_views(conn, [delivery])[0]
