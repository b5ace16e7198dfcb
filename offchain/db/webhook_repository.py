"""Every SQL statement of the outgoing webhooks (endpoints, the event outbox, deliveries,
the attempt log, the producer's cursor) and the mirror reads the producer makes. Functions
take a Connection inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from offchain.db.joins import with_invoice, with_plan, with_subscription_and_plan
from offchain.db.models import (
    Base,
    Block,
    Charge,
    ChargeFailure,
    IndexerState,
    Invoice,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
    KeeperSubscription,
    Plan,
    RawEvent,
    Subscription,
    SubscriptionCancellation,
    SubscriptionLapse,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEvent,
    WebhookProducerState,
    table_of,
)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; every one stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# --------------------------------------------------------------------- endpoints


def insert_endpoint(conn: Connection, values: dict[str, Any]) -> int:
    result = conn.execute(
        table_of(WebhookEndpoint).insert().values(values).returning(WebhookEndpoint.id)
    )
    return int(result.scalar_one())


def _endpoint(row: Any) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(**row._mapping)
    endpoint.created_at = aware(endpoint.created_at)  # type: ignore[assignment]
    endpoint.previous_secret_expires_at = aware(endpoint.previous_secret_expires_at)
    endpoint.deleted_at = aware(endpoint.deleted_at)
    return endpoint


def endpoint_by_public_id(conn: Connection, public_id: str) -> WebhookEndpoint | None:
    row = conn.execute(
        select(table_of(WebhookEndpoint)).where(
            WebhookEndpoint.public_id == public_id, WebhookEndpoint.deleted_at.is_(None)
        )
    ).first()
    return None if row is None else _endpoint(row)


def endpoints_by_ids(conn: Connection, ids: Sequence[int]) -> dict[int, WebhookEndpoint]:
    if not ids:
        return {}
    rows = conn.execute(
        select(table_of(WebhookEndpoint)).where(WebhookEndpoint.id.in_(list(set(ids))))
    )
    return {row.id: _endpoint(row) for row in rows}


def list_endpoints(conn: Connection, merchant: str | None) -> list[WebhookEndpoint]:
    query = (
        select(table_of(WebhookEndpoint))
        .where(WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.id)
    )
    if merchant is not None:
        query = query.where(WebhookEndpoint.merchant == merchant)
    return [_endpoint(row) for row in conn.execute(query)]


def live_endpoints(conn: Connection) -> list[WebhookEndpoint]:
    """Enabled, undeleted endpoints: the ones new events fan out to."""
    query = select(table_of(WebhookEndpoint)).where(
        WebhookEndpoint.deleted_at.is_(None), WebhookEndpoint.enabled.is_(True)
    )
    return [_endpoint(row) for row in conn.execute(query.order_by(WebhookEndpoint.id))]


def all_endpoints(conn: Connection) -> list[WebhookEndpoint]:
    """Every endpoint, deleted ones too (their secrets are still stored)."""
    query = select(table_of(WebhookEndpoint)).order_by(WebhookEndpoint.id)
    return [_endpoint(row) for row in conn.execute(query)]


def update_endpoint(conn: Connection, endpoint_id: int, values: dict[str, Any]) -> None:
    conn.execute(
        update(table_of(WebhookEndpoint)).where(WebhookEndpoint.id == endpoint_id).values(values)
    )


# ------------------------------------------------------------------------ events


def _insert_ignoring_conflict(conn: Connection, model: type[Base], values: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id: the new row's id, or None when a
    unique key holds it already. No exception and no savepoint: the producer runs into
    its own earlier rows on every pass over the unconfirmed window."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table_of(model))
    elif dialect == "sqlite":
        stmt = sqlite.insert(table_of(model))
    else:
        raise RuntimeError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
    id_column = table_of(model).c.id
    return conn.execute(
        stmt.values(values).on_conflict_do_nothing().returning(id_column)
    ).scalar_one_or_none()


def insert_event(conn: Connection, values: dict[str, Any]) -> int | None:
    """Inserts an event; None (nothing written) when its dedupe key was produced before."""
    row_id = _insert_ignoring_conflict(conn, WebhookEvent, values)
    return None if row_id is None else int(row_id)


def event_by_dedupe_key(conn: Connection, dedupe_key: str) -> WebhookEvent | None:
    row = conn.execute(
        select(table_of(WebhookEvent)).where(WebhookEvent.dedupe_key == dedupe_key)
    ).first()
    return None if row is None else WebhookEvent(**row._mapping)


def events_by_ids(conn: Connection, ids: Sequence[int]) -> dict[int, WebhookEvent]:
    if not ids:
        return {}
    rows = conn.execute(select(table_of(WebhookEvent)).where(WebhookEvent.id.in_(list(set(ids)))))
    return {row.id: WebhookEvent(**row._mapping) for row in rows}


def list_events(conn: Connection, merchant: str | None = None) -> list[WebhookEvent]:
    query = select(table_of(WebhookEvent)).order_by(WebhookEvent.id)
    if merchant is not None:
        query = query.where(WebhookEvent.merchant == merchant)
    return [WebhookEvent(**row._mapping) for row in conn.execute(query)]


def unconfirmed_events_undelivered(conn: Connection, chain_id: int) -> list[WebhookEvent]:
    """Unconfirmed chain events with a delivery not made yet (pending or failed): the ones
    whose deliveries a reorg that orphaned them must cancel."""
    waiting = select(WebhookDelivery.event_id).where(
        WebhookDelivery.status.in_([WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.FAILED])
    )
    query = select(table_of(WebhookEvent)).where(
        WebhookEvent.chain_id == chain_id,
        WebhookEvent.final.is_(False),
        WebhookEvent.id.in_(waiting),
    )
    return [WebhookEvent(**row._mapping) for row in conn.execute(query)]


def raw_event_exists(
    conn: Connection, chain_id: int, block_number: int, block_hash: str, log_index: int
) -> bool:
    row = conn.execute(
        select(RawEvent.log_index).where(
            RawEvent.chain_id == chain_id,
            RawEvent.block_number == block_number,
            RawEvent.block_hash == block_hash,
            RawEvent.log_index == log_index,
        )
    ).first()
    return row is not None


# -------------------------------------------------------------------- deliveries


def insert_delivery(conn: Connection, values: dict[str, Any]) -> bool:
    """False when that event already goes to that endpoint."""
    return _insert_ignoring_conflict(conn, WebhookDelivery, values) is not None


def _delivery(row: Any) -> WebhookDelivery:
    delivery = WebhookDelivery(**row._mapping)
    delivery.next_attempt_at = aware(delivery.next_attempt_at)
    delivery.created_at = aware(delivery.created_at)  # type: ignore[assignment]
    delivery.delivered_at = aware(delivery.delivered_at)
    return delivery


def due_deliveries(conn: Connection, now: datetime, limit: int) -> list[WebhookDelivery]:
    """Pending deliveries whose next attempt is due, oldest first; on PostgreSQL locked
    (SKIP LOCKED) so that workers running side by side take different ones."""
    query = (
        select(table_of(WebhookDelivery))
        .where(
            WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [_delivery(row) for row in conn.execute(query)]


def lease_delivery(conn: Connection, delivery_id: int, now: datetime, until: datetime) -> bool:
    """Pushes a due delivery's next attempt past the time its request may take: should the
    worker die in flight, the delivery is tried again once the lease is over. False when
    it is no longer due (another worker took it first)."""
    result = conn.execute(
        update(table_of(WebhookDelivery))
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == WebhookDeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=until)
    )
    return bool(result.rowcount)


def delivery_by_public_id(conn: Connection, public_id: str) -> WebhookDelivery | None:
    row = conn.execute(
        select(table_of(WebhookDelivery)).where(WebhookDelivery.public_id == public_id)
    ).first()
    return None if row is None else _delivery(row)


def list_deliveries(
    conn: Connection,
    merchant: str | None,
    *,
    status: str | None = None,
    endpoint_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[WebhookDelivery]:
    """Newest first (keyset by id: pass the last id of a page as `before_id`)."""
    query = select(table_of(WebhookDelivery)).order_by(WebhookDelivery.id.desc()).limit(limit)
    if merchant is not None:
        query = query.where(WebhookDelivery.merchant == merchant)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    return [_delivery(row) for row in conn.execute(query)]


def update_delivery(conn: Connection, delivery_id: int, values: dict[str, Any]) -> None:
    conn.execute(
        update(table_of(WebhookDelivery)).where(WebhookDelivery.id == delivery_id).values(values)
    )


def cancel_pending_deliveries(
    conn: Connection, reason: str, *, event_id: int | None = None, endpoint_id: int | None = None
) -> int:
    """Cancels the deliveries not made yet (pending or failed) of an event or an endpoint."""
    assert (event_id is None) != (endpoint_id is None)
    which = (
        WebhookDelivery.event_id == event_id
        if event_id is not None
        else WebhookDelivery.endpoint_id == endpoint_id
    )
    result = conn.execute(
        update(table_of(WebhookDelivery))
        .where(
            which,
            WebhookDelivery.status.in_(
                [WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.FAILED]
            ),
        )
        .values(status=WebhookDeliveryStatus.CANCELED, next_attempt_at=None, last_error=reason)
    )
    return int(result.rowcount or 0)


def insert_attempt(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(table_of(WebhookAttempt).insert().values(values))


def attempt_count(conn: Connection, delivery_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(table_of(WebhookAttempt))
            .where(WebhookAttempt.delivery_id == delivery_id)
        ).scalar_one()
    )


def attempts_of(conn: Connection, delivery_ids: Sequence[int]) -> dict[int, list[WebhookAttempt]]:
    out: dict[int, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return out
    rows = conn.execute(
        select(table_of(WebhookAttempt))
        .where(WebhookAttempt.delivery_id.in_(list(delivery_ids)))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
    )
    for row in rows:
        attempt = WebhookAttempt(**row._mapping)
        attempt.attempted_at = aware(attempt.attempted_at)  # type: ignore[assignment]
        attempt.next_attempt_at = aware(attempt.next_attempt_at)
        out[attempt.delivery_id].append(attempt)
    return out


# ------------------------------------------------------------------- the producer


def producer_cursor(conn: Connection, chain_id: int) -> int | None:
    return conn.execute(
        select(WebhookProducerState.final_block).where(WebhookProducerState.chain_id == chain_id)
    ).scalar_one_or_none()


def save_producer_cursor(conn: Connection, chain_id: int, final_block: int) -> None:
    now = datetime.now(UTC)
    done = conn.execute(
        update(table_of(WebhookProducerState))
        .where(WebhookProducerState.chain_id == chain_id)
        .values(final_block=final_block, updated_at=now)
    )
    if not done.rowcount:
        conn.execute(
            table_of(WebhookProducerState)
            .insert()
            .values(chain_id=chain_id, final_block=final_block, updated_at=now)
        )


def indexer_position(conn: Connection, chain_id: int) -> tuple[int, int] | None:
    """(last indexed block, finalized block) of the mirror, None before its first range."""
    row = conn.execute(
        select(IndexerState.last_block, IndexerState.finalized_block).where(
            IndexerState.chain_id == chain_id
        )
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def latest_block_time(conn: Connection, chain_id: int) -> int | None:
    """The chain's time as the mirror knows it: the time of the newest block whose header
    the indexer keeps (it keeps the last one it indexed, events or not), else of the newest
    event."""
    value = conn.execute(
        select(func.max(Block.timestamp)).where(Block.chain_id == chain_id)
    ).scalar_one_or_none()
    if value is None:
        value = conn.execute(
            select(func.max(RawEvent.block_time)).where(RawEvent.chain_id == chain_id)
        ).scalar_one_or_none()
    return None if value is None else int(value)


_FACT_COLUMNS = ("chain_id", "block_hash", "log_index", "block_number", "block_time", "tx_hash")


def _fact_select(model: type[Base], *extra: Any) -> Any:
    table = table_of(model)
    return [table.c[name] for name in _FACT_COLUMNS] + [table.c.contract, *extra]


def subscription_facts(
    conn: Connection,
    chain_id: int,
    first: int,
    last: int,
    merchants: Sequence[str],
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, row) of the subscription facts of blocks first..last of `merchants`' plans,
    with the subscription's plan, merchant, subscriber and token joined in."""
    out: list[tuple[str, dict[str, Any]]] = []
    sub, plan = table_of(Subscription), table_of(Plan)
    for kind, model in (
        ("charge", Charge),
        ("charge_failure", ChargeFailure),
        ("cancellation", SubscriptionCancellation),
        ("lapse", SubscriptionLapse),
    ):
        fact = table_of(model)
        own = [c for c in fact.columns if c.name not in (*_FACT_COLUMNS, "contract")]
        query = (
            select(
                *_fact_select(model),
                *own,
                sub.c.plan_id,
                sub.c.subscriber,
                plan.c.merchant,
                plan.c.token,
            )
            .select_from(with_subscription_and_plan(fact))
            .where(
                fact.c.chain_id == chain_id,
                fact.c.block_number.between(first, last),
                plan.c.merchant.in_(list(merchants)),
            )
        )
        out += [(kind, dict(row._mapping)) for row in conn.execute(query)]
    return out


def invoice_facts(
    conn: Connection,
    chain_id: int,
    first: int,
    last: int,
    merchants: Sequence[str],
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, row) of the invoice facts (payments, refunds, settlements) and of the issue
    and void logs of blocks first..last of `merchants`' invoices, with the invoice joined."""
    out: list[tuple[str, dict[str, Any]]] = []
    inv = table_of(Invoice)
    invoice_columns = [
        inv.c.merchant,
        inv.c.customer,
        inv.c.token,
        inv.c.amount.label("invoice_amount"),
        inv.c.reference_hash,
        inv.c.due_date,
    ]
    for kind, model in (
        ("invoice_payment", InvoicePayment),
        ("invoice_refund", InvoiceRefund),
        ("invoice_settlement", InvoiceSettlement),
    ):
        fact = table_of(model)
        own = [c for c in fact.columns if c.name not in (*_FACT_COLUMNS, "contract")]
        query = (
            select(*_fact_select(model), *own, *invoice_columns)
            .select_from(with_invoice(fact))
            .where(
                fact.c.chain_id == chain_id,
                fact.c.block_number.between(first, last),
                inv.c.merchant.in_(list(merchants)),
            )
        )
        out += [(kind, dict(row._mapping)) for row in conn.execute(query)]
    # Issues and voids have no fact table: the raw log names the invoice (first topic).
    raw = table_of(RawEvent)
    logs = conn.execute(
        select(raw).where(
            raw.c.chain_id == chain_id,
            raw.c.block_number.between(first, last),
            raw.c.event.in_(["InvoiceIssued", "InvoiceVoided"]),
        )
    ).all()
    if logs:
        keys = {(log.contract, log.topics.split(",")[1]) for log in logs}
        invoices = {
            (row.contract, row.invoice_id): dict(row._mapping)
            for row in conn.execute(
                select(inv).where(
                    inv.c.chain_id == chain_id,
                    or_(
                        *(
                            and_(inv.c.contract == contract, inv.c.invoice_id == invoice_id)
                            for contract, invoice_id in keys
                        )
                    ),
                )
            )
        }
        for log in logs:
            invoice = invoices.get((log.contract, log.topics.split(",")[1]))
            if invoice is None or invoice["merchant"] not in merchants:
                continue
            row = {name: getattr(log, name) for name in _FACT_COLUMNS}
            row.update(
                contract=log.contract,
                invoice_id=invoice["invoice_id"],
                merchant=invoice["merchant"],
                customer=invoice["customer"],
                token=invoice["token"],
                invoice_amount=invoice["amount"],
                reference_hash=invoice["reference_hash"],
                due_date=invoice["due_date"],
                allow_partial=invoice["allow_partial"],
                voided_by="0x" + log.topics.split(",")[2][-40:]
                if log.event == "InvoiceVoided"
                else None,
            )
            out.append(
                ("invoice_issued" if log.event == "InvoiceIssued" else "invoice_voided", row)
            )
    return out


def open_invoices_due_between(
    conn: Connection,
    chain_id: int,
    low: int,
    high: int,
    merchants: Sequence[str],
    final_block: int,
) -> list[dict[str, Any]]:
    """Unpaid (open or partially paid) invoices of `merchants` due in [low, high], issued in
    a final block (an invoice that a reorg may still remove gets no reminder)."""
    inv = table_of(Invoice)
    rows = conn.execute(
        select(inv).where(
            inv.c.chain_id == chain_id,
            inv.c.merchant.in_(list(merchants)),
            inv.c.status.in_(["open", "partially_paid"]),
            inv.c.due_date.between(low, high),
            inv.c.issued_block <= final_block,
        )
    )
    return [dict(row._mapping) for row in rows]


def live_subscriptions_due_between(
    conn: Connection,
    chain_id: int,
    low: int,
    high: int,
    merchants: Sequence[str],
    final_block: int,
) -> list[dict[str, Any]]:
    """Live subscriptions of `merchants`' plans whose paid period ends (next charge) in
    [low, high], with plan, price and token."""
    sub, plan = table_of(Subscription), table_of(Plan)
    rows = conn.execute(
        select(sub, plan.c.merchant, plan.c.token, plan.c.price, plan.c.grace_period)
        .select_from(with_plan(sub))
        .where(
            sub.c.chain_id == chain_id,
            plan.c.merchant.in_(list(merchants)),
            sub.c.state == "live",
            sub.c.cancel_at_period_end.is_(False),
            sub.c.paid_through.between(low, high),
            sub.c.created_block <= final_block,
        )
    )
    return [dict(row._mapping) for row in rows]


def subscriptions_at_risk(
    conn: Connection, chain_id: int, merchants: Sequence[str]
) -> list[dict[str, Any]]:
    """Subscriptions of `merchants`' plans that the keeper flagged at risk (the allowance
    or balance will not cover the coming charge), with the flag's due date, amount and
    reason, and the subscription's plan, subscriber and token."""
    keeper, sub, plan = table_of(KeeperSubscription), table_of(Subscription), table_of(Plan)
    rows = conn.execute(
        select(
            keeper.c.contract,
            keeper.c.subscription_id,
            keeper.c.at_risk_reason,
            keeper.c.at_risk_due_at,
            keeper.c.at_risk_amount,
            sub.c.plan_id,
            sub.c.subscriber,
            plan.c.merchant,
            plan.c.token,
        )
        .select_from(with_subscription_and_plan(keeper))
        .where(
            keeper.c.chain_id == chain_id,
            keeper.c.at_risk.is_(True),
            plan.c.merchant.in_(list(merchants)),
        )
        .order_by(keeper.c.at_risk_due_at, keeper.c.contract, keeper.c.subscription_id)
    )
    return [dict(row._mapping) for row in rows]
