"""Merchants' webhook endpoints: registered (API or CLI), listed, disabled, deleted, their
secret rotated; and deliveries listed and replayed. Shared by the gateway and the CLI, so
both apply the same rules."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from sqlalchemy import Connection

from offchain.addresses import InvalidAddress, parse_address
from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from offchain.webhooks.sealing import seal, unseal

SECRET_PREFIX = "whsec_"
ENDPOINT_PREFIX = "we_"
DEFAULT_ROTATION_GRACE_S = 24 * 3600
MAX_ROTATION_GRACE_S = 7 * 24 * 3600


class EventType(StrEnum):
    """What a webhook event reports. Chain events (from the mirror), then reminders and
    the keeper's warnings."""

    CHARGE_SUCCEEDED = "charge.succeeded"
    CHARGE_FAILED = "charge.failed"
    SUBSCRIPTION_CANCELED = "subscription.canceled"
    SUBSCRIPTION_LAPSED = "subscription.lapsed"
    INVOICE_ISSUED = "invoice.issued"
    INVOICE_PAID = "invoice.paid"
    INVOICE_REFUNDED = "invoice.refunded"
    INVOICE_SETTLED = "invoice.settled"
    INVOICE_VOIDED = "invoice.voided"
    INVOICE_DUE_SOON = "invoice.due_soon"
    INVOICE_OVERDUE = "invoice.overdue"
    SUBSCRIPTION_RENEWAL_UPCOMING = "subscription.renewal_upcoming"
    SUBSCRIPTION_OVERDUE = "subscription.overdue"
    SUBSCRIPTION_PAYMENT_AT_RISK = "subscription.payment_at_risk"


class WebhookError(ValueError):
    """A request about endpoints or deliveries that cannot be done as asked."""


class NotFoundError(WebhookError):
    """No such endpoint or delivery for this merchant (another merchant's is not found
    either: ids cannot be probed)."""


class StateError(WebhookError):
    """The object is not in a state that allows the operation (e.g. replaying a delivery
    that succeeded)."""


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # the only time it is handed out


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def normalize_merchant(address: str) -> str:
    try:
        return parse_address(address)
    except InvalidAddress as exc:
        raise WebhookError(str(exc)) from None


# Local development and tests deliver to receivers on this machine; a gateway serving
# merchants must not let them make it call its own network (SSRF).
ALLOW_PRIVATE_ENV = "CHAINBILL_WEBHOOK_ALLOW_PRIVATE"


def private_targets_allowed() -> bool:
    """Whether endpoints may be on loopback, private or link-local addresses."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def _non_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def private_target_error(url: str, host: str, address: str) -> str:
    return (
        f"{url!r} points at {address}"
        + (f" ({host})" if host != address else "")
        + ": a loopback, private or link-local address. Webhooks go to public endpoints; "
        f"set {ALLOW_PRIVATE_ENV}=1 to allow local ones (development)"
    )


def resolve(host: str, port: int) -> list[str]:
    """The addresses a TCP connection to `host` may go to, each once, in the resolver's
    order (OSError when the name does not resolve)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def first_non_public(addresses: Iterable[str]) -> str | None:
    """The first of `addresses` that is loopback, private, link-local or multicast."""
    return next((address for address in addresses if _non_public(address)), None)


def private_target(url: str) -> str | None:
    """Why the host of `url` may not be called (it resolves to a non-public address), or
    None. Asked again before every delivery, not only at registration: DNS may change.
    The connection checks the addresses it connects to as well (see transport.py): the
    name may resolve elsewhere a moment later."""
    if private_targets_allowed():
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = resolve(host, parts.port or 443)
    except OSError:
        return None  # the request fails on its own, and says why
    address = first_non_public(addresses)
    return None if address is None else private_target_error(url, host, address)


def check_url(url: str, *, allow_http: bool = True) -> str:
    """An absolute http(s) URL with a host, without credentials in it."""
    if not isinstance(url, str) or not 0 < len(url) <= 2048 or url != url.strip():
        raise WebhookError("the URL must be 1 to 2048 characters, without surrounding spaces")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise WebhookError(f"{url!r} is not a valid URL: {exc}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise WebhookError(f"{url!r} is not an absolute {' or '.join(schemes)} URL with a host")
    if parts.username or parts.password:
        raise WebhookError("put no credentials in the URL: requests are signed instead")
    if any(c.isspace() for c in url) or port == 0:
        raise WebhookError(f"{url!r} is not a valid URL")
    if not private_targets_allowed():
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise WebhookError(private_target_error(url, host, "127.0.0.1"))
        try:
            literal = _non_public(host)
        except ValueError:
            literal = False  # a name: resolved before each delivery (see private_target)
        if literal:
            raise WebhookError(private_target_error(url, host, host))
    return url


def check_event_types(event_types: list[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    known = {t.value for t in EventType}
    unknown = sorted(set(event_types) - known)
    if unknown or not event_types:
        raise WebhookError(
            f"unknown event types {unknown}; known: {sorted(known)}"
            if unknown
            else "event_types, when given, names at least one type (omit it for all)"
        )
    return sorted(set(event_types))


def create_endpoint(
    conn: Connection,
    merchant: str,
    url: str,
    *,
    description: str = "",
    event_types: list[str] | None = None,
    include_unconfirmed: bool = False,
) -> CreatedEndpoint:
    merchant = normalize_merchant(merchant)
    url = check_url(url)
    if len(description) > 200:
        raise WebhookError("the description is at most 200 characters")
    types = check_event_types(event_types)
    secret = new_secret()
    values = {
        "public_id": ENDPOINT_PREFIX + secrets.token_hex(12),
        "merchant": merchant,
        "url": url,
        "description": description,
        "secret": seal(secret),
        "previous_secret": None,
        "previous_secret_expires_at": None,
        "enabled": True,
        "include_unconfirmed": include_unconfirmed,
        "event_types": None if types is None else json.dumps(types),
        "created_at": datetime.now(UTC),
        "deleted_at": None,
    }
    endpoint_id = repo.insert_endpoint(conn, values)
    return CreatedEndpoint(WebhookEndpoint(id=endpoint_id, **values), secret)


def get_endpoint(conn: Connection, public_id: str, merchant: str | None) -> WebhookEndpoint:
    """The endpoint, if it is `merchant`'s (any merchant's when None: the operator's CLI)."""
    endpoint = repo.endpoint_by_public_id(conn, public_id)
    if endpoint is None or (merchant is not None and endpoint.merchant != merchant):
        raise NotFoundError(f"no webhook endpoint {public_id!r}")
    return endpoint


def list_endpoints(conn: Connection, merchant: str | None) -> list[WebhookEndpoint]:
    return repo.list_endpoints(conn, None if merchant is None else normalize_merchant(merchant))


def set_enabled(
    conn: Connection, public_id: str, merchant: str | None, enabled: bool
) -> WebhookEndpoint:
    endpoint = get_endpoint(conn, public_id, merchant)
    repo.update_endpoint(conn, endpoint.id, {"enabled": enabled})
    endpoint.enabled = enabled
    return endpoint


def update_endpoint(
    conn: Connection,
    public_id: str,
    merchant: str | None,
    *,
    enabled: bool | None = None,
    url: str | None = None,
    description: str | None = None,
    event_types: list[str] | None = None,
    include_unconfirmed: bool | None = None,
) -> WebhookEndpoint:
    """Changes what is given (None: left as it is). The change applies to events produced
    from now on; deliveries already queued go out as they were."""
    endpoint = get_endpoint(conn, public_id, merchant)
    values: dict[str, object] = {}
    if enabled is not None:
        values["enabled"] = enabled
    if url is not None:
        values["url"] = check_url(url)
    if description is not None:
        if len(description) > 200:
            raise WebhookError("the description is at most 200 characters")
        values["description"] = description
    if event_types is not None:
        values["event_types"] = json.dumps(check_event_types(event_types))
    if include_unconfirmed is not None:
        values["include_unconfirmed"] = include_unconfirmed
    if values:
        repo.update_endpoint(conn, endpoint.id, values)
        for name, value in values.items():
            setattr(endpoint, name, value)
    return endpoint


def delete_endpoint(conn: Connection, public_id: str, merchant: str | None) -> None:
    """Deleted endpoints get no new events; their pending deliveries are canceled."""
    endpoint = get_endpoint(conn, public_id, merchant)
    repo.update_endpoint(conn, endpoint.id, {"deleted_at": datetime.now(UTC), "enabled": False})
    repo.cancel_pending_deliveries(conn, "the endpoint was deleted", endpoint_id=endpoint.id)


def rotate_secret(
    conn: Connection,
    public_id: str,
    merchant: str | None,
    *,
    grace_s: int = DEFAULT_ROTATION_GRACE_S,
    now: datetime | None = None,
) -> CreatedEndpoint:
    """A new signing secret; the current one keeps signing (a second v1) for `grace_s`
    seconds, so the receiver can switch without refusing a request. 0 ends it at once."""
    if not 0 <= grace_s <= MAX_ROTATION_GRACE_S:
        raise WebhookError(f"the grace period is 0 to {MAX_ROTATION_GRACE_S} seconds")
    endpoint = get_endpoint(conn, public_id, merchant)
    now = now or datetime.now(UTC)
    secret = new_secret()
    values = {
        "secret": seal(secret),
        "previous_secret": endpoint.secret if grace_s > 0 else None,
        "previous_secret_expires_at": now + timedelta(seconds=grace_s) if grace_s > 0 else None,
    }
    repo.update_endpoint(conn, endpoint.id, values)
    for name, value in values.items():
        setattr(endpoint, name, value)
    return CreatedEndpoint(endpoint, secret)


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a request now: the current one, and the previous one until its
    expiry (opened if they are stored sealed: see sealing.py)."""
    found = [unseal(endpoint.secret)]
    expires = repo.aware(endpoint.previous_secret_expires_at)
    if endpoint.previous_secret and expires is not None and expires > now:
        found.append(unseal(endpoint.previous_secret))
    return found


def event_types_of(endpoint: WebhookEndpoint) -> list[str] | None:
    return None if endpoint.event_types is None else list(json.loads(endpoint.event_types))


# -------------------------------------------------------------------- deliveries


def get_delivery(conn: Connection, public_id: str, merchant: str | None) -> WebhookDelivery:
    delivery = repo.delivery_by_public_id(conn, public_id)
    if delivery is None or (merchant is not None and delivery.merchant != merchant):
        raise NotFoundError(f"no webhook delivery {public_id!r}")
    return delivery


def replay(
    conn: Connection, public_id: str, merchant: str | None, now: datetime | None = None
) -> WebhookDelivery:
    """Sends a failed delivery again: a new round of attempts, starting now. The event and
    its id stay the same (the receiver may have processed it after all: it dedupes)."""
    delivery = get_delivery(conn, public_id, merchant)
    if delivery.status != WebhookDeliveryStatus.FAILED:
        raise StateError(
            f"delivery {public_id} is {delivery.status}: only a failed delivery is replayed"
        )
    endpoints = repo.endpoints_by_ids(conn, [delivery.endpoint_id])
    endpoint = endpoints.get(delivery.endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise StateError(f"the endpoint of delivery {public_id} was deleted")
    now = now or datetime.now(UTC)
    values = {"status": WebhookDeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": now}
    repo.update_delivery(conn, delivery.id, values)
    delivery.status = WebhookDeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    return delivery
