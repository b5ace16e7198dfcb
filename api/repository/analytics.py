"""Every SQL statement of the merchant analytics: one merchant's subscriptions with their
plans, their cancellations and lapses, its unpaid invoices and its usage reports.

Sums are left to Python: Uint256 columns are zero-padded text on SQLite, which SQL cannot
add, and exact integers are wanted anyway.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, select

from api.repository.lookups import (
    UNPAID,
    Deployment,
    SubscriptionFilter,
    fetch_dicts,
    list_subscriptions,
    table,
)
from offchain.db.joins import with_subscription_and_plan
from offchain.db.models import (
    Base,
    Invoice,
    Plan,
    SubscriptionCancellation,
    SubscriptionLapse,
    UsageReport,
)


def merchant_subscriptions(
    conn: Connection, where: Deployment, merchant: str
) -> list[dict[str, Any]]:
    """Every subscription to the merchant's plans, with the plan's terms."""
    return list_subscriptions(conn, where, SubscriptionFilter(merchant=merchant), 0, None, None)


def _of_merchant(fact: Table, where: Deployment, merchant: str, *columns: Any) -> Any:
    plan = table(Plan)
    return (
        select(*columns)
        .select_from(with_subscription_and_plan(fact))
        .where(
            fact.c.chain_id == where.chain_id,
            fact.c.contract == where.manager,
            plan.c.merchant == merchant,
        )
        .order_by(fact.c.block_number, fact.c.log_index)
    )


def _fact(model: type[Base]) -> Table:
    return table(model)


def cancellations(conn: Connection, where: Deployment, merchant: str) -> list[dict[str, Any]]:
    """Cancellations of the merchant's subscriptions, in chain order."""
    fact = _fact(SubscriptionCancellation)
    return fetch_dicts(
        conn,
        _of_merchant(
            fact,
            where,
            merchant,
            fact.c.subscription_id,
            fact.c.effective_at,
            fact.c.at_period_end,
            fact.c.block_time,
        ),
    )


def lapses(conn: Connection, where: Deployment, merchant: str) -> list[dict[str, Any]]:
    fact = _fact(SubscriptionLapse)
    return fetch_dicts(
        conn, _of_merchant(fact, where, merchant, fact.c.subscription_id, fact.c.lapsed_at)
    )


def usage_reports(conn: Connection, where: Deployment, merchant: str) -> list[dict[str, Any]]:
    """Usage reports of the merchant's subscriptions, in chain order."""
    fact = _fact(UsageReport)
    return fetch_dicts(
        conn,
        _of_merchant(
            fact,
            where,
            merchant,
            fact.c.subscription_id,
            fact.c.units,
            fact.c.billable_at,
            fact.c.block_time,
        ),
    )


def unpaid_invoices(conn: Connection, where: Deployment, merchant: str) -> list[dict[str, Any]]:
    """The merchant's open and partially paid invoices (ix_invoices_merchant_status_due_id)."""
    inv = table(Invoice)
    query = select(inv.c.invoice_id, inv.c.token, inv.c.amount, inv.c.paid, inv.c.due_date).where(
        inv.c.chain_id == where.chain_id,
        inv.c.contract == where.registry,
        inv.c.merchant == merchant,
        inv.c.status.in_(UNPAID),
    )
    return fetch_dicts(conn, query)
