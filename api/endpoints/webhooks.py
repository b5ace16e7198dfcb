"""Outgoing webhooks: a merchant's endpoints (registered, changed, deleted, secret rotated)
and its delivery log (listed, a failed delivery replayed). Merchant API keys only; another
merchant's endpoint or delivery is a 404, as an unknown one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from api.deps import MerchantPrincipal, ReadConnection, WriteConnection
from api.schemas.webhooks import (
    CreateWebhookEndpointRequest,
    RotateSecretRequest,
    UpdateWebhookEndpointRequest,
    WebhookDeliveryPage,
    WebhookDeliveryView,
    WebhookEndpointList,
    WebhookEndpointView,
    WebhookEndpointWithSecret,
)
from api.services import webhooks
from api.services.pagination import DEFAULT_LIMIT, MAX_LIMIT
from offchain.db.models import WebhookDeliveryStatus

router = APIRouter(prefix="/v1", tags=["webhooks"])

EndpointIdPath = Annotated[
    str, Path(pattern=r"^we_[0-9a-f]{24}$", description="the endpoint's id (we_...)")
]
DeliveryIdPath = Annotated[
    str, Path(pattern=r"^whd_[0-9a-f]{24}$", description="the delivery's id (whd_...)")
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"example": {"error": {"code": "...", "message": description}}}
        },
    }


_AUTH: dict[int | str, dict[str, Any]] = {
    401: _error("No or an unknown API key"),
    403: _error("Not a merchant API key"),
}
_ONE: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: _error("No such object, or not one of yours"),
    422: _error("Malformed id or input"),
}


@router.post(
    "/webhook-endpoints",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointWithSecret,
    responses={**_AUTH, 422: _error("Not an http(s) URL, unknown event type")},
)
def create_endpoint(
    request: CreateWebhookEndpointRequest, conn: WriteConnection, principal: MerchantPrincipal
) -> WebhookEndpointWithSecret:
    """Registers an endpoint. The answer carries its signing secret, this once. (A retry
    with the same Idempotency-Key gets the same endpoint and secret back: the secret is
    kept in the clear anyway, an HMAC needs it.)"""
    return webhooks.create(conn, principal.address, request)


@router.get("/webhook-endpoints", response_model=WebhookEndpointList, responses=_AUTH)
def list_endpoints(conn: ReadConnection, principal: MerchantPrincipal) -> WebhookEndpointList:
    """The merchant's endpoints (never their secrets)."""
    return webhooks.list_endpoints(conn, principal.address)


@router.get("/webhook-endpoints/{endpoint_id}", response_model=WebhookEndpointView, responses=_ONE)
def get_endpoint(
    endpoint_id: EndpointIdPath, conn: ReadConnection, principal: MerchantPrincipal
) -> WebhookEndpointView:
    return webhooks.get(conn, principal.address, endpoint_id)


@router.patch(
    "/webhook-endpoints/{endpoint_id}", response_model=WebhookEndpointView, responses=_ONE
)
def update_endpoint(
    endpoint_id: EndpointIdPath,
    request: UpdateWebhookEndpointRequest,
    conn: WriteConnection,
    principal: MerchantPrincipal,
) -> WebhookEndpointView:
    """Enable or disable (a disabled endpoint gets no new events; its queued deliveries
    wait until it is enabled again), change the URL, the event types or the unconfirmed
    opt-in: for events produced from now on."""
    return webhooks.update(conn, principal.address, endpoint_id, request)


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_ONE,
)
def delete_endpoint(
    endpoint_id: EndpointIdPath, conn: WriteConnection, principal: MerchantPrincipal
) -> Response:
    """Deletes an endpoint: no new events; its deliveries not made yet are canceled."""
    webhooks.delete(conn, principal.address, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/webhook-endpoints/{endpoint_id}/rotate-secret",
    response_model=WebhookEndpointWithSecret,
    responses=_ONE,
)
def rotate_secret(
    endpoint_id: EndpointIdPath,
    conn: WriteConnection,
    principal: MerchantPrincipal,
    request: RotateSecretRequest | None = None,
) -> WebhookEndpointWithSecret:
    """A new signing secret (in this answer only). The old one keeps signing too, as a
    second `v1`, for `grace_s` seconds (default a day), so the receiver can switch over
    without refusing a request."""
    grace = (request or RotateSecretRequest()).grace_s
    return webhooks.rotate(conn, principal.address, endpoint_id, grace)


@router.get("/webhook-deliveries", response_model=WebhookDeliveryPage, responses=_ONE)
def list_deliveries(
    conn: ReadConnection,
    principal: MerchantPrincipal,
    status: Annotated[WebhookDeliveryStatus | None, Query()] = None,
    endpoint_id: Annotated[str | None, Query(pattern=r"^we_[0-9a-f]{24}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> WebhookDeliveryPage:
    """The delivery log, newest first: each delivery's state and every attempt made."""
    return webhooks.list_deliveries(
        conn, principal.address, status=status, endpoint_id=endpoint_id, limit=limit, cursor=cursor
    )


@router.get("/webhook-deliveries/{delivery_id}", response_model=WebhookDeliveryView, responses=_ONE)
def get_delivery(
    delivery_id: DeliveryIdPath, conn: ReadConnection, principal: MerchantPrincipal
) -> WebhookDeliveryView:
    """One delivery, its attempts, and the event as sent."""
    return webhooks.get_delivery(conn, principal.address, delivery_id)


@router.post(
    "/webhook-deliveries/{delivery_id}/replay",
    response_model=WebhookDeliveryView,
    responses={**_ONE, 409: _error("Only a failed delivery is replayed")},
)
def replay_delivery(
    delivery_id: DeliveryIdPath, conn: WriteConnection, principal: MerchantPrincipal
) -> WebhookDeliveryView:
    """Sends a failed delivery again: a new round of attempts starting now, same event id."""
    return webhooks.replay(conn, principal.address, delivery_id)
