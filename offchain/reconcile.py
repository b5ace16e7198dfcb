"""Reconcile: the mirror against the contracts' own views, at the mirror's last block.

Every plan and subscription the contracts count, and every invoice the mirror holds, is
read from the chain and compared field by field; every difference is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from web3 import Web3

from offchain.abi import load_abi
from offchain.db import repository
from offchain.db.models import Invoice, Plan, Subscription, SubscriptionState
from offchain.manifest import Manifest

_STATES = {1: SubscriptionState.LIVE, 2: SubscriptionState.CANCELED, 3: SubscriptionState.LAPSED}
_FLAG_CANCEL_AT_PERIOD_END, _FLAG_PAST_DUE, _FLAG_IN_TRIAL = 1, 2, 4


@dataclass(frozen=True)
class Difference:
    entity: str
    key: str
    field: str
    mirror: Any
    chain: Any

    def __str__(self) -> str:
        return (
            f"{self.entity} {self.key}: {self.field}: mirror={self.mirror!r} chain={self.chain!r}"
        )


def _compare(
    out: list[Difference],
    entity: str,
    key: str,
    mirror: dict[str, Any] | None,
    chain: dict[str, Any],
) -> None:
    if mirror is None:
        out.append(Difference(entity, key, "(row)", None, "exists on-chain"))
        return
    for name, value in chain.items():
        if mirror.get(name) != value:
            out.append(Difference(entity, key, name, mirror.get(name), value))


def reconcile(engine: Engine, web3: Web3, manifest: Manifest) -> tuple[int, list[Difference]]:
    """(block compared at, differences)."""
    chain_id = manifest.chain_id
    with engine.connect() as conn:
        state = repository.get_state(conn, chain_id)
        if state is None:
            return -1, [
                Difference("mirror", str(chain_id), "indexer_state", None, "nothing indexed yet")
            ]
        block = state.last_block
        plans = {
            (r["contract"], r["plan_id"]): r for r in repository.all_rows(conn, Plan, chain_id)
        }
        subs = {
            (r["contract"], r["subscription_id"]): r
            for r in repository.all_rows(conn, Subscription, chain_id)
        }
        invoices = repository.all_rows(conn, Invoice, chain_id)

    out: list[Difference] = []
    manager_address = manifest.address_of("SubscriptionManager")
    manager = web3.eth.contract(
        address=Web3.to_checksum_address(manager_address), abi=load_abi("SubscriptionManager")
    )
    contract = manager_address.lower()
    plan_count = manager.functions.planCount().call(block_identifier=block)
    mirrored_plans = sum(1 for c, _ in plans if c == contract)
    if plan_count != mirrored_plans:
        out.append(Difference("plans", contract, "count", mirrored_plans, plan_count))
    for plan_id in range(1, plan_count + 1):
        p = manager.functions.getPlan(plan_id).call(block_identifier=block)
        chain_row = {
            "merchant": p[0].lower(),
            "period": p[1],
            "trial_period": p[2],
            "grace_period": p[3],
            "token": p[4].lower(),
            "price": p[5],
            "unit_price": p[6],
            "included_units": p[7],
            "active": p[8],
        }
        _compare(out, "plan", f"{contract}/{plan_id}", plans.get((contract, plan_id)), chain_row)

    sub_count = manager.functions.subscriptionCount().call(block_identifier=block)
    mirrored_subs = sum(1 for c, _ in subs if c == contract)
    if sub_count != mirrored_subs:
        out.append(Difference("subscriptions", contract, "count", mirrored_subs, sub_count))
    for sub_id in range(1, sub_count + 1):
        s = manager.functions.getSubscription(sub_id).call(block_identifier=block)
        flags = s[4]
        chain_row = {
            "subscriber": s[0].lower(),
            "paid_through": s[1],
            "plan_id": s[2],
            "state": _STATES.get(s[3], str(s[3])),
            "cancel_at_period_end": bool(flags & _FLAG_CANCEL_AT_PERIOD_END),
            "past_due": bool(flags & _FLAG_PAST_DUE),
            "in_trial": bool(flags & _FLAG_IN_TRIAL),
            "max_amount_per_period": s[5],
            "credit": s[6],
            "unbilled_units": s[7],
        }
        _compare(
            out, "subscription", f"{contract}/{sub_id}", subs.get((contract, sub_id)), chain_row
        )

    registry_address = manifest.address_of("InvoiceRegistry")
    registry = web3.eth.contract(
        address=Web3.to_checksum_address(registry_address), abi=load_abi("InvoiceRegistry")
    )
    for row in invoices:
        if row["contract"] != registry_address.lower():
            continue
        i = registry.functions.getInvoice(bytes.fromhex(row["invoice_id"][2:])).call(
            block_identifier=block
        )
        chain_row = {
            "merchant": i[0].lower(),
            "customer": i[1].lower(),
            "token": i[2].lower(),
            "amount": i[3],
            "paid": i[4],
            "due_date": i[5],
            "allow_partial": i[6],
        }
        _compare(out, "invoice", row["invoice_id"], row, chain_row)
        if (row["status"] == "void") != i[7]:
            out.append(
                Difference("invoice", row["invoice_id"], "voided", row["status"] == "void", i[7])
            )
    return block, out
