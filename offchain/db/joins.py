"""Join conditions shared by the repositories. Every mirror table is keyed by the chain and
the contract whose events it mirrors, then by the contract's own id (subscription, plan,
invoice): two rows match only when all of those agree, or a second deployment's
subscription 1 would join the first one's plan."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Join, Table, and_

from offchain.db.models import Invoice, Plan, Subscription, table_of

_SUBSCRIPTIONS = table_of(Subscription)
_PLANS = table_of(Plan)
_INVOICES = table_of(Invoice)


def same_row(left: Table, right: Table, *keys: str) -> ColumnElement[bool]:
    """`left` and `right` have the same chain id, contract and `keys` columns."""
    return and_(*(left.c[key] == right.c[key] for key in ("chain_id", "contract", *keys)))


def with_subscription_and_plan(table: Table) -> Join:
    """`table` (keyed by subscription id) joined to its subscription and that one's plan."""
    return table.join(_SUBSCRIPTIONS, same_row(_SUBSCRIPTIONS, table, "subscription_id")).join(
        _PLANS, same_row(_PLANS, _SUBSCRIPTIONS, "plan_id")
    )


def with_plan(subscriptions: Table) -> Join:
    """The subscriptions table joined to each subscription's plan."""
    return subscriptions.join(_PLANS, same_row(_PLANS, subscriptions, "plan_id"))


def with_invoice(table: Table) -> Join:
    """`table` (keyed by invoice id) joined to its invoice."""
    return table.join(_INVOICES, same_row(_INVOICES, table, "invoice_id"))
