"""Webhook endpoints and deliveries as the gateway shows them. Times are unix seconds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from offchain.db.models import WebhookDeliveryStatus
from offchain.webhooks.endpoints import DEFAULT_ROTATION_GRACE_S, MAX_ROTATION_GRACE_S, EventType


class CreateWebhookEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL events go to")
    description: str = Field(default="", max_length=200)
    event_types: list[EventType] | None = Field(
        default=None, min_length=1, description="only these event types; omit for all"
    )
    include_unconfirmed: bool = Field(
        default=False,
        description='also events of blocks not final yet, sent with "final": false',
    )


class UpdateWebhookEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str | None = Field(default=None, max_length=200)
    event_types: list[EventType] | None = Field(default=None, min_length=1)
    include_unconfirmed: bool | None = None


class RotateSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: int = Field(
        default=DEFAULT_ROTATION_GRACE_S,
        ge=0,
        le=MAX_ROTATION_GRACE_S,
        description="seconds the old secret keeps signing too (a second v1); 0: none",
    )


class WebhookEndpointView(BaseModel):
    id: str
    url: str
    description: str
    enabled: bool
    include_unconfirmed: bool
    event_types: list[str] | None = Field(description="null: every event type")
    created_at: int
    previous_secret_expires_at: int | None = Field(
        description="while a rotation is under way: when the old secret stops signing"
    )


class WebhookEndpointWithSecret(WebhookEndpointView):
    secret: str = Field(description="the signing secret: shown only in this answer")


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpointView]


class WebhookAttemptView(BaseModel):
    number: int
    attempted_at: int
    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: int | None


class WebhookDeliveryView(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    final: bool
    status: WebhookDeliveryStatus
    attempts: int = Field(description="attempts in the current round (a replay starts one)")
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: int | None
    created_at: int
    delivered_at: int | None
    attempt_log: list[WebhookAttemptView]
    event: dict[str, Any] | None = Field(
        default=None, description="the event as sent (on the single-delivery view)"
    )


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")
