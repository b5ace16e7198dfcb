"""Tests of SubscriptionManager's metered plans, usage reports and plan changes with proration.

Every test starts from the fixtures' snapshot (Ape reverts the chain after each test). Times
that matter are pinned with `chain.pending_timestamp = t` before the transaction they apply
to; views read the latest block, so `_travel` mines a block at the wanted time first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_utils import keccak

from tests.chain_fixtures import FEE_BPS, GRACE, PERIOD, PRICE, TRIAL, UNIT
from tests.contracts.helpers import balances as _balances
from tests.contracts.helpers import event_names as _event_names
from tests.contracts.helpers import logs_of as _logs
from tests.contracts.helpers import only as _only

HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY
MAX_UINT64 = 2**64 - 1
MAX_UINT96 = 2**96 - 1

# Terms of the default metered plan: PRICE per period plus UNIT_PRICE per unit above INCLUDED.
UNIT_PRICE = 50_000  # 0.05 TUSD
INCLUDED = 100
METERED_CAP = 100 * UNIT
METERED_ALLOWANCE = 1_000 * UNIT

# SubscriptionStatus
NONE, TRIALING, ACTIVE, PAST_DUE, CANCELED, LAPSED = range(6)
# SubscriptionState (stored)
STATE_NONE, STATE_LIVE, STATE_CANCELED, STATE_LAPSED = range(4)
# ChargeFailureReason
INSUFFICIENT_ALLOWANCE, INSUFFICIENT_BALANCE, TRANSFER_REJECTED = range(3)
# ChargeSkipReason
SKIP_NOT_FOUND, SKIP_NOT_DUE, SKIP_NOT_LIVE, SKIP_GRACE_EXPIRED = range(4)
# Subscription.flags
FLAG_CANCEL_AT_PERIOD_END, FLAG_PAST_DUE, FLAG_IN_TRIAL, FLAG_METERED, FLAG_HAS_CREDIT = (
    1,
    2,
    4,
    8,
    16,
)


# ---------------------------------------------------------------- helpers


def _reverts(error: Any, **inputs: Any) -> Any:
    """`ape.reverts` that insists on every input of the error, by its exact name (ape itself
    silently ignores misspelt or missing names)."""
    names = {ipt.name for ipt in error.abi.inputs}
    assert set(inputs) == names, f"{error.abi.name} takes {sorted(names)}, got {sorted(inputs)}"
    return ape.reverts(error, **inputs)


def _record(label: str) -> bytes:
    """A merchant's usage record id (a hash of its own record id)."""
    return keccak(text=label)


def _overage(units: int, *, included: int = INCLUDED, unit_price: int = UNIT_PRICE) -> int:
    return max(0, units - included) * unit_price


def _value(price: int, remaining: int, period: int) -> int:
    """What `remaining` seconds of a plan are worth, rounded down as the contract does."""
    return price * remaining // period


def _fee(amount: int) -> int:
    return amount * FEE_BPS // 10_000


@pytest.fixture
def create_metered_plan(subscriptions: Any, merchant: Any, token: Any) -> Callable[..., int]:
    """Creates a metered plan on `subscriptions` (or another manager) and returns its id."""

    def create(
        manager: Any = None,
        *,
        price: int = PRICE,
        period: int = PERIOD,
        trial: int = 0,
        grace: int = GRACE,
        unit_price: int = UNIT_PRICE,
        included: int = INCLUDED,
        plan_token: Any = None,
        sender: Any = None,
    ) -> int:
        receipt = (manager or subscriptions).createMeteredPlan(
            plan_token or token,
            price,
            period,
            trial,
            grace,
            unit_price,
            included,
            sender=sender or merchant,
        )
        return int(receipt.return_value)

    return create


@pytest.fixture
def metered_plan(create_metered_plan: Any) -> int:
    return int(create_metered_plan())


@pytest.fixture
def metered_sid(subscribe: Any, metered_plan: int) -> int:
    """The customer's subscription to the default metered plan, first period paid."""
    return int(subscribe(metered_plan, cap=METERED_CAP, allowance=METERED_ALLOWANCE))


@pytest.fixture
def flat_plan(create_plan: Any) -> int:
    return int(create_plan())


@pytest.fixture
def premium_plan(create_plan: Any) -> int:
    """Same merchant and token as `flat_plan`, three times the price."""
    return int(create_plan(price=3 * PRICE))


@pytest.fixture
def flat_sid(subscribe: Any, flat_plan: int) -> int:
    """The customer's subscription to `flat_plan`, first period paid, room for upgrades."""
    return int(subscribe(flat_plan, cap=3 * PRICE, allowance=METERED_ALLOWANCE))


@pytest.fixture
def other_token(project: Any, owner: Any, customer: Any) -> Any:
    stablecoin = owner.deploy(project.MockStablecoin, "Other USD", "OUSD")
    stablecoin.mint(customer, 1_000 * UNIT, sender=owner)
    return stablecoin


# ------------------------------------------------------- createMeteredPlan


def test_create_metered_plan_stores_terms_and_emits_event(
    subscriptions: Any, merchant: Any, token: Any
) -> None:
    receipt = subscriptions.createMeteredPlan(
        token, PRICE, PERIOD, TRIAL, GRACE, UNIT_PRICE, INCLUDED, sender=merchant
    )

    assert receipt.return_value == 1
    assert _event_names(receipt, subscriptions) == ["PlanCreated"]
    log = _only(receipt, subscriptions, "PlanCreated")
    assert (log.planId, log.merchant, log.token) == (1, merchant.address, token.address)
    assert (log.price, log.period, log.trialPeriod, log.gracePeriod) == (
        PRICE,
        PERIOD,
        TRIAL,
        GRACE,
    )
    assert (log.unitPrice, log.includedUnits) == (UNIT_PRICE, INCLUDED)

    plan = subscriptions.getPlan(1)
    assert plan.merchant == merchant.address
    assert plan.token == token.address
    assert (plan.price, plan.period, plan.trialPeriod, plan.gracePeriod) == (
        PRICE,
        PERIOD,
        TRIAL,
        GRACE,
    )
    assert (plan.unitPrice, plan.includedUnits) == (UNIT_PRICE, INCLUDED)
    assert plan.active is True
    assert subscriptions.planCount() == 1


def test_create_metered_plan_accepts_zero_base_price_and_bounds(
    subscriptions: Any, create_metered_plan: Any
) -> None:
    free_base = create_metered_plan(price=0, included=0)
    extremes = create_metered_plan(price=MAX_UINT96, unit_price=MAX_UINT96, included=MAX_UINT64)

    plan = subscriptions.getPlan(free_base)
    assert (plan.price, plan.unitPrice, plan.includedUnits) == (0, UNIT_PRICE, 0)
    plan = subscriptions.getPlan(extremes)
    assert (plan.price, plan.unitPrice, plan.includedUnits) == (
        MAX_UINT96,
        MAX_UINT96,
        MAX_UINT64,
    )


def test_subscribing_to_zero_base_price_plan_charges_nothing_up_front(
    subscriptions: Any,
    create_metered_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
) -> None:
    plan = create_metered_plan(price=0)
    before = _balances(token, merchant, customer)

    receipt = subscriptions.subscribe(plan, UNIT, sender=customer)  # no allowance needed

    sub_id = receipt.return_value
    assert _event_names(receipt, subscriptions) == ["Subscribed", "Charged"]
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.amount, charged.fee) == (0, 0)
    assert _logs(receipt, token, "Transfer") == []
    assert _balances(token, merchant, customer) == before
    stored = subscriptions.getSubscription(sub_id)
    assert stored.flags == FLAG_METERED
    assert stored.usageUnits == 0
    assert subscriptions.amountDue(sub_id) == 0


@pytest.mark.parametrize("unit_price", [0, MAX_UINT96 + 1, 2**256 - 1])
def test_create_metered_plan_rejects_zero_or_oversized_unit_price(
    subscriptions: Any, merchant: Any, token: Any, unit_price: int
) -> None:
    with _reverts(subscriptions.InvalidPrice, price=unit_price, max=MAX_UINT96):
        subscriptions.createMeteredPlan(
            token, PRICE, PERIOD, 0, GRACE, unit_price, INCLUDED, sender=merchant
        )
    assert subscriptions.planCount() == 0


def test_create_metered_plan_rejects_oversized_base_price(
    subscriptions: Any, merchant: Any, token: Any
) -> None:
    with _reverts(subscriptions.InvalidPrice, price=MAX_UINT96 + 1, max=MAX_UINT96):
        subscriptions.createMeteredPlan(
            token, MAX_UINT96 + 1, PERIOD, 0, GRACE, UNIT_PRICE, INCLUDED, sender=merchant
        )


@pytest.mark.parametrize("included", [MAX_UINT64 + 1, 2**256 - 1])
def test_create_metered_plan_rejects_oversized_included_units(
    subscriptions: Any, merchant: Any, token: Any, included: int
) -> None:
    with _reverts(subscriptions.InvalidUsage, units=included):
        subscriptions.createMeteredPlan(
            token, PRICE, PERIOD, 0, GRACE, UNIT_PRICE, included, sender=merchant
        )
    assert subscriptions.planCount() == 0


def test_create_plan_still_rejects_zero_price(
    subscriptions: Any, merchant: Any, token: Any
) -> None:
    with _reverts(subscriptions.InvalidPrice, price=0, max=MAX_UINT96):
        subscriptions.createPlan(token, 0, PERIOD, 0, GRACE, sender=merchant)


# ------------------------------------------------------------- reportUsage


def test_merchant_reports_usage_cumulatively_until_the_next_charge(
    subscriptions: Any, merchant: Any, metered_sid: int
) -> None:
    due = int(subscriptions.paidThrough(metered_sid))
    first, second = _record("usage-1"), _record("usage-2")
    assert subscriptions.amountDue(metered_sid) == PRICE
    assert subscriptions.isUsageRecorded(merchant, first) is False

    receipt = subscriptions.reportUsage(metered_sid, 60, first, sender=merchant)

    assert _event_names(receipt, subscriptions) == ["UsageReported"]
    log = _only(receipt, subscriptions, "UsageReported")
    assert (log.subscriptionId, log.usageRecordId) == (metered_sid, first)
    assert (log.units, log.unbilledUnits, log.billableAt) == (60, 60, due)
    assert subscriptions.getSubscription(metered_sid).usageUnits == 60
    assert subscriptions.isUsageRecorded(merchant, first) is True
    assert subscriptions.isUsageRecorded(merchant, second) is False
    assert subscriptions.amountDue(metered_sid) == PRICE  # within the included units

    receipt = subscriptions.reportUsage(metered_sid, 70, second, sender=merchant)

    log = _only(receipt, subscriptions, "UsageReported")
    assert (log.subscriptionId, log.usageRecordId) == (metered_sid, second)
    assert (log.units, log.unbilledUnits, log.billableAt) == (70, 130, due)
    assert subscriptions.getSubscription(metered_sid).usageUnits == 130
    assert subscriptions.isUsageRecorded(merchant, second) is True
    assert subscriptions.amountDue(metered_sid) == PRICE + 30 * UNIT_PRICE
    assert subscriptions.paidThrough(metered_sid) == due  # reporting moves no schedule


def test_approved_operator_reports_usage_for_the_merchant(
    subscriptions: Any, merchant: Any, operator: Any, metered_sid: int
) -> None:
    subscriptions.setOperator(operator, True, sender=merchant)
    record = _record("by-operator")

    receipt = subscriptions.reportUsage(metered_sid, 5, record, sender=operator)

    log = _only(receipt, subscriptions, "UsageReported")
    assert (log.units, log.unbilledUnits) == (5, 5)
    assert subscriptions.getSubscription(metered_sid).usageUnits == 5
    # Records live in the merchant's namespace, whoever reported them.
    assert subscriptions.isUsageRecorded(merchant, record) is True
    assert subscriptions.isUsageRecorded(operator, record) is False
    with _reverts(
        subscriptions.DuplicateUsageRecord, merchant=merchant.address, usageRecordId=record
    ):
        subscriptions.reportUsage(metered_sid, 5, record, sender=merchant)


def test_revoked_operator_cannot_report_usage(
    subscriptions: Any, merchant: Any, operator: Any, metered_sid: int
) -> None:
    subscriptions.setOperator(operator, True, sender=merchant)
    subscriptions.setOperator(operator, False, sender=merchant)

    with _reverts(
        subscriptions.NotMerchantOrOperator, merchant=merchant.address, caller=operator.address
    ):
        subscriptions.reportUsage(metered_sid, 5, _record("r"), sender=operator)


@pytest.mark.parametrize("who", ["stranger", "customer", "keeper"])
def test_only_merchant_or_operator_reports_usage(
    subscriptions: Any, merchant: Any, metered_sid: int, request: Any, who: str
) -> None:
    caller = request.getfixturevalue(who)
    record = _record("not-yours")

    with _reverts(
        subscriptions.NotMerchantOrOperator, merchant=merchant.address, caller=caller.address
    ):
        subscriptions.reportUsage(metered_sid, 5, record, sender=caller)

    assert subscriptions.getSubscription(metered_sid).usageUnits == 0
    assert subscriptions.isUsageRecorded(merchant, record) is False


def test_usage_on_flat_plan_reverts_plan_not_metered(
    subscriptions: Any, merchant: Any, flat_plan: int, flat_sid: int
) -> None:
    with _reverts(subscriptions.PlanNotMetered, planId=flat_plan):
        subscriptions.reportUsage(flat_sid, 5, _record("r"), sender=merchant)


@pytest.mark.parametrize("unknown", [0, 999])
def test_usage_on_unknown_subscription_reverts_not_found(
    subscriptions: Any, merchant: Any, metered_sid: int, unknown: int
) -> None:
    with _reverts(subscriptions.SubscriptionNotFound, subscriptionId=unknown):
        subscriptions.reportUsage(unknown, 5, _record("r"), sender=merchant)


def test_usage_of_zero_units_reverts_invalid_usage(
    subscriptions: Any, merchant: Any, metered_sid: int
) -> None:
    record = _record("empty")
    with _reverts(subscriptions.InvalidUsage, units=0):
        subscriptions.reportUsage(metered_sid, 0, record, sender=merchant)
    assert subscriptions.isUsageRecorded(merchant, record) is False


def test_usage_beyond_64_bits_reverts_invalid_usage(
    subscriptions: Any, create_metered_plan: Any, subscribe: Any, merchant: Any
) -> None:
    # Units within the included ones cost nothing, so only the 64-bit counter limits them.
    plan = create_metered_plan(included=MAX_UINT64)
    sub_id = subscribe(plan, cap=PRICE)
    subscriptions.reportUsage(sub_id, MAX_UINT64, _record("all"), sender=merchant)

    with _reverts(subscriptions.InvalidUsage, units=1):
        subscriptions.reportUsage(sub_id, 1, _record("one-more"), sender=merchant)
    assert subscriptions.getSubscription(sub_id).usageUnits == MAX_UINT64


def test_reused_usage_record_id_reverts_duplicate_even_on_another_subscription(
    subscriptions: Any,
    subscribe: Any,
    merchant: Any,
    stranger: Any,
    metered_plan: int,
    metered_sid: int,
) -> None:
    other_sid = subscribe(
        metered_plan, subscriber=stranger, cap=METERED_CAP, allowance=METERED_ALLOWANCE
    )
    record = _record("invoice-line-7")
    subscriptions.reportUsage(metered_sid, 150, record, sender=merchant)

    with _reverts(
        subscriptions.DuplicateUsageRecord, merchant=merchant.address, usageRecordId=record
    ):
        subscriptions.reportUsage(metered_sid, 150, record, sender=merchant)
    with _reverts(
        subscriptions.DuplicateUsageRecord, merchant=merchant.address, usageRecordId=record
    ):
        subscriptions.reportUsage(other_sid, 3, record, sender=merchant)

    assert subscriptions.getSubscription(metered_sid).usageUnits == 150
    assert subscriptions.getSubscription(other_sid).usageUnits == 0


def test_another_merchant_may_use_the_same_usage_record_id(
    subscriptions: Any,
    create_metered_plan: Any,
    subscribe: Any,
    merchant: Any,
    stranger: Any,
    metered_sid: int,
) -> None:
    other_plan = create_metered_plan(sender=stranger)
    other_sid = subscribe(other_plan, cap=METERED_CAP, allowance=METERED_ALLOWANCE)
    record = _record("shared-id")
    subscriptions.reportUsage(metered_sid, 10, record, sender=merchant)
    assert subscriptions.isUsageRecorded(stranger, record) is False

    receipt = subscriptions.reportUsage(other_sid, 20, record, sender=stranger)

    log = _only(receipt, subscriptions, "UsageReported")
    assert (log.subscriptionId, log.usageRecordId, log.units) == (other_sid, record, 20)
    assert subscriptions.isUsageRecorded(merchant, record) is True
    assert subscriptions.isUsageRecorded(stranger, record) is True
    assert subscriptions.getSubscription(metered_sid).usageUnits == 10
    assert subscriptions.getSubscription(other_sid).usageUnits == 20


def test_usage_that_would_exceed_the_cap_is_refused_and_not_recorded(
    subscriptions: Any, create_metered_plan: Any, subscribe: Any, merchant: Any
) -> None:
    cap = PRICE + 10 * UNIT_PRICE  # room for 10 units above the included ones
    sub_id = subscribe(create_metered_plan(), cap=cap)
    subscriptions.reportUsage(sub_id, INCLUDED + 10, _record("up-to-cap"), sender=merchant)
    assert subscriptions.amountDue(sub_id) == cap

    record = _record("one-too-many")
    with _reverts(
        subscriptions.UsageExceedsCap,
        subscriptionId=sub_id,
        amount=cap + UNIT_PRICE,
        maxAmountPerPeriod=cap,
    ):
        subscriptions.reportUsage(sub_id, 1, record, sender=merchant)

    assert subscriptions.getSubscription(sub_id).usageUnits == INCLUDED + 10
    assert subscriptions.isUsageRecorded(merchant, record) is False
    assert subscriptions.amountDue(sub_id) == cap


def test_single_report_above_the_cap_is_refused(
    subscriptions: Any, create_metered_plan: Any, subscribe: Any, merchant: Any
) -> None:
    sub_id = subscribe(create_metered_plan(), cap=PRICE)  # no room for any overage
    subscriptions.reportUsage(sub_id, INCLUDED, _record("included"), sender=merchant)

    with _reverts(
        subscriptions.UsageExceedsCap,
        subscriptionId=sub_id,
        amount=PRICE + 50 * UNIT_PRICE,
        maxAmountPerPeriod=PRICE,
    ):
        subscriptions.reportUsage(sub_id, 50, _record("over"), sender=merchant)
    assert subscriptions.getSubscription(sub_id).usageUnits == INCLUDED


def test_usage_after_a_scheduled_cancel_is_billed_when_the_period_ends(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    due = int(subscriptions.paidThrough(metered_sid))
    subscriptions.cancel(metered_sid, True, sender=customer)
    assert subscriptions.nextChargeAt(metered_sid) == 0  # nothing to bill yet

    subscriptions.reportUsage(metered_sid, INCLUDED + 5, _record("late"), sender=merchant)
    assert subscriptions.getSubscription(metered_sid).usageUnits == INCLUDED + 5
    assert subscriptions.nextChargeAt(metered_sid) == due
    assert subscriptions.amountDue(metered_sid) == 5 * UNIT_PRICE

    before = _balances(token, merchant, customer)
    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)
    assert _only(receipt, subscriptions, "Charged").amount == 5 * UNIT_PRICE
    assert _balances(token, merchant, customer) == [
        before[0] + 5 * UNIT_PRICE,
        before[1] - 5 * UNIT_PRICE,
    ]
    assert subscriptions.getSubscription(metered_sid).state == STATE_CANCELED


def test_duplicate_record_is_reported_as_such_even_above_the_cap(
    subscriptions: Any, merchant: Any, metered_sid: int
) -> None:
    subscriptions.reportUsage(metered_sid, 1, _record("once"), sender=merchant)
    with _reverts(
        subscriptions.DuplicateUsageRecord, merchant=merchant.address, usageRecordId=_record("once")
    ):
        subscriptions.reportUsage(metered_sid, 10**9, _record("once"), sender=merchant)


def test_usage_refused_after_immediate_cancel(
    subscriptions: Any, merchant: Any, customer: Any, metered_sid: int
) -> None:
    subscriptions.cancel(metered_sid, False, sender=customer)

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.reportUsage(metered_sid, 5, _record("late"), sender=merchant)


def test_usage_refused_while_final_usage_charge_is_pending(
    subscriptions: Any, merchant: Any, customer: Any, metered_sid: int
) -> None:
    subscriptions.reportUsage(metered_sid, 150, _record("before-cancel"), sender=merchant)
    subscriptions.cancel(metered_sid, False, sender=customer)

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.reportUsage(metered_sid, 5, _record("after-cancel"), sender=merchant)
    assert subscriptions.getSubscription(metered_sid).usageUnits == 150


def test_usage_refused_after_lapse(
    subscriptions: Any, merchant: Any, keeper: Any, chain: Any, metered_sid: int
) -> None:
    due = int(subscriptions.paidThrough(metered_sid))
    chain.pending_timestamp = due + GRACE

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=LAPSED):
        subscriptions.reportUsage(metered_sid, 5, _record("lapsed-1"), sender=merchant)

    subscriptions.finalizeLapse(metered_sid, sender=keeper)
    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=LAPSED):
        subscriptions.reportUsage(metered_sid, 5, _record("lapsed-2"), sender=merchant)


def test_usage_refused_while_paused(
    subscriptions: Any, owner: Any, merchant: Any, metered_sid: int
) -> None:
    subscriptions.pause(sender=owner)
    with _reverts(subscriptions.EnforcedPause):
        subscriptions.reportUsage(metered_sid, 5, _record("paused"), sender=merchant)


# ---------------------------------------------------------------- billing


def test_charge_bills_base_price_plus_overage_and_resets_usage(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    units = INCLUDED + 37
    overage = 37 * UNIT_PRICE
    subscriptions.reportUsage(metered_sid, units, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))
    assert subscriptions.amountDue(metered_sid) == PRICE + overage
    assert subscriptions.nextChargeAt(metered_sid) == due
    before = _balances(token, merchant, customer, keeper)

    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert receipt.return_value is True
    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.subscriptionId, usage.units, usage.overageAmount) == (metered_sid, units, overage)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.subscriptionId, charged.periodStart, charged.paidThrough) == (
        metered_sid,
        due,
        due + PERIOD,
    )
    assert (charged.amount, charged.fee) == (PRICE + overage, 0)
    assert _balances(token, merchant, customer, keeper) == [
        before[0] + PRICE + overage,
        before[1] - PRICE - overage,
        before[2],
    ]
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.usageUnits == 0
    assert stored.flags == FLAG_METERED
    assert stored.paidThrough == due + PERIOD
    assert subscriptions.amountDue(metered_sid) == PRICE

    # The next period without usage: the base price only, and no UsageCharged.
    chain.pending_timestamp = due + PERIOD
    receipt = subscriptions.charge(metered_sid, sender=keeper)
    assert _event_names(receipt, subscriptions) == ["Charged"]
    assert _only(receipt, subscriptions, "Charged").amount == PRICE


def test_usage_within_included_units_costs_nothing_extra_but_is_reported(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED, _record("all-included"), sender=merchant)
    assert subscriptions.amountDue(metered_sid) == PRICE
    due = int(subscriptions.paidThrough(metered_sid))
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.units, usage.overageAmount) == (INCLUDED, 0)
    assert _only(receipt, subscriptions, "Charged").amount == PRICE
    assert _balances(token, merchant, customer) == [before[0] + PRICE, before[1] - PRICE]
    assert subscriptions.getSubscription(metered_sid).usageUnits == 0


def test_usage_is_billed_per_period(
    subscriptions: Any, merchant: Any, keeper: Any, chain: Any, metered_sid: int
) -> None:
    due = int(subscriptions.paidThrough(metered_sid))
    subscriptions.reportUsage(metered_sid, INCLUDED + 10, _record("p1"), sender=merchant)
    chain.pending_timestamp = due
    subscriptions.charge(metered_sid, sender=keeper)

    # The included units count afresh in the new period.
    subscriptions.reportUsage(metered_sid, INCLUDED + 4, _record("p2"), sender=merchant)
    chain.pending_timestamp = due + PERIOD
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.units, usage.overageAmount) == (INCLUDED + 4, 4 * UNIT_PRICE)
    assert _only(receipt, subscriptions, "Charged").amount == PRICE + 4 * UNIT_PRICE


def test_zero_base_price_plan_bills_overage_only(
    subscriptions: Any,
    create_metered_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_metered_plan(price=0, included=0)
    token.approve(subscriptions, METERED_ALLOWANCE, sender=customer)
    sub_id = subscriptions.subscribe(plan, UNIT, sender=customer).return_value
    due = int(subscriptions.paidThrough(sub_id))
    subscriptions.reportUsage(sub_id, 12, _record("pay-as-you-go"), sender=merchant)
    assert subscriptions.amountDue(sub_id) == 12 * UNIT_PRICE
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due
    receipt = subscriptions.charge(sub_id, sender=keeper)

    assert _only(receipt, subscriptions, "UsageCharged").overageAmount == 12 * UNIT_PRICE
    assert _only(receipt, subscriptions, "Charged").amount == 12 * UNIT_PRICE
    assert _balances(token, merchant, customer) == [
        before[0] + 12 * UNIT_PRICE,
        before[1] - 12 * UNIT_PRICE,
    ]

    # A period without usage costs nothing and moves no tokens, but is still booked.
    chain.pending_timestamp = due + PERIOD
    receipt = subscriptions.charge(sub_id, sender=keeper)
    assert receipt.return_value is True
    assert _event_names(receipt, subscriptions) == ["Charged"]
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount) == (
        due + PERIOD,
        due + 2 * PERIOD,
        0,
    )
    assert _logs(receipt, token, "Transfer") == []


def test_failed_charge_keeps_usage_for_the_retry(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    units = INCLUDED + 20
    amount = PRICE + 20 * UNIT_PRICE
    subscriptions.reportUsage(metered_sid, units, _record("u"), sender=merchant)
    token.approve(subscriptions, 0, sender=customer)
    due = int(subscriptions.paidThrough(metered_sid))
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert receipt.return_value is False
    assert _event_names(receipt, subscriptions) == ["ChargeFailed"]
    failed = _only(receipt, subscriptions, "ChargeFailed")
    assert (failed.subscriptionId, failed.dueAt, failed.amount, failed.reason) == (
        metered_sid,
        due,
        amount,
        INSUFFICIENT_ALLOWANCE,
    )
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.usageUnits == units
    assert stored.flags == FLAG_METERED | FLAG_PAST_DUE
    assert subscriptions.statusOf(metered_sid) == PAST_DUE
    assert subscriptions.amountDue(metered_sid) == amount
    assert _balances(token, merchant, customer) == before

    token.approve(subscriptions, amount, sender=customer)
    chain.pending_timestamp = due + GRACE - 1
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert receipt.return_value is True
    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.units, usage.overageAmount) == (units, 20 * UNIT_PRICE)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount) == (
        due,
        due + PERIOD,
        amount,
    )
    assert _balances(token, merchant, customer) == [before[0] + amount, before[1] - amount]
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.usageUnits == 0
    assert stored.flags == FLAG_METERED


def test_usage_during_trial_is_billed_at_the_first_charge(
    subscriptions: Any,
    create_metered_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_metered_plan(trial=TRIAL)
    token.approve(subscriptions, METERED_ALLOWANCE, sender=customer)
    receipt = subscriptions.subscribe(plan, METERED_CAP, sender=customer)
    sub_id = receipt.return_value
    trial_end = receipt.timestamp + TRIAL
    assert _event_names(receipt, subscriptions) == ["Subscribed"]
    assert subscriptions.getSubscription(sub_id).flags == FLAG_IN_TRIAL | FLAG_METERED

    receipt = subscriptions.reportUsage(sub_id, INCLUDED + 8, _record("trial"), sender=merchant)
    assert _only(receipt, subscriptions, "UsageReported").billableAt == trial_end
    assert subscriptions.statusOf(sub_id) == TRIALING
    assert subscriptions.amountDue(sub_id) == PRICE + 8 * UNIT_PRICE
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = trial_end
    receipt = subscriptions.charge(sub_id, sender=keeper)

    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.units, usage.overageAmount) == (INCLUDED + 8, 8 * UNIT_PRICE)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount) == (
        trial_end,
        trial_end + PERIOD,
        PRICE + 8 * UNIT_PRICE,
    )
    assert _balances(token, merchant, customer) == [
        before[0] + PRICE + 8 * UNIT_PRICE,
        before[1] - PRICE - 8 * UNIT_PRICE,
    ]
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.flags, stored.usageUnits) == (FLAG_METERED, 0)
    assert subscriptions.statusOf(sub_id) == ACTIVE


def test_charge_batch_mixes_metered_and_flat_subscriptions(
    subscriptions: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_plan: int,
    flat_plan: int,
) -> None:
    with_usage = subscribe(metered_plan, cap=METERED_CAP, allowance=METERED_ALLOWANCE)
    without_usage = subscribe(
        metered_plan, subscriber=stranger, cap=METERED_CAP, allowance=METERED_ALLOWANCE
    )
    flat = subscribe(flat_plan, cap=PRICE, allowance=METERED_ALLOWANCE)
    subscriptions.reportUsage(with_usage, INCLUDED + 3, _record("batch"), sender=merchant)
    now = max(int(subscriptions.paidThrough(s)) for s in (with_usage, without_usage, flat))
    before = _balances(token, merchant, customer, stranger)

    chain.pending_timestamp = now
    receipt = subscriptions.chargeBatch([with_usage, without_usage, flat], sender=keeper)

    assert receipt.return_value == 3
    assert _event_names(receipt, subscriptions) == [
        "UsageCharged",
        "Charged",
        "Charged",
        "Charged",
    ]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.subscriptionId, usage.units, usage.overageAmount) == (
        with_usage,
        INCLUDED + 3,
        3 * UNIT_PRICE,
    )
    charged = _logs(receipt, subscriptions, "Charged")
    assert [(log.subscriptionId, log.amount, log.fee) for log in charged] == [
        (with_usage, PRICE + 3 * UNIT_PRICE, 0),
        (without_usage, PRICE, 0),
        (flat, PRICE, 0),
    ]
    assert _balances(token, merchant, customer, stranger) == [
        before[0] + 3 * PRICE + 3 * UNIT_PRICE,
        before[1] - 2 * PRICE - 3 * UNIT_PRICE,
        before[2] - PRICE,
    ]
    assert subscriptions.getSubscription(with_usage).usageUnits == 0


def test_platform_fee_applies_to_base_price_and_overage(
    subscriptions_with_fee: Any,
    create_metered_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    manager = subscriptions_with_fee
    plan = create_metered_plan(manager)
    sub_id = subscribe(plan, manager=manager, cap=METERED_CAP, allowance=METERED_ALLOWANCE)
    units = INCLUDED + 33
    amount = PRICE + 33 * UNIT_PRICE
    fee = _fee(amount)
    assert fee == 291_250  # 11.65 TUSD * 2.5 %, more than the fee of the base price alone
    manager.reportUsage(sub_id, units, _record("fee"), sender=merchant)
    due = int(manager.paidThrough(sub_id))
    before = _balances(token, merchant, customer, fee_recipient)

    chain.pending_timestamp = due
    receipt = manager.charge(sub_id, sender=keeper)

    charged = _only(receipt, manager, "Charged")
    assert (charged.amount, charged.fee) == (amount, fee)
    assert _only(receipt, manager, "UsageCharged").overageAmount == 33 * UNIT_PRICE
    assert _balances(token, merchant, customer, fee_recipient) == [
        before[0] + amount - fee,
        before[1] - amount,
        before[2] + fee,
    ]
    assert token.balanceOf(manager) == 0


# -------------------------------------------------------- cancel with usage


def test_immediate_cancel_with_usage_ends_with_a_final_usage_charge(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    units = INCLUDED + 40
    overage = 40 * UNIT_PRICE
    subscriptions.reportUsage(metered_sid, units, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))
    now = due - 10 * DAY

    chain.pending_timestamp = now
    receipt = subscriptions.cancel(metered_sid, False, sender=customer)

    assert _event_names(receipt, subscriptions) == ["SubscriptionCanceled"]
    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.subscriptionId, log.canceledBy, log.effectiveAt, log.atPeriodEnd) == (
        metered_sid,
        customer.address,
        now,
        False,
    )
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.paidThrough == now
    assert stored.state == STATE_LIVE  # until the final charge
    assert stored.usageUnits == units
    assert stored.flags & FLAG_CANCEL_AT_PERIOD_END
    assert subscriptions.statusOf(metered_sid) == CANCELED
    assert subscriptions.isActive(metered_sid) is False
    assert subscriptions.nextChargeAt(metered_sid) == now
    assert subscriptions.amountDue(metered_sid) == overage  # no base price
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = now + HOUR
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert receipt.return_value is True
    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    usage = _only(receipt, subscriptions, "UsageCharged")
    assert (usage.units, usage.overageAmount) == (units, overage)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount, charged.fee) == (
        now,
        now,
        overage,
        0,
    )
    assert _balances(token, merchant, customer) == [before[0] + overage, before[1] - overage]
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.state == STATE_CANCELED
    assert stored.usageUnits == 0
    assert stored.paidThrough == now
    assert subscriptions.statusOf(metered_sid) == CANCELED
    assert subscriptions.nextChargeAt(metered_sid) == 0
    assert subscriptions.amountDue(metered_sid) == 0

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.charge(metered_sid, sender=keeper)
    chain.pending_timestamp = due
    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.charge(metered_sid, sender=keeper)
    assert _balances(token, merchant, customer) == [before[0] + overage, before[1] - overage]


def test_cancel_at_period_end_with_usage_charges_usage_only_at_period_end(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    units = INCLUDED + 25
    overage = 25 * UNIT_PRICE
    subscriptions.reportUsage(metered_sid, units, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))

    receipt = subscriptions.cancel(metered_sid, True, sender=customer)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.effectiveAt, log.atPeriodEnd) == (due, True)
    assert subscriptions.statusOf(metered_sid) == ACTIVE
    assert subscriptions.paidThrough(metered_sid) == due
    assert subscriptions.nextChargeAt(metered_sid) == due
    assert subscriptions.amountDue(metered_sid) == overage

    chain.pending_timestamp = due - 1
    with _reverts(
        subscriptions.CancelAlreadyScheduled, subscriptionId=metered_sid, effectiveAt=due
    ):
        subscriptions.charge(metered_sid, sender=keeper)

    before = _balances(token, merchant, customer)
    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert _event_names(receipt, subscriptions) == ["UsageCharged", "Charged"]
    assert _only(receipt, subscriptions, "UsageCharged").overageAmount == overage
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount) == (due, due, overage)
    assert _balances(token, merchant, customer) == [before[0] + overage, before[1] - overage]
    stored = subscriptions.getSubscription(metered_sid)
    assert (stored.state, stored.paidThrough, stored.usageUnits) == (STATE_CANCELED, due, 0)
    assert subscriptions.nextChargeAt(metered_sid) == 0

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.charge(metered_sid, sender=keeper)


def test_charge_batch_collects_the_final_usage_charge(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED + 2, _record("u"), sender=merchant)
    subscriptions.cancel(metered_sid, False, sender=customer)
    before = _balances(token, merchant, customer)

    receipt = subscriptions.chargeBatch([metered_sid], sender=keeper)

    assert receipt.return_value == 1
    assert _only(receipt, subscriptions, "Charged").amount == 2 * UNIT_PRICE
    assert _balances(token, merchant, customer) == [
        before[0] + 2 * UNIT_PRICE,
        before[1] - 2 * UNIT_PRICE,
    ]
    receipt = subscriptions.chargeBatch([metered_sid], sender=keeper)
    assert receipt.return_value == 0
    assert _only(receipt, subscriptions, "ChargeSkipped").reason == SKIP_NOT_LIVE


def test_immediate_cancel_without_usage_ends_at_once(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    due = int(subscriptions.paidThrough(metered_sid))
    now = due - DAY
    chain.pending_timestamp = now

    receipt = subscriptions.cancel(metered_sid, False, sender=customer)

    assert _only(receipt, subscriptions, "SubscriptionCanceled").effectiveAt == now
    stored = subscriptions.getSubscription(metered_sid)
    assert stored.state == STATE_CANCELED
    assert stored.paidThrough == due
    assert subscriptions.nextChargeAt(metered_sid) == 0
    assert subscriptions.amountDue(metered_sid) == 0
    before = _balances(token, merchant, customer)

    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.charge(metered_sid, sender=keeper)
    chain.pending_timestamp = due
    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=metered_sid, status=CANCELED):
        subscriptions.charge(metered_sid, sender=keeper)
    assert _balances(token, merchant, customer) == before


def test_final_usage_charge_after_its_grace_reverts_grace_period_expired(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_sid: int,
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED + 5, _record("u"), sender=merchant)
    now = int(subscriptions.paidThrough(metered_sid)) - 10 * DAY
    chain.pending_timestamp = now
    subscriptions.cancel(metered_sid, False, sender=customer)
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = now + GRACE
    with _reverts(
        subscriptions.GracePeriodExpired, subscriptionId=metered_sid, graceEndedAt=now + GRACE
    ):
        subscriptions.charge(metered_sid, sender=keeper)

    receipt = subscriptions.chargeBatch([metered_sid], sender=keeper)
    assert receipt.return_value == 0
    assert _only(receipt, subscriptions, "ChargeSkipped").reason == SKIP_GRACE_EXPIRED
    assert subscriptions.nextChargeAt(metered_sid) == 0
    assert subscriptions.amountDue(metered_sid) == 0
    assert _balances(token, merchant, customer) == before


def test_final_usage_charge_on_its_last_grace_second_is_collected(
    subscriptions: Any, merchant: Any, customer: Any, keeper: Any, chain: Any, metered_sid: int
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED + 5, _record("u"), sender=merchant)
    now = int(subscriptions.paidThrough(metered_sid)) - 10 * DAY
    chain.pending_timestamp = now
    subscriptions.cancel(metered_sid, False, sender=customer)

    chain.pending_timestamp = now + GRACE - 1
    receipt = subscriptions.charge(metered_sid, sender=keeper)

    assert _only(receipt, subscriptions, "Charged").amount == 5 * UNIT_PRICE
    assert subscriptions.getSubscription(metered_sid).state == STATE_CANCELED


# ------------------------------------------------------------- changePlan


@pytest.mark.parametrize("who", ["merchant", "stranger"])
def test_only_subscriber_changes_plan(
    subscriptions: Any, premium_plan: int, flat_plan: int, flat_sid: int, request: Any, who: str
) -> None:
    caller = request.getfixturevalue(who)
    with _reverts(subscriptions.NotSubscriber, subscriptionId=flat_sid, caller=caller.address):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=caller)
    assert subscriptions.getSubscription(flat_sid).planId == flat_plan


def test_change_to_the_same_plan_is_not_allowed(
    subscriptions: Any, customer: Any, flat_plan: int, flat_sid: int
) -> None:
    with _reverts(subscriptions.PlanChangeNotAllowed, fromPlanId=flat_plan, toPlanId=flat_plan):
        subscriptions.changePlan(flat_sid, flat_plan, PRICE, sender=customer)


def test_change_to_another_merchants_plan_is_not_allowed(
    subscriptions: Any,
    create_plan: Any,
    customer: Any,
    stranger: Any,
    flat_plan: int,
    flat_sid: int,
) -> None:
    foreign = create_plan(sender=stranger)  # same token and terms, another merchant
    with _reverts(subscriptions.PlanChangeNotAllowed, fromPlanId=flat_plan, toPlanId=foreign):
        subscriptions.changePlan(flat_sid, foreign, PRICE, sender=customer)


def test_change_to_a_plan_in_another_token_is_not_allowed(
    subscriptions: Any,
    create_plan: Any,
    customer: Any,
    other_token: Any,
    flat_plan: int,
    flat_sid: int,
) -> None:
    other = create_plan(plan_token=other_token)  # same merchant and terms, another token
    other_token.approve(subscriptions, 10 * PRICE, sender=customer)
    with _reverts(subscriptions.PlanChangeNotAllowed, fromPlanId=flat_plan, toPlanId=other):
        subscriptions.changePlan(flat_sid, other, PRICE, sender=customer)


def test_change_to_a_deactivated_plan_reverts_plan_inactive(
    subscriptions: Any, merchant: Any, customer: Any, premium_plan: int, flat_sid: int
) -> None:
    subscriptions.deactivatePlan(premium_plan, sender=merchant)
    with _reverts(subscriptions.PlanInactive, planId=premium_plan):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)


@pytest.mark.parametrize("unknown", [0, 999])
def test_change_to_an_unknown_plan_reverts_plan_not_found(
    subscriptions: Any, customer: Any, flat_sid: int, unknown: int
) -> None:
    with _reverts(subscriptions.PlanNotFound, planId=unknown):
        subscriptions.changePlan(flat_sid, unknown, 3 * PRICE, sender=customer)


def test_change_of_an_unknown_subscription_reverts_not_found(
    subscriptions: Any, customer: Any, premium_plan: int
) -> None:
    with _reverts(subscriptions.SubscriptionNotFound, subscriptionId=999):
        subscriptions.changePlan(999, premium_plan, 3 * PRICE, sender=customer)


@pytest.mark.parametrize("cap", [0, 3 * PRICE - 1, MAX_UINT96 + 1])
def test_change_with_cap_below_new_price_reverts(
    subscriptions: Any, customer: Any, premium_plan: int, flat_sid: int, cap: int
) -> None:
    with _reverts(subscriptions.CapBelowPrice, maxAmountPerPeriod=cap, price=3 * PRICE):
        subscriptions.changePlan(flat_sid, premium_plan, cap, sender=customer)


def test_change_once_the_period_is_due_reverts(
    subscriptions: Any, customer: Any, keeper: Any, chain: Any, premium_plan: int, flat_sid: int
) -> None:
    due = int(subscriptions.paidThrough(flat_sid))

    chain.pending_timestamp = due
    with _reverts(subscriptions.PlanChangeWhileDue, subscriptionId=flat_sid, dueAt=due):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)
    chain.pending_timestamp = due + DAY
    with _reverts(subscriptions.PlanChangeWhileDue, subscriptionId=flat_sid, dueAt=due):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)

    # Once the due period is paid, the change goes through.
    subscriptions.charge(flat_sid, sender=keeper)
    receipt = subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)
    assert _only(receipt, subscriptions, "PlanChanged").toPlanId == premium_plan
    assert subscriptions.paidThrough(flat_sid) == due + PERIOD


def test_change_while_past_due_reverts(
    subscriptions: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    premium_plan: int,
    flat_sid: int,
) -> None:
    due = int(subscriptions.paidThrough(flat_sid))
    token.approve(subscriptions, 0, sender=customer)
    chain.pending_timestamp = due
    subscriptions.charge(flat_sid, sender=keeper)

    chain.pending_timestamp = due + HOUR
    with _reverts(subscriptions.PlanChangeWhileDue, subscriptionId=flat_sid, dueAt=due):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)


def test_change_after_cancel_is_scheduled_reverts(
    subscriptions: Any, customer: Any, premium_plan: int, flat_sid: int
) -> None:
    due = int(subscriptions.paidThrough(flat_sid))
    subscriptions.cancel(flat_sid, True, sender=customer)
    with _reverts(subscriptions.CancelAlreadyScheduled, subscriptionId=flat_sid, effectiveAt=due):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)


def test_change_after_cancel_reverts_subscription_not_live(
    subscriptions: Any, customer: Any, premium_plan: int, flat_sid: int
) -> None:
    subscriptions.cancel(flat_sid, False, sender=customer)
    with _reverts(subscriptions.SubscriptionNotLive, subscriptionId=flat_sid, status=CANCELED):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)


def test_change_while_paused_reverts(
    subscriptions: Any, owner: Any, customer: Any, premium_plan: int, flat_sid: int
) -> None:
    subscriptions.pause(sender=owner)
    with _reverts(subscriptions.EnforcedPause):
        subscriptions.changePlan(flat_sid, premium_plan, 3 * PRICE, sender=customer)


def test_upgrade_charges_the_prorated_difference_and_keeps_the_anchor(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
    premium_plan: int,
    flat_sid: int,
) -> None:
    due = int(subscriptions.paidThrough(flat_sid))
    remaining = 20 * DAY
    charged = _value(3 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD)
    assert charged == 13_333_334  # 20.000000 - 6.666666
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(flat_sid, premium_plan, 4 * PRICE, sender=customer)

    assert _event_names(receipt, subscriptions) == ["PlanChanged"]
    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.subscriptionId, log.fromPlanId, log.toPlanId) == (
        flat_sid,
        flat_plan,
        premium_plan,
    )
    assert (log.charged, log.fee, log.credit, log.maxAmountPerPeriod) == (
        charged,
        0,
        0,
        4 * PRICE,
    )
    assert _balances(token, merchant, customer) == [before[0] + charged, before[1] - charged]
    stored = subscriptions.getSubscription(flat_sid)
    assert stored.planId == premium_plan
    assert stored.paidThrough == due
    assert stored.maxAmountPerPeriod == 4 * PRICE
    assert (stored.credit, stored.usageUnits, stored.flags) == (0, 0, 0)
    assert subscriptions.amountDue(flat_sid) == 3 * PRICE
    assert subscriptions.statusOf(flat_sid) == ACTIVE

    chain.pending_timestamp = due
    receipt = subscriptions.charge(flat_sid, sender=keeper)
    assert _event_names(receipt, subscriptions) == ["Charged"]
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (due, due + PERIOD, 3 * PRICE)
    assert _balances(token, merchant, customer) == [
        before[0] + charged + 3 * PRICE,
        before[1] - charged - 3 * PRICE,
    ]


def test_downgrade_leaves_credit_applied_at_the_next_charge(
    subscriptions: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
    premium_plan: int,
) -> None:
    sub_id = subscribe(premium_plan, cap=3 * PRICE, allowance=METERED_ALLOWANCE)
    due = int(subscriptions.paidThrough(sub_id))
    remaining = 5 * DAY
    credit = _value(3 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD)
    assert credit == 3_333_334  # 5.000000 - 1.666666, less than the new price
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(sub_id, flat_plan, PRICE, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.fromPlanId, log.toPlanId) == (premium_plan, flat_plan)
    assert (log.charged, log.fee, log.credit, log.maxAmountPerPeriod) == (0, 0, credit, PRICE)
    assert _logs(receipt, token, "Transfer") == []
    assert _balances(token, merchant, customer) == before
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.planId, stored.paidThrough, stored.maxAmountPerPeriod) == (
        flat_plan,
        due,
        PRICE,
    )
    assert stored.credit == credit
    assert stored.flags == FLAG_HAS_CREDIT
    assert subscriptions.amountDue(sub_id) == PRICE - credit

    chain.pending_timestamp = due
    receipt = subscriptions.charge(sub_id, sender=keeper)

    assert _event_names(receipt, subscriptions) == ["CreditApplied", "Charged"]
    applied = _only(receipt, subscriptions, "CreditApplied")
    assert (applied.subscriptionId, applied.amount, applied.remainingCredit) == (sub_id, credit, 0)
    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough, charged.amount, charged.fee) == (
        due,
        due + PERIOD,
        PRICE - credit,
        0,
    )
    assert _balances(token, merchant, customer) == [
        before[0] + PRICE - credit,
        before[1] - PRICE + credit,
    ]
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.credit, stored.flags) == (0, 0)
    assert subscriptions.amountDue(sub_id) == PRICE

    chain.pending_timestamp = due + PERIOD
    receipt = subscriptions.charge(sub_id, sender=keeper)
    assert _event_names(receipt, subscriptions) == ["Charged"]
    assert _only(receipt, subscriptions, "Charged").amount == PRICE


def test_large_credit_is_spread_over_several_charges(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
) -> None:
    expensive = create_plan(price=5 * PRICE)
    sub_id = subscribe(expensive, cap=5 * PRICE, allowance=METERED_ALLOWANCE)
    due = int(subscriptions.paidThrough(sub_id))
    remaining = 29 * DAY
    credit = _value(5 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD)
    assert credit == 38_666_667  # 48.333333 - 9.666666: three periods and a bit

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(sub_id, flat_plan, PRICE, sender=customer)
    assert _only(receipt, subscriptions, "PlanChanged").credit == credit
    assert subscriptions.amountDue(sub_id) == 0
    before = _balances(token, merchant, customer)

    left = credit
    for period in range(3):
        chain.pending_timestamp = due + period * PERIOD
        receipt = subscriptions.charge(sub_id, sender=keeper)

        left -= PRICE
        assert receipt.return_value is True
        assert _event_names(receipt, subscriptions) == ["CreditApplied", "Charged"]
        applied = _only(receipt, subscriptions, "CreditApplied")
        assert (applied.amount, applied.remainingCredit) == (PRICE, left)
        charged = _only(receipt, subscriptions, "Charged")
        assert (charged.periodStart, charged.paidThrough, charged.amount, charged.fee) == (
            due + period * PERIOD,
            due + (period + 1) * PERIOD,
            0,
            0,
        )
        assert _logs(receipt, token, "Transfer") == []
        stored = subscriptions.getSubscription(sub_id)
        assert (stored.credit, stored.flags) == (left, FLAG_HAS_CREDIT)
        assert _balances(token, merchant, customer) == before

    assert left == 8_666_667
    assert subscriptions.amountDue(sub_id) == PRICE - left
    chain.pending_timestamp = due + 3 * PERIOD
    receipt = subscriptions.charge(sub_id, sender=keeper)

    applied = _only(receipt, subscriptions, "CreditApplied")
    assert (applied.amount, applied.remainingCredit) == (left, 0)
    assert _only(receipt, subscriptions, "Charged").amount == PRICE - left
    assert _balances(token, merchant, customer) == [
        before[0] + PRICE - left,
        before[1] - PRICE + left,
    ]
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.credit, stored.flags) == (0, 0)


def test_credit_counts_towards_later_plan_changes(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    chain: Any,
    flat_plan: int,
    premium_plan: int,
) -> None:
    top = create_plan(price=10 * PRICE)
    sub_id = subscribe(premium_plan, cap=3 * PRICE, allowance=METERED_ALLOWANCE)
    due = int(subscriptions.paidThrough(sub_id))
    before = _balances(token, merchant, customer)

    # Down from premium with 20 days left: 20.000000 - 6.666666 of credit.
    chain.pending_timestamp = due - 20 * DAY
    subscriptions.changePlan(sub_id, flat_plan, PRICE, sender=customer)
    credit = 13_333_334
    assert subscriptions.getSubscription(sub_id).credit == credit

    # Back up with 10 days left: owes 10.000000, has the credit plus 3.333333 of the plan.
    chain.pending_timestamp = due - 10 * DAY
    receipt = subscriptions.changePlan(sub_id, premium_plan, 3 * PRICE, sender=customer)

    credit = credit + _value(PRICE, 10 * DAY, PERIOD) - _value(3 * PRICE, 10 * DAY, PERIOD)
    assert credit == 6_666_667
    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.fee, log.credit) == (0, 0, credit)
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.planId, stored.credit, stored.flags) == (premium_plan, credit, FLAG_HAS_CREDIT)

    # Up again with 5 days left: owes 16.666666, has the credit plus 5.000000 of the plan.
    chain.pending_timestamp = due - 5 * DAY
    receipt = subscriptions.changePlan(sub_id, top, 10 * PRICE, sender=customer)

    charged = _value(10 * PRICE, 5 * DAY, PERIOD) - _value(3 * PRICE, 5 * DAY, PERIOD) - credit
    assert charged == 4_999_999
    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.fee, log.credit) == (charged, 0, 0)
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.planId, stored.credit, stored.flags) == (top, 0, 0)
    assert _balances(token, merchant, customer) == [before[0] + charged, before[1] - charged]


def test_change_to_a_shorter_period_prorates_by_time(
    subscriptions: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
    flat_sid: int,
) -> None:
    weekly = create_plan(price=4 * UNIT, period=WEEK)
    due = int(subscriptions.paidThrough(flat_sid))
    remaining = 20 * DAY
    # 20 days of a 4 TUSD weekly plan cost more than 20 days of a 10 TUSD monthly plan.
    charged = _value(4 * UNIT, remaining, WEEK) - _value(PRICE, remaining, PERIOD)
    assert charged == 11_428_571 - 6_666_666
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(flat_sid, weekly, 2 * PRICE, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.fee, log.credit) == (charged, 0, 0)
    assert _balances(token, merchant, customer) == [before[0] + charged, before[1] - charged]
    assert subscriptions.paidThrough(flat_sid) == due

    # The anchor is kept; from it on, the schedule follows the new period.
    chain.pending_timestamp = due
    receipt = subscriptions.charge(flat_sid, sender=keeper)
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (due, due + WEEK, 4 * UNIT)
    chain.pending_timestamp = due + WEEK
    receipt = subscriptions.charge(flat_sid, sender=keeper)
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough) == (due + WEEK, due + 2 * WEEK)


def test_change_to_a_longer_period_with_higher_price_may_leave_credit(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
) -> None:
    weekly = create_plan(price=5 * UNIT, period=WEEK)
    sub_id = subscribe(weekly, cap=PRICE, allowance=METERED_ALLOWANCE)
    due = int(subscriptions.paidThrough(sub_id))
    remaining = 3 * DAY
    # A higher price, but cheaper per second: 3 days weekly = 2.142857, monthly = 1.000000.
    credit = _value(5 * UNIT, remaining, WEEK) - _value(PRICE, remaining, PERIOD)
    assert credit == 1_142_857
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(sub_id, flat_plan, PRICE, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.credit) == (0, credit)
    assert _balances(token, merchant, customer) == before

    chain.pending_timestamp = due
    receipt = subscriptions.charge(sub_id, sender=keeper)
    assert _only(receipt, subscriptions, "CreditApplied").amount == credit
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (due, due + PERIOD, PRICE - credit)


@pytest.mark.parametrize("target", ["premium", "cheap"])
def test_change_during_trial_charges_nothing_and_keeps_the_trial_end(
    subscriptions: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    target: str,
) -> None:
    trial_plan = create_plan(trial=TRIAL)
    new_price = 3 * PRICE if target == "premium" else PRICE // 2
    new_plan = create_plan(price=new_price)
    token.approve(subscriptions, METERED_ALLOWANCE, sender=customer)
    receipt = subscriptions.subscribe(trial_plan, PRICE, sender=customer)
    sub_id = receipt.return_value
    trial_end = receipt.timestamp + TRIAL
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = trial_end - 5 * DAY
    receipt = subscriptions.changePlan(sub_id, new_plan, new_price, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.fee, log.credit, log.maxAmountPerPeriod) == (0, 0, 0, new_price)
    assert _logs(receipt, token, "Transfer") == []
    stored = subscriptions.getSubscription(sub_id)
    assert (stored.planId, stored.paidThrough, stored.credit, stored.flags) == (
        new_plan,
        trial_end,
        0,
        FLAG_IN_TRIAL,
    )
    assert subscriptions.statusOf(sub_id) == TRIALING
    assert subscriptions.amountDue(sub_id) == new_price

    chain.pending_timestamp = trial_end
    receipt = subscriptions.charge(sub_id, sender=keeper)
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (
        trial_end,
        trial_end + PERIOD,
        new_price,
    )
    assert _balances(token, merchant, customer) == [
        before[0] + new_price,
        before[1] - new_price,
    ]


def test_change_from_metered_plan_adds_unbilled_usage_to_the_charge(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    metered_plan: int,
    premium_plan: int,
    metered_sid: int,
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED + 60, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))
    remaining = 15 * DAY
    overage = 60 * UNIT_PRICE
    charged = _value(3 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD) + overage
    assert charged == 10_000_000 + 3_000_000
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(metered_sid, premium_plan, 3 * PRICE, sender=customer)

    assert _event_names(receipt, subscriptions) == ["PlanChanged"]
    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.fromPlanId, log.toPlanId) == (metered_plan, premium_plan)
    assert (log.charged, log.fee, log.credit, log.maxAmountPerPeriod) == (
        charged,
        0,
        0,
        3 * PRICE,
    )
    assert _balances(token, merchant, customer) == [before[0] + charged, before[1] - charged]
    stored = subscriptions.getSubscription(metered_sid)
    assert (stored.usageUnits, stored.flags, stored.credit) == (0, 0, 0)
    assert subscriptions.amountDue(metered_sid) == 3 * PRICE

    # The usage was billed once: the next charge is the new base price only.
    chain.pending_timestamp = due
    receipt = subscriptions.charge(metered_sid, sender=keeper)
    assert _event_names(receipt, subscriptions) == ["Charged"]
    assert _only(receipt, subscriptions, "Charged").amount == 3 * PRICE
    with _reverts(subscriptions.PlanNotMetered, planId=premium_plan):
        subscriptions.reportUsage(metered_sid, 1, _record("after"), sender=merchant)


def test_downgrade_with_usage_nets_the_usage_against_the_credit(
    subscriptions: Any,
    create_metered_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    chain: Any,
    metered_plan: int,
    metered_sid: int,
) -> None:
    cheaper = create_metered_plan(price=PRICE // 2, unit_price=2 * UNIT_PRICE, included=0)
    subscriptions.reportUsage(metered_sid, INCLUDED + 10, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))
    remaining = 24 * DAY
    credit = (
        _value(PRICE, remaining, PERIOD)
        - _value(PRICE // 2, remaining, PERIOD)
        - 10 * UNIT_PRICE  # the old plan's overage, at the old plan's terms
    )
    assert credit == 4_000_000 - 500_000
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    receipt = subscriptions.changePlan(metered_sid, cheaper, PRICE, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.fromPlanId, log.toPlanId, log.charged, log.credit) == (
        metered_plan,
        cheaper,
        0,
        credit,
    )
    assert _balances(token, merchant, customer) == before
    stored = subscriptions.getSubscription(metered_sid)
    assert (stored.usageUnits, stored.credit) == (0, credit)
    assert stored.flags == FLAG_METERED | FLAG_HAS_CREDIT
    # New usage is priced at the new plan's terms.
    subscriptions.reportUsage(metered_sid, 3, _record("after"), sender=merchant)
    assert subscriptions.amountDue(metered_sid) == PRICE // 2 + 3 * 2 * UNIT_PRICE - credit


def test_change_from_flat_to_metered_plan_enables_usage_reports(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
    chain: Any,
    flat_plan: int,
    metered_plan: int,
    flat_sid: int,
) -> None:
    with _reverts(subscriptions.PlanNotMetered, planId=flat_plan):
        subscriptions.reportUsage(flat_sid, 1, _record("before"), sender=merchant)
    due = int(subscriptions.paidThrough(flat_sid))

    receipt = subscriptions.changePlan(flat_sid, metered_plan, METERED_CAP, sender=customer)

    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.credit) == (0, 0)  # same base price and period
    assert subscriptions.getSubscription(flat_sid).flags == FLAG_METERED
    subscriptions.reportUsage(flat_sid, INCLUDED + 1, _record("after"), sender=merchant)
    chain.pending_timestamp = due
    receipt = subscriptions.charge(flat_sid, sender=keeper)
    assert _only(receipt, subscriptions, "Charged").amount == PRICE + UNIT_PRICE


def test_change_charging_more_than_the_new_cap_reverts_charge_above_cap(
    subscriptions: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    chain: Any,
    flat_plan: int,
    flat_sid: int,
) -> None:
    weekly = create_plan(price=4 * UNIT, period=WEEK)
    due = int(subscriptions.paidThrough(flat_sid))
    remaining = 25 * DAY
    # 25 days of the weekly plan, less those of the monthly one, exceed one weekly period.
    charged = _value(4 * UNIT, remaining, WEEK) - _value(PRICE, remaining, PERIOD)
    assert charged == 14_285_714 - 8_333_333
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    with _reverts(subscriptions.ChargeAboveCap, amount=charged, maxAmountPerPeriod=4 * UNIT):
        subscriptions.changePlan(flat_sid, weekly, 4 * UNIT, sender=customer)

    assert _balances(token, merchant, customer) == before
    stored = subscriptions.getSubscription(flat_sid)
    assert (stored.planId, stored.maxAmountPerPeriod) == (flat_plan, 3 * PRICE)

    # With a cap that covers it, the same change goes through.
    later = remaining - HOUR
    charged = _value(4 * UNIT, later, WEEK) - _value(PRICE, later, PERIOD)
    chain.pending_timestamp = due - later
    receipt = subscriptions.changePlan(flat_sid, weekly, charged, sender=customer)
    log = _only(receipt, subscriptions, "PlanChanged")
    assert (log.charged, log.maxAmountPerPeriod) == (charged, charged)
    assert _balances(token, merchant, customer) == [before[0] + charged, before[1] - charged]


def test_unbilled_usage_counts_towards_the_cap_of_a_change(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    chain: Any,
    metered_plan: int,
    premium_plan: int,
    metered_sid: int,
) -> None:
    subscriptions.reportUsage(metered_sid, INCLUDED + 500, _record("u"), sender=merchant)
    due = int(subscriptions.paidThrough(metered_sid))
    remaining = 15 * DAY
    charged = (
        _value(3 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD) + 500 * UNIT_PRICE
    )
    assert charged == 35 * UNIT
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - remaining
    with _reverts(subscriptions.ChargeAboveCap, amount=charged, maxAmountPerPeriod=3 * PRICE):
        subscriptions.changePlan(metered_sid, premium_plan, 3 * PRICE, sender=customer)

    assert _balances(token, merchant, customer) == before
    stored = subscriptions.getSubscription(metered_sid)
    assert (stored.planId, stored.usageUnits) == (metered_plan, INCLUDED + 500)


def test_upgrade_with_platform_fee_takes_the_fee_from_the_charged_amount(
    subscriptions_with_fee: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
    chain: Any,
) -> None:
    manager = subscriptions_with_fee
    basic = create_plan(manager)
    premium = create_plan(manager, price=3 * PRICE)
    sub_id = subscribe(basic, manager=manager, cap=PRICE, allowance=METERED_ALLOWANCE)
    due = int(manager.paidThrough(sub_id))
    remaining = 20 * DAY
    charged = _value(3 * PRICE, remaining, PERIOD) - _value(PRICE, remaining, PERIOD)
    fee = _fee(charged)
    assert fee == 333_333
    before = _balances(token, merchant, customer, fee_recipient)

    chain.pending_timestamp = due - remaining
    receipt = manager.changePlan(sub_id, premium, 3 * PRICE, sender=customer)

    log = _only(receipt, manager, "PlanChanged")
    assert (log.charged, log.fee, log.credit, log.maxAmountPerPeriod) == (
        charged,
        fee,
        0,
        3 * PRICE,
    )
    assert _balances(token, merchant, customer, fee_recipient) == [
        before[0] + charged - fee,
        before[1] - charged,
        before[2] + fee,
    ]
    assert token.balanceOf(manager) == 0
