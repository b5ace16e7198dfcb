"""The repositories' joins pair a row only with the row of the same chain and contract:
two deployments (and two chains) number their plans and subscriptions from 1 alike, and a
subscription of one must never pick up another deployment's plan or invoice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from offchain.db.joins import with_invoice, with_plan, with_subscription_and_plan
from offchain.db.models import (
    Invoice,
    InvoiceSettlement,
    KeeperSubscription,
    Plan,
    Subscription,
    table_of,
)

# (chain id, contract): three deployments with the same ids inside.
DEPLOYMENTS = [(1, "0x" + "11" * 20), (1, "0x" + "22" * 20), (5, "0x" + "11" * 20)]


def _merchant(index: int) -> str:
    return "0x" + f"{index + 1:02x}" * 20


def _seed(engine: Engine) -> None:
    base: dict[str, Any] = {"created_block": 1}
    with engine.begin() as conn:
        for index, (chain_id, contract) in enumerate(DEPLOYMENTS):
            key = {"chain_id": chain_id, "contract": contract}
            conn.execute(
                table_of(Plan).insert(),
                {
                    **key,
                    **base,
                    "plan_id": 1,
                    "merchant": _merchant(index),
                    "token": contract,
                    "price": 2**256 - 1 - index,
                    "period": 30 * 86_400,
                    "trial_period": 0,
                    "grace_period": 86_400,
                    "unit_price": 0,
                    "included_units": 0,
                    "active": True,
                },
            )
            conn.execute(
                table_of(Subscription).insert(),
                {
                    **key,
                    **base,
                    "subscription_id": 1,
                    "plan_id": 1,
                    "subscriber": _merchant(10 + index),
                    "max_amount_per_period": 10,
                    "started_at": 0,
                    "paid_through": 100 + index,
                    "state": "live",
                    "cancel_at_period_end": False,
                    "past_due": False,
                    "in_trial": False,
                    "credit": 0,
                    "unbilled_units": 0,
                },
            )
            conn.execute(
                table_of(KeeperSubscription).insert(),
                {
                    **key,
                    "subscription_id": 1,
                    "known_paid_through": 100 + index,
                    "failures": index,
                    "lapsed": False,
                    "at_risk": False,
                    "updated_at": datetime.now(UTC),
                },
            )
            invoice_id = "0x" + "ee" * 32
            conn.execute(
                table_of(Invoice).insert(),
                {
                    **key,
                    "invoice_id": invoice_id,
                    "merchant": _merchant(index),
                    "customer": _merchant(10 + index),
                    "reference_hash": "0x" + "00" * 32,
                    "token": contract,
                    "amount": 1_000 + index,
                    "due_date": 0,
                    "allow_partial": False,
                    "content_hash": "0x" + "00" * 32,
                    "paid": 0,
                    "status": "open",
                    "issued_block": 1,
                    "issued_at": 0,
                },
            )
            conn.execute(
                table_of(InvoiceSettlement).insert(),
                {
                    **key,
                    "block_number": 2,
                    "log_index": index,
                    "block_hash": "0x" + "aa" * 32,
                    "block_time": 0,
                    "tx_hash": "0x" + "bb" * 32,
                    "invoice_id": invoice_id,
                    "settler": _merchant(index),
                    "amount": 1_000 + index,
                    "fiat_reference": "0x" + "00" * 32,
                },
            )


def test_a_subscription_gets_its_own_deployments_plan(engine: Engine) -> None:
    _seed(engine)
    sub, plan = table_of(Subscription), table_of(Plan)
    query = select(sub.c.chain_id, sub.c.contract, plan.c.merchant).select_from(with_plan(sub))
    with engine.connect() as conn:
        pairs = sorted(tuple(row) for row in conn.execute(query))
    assert pairs == sorted(
        (chain_id, contract, _merchant(index))
        for index, (chain_id, contract) in enumerate(DEPLOYMENTS)
    )


def test_a_subscription_fact_gets_its_own_subscription_and_plan(engine: Engine) -> None:
    _seed(engine)
    keeper, sub, plan = table_of(KeeperSubscription), table_of(Subscription), table_of(Plan)
    query = select(keeper.c.failures, sub.c.paid_through, plan.c.price).select_from(
        with_subscription_and_plan(keeper)
    )
    with engine.connect() as conn:
        rows = sorted(tuple(row) for row in conn.execute(query))
    assert rows == [(index, 100 + index, 2**256 - 1 - index) for index in range(3)]


def test_an_invoice_fact_gets_its_own_deployments_invoice(engine: Engine) -> None:
    _seed(engine)
    settlement, inv = table_of(InvoiceSettlement), table_of(Invoice)
    query = select(settlement.c.amount, inv.c.amount, inv.c.merchant).select_from(
        with_invoice(settlement)
    )
    with engine.connect() as conn:
        rows = sorted(tuple(row) for row in conn.execute(query))
    assert rows == [(1_000 + index, 1_000 + index, _merchant(index)) for index in range(3)]
