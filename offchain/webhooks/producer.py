"""The producer: webhook events from the mirror into the outbox, fanned out to deliveries.

- **Final events**: facts of blocks up to the indexer's finalized block, walked with a
  cursor (`webhook_producer_state`) that moves in the same transaction as the events it
  covers. Below the finalized block nothing changes any more (a deeper reorg stops the
  indexer), so each such fact gives exactly one final event.
- **Unconfirmed events**, for endpoints that opt in: facts of the blocks above the
  finalized one, read again on every pass (the window is a few blocks). Each says
  `"final": false`; when its block becomes final the final event follows under its own id.
  Should a reorg orphan the block first, the final event never comes, and any delivery of
  the unconfirmed one not yet made is canceled: nothing ever claims a finality it lacked.
- **Reminders** and the keeper's **at-risk warnings** (`reminders.py`) are produced here
  too (with a reminder configuration), once per object, kind and day or due date.

Events are produced for the merchants that have a live endpoint at the time (a merchant
without one has nobody to tell). Every event has a deterministic id (`evt_` + a hash of
what it is about), and a dedupe key that is unique in the outbox: producing twice inserts
once. Amounts are exact integers written as decimal strings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookEndpoint
from offchain.webhooks.endpoints import EventType
from offchain.webhooks.outbox import ProduceResult, add_event, exact
from offchain.webhooks.reminders import (
    ReminderConfig,
    produce_reminders,
    produce_risk_warnings,
)

# How many final blocks one transaction covers at most (bounds its size on a backfill).
MAX_BLOCKS_PER_PASS = 5_000

_KINDS: dict[str, EventType] = {
    "charge": EventType.CHARGE_SUCCEEDED,
    "charge_failure": EventType.CHARGE_FAILED,
    "cancellation": EventType.SUBSCRIPTION_CANCELED,
    "lapse": EventType.SUBSCRIPTION_LAPSED,
    "invoice_issued": EventType.INVOICE_ISSUED,
    "invoice_payment": EventType.INVOICE_PAID,
    "invoice_refund": EventType.INVOICE_REFUNDED,
    "invoice_settlement": EventType.INVOICE_SETTLED,
    "invoice_voided": EventType.INVOICE_VOIDED,
}

# Fields of each kind that go into `data` (beyond the ones every event of its family has),
# and which of them are amounts (uint256: decimal strings).
_SUBSCRIPTION_FIELDS = ["subscription_id", "plan_id", "subscriber", "merchant", "token"]
_INVOICE_FIELDS = ["invoice_id", "merchant", "customer", "token", "reference_hash", "due_date"]
_DATA_FIELDS: dict[str, list[str]] = {
    "charge": [*_SUBSCRIPTION_FIELDS, "period_start", "paid_through", "amount", "fee"],
    "charge_failure": [*_SUBSCRIPTION_FIELDS, "due_at", "amount", "reason"],
    "cancellation": [*_SUBSCRIPTION_FIELDS, "canceled_by", "effective_at", "at_period_end"],
    "lapse": [*_SUBSCRIPTION_FIELDS, "lapsed_at"],
    "invoice_issued": [*_INVOICE_FIELDS, "invoice_amount", "allow_partial"],
    "invoice_payment": [*_INVOICE_FIELDS, "invoice_amount", "payer", "amount", "fee"],
    "invoice_refund": [*_INVOICE_FIELDS, "invoice_amount", "recipient", "amount"],
    "invoice_settlement": [
        *_INVOICE_FIELDS,
        "invoice_amount",
        "settler",
        "amount",
        "fiat_reference",
    ],
    "invoice_voided": [*_INVOICE_FIELDS, "invoice_amount", "voided_by"],
}


def _facts(
    conn: Connection, chain_id: int, first: int, last: int, merchants: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    facts = repo.subscription_facts(conn, chain_id, first, last, merchants)
    facts += repo.invoice_facts(conn, chain_id, first, last, merchants)
    # Chain order, so that a receiver sees a charge before the lapse that follows it.
    return sorted(facts, key=lambda f: (f[1]["block_number"], f[1]["log_index"]))


def _produce_facts(
    conn: Connection,
    endpoints: Sequence[WebhookEndpoint],
    chain_id: int,
    first: int,
    last: int,
    final: bool,
    now: datetime,
    result: ProduceResult,
) -> None:
    merchants = sorted({e.merchant for e in endpoints})
    if not merchants or first > last:
        return
    for kind, row in _facts(conn, chain_id, first, last, merchants):
        source = {
            "chain_id": row["chain_id"],
            "contract": row["contract"],
            "block_number": row["block_number"],
            "block_hash": row["block_hash"],
            "block_time": row["block_time"],
            "tx_hash": row["tx_hash"],
            "log_index": row["log_index"],
        }
        data = {name: exact(name, row.get(name)) for name in _DATA_FIELDS[kind]}
        dedupe_key = (
            f"log:{row['chain_id']}:{row['block_hash']}:{row['log_index']}:"
            f"{'final' if final else 'unconfirmed'}"
        )
        added = add_event(
            conn,
            endpoints,
            dedupe_key=dedupe_key,
            merchant=row["merchant"],
            event_type=_KINDS[kind],
            final=final,
            data=data,
            source=source,
            now=now,
            result=result,
        )
        if added and final:
            result.final_events += 1
        elif added:
            result.unconfirmed_events += 1


def _cancel_orphans(conn: Connection, chain_id: int, result: ProduceResult) -> None:
    """Unconfirmed events whose log is no longer in the mirror (a reorg rolled it back):
    their deliveries not made yet are canceled."""
    for event in repo.unconfirmed_events_undelivered(conn, chain_id):
        assert event.block_number is not None and event.block_hash is not None
        assert event.log_index is not None
        if repo.raw_event_exists(
            conn, chain_id, event.block_number, event.block_hash, event.log_index
        ):
            continue
        result.canceled_deliveries += repo.cancel_pending_deliveries(
            conn, "orphaned by a reorg: the block is no longer on the chain", event_id=event.id
        )


def produce(
    conn: Connection,
    chain_id: int,
    *,
    now: datetime | None = None,
    reminder_config: ReminderConfig | None = None,
) -> ProduceResult:
    """One pass of the producer, in the caller's transaction."""
    now = now or datetime.now(UTC)
    result = ProduceResult()
    position = repo.indexer_position(conn, chain_id)
    if position is None:
        return result
    last_block, finalized = position
    endpoints = repo.live_endpoints(conn)
    cursor = repo.producer_cursor(conn, chain_id)
    first = 0 if cursor is None else cursor + 1
    end = min(finalized, first + MAX_BLOCKS_PER_PASS - 1)
    if first <= end:
        _produce_facts(conn, endpoints, chain_id, first, end, True, now, result)
        repo.save_producer_cursor(conn, chain_id, end)
        result.final_block = end
    else:
        result.final_block = cursor
    if any(e.include_unconfirmed for e in endpoints):
        unconfirmed = [e for e in endpoints if e.include_unconfirmed]
        _produce_facts(conn, unconfirmed, chain_id, finalized + 1, last_block, False, now, result)
    _cancel_orphans(conn, chain_id, result)
    if reminder_config is not None:
        result.reminders += produce_reminders(
            conn, chain_id, endpoints, finalized, reminder_config, now, result
        )
        result.risk_warnings += produce_risk_warnings(conn, chain_id, endpoints, now, result)
    return result


def produce_all(engine: Engine, chain_id: int, **kwargs: Any) -> ProduceResult:
    """Passes until the cursor reaches the finalized block (a backfill takes several)."""
    total = ProduceResult()
    while True:
        with engine.begin() as conn:
            result = produce(conn, chain_id, **kwargs)
        total.add(result)
        with engine.connect() as conn:
            position = repo.indexer_position(conn, chain_id)
        if position is None or result.final_block is None or result.final_block >= position[1]:
            return total
        kwargs = {**kwargs, "reminder_config": None}  # reminders once per call
