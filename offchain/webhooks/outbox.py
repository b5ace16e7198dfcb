"""The outbox: how an event is written (its id, its exact JSON body) and fanned out to the
deliveries of the endpoints that want it. Used by the producer and the reminders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDeliveryStatus, WebhookEndpoint
from offchain.webhooks.endpoints import event_types_of

API_VERSION = "2026-11-22"
AMOUNT_FIELDS = frozenset({"amount", "fee", "invoice_amount", "price", "balance", "paid"})


def canonical_json(value: Any) -> str:
    """The JSON every attempt sends, byte for byte (so a signature is over fixed bytes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_id_for(dedupe_key: str) -> str:
    return "evt_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


def exact(name: str, value: Any) -> Any:
    """Amounts as decimal strings: a uint256 does not fit a JSON number (nor a float)."""
    if name in AMOUNT_FIELDS and value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"amount {name} must be an int, got {type(value).__name__}")
        return str(value)
    return value


@dataclass
class ProduceResult:
    final_events: int = 0
    unconfirmed_events: int = 0
    reminders: int = 0
    risk_warnings: int = 0
    canceled_deliveries: int = 0
    deliveries: int = 0
    final_block: int | None = None
    event_ids: list[str] = field(default_factory=list)

    def add(self, later: ProduceResult) -> None:
        """Adds a later pass's counts and events to these; its final block is the newer."""
        for name in (f.name for f in fields(self) if f.name != "final_block"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        self.final_block = later.final_block


def _wants(endpoint: WebhookEndpoint, event_type: str, final: bool) -> bool:
    if not final and not endpoint.include_unconfirmed:
        return False
    types = event_types_of(endpoint)
    return types is None or event_type in types


def add_event(
    conn: Connection,
    endpoints: Sequence[WebhookEndpoint],
    *,
    dedupe_key: str,
    merchant: str,
    event_type: str,
    final: bool,
    data: dict[str, Any],
    source: dict[str, Any] | None,
    now: datetime,
    result: ProduceResult,
) -> bool:
    """Inserts one event and its deliveries (to `merchant`'s endpoints that want it);
    False when it was produced before (then nothing is written)."""
    event_id = event_id_for(dedupe_key)
    body = {
        "id": event_id,
        "type": event_type,
        "api_version": API_VERSION,
        "created": int(now.timestamp()),
        "final": final,
        "merchant": merchant,
        "data": data,
        "source": source,
    }
    values = {
        "event_id": event_id,
        "dedupe_key": dedupe_key,
        "merchant": merchant,
        "type": event_type,
        "final": final,
        "payload": canonical_json(body),
        "chain_id": None if source is None else source["chain_id"],
        "block_number": None if source is None else source["block_number"],
        "block_hash": None if source is None else source["block_hash"],
        "log_index": None if source is None else source["log_index"],
        "created_at": now,
    }
    row_id = repo.insert_event(conn, values)
    if row_id is None:
        return False
    result.event_ids.append(event_id)
    for endpoint in endpoints:
        if endpoint.merchant != merchant or not _wants(endpoint, event_type, final):
            continue
        result.deliveries += repo.insert_delivery(
            conn,
            {
                "public_id": "whd_"
                + hashlib.sha256(f"{event_id}:{endpoint.id}".encode()).hexdigest()[:24],
                "event_id": row_id,
                "endpoint_id": endpoint.id,
                "merchant": merchant,
                "status": WebhookDeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "last_status_code": None,
                "last_error": None,
                "created_at": now,
                "delivered_at": None,
            },
        )
    return True
