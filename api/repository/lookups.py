"""Every SQL statement of the lookups (invoices, subscriptions, charges, usage, statements).

Reads only, SQLAlchemy Core, the same SQL on SQLite and PostgreSQL. Lists are keyset pages:
`after` is the sort key of the previous page's last row, compared as a row value so that
the database walks one index range from there (no OFFSET, no COUNT). Functions return
plain dicts of column values (amounts as ints, through the Uint256 type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
)

from offchain.db.joins import same_row, with_invoice, with_plan, with_subscription_and_plan
from offchain.db.models import (
    Base,
    Charge,
    ChargeFailure,
    Invoice,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
    InvoiceStatus,
    Plan,
    Subscription,
    SubscriptionState,
    UsageCharge,
    UsageReport,
    table_of,
)

UNPAID = (InvoiceStatus.OPEN.value, InvoiceStatus.PARTIALLY_PAID.value)


table = table_of


@dataclass(frozen=True)
class Deployment:
    """Which mirrored contracts the gateway serves (one chain, one manager, one registry)."""

    chain_id: int
    manager: str
    registry: str


def fetch_dicts(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(query)]


# ---------------------------------------------------------------------- invoices

INVOICE_COLUMNS = (
    "invoice_id",
    "merchant",
    "customer",
    "reference_hash",
    "token",
    "amount",
    "paid",
    "due_date",
    "allow_partial",
    "content_hash",
    "status",
    "issued_at",
    "issued_block",
)


@dataclass(frozen=True)
class InvoiceFilter:
    merchant: str | None = None
    customer: str | None = None
    statuses: tuple[str, ...] = ()
    overdue_at: int | None = None  # unpaid with a due date before this time
    due_after: int | None = None  # inclusive
    due_before: int | None = None  # exclusive
    reference_hash: str | None = None


def invoice_query(
    where: Deployment, f: InvoiceFilter, after: tuple[int, str] | None, limit: int
) -> Select[Any]:
    """Invoices in (due_date, invoice_id) order: one range of ix_invoices_merchant_due_id
    (or of the customer's, or the merchant+status index) from `after`."""
    inv = table(Invoice)
    query = select(*(inv.c[name] for name in INVOICE_COLUMNS)).where(
        inv.c.chain_id == where.chain_id, inv.c.contract == where.registry
    )
    if f.merchant is not None:
        query = query.where(inv.c.merchant == f.merchant)
    if f.customer is not None:
        query = query.where(inv.c.customer == f.customer)
    if len(f.statuses) == 1:
        query = query.where(inv.c.status == f.statuses[0])
    elif f.statuses:
        query = query.where(inv.c.status.in_(f.statuses))
    if f.overdue_at is not None:
        query = query.where(inv.c.status.in_(UNPAID), inv.c.due_date < f.overdue_at)
    if f.due_after is not None:
        query = query.where(inv.c.due_date >= f.due_after)
    if f.due_before is not None:
        query = query.where(inv.c.due_date < f.due_before)
    if f.reference_hash is not None:
        query = query.where(inv.c.reference_hash == f.reference_hash)
    if after is not None:
        query = query.where(
            tuple_(inv.c.due_date, inv.c.invoice_id) > tuple_(literal(after[0]), literal(after[1]))
        )
    return query.order_by(inv.c.due_date, inv.c.invoice_id).limit(limit)


def list_invoices(
    conn: Connection,
    where: Deployment,
    f: InvoiceFilter,
    after: tuple[int, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    return fetch_dicts(conn, invoice_query(where, f, after, limit))


# ----------------------------------------------------------------- subscriptions

SUBSCRIPTION_COLUMNS = (
    "subscription_id",
    "plan_id",
    "subscriber",
    "max_amount_per_period",
    "started_at",
    "paid_through",
    "state",
    "cancel_at_period_end",
    "past_due",
    "in_trial",
    "credit",
    "unbilled_units",
)
PLAN_COLUMNS = (
    "merchant",
    "token",
    "price",
    "period",
    "trial_period",
    "grace_period",
    "unit_price",
    "included_units",
)


def _subscriptions_with_plans(where: Deployment) -> Select[Any]:
    sub, plan = table(Subscription), table(Plan)
    return (
        select(
            *(sub.c[name] for name in SUBSCRIPTION_COLUMNS),
            *(plan.c[name] for name in PLAN_COLUMNS),
        )
        .select_from(with_plan(sub))
        .where(sub.c.chain_id == where.chain_id, sub.c.contract == where.manager)
    )


def status_condition(status: str, now: int) -> ColumnElement[bool]:
    """The subscriptions whose status at `now` is `status`: the same rules as the
    contract's `statusOf` (and `services.lookups.subscription_status`), plus `canceling`
    (live, set to end when the paid period does)."""
    sub, plan = table(Subscription), table(Plan)
    live = sub.c.state == SubscriptionState.LIVE.value
    ending = sub.c.cancel_at_period_end.is_(True)
    not_ending = sub.c.cancel_at_period_end.is_(False)
    paid = sub.c.paid_through > now
    grace_over = sub.c.paid_through + plan.c.grace_period <= now
    conditions: dict[str, ColumnElement[bool]] = {
        "trialing": and_(live, paid, not_ending, sub.c.in_trial.is_(True)),
        "active": and_(live, paid, not_ending, sub.c.in_trial.is_(False)),
        "canceling": and_(live, paid, ending),
        "past_due": and_(live, not_ending, sub.c.paid_through <= now, ~grace_over),
        "canceled": or_(
            sub.c.state == SubscriptionState.CANCELED.value,
            and_(live, ending, sub.c.paid_through <= now),
        ),
        "lapsed": or_(
            sub.c.state == SubscriptionState.LAPSED.value, and_(live, not_ending, grace_over)
        ),
    }
    return conditions[status]


@dataclass(frozen=True)
class SubscriptionFilter:
    merchant: str | None = None
    subscriber: str | None = None
    plan_id: int | None = None
    state: str | None = None
    past_due: bool | None = None
    status: str | None = None
    subscription_id: int | None = None


def list_subscriptions(
    conn: Connection,
    where: Deployment,
    f: SubscriptionFilter,
    now: int,
    after: int | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """Subscriptions with their plan's terms, in id order."""
    sub, plan = table(Subscription), table(Plan)
    query = _subscriptions_with_plans(where)
    if f.merchant is not None:
        query = query.where(plan.c.merchant == f.merchant)
    if f.subscriber is not None:
        query = query.where(sub.c.subscriber == f.subscriber)
    if f.plan_id is not None:
        query = query.where(sub.c.plan_id == f.plan_id)
    if f.state is not None:
        query = query.where(sub.c.state == f.state)
    if f.past_due is not None:
        query = query.where(sub.c.past_due.is_(f.past_due))
    if f.status is not None:
        query = query.where(status_condition(f.status, now))
    if f.subscription_id is not None:
        query = query.where(sub.c.subscription_id == f.subscription_id)
    if after is not None:
        query = query.where(sub.c.subscription_id > after)
    query = query.order_by(sub.c.subscription_id)
    if limit is not None:
        query = query.limit(limit)
    return fetch_dicts(conn, query)


# ----------------------------------------------------------------------- charges


@dataclass(frozen=True)
class ChargeFilter:
    merchant: str | None = None
    subscriber: str | None = None
    subscription_id: int | None = None
    time_from: int | None = None  # inclusive, block time
    time_to: int | None = None  # exclusive
    include_failures: bool = False


def _charge_select(model: type[Base], where: Deployment, f: ChargeFilter) -> Select[Any]:
    fact, sub, plan = table(model), table(Subscription), table(Plan)
    is_charge = model is Charge
    query = (
        select(
            literal("charge" if is_charge else "failure").label("kind"),
            fact.c.block_number,
            fact.c.log_index,
            fact.c.block_time,
            fact.c.tx_hash,
            fact.c.subscription_id,
            sub.c.subscriber,
            plan.c.merchant,
            plan.c.token,
            fact.c.amount,
            (fact.c.fee if is_charge else null()).label("fee"),
            (fact.c.period_start if is_charge else null()).label("period_start"),
            (fact.c.paid_through if is_charge else null()).label("paid_through"),
            (null() if is_charge else fact.c.due_at).label("due_at"),
            (null() if is_charge else fact.c.reason).label("reason"),
        )
        .select_from(with_subscription_and_plan(fact))
        .where(fact.c.chain_id == where.chain_id, fact.c.contract == where.manager)
    )
    if f.merchant is not None:
        query = query.where(plan.c.merchant == f.merchant)
    if f.subscriber is not None:
        query = query.where(sub.c.subscriber == f.subscriber)
    if f.subscription_id is not None:
        query = query.where(fact.c.subscription_id == f.subscription_id)
    if f.time_from is not None:
        query = query.where(fact.c.block_time >= f.time_from)
    if f.time_to is not None:
        query = query.where(fact.c.block_time < f.time_to)
    return query


def list_charges(
    conn: Connection,
    where: Deployment,
    f: ChargeFilter,
    after: tuple[int, int] | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """Charges (and failed charges when asked) in chain order: (block, log index)."""
    parts = [_charge_select(Charge, where, f)]
    if f.include_failures:
        parts.append(_charge_select(ChargeFailure, where, f))
    combined = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("c")
    query = select(combined)
    if after is not None:
        query = query.where(
            tuple_(combined.c.block_number, combined.c.log_index)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    query = query.order_by(combined.c.block_number, combined.c.log_index)
    if limit is not None:
        query = query.limit(limit)
    rows = fetch_dicts(conn, query)
    for row in rows:
        # A union loses the Uint256 type of the columns on SQLite (zero-padded text there).
        row["amount"] = int(row["amount"])
        if row["fee"] is not None:
            row["fee"] = int(row["fee"])
    return rows


# ------------------------------------------------------------------------- usage


def usage_reports(
    conn: Connection, where: Deployment, subscription_ids: Sequence[int] | None
) -> list[dict[str, Any]]:
    """Usage reports (of some subscriptions, or of all) in chain order."""
    rep = table(UsageReport)
    query = select(
        rep.c.subscription_id,
        rep.c.units,
        rep.c.billable_at,
        rep.c.block_time,
        rep.c.block_number,
        rep.c.log_index,
    ).where(rep.c.chain_id == where.chain_id, rep.c.contract == where.manager)
    if subscription_ids is not None:
        query = query.where(rep.c.subscription_id.in_(list(subscription_ids)))
    return fetch_dicts(conn, query.order_by(rep.c.block_number, rep.c.log_index))


def usage_charges(
    conn: Connection, where: Deployment, subscription_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Usage billed by charges, with the period the charge was for (same transaction)."""
    uc, ch = table(UsageCharge), table(Charge)
    query = (
        select(
            uc.c.subscription_id,
            uc.c.units,
            uc.c.overage_amount,
            ch.c.period_start,
            ch.c.amount.label("charge_amount"),
        )
        .select_from(uc.join(ch, same_row(ch, uc, "tx_hash", "subscription_id")))
        .where(
            uc.c.chain_id == where.chain_id,
            uc.c.contract == where.manager,
            uc.c.subscription_id.in_(list(subscription_ids)),
        )
    )
    return fetch_dicts(conn, query)


# --------------------------------------------------------------------- statement


def statement_charges(
    conn: Connection, where: Deployment, subscriber: str, merchant: str | None, before: int
) -> list[dict[str, Any]]:
    return list_charges(
        conn,
        where,
        ChargeFilter(merchant=merchant, subscriber=subscriber, time_to=before),
        None,
        None,
    )


def statement_invoice_lines(
    conn: Connection, where: Deployment, address: str, merchant: str | None, before: int
) -> list[dict[str, Any]]:
    """Payments, off-chain settlements and refunds of invoices billed to `address`, and
    those it paid or was refunded itself (a payment link, or on another's behalf)."""
    inv = table(Invoice)
    parts = []
    for model, kind, party in (
        (InvoicePayment, "invoice_payment", "payer"),
        (InvoiceSettlement, "settlement", None),
        (InvoiceRefund, "refund", "recipient"),
    ):
        fact = table(model)
        mine: ColumnElement[bool] = inv.c.customer == address
        if party is not None:
            mine = or_(mine, fact.c[party] == address)
        query = (
            select(
                literal(kind).label("kind"),
                fact.c.block_number,
                fact.c.log_index,
                fact.c.block_time,
                fact.c.tx_hash,
                fact.c.invoice_id,
                inv.c.merchant,
                inv.c.customer,
                inv.c.token,
                fact.c.amount,
                (fact.c.fee if model is InvoicePayment else null()).label("fee"),
                (fact.c[party] if party is not None else null()).label("counterparty"),
            )
            .select_from(with_invoice(fact))
            .where(
                fact.c.chain_id == where.chain_id,
                fact.c.contract == where.registry,
                fact.c.block_time < before,
                mine,
                inv.c.merchant == merchant if merchant is not None else true(),
            )
        )
        parts.append(query)
    combined = union_all(*parts).subquery("s")
    rows = fetch_dicts(
        conn, select(combined).order_by(combined.c.block_number, combined.c.log_index)
    )
    for row in rows:
        row["amount"] = int(row["amount"])
        if row["fee"] is not None:
            row["fee"] = int(row["fee"])
    return rows
