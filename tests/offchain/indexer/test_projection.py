"""Every chainbill event lands in the right mirror rows, with exact values, on SQLite and
PostgreSQL; the raw event log holds every log; reconcile finds nothing after each scenario
and finds a tampered row.

Expected rows are written out from the transactions the tests send (amounts, fees, times
read from the blocks), not from the mirror; `Mirror.fact` reads a fact's provenance (block,
log index, transaction) from the node's receipt."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from sqlalchemy import delete, insert, text, update
from sqlalchemy.exc import IntegrityError
from web3 import Web3

from offchain.db.models import (
    Approval,
    Charge,
    ChargeFailure,
    CreditApplication,
    Invoice,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
    Plan,
    PlanChange,
    RawEvent,
    Subscription,
    SubscriptionCancellation,
    SubscriptionLapse,
    UsageCharge,
    UsageReport,
)
from offchain.indexer.projector import ProjectionMissing
from offchain.reconcile import Difference, reconcile
from tests.chain_fixtures import FEE_BPS, GRACE, NATIVE_TOKEN, PERIOD, PRICE, TRIAL, UNIT
from tests.offchain.indexer.helpers import CHAINBILL, Mirror, event_names, make_manifest

UNIT_PRICE = 50_000
INCLUDED = 100
MAX_UINT96 = 2**96 - 1


def _fee(amount: int) -> int:
    return amount * FEE_BPS // 10_000


def _time(web3: Web3, receipt: Any) -> int:
    return int(web3.eth.get_block(receipt.block_number)["timestamp"])


def _hex(value: Any) -> str:
    return Web3.to_hex(value).lower()


def _addr(account: Any) -> str:
    return str(account.address).lower()


def _record(label: str) -> bytes:
    return keccak(text=label)


def _plan_row(
    mirror: Mirror,
    manager: str,
    receipt: Any,
    merchant: Any,
    token: Any,
    *,
    price: int,
    period: int = PERIOD,
    trial: int = 0,
    grace: int = GRACE,
    unit_price: int = 0,
    included: int = 0,
    active: bool = True,
) -> dict[str, Any]:
    return {
        "chain_id": mirror.chain_id,
        "contract": manager,
        "plan_id": int(receipt.return_value),
        "merchant": _addr(merchant),
        "token": _addr(token),
        "price": price,
        "period": period,
        "trial_period": trial,
        "grace_period": grace,
        "unit_price": unit_price,
        "included_units": included,
        "active": active,
        "created_block": receipt.block_number,
    }


def _subscription_row(
    mirror: Mirror,
    manager: str,
    receipt: Any,
    plan_id: int,
    subscriber: Any,
    *,
    cap: int,
    started_at: int,
    paid_through: int,
    state: str = "live",
    cancel_at_period_end: bool = False,
    past_due: bool = False,
    in_trial: bool = False,
    credit: int = 0,
    unbilled_units: int = 0,
) -> dict[str, Any]:
    return {
        "chain_id": mirror.chain_id,
        "contract": manager,
        "subscription_id": int(receipt.return_value),
        "plan_id": plan_id,
        "subscriber": _addr(subscriber),
        "max_amount_per_period": cap,
        "started_at": started_at,
        "paid_through": paid_through,
        "state": state,
        "cancel_at_period_end": cancel_at_period_end,
        "past_due": past_due,
        "in_trial": in_trial,
        "credit": credit,
        "unbilled_units": unbilled_units,
        "created_block": receipt.block_number,
    }


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["block_number"], r["log_index"]))


# ------------------------------------------------------------------ subscriptions


def test_flat_plans_trials_failures_lapse_and_cancels(
    mirror: Mirror,
    chain: Any,
    web3: Web3,
    subscriptions: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    payer: Any,
    keeper: Any,
    operator: Any,
) -> None:
    sm = subscriptions
    manager = mirror.manager
    r_flat = sm.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant)
    r_trial = sm.createPlan(token, 2 * PRICE, PERIOD, TRIAL, GRACE, sender=merchant)
    r_old = sm.createPlan(token, 3 * PRICE, 2 * PERIOD, 0, 2 * GRACE, sender=merchant)
    flat, trial, old = (int(r.return_value) for r in (r_flat, r_trial, r_old))
    sm.setOperator(operator, True, sender=merchant)
    r_deactivate = sm.deactivatePlan(old, sender=operator)

    token.approve(sm, 100 * PRICE, sender=customer)
    r_a = sm.subscribe(flat, 2 * PRICE, sender=customer)
    r_b = sm.subscribe(trial, 2 * PRICE, sender=customer)
    token.approve(sm, PRICE, sender=stranger)  # all of it goes on the first period
    r_c = sm.subscribe(flat, PRICE, sender=stranger)
    token.approve(sm, 100 * PRICE, sender=payer)
    r_d = sm.subscribe(flat, PRICE, sender=payer)
    token.transfer(stranger, token.balanceOf(payer), sender=payer)  # nothing left to pay with
    a, b, c, d = (int(r.return_value) for r in (r_a, r_b, r_c, r_d))
    t_a, t_b, t_c, t_d = (_time(web3, r) for r in (r_a, r_b, r_c, r_d))

    # In trial, nothing charged; the mirror says so before anything else happens.
    mirror.sync()
    assert mirror.row(Subscription, subscription_id=b) == _subscription_row(
        mirror,
        manager,
        r_b,
        trial,
        customer,
        cap=2 * PRICE,
        started_at=t_b,
        paid_through=t_b + TRIAL,
        in_trial=True,
    )
    assert mirror.row(Plan, plan_id=old)["active"] is False

    chain.pending_timestamp = t_b + TRIAL
    r_b_charge = sm.charge(b, sender=keeper)
    chain.pending_timestamp = max(t_a, t_c, t_d) + PERIOD
    r_batch = sm.chargeBatch([a, b, c, d, 999], sender=keeper)
    chain.pending_timestamp = t_c + PERIOD + GRACE
    r_lapse = sm.finalizeLapse(c, sender=keeper)
    r_cancel_a = sm.cancel(a, True, sender=customer)
    r_cancel_b = sm.cancel(b, False, sender=merchant)
    mirror.sync()

    assert mirror.rows(Plan) == [
        _plan_row(mirror, manager, r_flat, merchant, token, price=PRICE),
        _plan_row(mirror, manager, r_trial, merchant, token, price=2 * PRICE, trial=TRIAL),
        _plan_row(
            mirror,
            manager,
            r_old,
            merchant,
            token,
            price=3 * PRICE,
            period=2 * PERIOD,
            grace=2 * GRACE,
            active=False,
        ),
    ]
    assert r_deactivate.block_number > r_old.block_number
    assert mirror.rows(Subscription) == [
        _subscription_row(
            mirror,
            manager,
            r_a,
            flat,
            customer,
            cap=2 * PRICE,
            started_at=t_a,
            paid_through=t_a + 2 * PERIOD,
            cancel_at_period_end=True,
        ),
        _subscription_row(
            mirror,
            manager,
            r_b,
            trial,
            customer,
            cap=2 * PRICE,
            started_at=t_b,
            paid_through=t_b + TRIAL + PERIOD,
            state="canceled",
        ),
        _subscription_row(
            mirror,
            manager,
            r_c,
            flat,
            stranger,
            cap=PRICE,
            started_at=t_c,
            paid_through=t_c + PERIOD,
            state="lapsed",
            past_due=True,
        ),
        _subscription_row(
            mirror,
            manager,
            r_d,
            flat,
            payer,
            cap=PRICE,
            started_at=t_d,
            paid_through=t_d + PERIOD,
            past_due=True,
        ),
    ]
    charged = dict(subscription_id=a, period_start=t_a, paid_through=t_a + PERIOD, fee=0)
    assert _sorted(mirror.rows(Charge)) == [
        mirror.fact(r_a.txn_hash, manager, "Charged", **charged, amount=PRICE),
        mirror.fact(
            r_c.txn_hash,
            manager,
            "Charged",
            subscription_id=c,
            period_start=t_c,
            paid_through=t_c + PERIOD,
            amount=PRICE,
            fee=0,
        ),
        mirror.fact(
            r_d.txn_hash,
            manager,
            "Charged",
            subscription_id=d,
            period_start=t_d,
            paid_through=t_d + PERIOD,
            amount=PRICE,
            fee=0,
        ),
        mirror.fact(
            r_b_charge.txn_hash,
            manager,
            "Charged",
            subscription_id=b,
            period_start=t_b + TRIAL,
            paid_through=t_b + TRIAL + PERIOD,
            amount=2 * PRICE,
            fee=0,
        ),
        mirror.fact(
            r_batch.txn_hash,
            manager,
            "Charged",
            subscription_id=a,
            period_start=t_a + PERIOD,
            paid_through=t_a + 2 * PERIOD,
            amount=PRICE,
            fee=0,
        ),
    ]
    assert _sorted(mirror.rows(ChargeFailure)) == [
        mirror.fact(
            r_batch.txn_hash,
            manager,
            "ChargeFailed",
            nth=0,
            subscription_id=c,
            due_at=t_c + PERIOD,
            amount=PRICE,
            reason="insufficient_allowance",
        ),
        mirror.fact(
            r_batch.txn_hash,
            manager,
            "ChargeFailed",
            nth=1,
            subscription_id=d,
            due_at=t_d + PERIOD,
            amount=PRICE,
            reason="insufficient_balance",
        ),
    ]
    assert mirror.rows(SubscriptionLapse) == [
        mirror.fact(
            r_lapse.txn_hash,
            manager,
            "SubscriptionLapsed",
            subscription_id=c,
            lapsed_at=t_c + PERIOD + GRACE,
        )
    ]
    assert _sorted(mirror.rows(SubscriptionCancellation)) == [
        mirror.fact(
            r_cancel_a.txn_hash,
            manager,
            "SubscriptionCanceled",
            subscription_id=a,
            canceled_by=_addr(customer),
            effective_at=t_a + 2 * PERIOD,
            at_period_end=True,
        ),
        mirror.fact(
            r_cancel_b.txn_hash,
            manager,
            "SubscriptionCanceled",
            subscription_id=b,
            canceled_by=_addr(merchant),
            effective_at=_time(web3, r_cancel_b),
            at_period_end=False,
        ),
    ]
    assert mirror.rows(Approval) == [
        {
            "chain_id": mirror.chain_id,
            "contract": manager,
            "role": "operator",
            "merchant": _addr(merchant),
            "grantee": _addr(operator),
            "approved": True,
        }
    ]
    batch_events = [e["event"] for e in mirror.raw_events() if e["tx_hash"] == r_batch.txn_hash]
    assert batch_events == [
        "Charged",
        "ChargeSkipped",
        "ChargeFailed",
        "ChargeFailed",
        "ChargeSkipped",
    ]
    assert mirror.reconcile() == []


def test_metered_usage_plan_changes_credit_and_cancels_with_usage(
    fee_mirror: Mirror,
    chain: Any,
    web3: Web3,
    subscriptions_with_fee: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
) -> None:
    mirror, sm, manager = fee_mirror, subscriptions_with_fee, fee_mirror.manager
    r_metered = sm.createMeteredPlan(
        token, PRICE, PERIOD, 0, GRACE, UNIT_PRICE, INCLUDED, sender=merchant
    )
    r_cheap = sm.createPlan(token, PRICE // 10, PERIOD, 0, GRACE, sender=merchant)
    r_premium = sm.createMeteredPlan(
        token, 3 * PRICE, PERIOD, 0, GRACE, 2 * UNIT_PRICE, 0, sender=merchant
    )
    metered, cheap, premium = (int(r.return_value) for r in (r_metered, r_cheap, r_premium))
    cap = 100 * UNIT
    token.approve(sm, 10_000 * UNIT, sender=customer)
    r_s1 = sm.subscribe(metered, cap, sender=customer)
    r_s2 = sm.subscribe(cheap, 3 * PRICE, sender=customer)
    r_s3 = sm.subscribe(metered, cap, sender=customer)
    r_s4 = sm.subscribe(metered, cap, sender=customer)
    s1, s2, s3, s4 = (int(r.return_value) for r in (r_s1, r_s2, r_s3, r_s4))
    t1, t2, t3, t4 = (_time(web3, r) for r in (r_s1, r_s2, r_s3, r_s4))

    r_u1 = sm.reportUsage(s1, 150, _record("u1"), sender=merchant)
    r_u2 = sm.reportUsage(s1, 30, _record("u2"), sender=merchant)
    r_u3 = sm.reportUsage(s3, 120, _record("u3"), sender=merchant)

    # A third into the period: s2 upgrades, s3 stops now with usage, s4 stops at period end.
    t_mid = max(t1, t2, t3, t4) + PERIOD // 3
    chain.pending_timestamp = t_mid
    r_up = sm.changePlan(s2, premium, 3 * PRICE, sender=customer)
    r_cancel3 = sm.cancel(s3, False, sender=customer)
    r_cancel4 = sm.cancel(s4, True, sender=merchant)
    r_u4 = sm.reportUsage(s4, 110, _record("u4"), sender=merchant)
    t_up, t_cancel3 = _time(web3, r_up), _time(web3, r_cancel3)
    remaining = t2 + PERIOD - t_up
    upgrade_charge = (3 * PRICE * remaining) // PERIOD - (PRICE // 10 * remaining) // PERIOD

    mirror.sync()
    # Stopped now with unbilled usage: one last charge is due at once, for the usage only.
    assert mirror.row(Subscription, subscription_id=s3) == _subscription_row(
        mirror,
        manager,
        r_s3,
        metered,
        customer,
        cap=cap,
        started_at=t3,
        paid_through=t_cancel3,
        cancel_at_period_end=True,
        unbilled_units=120,
    )
    r_final3 = sm.charge(s3, sender=keeper)
    mirror.sync()
    assert mirror.row(Subscription, subscription_id=s3)["state"] == "canceled"

    chain.pending_timestamp = max(t1, t4) + PERIOD
    r_charge1 = sm.charge(s1, sender=keeper)
    r_final4 = sm.charge(s4, sender=keeper)
    # Two thirds of the way through s1's second period it moves down to the cheap plan.
    t_down = t1 + PERIOD + PERIOD // 3
    chain.pending_timestamp = t_down
    r_down = sm.changePlan(s1, cheap, PRICE, sender=customer)
    remaining = t1 + 2 * PERIOD - _time(web3, r_down)
    credit = (PRICE * remaining) // PERIOD - (PRICE // 10 * remaining) // PERIOD
    assert credit > PRICE // 10  # more than one period of the cheap plan
    chain.pending_timestamp = t1 + 2 * PERIOD
    r_charge1b = sm.charge(s1, sender=keeper)
    mirror.sync()

    assert mirror.rows(Plan) == [
        _plan_row(
            mirror,
            manager,
            r_metered,
            merchant,
            token,
            price=PRICE,
            unit_price=UNIT_PRICE,
            included=INCLUDED,
        ),
        _plan_row(mirror, manager, r_cheap, merchant, token, price=PRICE // 10),
        _plan_row(
            mirror, manager, r_premium, merchant, token, price=3 * PRICE, unit_price=2 * UNIT_PRICE
        ),
    ]
    assert mirror.rows(Subscription) == [
        _subscription_row(
            mirror,
            manager,
            r_s1,
            cheap,
            customer,
            cap=PRICE,
            started_at=t1,
            paid_through=t1 + 3 * PERIOD,
            credit=credit - PRICE // 10,
        ),
        _subscription_row(
            mirror,
            manager,
            r_s2,
            premium,
            customer,
            cap=3 * PRICE,
            started_at=t2,
            paid_through=t2 + PERIOD,
        ),
        _subscription_row(
            mirror,
            manager,
            r_s3,
            metered,
            customer,
            cap=cap,
            started_at=t3,
            paid_through=t_cancel3,
            state="canceled",
            cancel_at_period_end=True,
        ),
        _subscription_row(
            mirror,
            manager,
            r_s4,
            metered,
            customer,
            cap=cap,
            started_at=t4,
            paid_through=t4 + PERIOD,
            state="canceled",
            cancel_at_period_end=True,
        ),
    ]
    assert _sorted(mirror.rows(UsageReport)) == [
        mirror.fact(
            r.txn_hash,
            manager,
            "UsageReported",
            subscription_id=sid,
            usage_record_id=_hex(_record(label)),
            units=units,
            unbilled_units=unbilled,
            billable_at=billable_at,
        )
        for r, sid, label, units, unbilled, billable_at in (
            (r_u1, s1, "u1", 150, 150, t1 + PERIOD),
            (r_u2, s1, "u2", 30, 180, t1 + PERIOD),
            (r_u3, s3, "u3", 120, 120, t3 + PERIOD),
            (r_u4, s4, "u4", 110, 110, t4 + PERIOD),
        )
    ]
    assert _sorted(mirror.rows(UsageCharge)) == [
        mirror.fact(
            r_final3.txn_hash,
            manager,
            "UsageCharged",
            subscription_id=s3,
            units=120,
            overage_amount=20 * UNIT_PRICE,
        ),
        mirror.fact(
            r_charge1.txn_hash,
            manager,
            "UsageCharged",
            subscription_id=s1,
            units=180,
            overage_amount=80 * UNIT_PRICE,
        ),
        mirror.fact(
            r_final4.txn_hash,
            manager,
            "UsageCharged",
            subscription_id=s4,
            units=110,
            overage_amount=10 * UNIT_PRICE,
        ),
    ]

    def charge_row(receipt: Any, sid: int, start: int, end: int, amount: int) -> dict[str, Any]:
        return mirror.fact(
            receipt.txn_hash,
            manager,
            "Charged",
            subscription_id=sid,
            period_start=start,
            paid_through=end,
            amount=amount,
            fee=_fee(amount),
        )

    assert _sorted(mirror.rows(Charge)) == [
        charge_row(r_s1, s1, t1, t1 + PERIOD, PRICE),
        charge_row(r_s2, s2, t2, t2 + PERIOD, PRICE // 10),
        charge_row(r_s3, s3, t3, t3 + PERIOD, PRICE),
        charge_row(r_s4, s4, t4, t4 + PERIOD, PRICE),
        # The final charges: usage only, and the period does not move on.
        charge_row(r_final3, s3, t_cancel3, t_cancel3, 20 * UNIT_PRICE),
        charge_row(r_charge1, s1, t1 + PERIOD, t1 + 2 * PERIOD, PRICE + 80 * UNIT_PRICE),
        charge_row(r_final4, s4, t4 + PERIOD, t4 + PERIOD, 10 * UNIT_PRICE),
        # The cheap plan's price, all of it paid by the credit.
        charge_row(r_charge1b, s1, t1 + 2 * PERIOD, t1 + 3 * PERIOD, 0),
    ]
    assert mirror.rows(CreditApplication) == [
        mirror.fact(
            r_charge1b.txn_hash,
            manager,
            "CreditApplied",
            subscription_id=s1,
            amount=PRICE // 10,
            remaining_credit=credit - PRICE // 10,
        )
    ]
    assert _sorted(mirror.rows(PlanChange)) == [
        mirror.fact(
            r_up.txn_hash,
            manager,
            "PlanChanged",
            subscription_id=s2,
            from_plan_id=cheap,
            to_plan_id=premium,
            charged=upgrade_charge,
            fee=_fee(upgrade_charge),
            credit=0,
            max_amount_per_period=3 * PRICE,
        ),
        mirror.fact(
            r_down.txn_hash,
            manager,
            "PlanChanged",
            subscription_id=s1,
            from_plan_id=metered,
            to_plan_id=cheap,
            charged=0,
            fee=0,
            credit=credit,
            max_amount_per_period=PRICE,
        ),
    ]
    assert _sorted(mirror.rows(SubscriptionCancellation)) == [
        mirror.fact(
            r_cancel3.txn_hash,
            manager,
            "SubscriptionCanceled",
            subscription_id=s3,
            canceled_by=_addr(customer),
            effective_at=t_cancel3,
            at_period_end=False,
        ),
        mirror.fact(
            r_cancel4.txn_hash,
            manager,
            "SubscriptionCanceled",
            subscription_id=s4,
            canceled_by=_addr(merchant),
            effective_at=t4 + PERIOD,
            at_period_end=True,
        ),
    ]
    assert mirror.reconcile() == []


# ----------------------------------------------------------------------- invoices


def test_invoices_payments_settlements_refunds_voids_and_approvals(
    fee_mirror: Mirror,
    chain: Any,
    web3: Web3,
    invoices_with_fee: Any,
    subscriptions_with_fee: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    operator: Any,
    stranger: Any,
) -> None:
    mirror, registry, contract = fee_mirror, invoices_with_fee, fee_mirror.registry
    due = chain.pending_timestamp + PERIOD

    def issue(
        number: str, amount: int, partial: bool, sender: Any, asset: Any = token
    ) -> tuple[Any, str]:
        ref = keccak(text=number)
        receipt = registry.issue(
            merchant,
            ref,
            customer,
            asset,
            amount,
            due,
            partial,
            keccak(text=f"pdf {number}"),
            sender=sender,
        )
        return receipt, _hex(registry.invoiceIdOf(merchant, ref))

    registry.setOperator(operator, True, sender=merchant)
    subscriptions_with_fee.setOperator(stranger, True, sender=merchant)
    r_a, inv_a = issue("INV-A", 100 * UNIT, True, merchant)
    r_b, inv_b = issue("INV-B", 50 * UNIT, False, operator)
    r_c, inv_c = issue("INV-C", 70 * UNIT, False, merchant)
    r_e, inv_e = issue("INV-E", 3 * 10**18, False, merchant, NATIVE_TOKEN)  # paid in ETH

    token.approve(registry, 1_000 * UNIT, sender=payer)
    r_pay_a = registry.pay(merchant, keccak(text="INV-A"), 40 * UNIT, sender=payer)
    registry.setSettler(operator, True, sender=merchant)
    r_settle_a = registry.settleOffchain(inv_a, 60 * UNIT, keccak(text="wire 1"), sender=operator)
    r_pay_e = registry.payEth(merchant, keccak(text="INV-E"), value=3 * 10**18, sender=customer)
    mirror.sync()
    assert mirror.row(Invoice, invoice_id=inv_a)["status"] == "paid"
    assert mirror.row(Invoice, invoice_id=inv_a)["paid"] == 100 * UNIT

    token.approve(registry, 1_000 * UNIT, sender=merchant)
    r_refund_a = registry.refund(inv_a, customer, 30 * UNIT, sender=merchant)
    r_void_b = registry.voidInvoice(inv_b, sender=operator)
    registry.setSettler(operator, False, sender=merchant)
    registry.setOperator(operator, False, sender=merchant)
    mirror.sync()

    def invoice_row(
        receipt: Any,
        invoice_id: str,
        number: str,
        amount: int,
        partial: bool,
        paid: int,
        status: str,
        asset: str = _addr(token),
    ) -> dict[str, Any]:
        return {
            "chain_id": mirror.chain_id,
            "contract": contract,
            "invoice_id": invoice_id,
            "merchant": _addr(merchant),
            "customer": _addr(customer),
            "reference_hash": _hex(keccak(text=number)),
            "token": asset,
            "amount": amount,
            "due_date": due,
            "allow_partial": partial,
            "content_hash": _hex(keccak(text=f"pdf {number}")),
            "paid": paid,
            "status": status,
            "issued_block": receipt.block_number,
            "issued_at": _time(web3, receipt),
        }

    assert sorted(mirror.rows(Invoice), key=lambda r: r["issued_block"]) == [
        invoice_row(r_a, inv_a, "INV-A", 100 * UNIT, True, 70 * UNIT, "partially_paid"),
        invoice_row(r_b, inv_b, "INV-B", 50 * UNIT, False, 0, "void"),
        invoice_row(r_c, inv_c, "INV-C", 70 * UNIT, False, 0, "open"),
        invoice_row(
            r_e, inv_e, "INV-E", 3 * 10**18, False, 3 * 10**18, "paid", NATIVE_TOKEN.lower()
        ),
    ]
    assert _sorted(mirror.rows(InvoicePayment)) == [
        mirror.fact(
            r_pay_a.txn_hash,
            contract,
            "InvoicePaid",
            invoice_id=inv_a,
            payer=_addr(payer),
            amount=40 * UNIT,
            fee=_fee(40 * UNIT),
        ),
        mirror.fact(
            r_pay_e.txn_hash,
            contract,
            "InvoicePaid",
            invoice_id=inv_e,
            payer=_addr(customer),
            amount=3 * 10**18,
            fee=_fee(3 * 10**18),
        ),
    ]
    assert mirror.rows(InvoiceSettlement) == [
        mirror.fact(
            r_settle_a.txn_hash,
            contract,
            "InvoiceSettledOffchain",
            invoice_id=inv_a,
            settler=_addr(operator),
            amount=60 * UNIT,
            fiat_reference=_hex(keccak(text="wire 1")),
        )
    ]
    assert mirror.rows(InvoiceRefund) == [
        mirror.fact(
            r_refund_a.txn_hash,
            contract,
            "InvoiceRefunded",
            invoice_id=inv_a,
            recipient=_addr(customer),
            amount=30 * UNIT,
        )
    ]
    approvals = {
        (r["contract"], r["role"], r["merchant"], r["grantee"]): r["approved"]
        for r in mirror.rows(Approval)
    }
    assert approvals == {
        (contract, "operator", _addr(merchant), _addr(operator)): False,
        (contract, "settler", _addr(merchant), _addr(operator)): False,
        (mirror.manager, "operator", _addr(merchant), _addr(stranger)): True,
    }
    voided = [e for e in mirror.raw_events() if e["tx_hash"] == r_void_b.txn_hash]
    assert [e["event"] for e in voided] == ["InvoiceVoided"]
    assert mirror.reconcile() == []


def test_amounts_near_uint96_max_round_trip(
    mirror: Mirror,
    chain: Any,
    web3: Web3,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    """The contracts cap amounts at 2**96 - 1: beyond any float's and int64's precision."""
    token.mint(customer, 3 * MAX_UINT96, sender=customer)
    r_plan = subscriptions.createPlan(token, MAX_UINT96, PERIOD, 0, GRACE, sender=merchant)
    plan = int(r_plan.return_value)
    token.approve(subscriptions, 2 * MAX_UINT96, sender=customer)
    r_sub = subscriptions.subscribe(plan, MAX_UINT96, sender=customer)
    ref = keccak(text="BIG")
    invoices.issue(
        merchant,
        ref,
        customer,
        token,
        MAX_UINT96,
        chain.pending_timestamp + PERIOD,
        True,
        b"\x00" * 32,
        sender=merchant,
    )
    invoice_id = _hex(invoices.invoiceIdOf(merchant, ref))
    token.approve(invoices, MAX_UINT96, sender=customer)
    r_pay = invoices.pay(merchant, ref, MAX_UINT96 - 1, sender=customer)
    mirror.sync()

    assert mirror.row(Plan, plan_id=plan)["price"] == MAX_UINT96
    assert (
        mirror.row(Subscription, subscription_id=int(r_sub.return_value))["max_amount_per_period"]
        == MAX_UINT96
    )
    assert [r["amount"] for r in mirror.rows(Charge)] == [MAX_UINT96]
    invoice = mirror.row(Invoice, invoice_id=invoice_id)
    assert (invoice["amount"], invoice["paid"], invoice["status"]) == (
        MAX_UINT96,
        MAX_UINT96 - 1,
        "partially_paid",
    )
    assert mirror.rows(InvoicePayment) == [
        mirror.fact(
            r_pay.txn_hash,
            mirror.registry,
            "InvoicePaid",
            invoice_id=invoice_id,
            payer=_addr(customer),
            amount=MAX_UINT96 - 1,
            fee=0,
        )
    ]
    # Compared in SQL too: the stored form orders and matches like the number.
    with mirror.engine.connect() as conn:
        bigger = conn.execute(
            text("select count(*) from invoices where paid < amount")
        ).scalar_one()
    assert bigger == 1
    assert mirror.reconcile() == []


def test_a_start_after_the_deployment_is_refused_with_a_hint(
    mirror: Mirror,
    web3: Web3,
    subscriptions: Any,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    """A manifest whose start block is after events the mirror needs (a plan created before
    it, subscribed to after it) cannot be projected: the indexer says why and writes nothing."""
    plan = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    token.approve(subscriptions, 10 * PRICE, sender=customer)
    receipt = subscriptions.subscribe(plan, PRICE, sender=customer)
    late = Mirror(
        mirror.engine,
        mirror.rpc_url,
        make_manifest(
            mirror.chain_id, mirror.manager, mirror.registry, start_block=receipt.block_number
        ),
    )
    with pytest.raises(ProjectionMissing, match="started after the deployment block"):
        late.sync()
    assert late.state() is None
    assert late.raw_events() == []
    assert web3.eth.block_number == receipt.block_number


# ---------------------------------------------------------------------- raw events


def test_raw_events_hold_every_log_once(
    mirror: Mirror,
    chain: Any,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    owner: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
) -> None:
    plan = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    token.approve(subscriptions, 10 * PRICE, sender=customer)
    sid = int(subscriptions.subscribe(plan, PRICE, sender=customer).return_value)
    subscriptions.chargeBatch([sid, sid + 1], sender=keeper)  # two ChargeSkipped
    subscriptions.revokeIntents(sender=customer)
    subscriptions.pause(sender=owner)
    subscriptions.unpause(sender=owner)
    invoices.pause(sender=owner)
    invoices.unpause(sender=owner)
    mirror.sync()

    names = event_names()
    expected = [
        {
            "chain_id": mirror.chain_id,
            "block_number": log["blockNumber"],
            "block_hash": _hex(log["blockHash"]),
            "tx_hash": _hex(log["transactionHash"]),
            "log_index": log["logIndex"],
            "contract": log["address"].lower(),
            "event": names[_hex(log["topics"][0])],
            "topics": ",".join(_hex(t) for t in log["topics"]),
            "data": _hex(log["data"]),
        }
        for log in mirror.node_logs()
    ]
    stored = [
        {k: v for k, v in row.items() if k not in ("id", "block_time")}
        for row in mirror.raw_events()
    ]
    assert stored == expected
    events = {row["event"] for row in stored}
    assert {
        "OwnershipTransferred",  # the constructors'
        "ChargeSkipped",
        "IntentsRevoked",
        "Paused",
        "Unpaused",
        "PlanCreated",
        "Subscribed",
        "Charged",
    } <= events
    assert {row["contract"] for row in stored} == {mirror.manager, mirror.registry}
    times = {row["block_number"]: row["block_time"] for row in mirror.raw_events()}
    assert all(times[n] == mirror.web3.eth.get_block(n)["timestamp"] for n in times)

    keys = [(r["chain_id"], r["block_hash"], r["log_index"]) for r in mirror.raw_events()]
    assert len(keys) == len(set(keys))
    duplicate = {k: v for k, v in mirror.raw_events()[0].items() if k != "id"}
    with pytest.raises(IntegrityError), mirror.engine.begin() as conn:
        conn.execute(insert(RawEvent).values(duplicate))
    assert len(mirror.raw_events()) == len(keys)


# ----------------------------------------------------------------------- reconcile


def test_reconcile_reports_tampered_rows(
    mirror: Mirror,
    chain: Any,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    tmp_path: Path,
) -> None:
    assert reconcile(mirror.engine, mirror.web3, mirror.manifest) == (
        -1,
        [Difference("mirror", str(mirror.chain_id), "indexer_state", None, "nothing indexed yet")],
    )
    plan = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    token.approve(subscriptions, 10 * PRICE, sender=customer)
    sid = int(subscriptions.subscribe(plan, PRICE, sender=customer).return_value)
    ref = keccak(text="T-1")
    invoices.issue(
        merchant,
        ref,
        customer,
        token,
        5 * UNIT,
        chain.pending_timestamp + PERIOD,
        False,
        b"\x00" * 32,
        sender=merchant,
    )
    invoice_id = _hex(invoices.invoiceIdOf(merchant, ref))
    mirror.sync()
    assert mirror.reconcile() == []
    paid_through = mirror.row(Subscription, subscription_id=sid)["paid_through"]

    def tampered(model: Any, where: Any, **values: Any) -> list[Difference]:
        with mirror.engine.begin() as conn:
            before = conn.execute(model.__table__.select().where(where)).one()._mapping
            conn.execute(update(model).where(where).values(**values))
        try:
            return mirror.reconcile()
        finally:
            with mirror.engine.begin() as conn:
                conn.execute(update(model).where(where).values(**{k: before[k] for k in values}))

    key = f"{mirror.manager}/{sid}"
    assert tampered(
        Subscription, Subscription.subscription_id == sid, paid_through=paid_through + 1
    ) == [Difference("subscription", key, "paid_through", paid_through + 1, paid_through)]
    assert tampered(Subscription, Subscription.subscription_id == sid, state="canceled") == [
        Difference("subscription", key, "state", "canceled", "live")
    ]
    assert tampered(Plan, Plan.plan_id == plan, active=False, price=PRICE + 1) == [
        Difference("plan", f"{mirror.manager}/{plan}", "price", PRICE + 1, PRICE),
        Difference("plan", f"{mirror.manager}/{plan}", "active", False, True),
    ]
    assert tampered(Invoice, Invoice.invoice_id == invoice_id, paid=MAX_UINT96) == [
        Difference("invoice", invoice_id, "paid", MAX_UINT96, 0)
    ]
    assert tampered(Invoice, Invoice.invoice_id == invoice_id, status="void") == [
        Difference("invoice", invoice_id, "voided", True, False)
    ]
    assert mirror.reconcile() == []

    with mirror.engine.begin() as conn:
        conn.execute(delete(Subscription).where(Subscription.subscription_id == sid))
    assert mirror.reconcile() == [
        Difference("subscriptions", mirror.manager, "count", 0, 1),
        Difference("subscription", key, "(row)", None, "exists on-chain"),
    ]

    # The command line says so too, and fails.
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    result = subprocess.run(
        [
            str(CHAINBILL),
            "reconcile",
            "--database-url",
            mirror.engine.url.render_as_string(hide_password=False),
            "--rpc-url",
            mirror.rpc_url,
            "--manifest",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"subscription {key}: (row)" in result.stdout
    assert "2 difference(s)" in result.stdout
