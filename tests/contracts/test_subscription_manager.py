"""Tests of SubscriptionManager on a real Anvil chain.

Every test starts from the fixtures' snapshot (Ape reverts the chain after each test). Times
that matter are pinned with `chain.pending_timestamp = t` before the transaction they apply
to; views read the latest block, so `_travel` mines a block at the wanted time first.
"""

from __future__ import annotations

from typing import Any

import ape
import pytest

from tests.chain_fixtures import FEE_BPS, FUNDS, GRACE, PERIOD, PRICE, TRIAL, UNIT
from tests.contracts.helpers import balances as _balances
from tests.contracts.helpers import event_names as _event_names
from tests.contracts.helpers import logs_of as _logs
from tests.contracts.helpers import only as _only
from tests.contracts.helpers import travel as _travel

HOUR = 3600
DAY = 24 * HOUR
MAX_UINT96 = 2**96 - 1
MIN_PERIOD = HOUR
MIN_GRACE_PERIOD = HOUR
MAX_PERIOD = 3650 * DAY
MAX_FEE_BPS = 1_000
ZERO_ADDRESS = "0x" + "00" * 20
NATIVE_TOKEN = "0xEeeeeEeeeEeEeeEeEeEeeEEEeeeeEeeeeeeeEEeE"
FEE = PRICE * FEE_BPS // 10_000

# SubscriptionStatus
NONE, TRIALING, ACTIVE, PAST_DUE, CANCELED, LAPSED = range(6)
# SubscriptionState (stored)
STATE_NONE, STATE_LIVE, STATE_CANCELED, STATE_LAPSED = range(4)
# ChargeFailureReason
INSUFFICIENT_ALLOWANCE, INSUFFICIENT_BALANCE, TRANSFER_REJECTED = range(3)
# ChargeSkipReason
SKIP_NOT_FOUND, SKIP_NOT_DUE, SKIP_NOT_LIVE, SKIP_GRACE_EXPIRED = range(4)
# Subscription.flags
FLAG_CANCEL_AT_PERIOD_END, FLAG_PAST_DUE, FLAG_IN_TRIAL = 1, 2, 4


# ---------------------------------------------------------------- helpers


def _drain(token: Any, wallet: Any, keep: int, sink: Any) -> None:
    """Leaves `wallet` with exactly `keep` tokens, sending the rest to `sink`."""
    token.transfer(sink, int(token.balanceOf(wallet)) - keep, sender=wallet)


@pytest.fixture
def plan_id(create_plan: Any) -> int:
    return int(create_plan())


@pytest.fixture
def sid(subscribe: Any, plan_id: int) -> int:
    """A subscription of the customer to the default plan, first period already paid."""
    return int(subscribe(plan_id))


@pytest.fixture
def past_due_sid(
    subscriptions: Any, customer: Any, token: Any, keeper: Any, chain: Any, sid: int
) -> int:
    """The default subscription after its second period failed for lack of allowance."""
    token.approve(subscriptions, 0, sender=customer)
    chain.pending_timestamp = int(subscriptions.paidThrough(sid))
    subscriptions.charge(sid, sender=keeper)
    assert subscriptions.statusOf(sid) == PAST_DUE
    return sid


# ------------------------------------------------------------- createPlan


def test_create_plan_emits_event_and_stores_immutable_terms(
    subscriptions: Any, merchant: Any, token: Any
) -> None:
    receipt = subscriptions.createPlan(token, PRICE, PERIOD, TRIAL, GRACE, sender=merchant)

    assert receipt.return_value == 1
    assert _event_names(receipt, subscriptions) == ["PlanCreated"]
    log = _only(receipt, subscriptions, "PlanCreated")
    assert log.planId == 1
    assert log.merchant == merchant.address
    assert log.token == token.address
    assert log.price == PRICE
    assert log.period == PERIOD
    assert log.trialPeriod == TRIAL
    assert log.gracePeriod == GRACE
    assert log.unitPrice == 0
    assert log.includedUnits == 0

    plan = subscriptions.getPlan(1)
    assert plan.merchant == merchant.address
    assert plan.token == token.address
    assert plan.price == PRICE
    assert plan.period == PERIOD
    assert plan.trialPeriod == TRIAL
    assert plan.gracePeriod == GRACE
    assert plan.unitPrice == 0
    assert plan.includedUnits == 0
    assert plan.active is True
    assert subscriptions.planCount() == 1


def test_create_plan_assigns_sequential_ids_per_merchant(
    subscriptions: Any, create_plan: Any, merchant: Any, stranger: Any
) -> None:
    first = create_plan()
    second = create_plan(price=2 * PRICE, sender=stranger)

    assert (first, second) == (1, 2)
    assert subscriptions.getPlan(first).merchant == merchant.address
    assert subscriptions.getPlan(second).merchant == stranger.address
    assert subscriptions.getPlan(second).price == 2 * PRICE
    assert subscriptions.planCount() == 2


def test_limits_are_exposed_as_constants(subscriptions: Any) -> None:
    assert subscriptions.MIN_PERIOD() == MIN_PERIOD
    assert subscriptions.MIN_GRACE_PERIOD() == MIN_GRACE_PERIOD
    assert subscriptions.MAX_PERIOD() == MAX_PERIOD
    assert subscriptions.MAX_FEE_BPS() == MAX_FEE_BPS


@pytest.mark.parametrize("bad_token", [ZERO_ADDRESS, NATIVE_TOKEN])
def test_create_plan_rejects_zero_or_native_marker_token(
    subscriptions: Any, merchant: Any, bad_token: str
) -> None:
    with ape.reverts(subscriptions.InvalidToken, token=bad_token):
        subscriptions.createPlan(bad_token, PRICE, PERIOD, 0, GRACE, sender=merchant)
    assert subscriptions.planCount() == 0


def test_create_plan_rejects_eoa_token(subscriptions: Any, merchant: Any, stranger: Any) -> None:
    with ape.reverts(subscriptions.InvalidToken, token=stranger.address):
        subscriptions.createPlan(stranger, PRICE, PERIOD, 0, GRACE, sender=merchant)


@pytest.mark.parametrize("price", [0, MAX_UINT96 + 1, 2**256 - 1])
def test_create_plan_rejects_zero_or_oversized_price(
    subscriptions: Any, merchant: Any, token: Any, price: int
) -> None:
    with ape.reverts(subscriptions.InvalidPrice, price=price, max=MAX_UINT96):
        subscriptions.createPlan(token, price, PERIOD, 0, GRACE, sender=merchant)


def test_create_plan_accepts_largest_price(subscriptions: Any, create_plan: Any) -> None:
    plan = create_plan(price=MAX_UINT96)
    assert subscriptions.getPlan(plan).price == MAX_UINT96


@pytest.mark.parametrize("period", [0, MIN_PERIOD - 1, MAX_PERIOD + 1])
def test_create_plan_rejects_period_out_of_range(
    subscriptions: Any, merchant: Any, token: Any, period: int
) -> None:
    with ape.reverts(subscriptions.InvalidPeriod, period=period, min=MIN_PERIOD, max=MAX_PERIOD):
        subscriptions.createPlan(token, PRICE, period, 0, GRACE, sender=merchant)


@pytest.mark.parametrize("period", [MIN_PERIOD, MAX_PERIOD])
def test_create_plan_accepts_period_bounds(
    subscriptions: Any, create_plan: Any, period: int
) -> None:
    plan = create_plan(period=period)
    assert subscriptions.getPlan(plan).period == period


def test_create_plan_rejects_trial_longer_than_max_period(
    subscriptions: Any, merchant: Any, token: Any
) -> None:
    trial = MAX_PERIOD + 1
    with ape.reverts(subscriptions.InvalidPeriod, period=trial, min=0, max=MAX_PERIOD):
        subscriptions.createPlan(token, PRICE, PERIOD, trial, GRACE, sender=merchant)


def test_create_plan_accepts_longest_trial(subscriptions: Any, create_plan: Any) -> None:
    plan = create_plan(trial=MAX_PERIOD)
    assert subscriptions.getPlan(plan).trialPeriod == MAX_PERIOD


@pytest.mark.parametrize("grace", [0, MIN_GRACE_PERIOD - 1, MAX_PERIOD + 1])
def test_create_plan_rejects_grace_out_of_range(
    subscriptions: Any, merchant: Any, token: Any, grace: int
) -> None:
    with ape.reverts(
        subscriptions.InvalidPeriod, period=grace, min=MIN_GRACE_PERIOD, max=MAX_PERIOD
    ):
        subscriptions.createPlan(token, PRICE, PERIOD, 0, grace, sender=merchant)


def test_create_plan_accepts_shortest_grace(subscriptions: Any, create_plan: Any) -> None:
    plan = create_plan(grace=MIN_GRACE_PERIOD)
    assert subscriptions.getPlan(plan).gracePeriod == MIN_GRACE_PERIOD


# ---------------------------------------------------------- deactivatePlan


def test_merchant_deactivates_plan(subscriptions: Any, merchant: Any, plan_id: int) -> None:
    receipt = subscriptions.deactivatePlan(plan_id, sender=merchant)

    assert _event_names(receipt, subscriptions) == ["PlanDeactivated"]
    assert _only(receipt, subscriptions, "PlanDeactivated").planId == plan_id
    plan = subscriptions.getPlan(plan_id)
    assert plan.active is False
    assert plan.price == PRICE  # terms untouched


def test_approved_operator_deactivates_plan(
    subscriptions: Any, merchant: Any, operator: Any, plan_id: int
) -> None:
    receipt = subscriptions.setOperator(operator, True, sender=merchant)
    log = _only(receipt, subscriptions, "OperatorSet")
    assert (log.merchant, log.operator, log.approved) == (merchant.address, operator.address, True)
    assert subscriptions.isOperator(merchant, operator) is True

    receipt = subscriptions.deactivatePlan(plan_id, sender=operator)

    assert _only(receipt, subscriptions, "PlanDeactivated").planId == plan_id
    assert subscriptions.getPlan(plan_id).active is False


def test_stranger_cannot_deactivate_plan(
    subscriptions: Any, merchant: Any, stranger: Any, plan_id: int
) -> None:
    with ape.reverts(
        subscriptions.NotMerchantOrOperator, merchant=merchant.address, caller=stranger.address
    ):
        subscriptions.deactivatePlan(plan_id, sender=stranger)
    assert subscriptions.getPlan(plan_id).active is True


def test_revoked_operator_cannot_deactivate_plan(
    subscriptions: Any, merchant: Any, operator: Any, plan_id: int
) -> None:
    subscriptions.setOperator(operator, True, sender=merchant)
    subscriptions.setOperator(operator, False, sender=merchant)
    assert subscriptions.isOperator(merchant, operator) is False

    with ape.reverts(
        subscriptions.NotMerchantOrOperator, merchant=merchant.address, caller=operator.address
    ):
        subscriptions.deactivatePlan(plan_id, sender=operator)


def test_operator_of_another_merchant_cannot_deactivate_plan(
    subscriptions: Any, merchant: Any, stranger: Any, operator: Any, plan_id: int
) -> None:
    subscriptions.setOperator(operator, True, sender=stranger)

    with ape.reverts(
        subscriptions.NotMerchantOrOperator, merchant=merchant.address, caller=operator.address
    ):
        subscriptions.deactivatePlan(plan_id, sender=operator)


def test_deactivating_plan_twice_reverts_plan_inactive(
    subscriptions: Any, merchant: Any, plan_id: int
) -> None:
    subscriptions.deactivatePlan(plan_id, sender=merchant)
    with ape.reverts(subscriptions.PlanInactive, planId=plan_id):
        subscriptions.deactivatePlan(plan_id, sender=merchant)


@pytest.mark.parametrize("unknown", [0, 99])
def test_deactivating_unknown_plan_reverts_plan_not_found(
    subscriptions: Any, merchant: Any, unknown: int
) -> None:
    with ape.reverts(subscriptions.PlanNotFound, planId=unknown):
        subscriptions.deactivatePlan(unknown, sender=merchant)


def test_deactivated_plan_refuses_new_subscribers_but_keeps_charging_existing(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    plan_id: int,
    sid: int,
) -> None:
    subscriptions.deactivatePlan(plan_id, sender=merchant)

    token.approve(subscriptions, PRICE, sender=stranger)
    with ape.reverts(subscriptions.PlanInactive, planId=plan_id):
        subscriptions.subscribe(plan_id, PRICE, sender=stranger)
    assert subscriptions.subscriptionCount() == 1

    due = int(subscriptions.paidThrough(sid))
    before = _balances(token, merchant, customer)
    chain.pending_timestamp = due
    receipt = subscriptions.charge(sid, sender=keeper)

    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (due, due + PERIOD, PRICE)
    assert _balances(token, merchant, customer) == [before[0] + PRICE, before[1] - PRICE]
    assert subscriptions.statusOf(sid) == ACTIVE


# --------------------------------------------------------------- subscribe


def test_subscribe_without_trial_charges_first_period_at_once(
    subscriptions: Any, merchant: Any, customer: Any, token: Any, plan_id: int
) -> None:
    token.approve(subscriptions, 3 * PRICE, sender=customer)
    merchant_before, customer_before = _balances(token, merchant, customer)

    receipt = subscriptions.subscribe(plan_id, 2 * PRICE, sender=customer)

    start = receipt.timestamp
    assert receipt.return_value == 1
    assert _event_names(receipt, subscriptions) == ["Subscribed", "Charged"]
    subscribed = _only(receipt, subscriptions, "Subscribed")
    assert subscribed.subscriptionId == 1
    assert subscribed.planId == plan_id
    assert subscribed.subscriber == customer.address
    assert subscribed.maxAmountPerPeriod == 2 * PRICE
    assert subscribed.startedAt == start
    assert subscribed.paidThrough == start + PERIOD
    charged = _only(receipt, subscriptions, "Charged")
    assert charged.subscriptionId == 1
    assert charged.periodStart == start
    assert charged.paidThrough == start + PERIOD
    assert charged.amount == PRICE
    assert charged.fee == 0

    # The cap is above the price: only the price is taken.
    assert _balances(token, merchant, customer) == [
        merchant_before + PRICE,
        customer_before - PRICE,
    ]
    assert token.balanceOf(subscriptions) == 0
    assert token.allowance(customer, subscriptions) == 2 * PRICE

    stored = subscriptions.getSubscription(1)
    assert stored.subscriber == customer.address
    assert stored.paidThrough == start + PERIOD
    assert stored.planId == plan_id
    assert stored.state == STATE_LIVE
    assert stored.flags == 0
    assert stored.maxAmountPerPeriod == 2 * PRICE
    assert subscriptions.statusOf(1) == ACTIVE
    assert subscriptions.isActive(1) is True
    assert subscriptions.paidThrough(1) == start + PERIOD
    assert subscriptions.nextChargeAt(1) == start + PERIOD
    assert subscriptions.amountDue(1) == PRICE
    assert subscriptions.subscriptionCount() == 1


def test_subscribe_with_trial_charges_nothing_until_trial_end(
    subscriptions: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_plan(trial=TRIAL)
    token.approve(subscriptions, PRICE, sender=customer)
    merchant_before, customer_before = _balances(token, merchant, customer)

    receipt = subscriptions.subscribe(plan, PRICE, sender=customer)

    start = receipt.timestamp
    sub_id = receipt.return_value
    trial_end = start + TRIAL
    assert _event_names(receipt, subscriptions) == ["Subscribed"]
    subscribed = _only(receipt, subscriptions, "Subscribed")
    assert (subscribed.startedAt, subscribed.paidThrough) == (start, trial_end)
    assert _balances(token, merchant, customer) == [merchant_before, customer_before]
    assert subscriptions.statusOf(sub_id) == TRIALING
    assert subscriptions.isActive(sub_id) is True
    assert subscriptions.paidThrough(sub_id) == trial_end
    assert subscriptions.nextChargeAt(sub_id) == trial_end
    assert subscriptions.amountDue(sub_id) == PRICE
    assert subscriptions.getSubscription(sub_id).flags == FLAG_IN_TRIAL

    chain.pending_timestamp = trial_end - 1
    with ape.reverts(
        subscriptions.ChargeNotDue, subscriptionId=sub_id, dueAt=trial_end, now_=trial_end - 1
    ):
        subscriptions.charge(sub_id, sender=keeper)

    chain.pending_timestamp = trial_end
    receipt = subscriptions.charge(sub_id, sender=keeper)

    charged = _only(receipt, subscriptions, "Charged")
    assert (charged.periodStart, charged.paidThrough) == (trial_end, trial_end + PERIOD)
    assert (charged.amount, charged.fee) == (PRICE, 0)
    assert _balances(token, merchant, customer) == [
        merchant_before + PRICE,
        customer_before - PRICE,
    ]
    assert subscriptions.statusOf(sub_id) == ACTIVE
    assert subscriptions.getSubscription(sub_id).flags == 0
    assert subscriptions.paidThrough(sub_id) == trial_end + PERIOD


@pytest.mark.parametrize("cap", [0, PRICE - 1, MAX_UINT96 + 1])
def test_subscribe_rejects_cap_below_price_or_oversized(
    subscriptions: Any, customer: Any, token: Any, plan_id: int, cap: int
) -> None:
    token.approve(subscriptions, PRICE, sender=customer)
    with ape.reverts(subscriptions.CapBelowPrice, maxAmountPerPeriod=cap, price=PRICE):
        subscriptions.subscribe(plan_id, cap, sender=customer)
    assert subscriptions.subscriptionCount() == 0


def test_subscribe_without_allowance_reverts_payment_failed(
    subscriptions: Any, merchant: Any, customer: Any, token: Any, plan_id: int
) -> None:
    before = _balances(token, merchant, customer)
    with ape.reverts(
        subscriptions.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=0,
        balance=FUNDS,
        **{"from": customer.address},
    ):
        subscriptions.subscribe(plan_id, PRICE, sender=customer)

    assert _balances(token, merchant, customer) == before
    assert subscriptions.subscriptionCount() == 0


def test_subscribe_with_short_allowance_reverts_payment_failed(
    subscriptions: Any, customer: Any, token: Any, plan_id: int
) -> None:
    token.approve(subscriptions, PRICE - 1, sender=customer)
    with ape.reverts(
        subscriptions.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=PRICE - 1,
        balance=FUNDS,
        **{"from": customer.address},
    ):
        subscriptions.subscribe(plan_id, PRICE, sender=customer)


def test_subscribe_without_funds_reverts_payment_failed(
    subscriptions: Any, merchant: Any, customer: Any, stranger: Any, token: Any, plan_id: int
) -> None:
    _drain(token, customer, PRICE - 1, stranger)
    token.approve(subscriptions, 5 * PRICE, sender=customer)

    with ape.reverts(
        subscriptions.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=5 * PRICE,
        balance=PRICE - 1,
        **{"from": customer.address},
    ):
        subscriptions.subscribe(plan_id, PRICE, sender=customer)

    assert token.balanceOf(customer) == PRICE - 1
    assert subscriptions.subscriptionCount() == 0


@pytest.mark.parametrize("unknown", [0, 42])
def test_subscribe_to_unknown_plan_reverts_plan_not_found(
    subscriptions: Any, customer: Any, unknown: int
) -> None:
    with ape.reverts(subscriptions.PlanNotFound, planId=unknown):
        subscriptions.subscribe(unknown, PRICE, sender=customer)


# ------------------------------------------------------------------ charge


def test_charge_before_due_reverts_charge_not_due(
    subscriptions: Any, keeper: Any, chain: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    now = int(chain.blocks.head.timestamp) + 100
    chain.pending_timestamp = now

    with ape.reverts(subscriptions.ChargeNotDue, subscriptionId=sid, dueAt=due, now_=now):
        subscriptions.charge(sid, sender=keeper)

    chain.pending_timestamp = due - 1
    with ape.reverts(subscriptions.ChargeNotDue, subscriptionId=sid, dueAt=due, now_=due - 1):
        subscriptions.charge(sid, sender=keeper)
    assert subscriptions.paidThrough(sid) == due


def test_charge_exactly_at_due_time_collects_the_period(
    subscriptions: Any, merchant: Any, customer: Any, token: Any, keeper: Any, chain: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    before = _balances(token, merchant, customer, keeper)
    chain.pending_timestamp = due

    receipt = subscriptions.charge(sid, sender=keeper)

    assert receipt.timestamp == due
    assert receipt.return_value is True
    assert _event_names(receipt, subscriptions) == ["Charged"]
    log = _only(receipt, subscriptions, "Charged")
    assert log.subscriptionId == sid
    assert (log.periodStart, log.paidThrough, log.amount, log.fee) == (
        due,
        due + PERIOD,
        PRICE,
        0,
    )
    assert _balances(token, merchant, customer, keeper) == [
        before[0] + PRICE,
        before[1] - PRICE,
        before[2],
    ]
    assert subscriptions.paidThrough(sid) == due + PERIOD
    assert subscriptions.nextChargeAt(sid) == due + PERIOD
    assert subscriptions.statusOf(sid) == ACTIVE


def test_charge_never_collects_the_same_period_twice(
    subscriptions: Any, merchant: Any, token: Any, keeper: Any, stranger: Any, chain: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    chain.pending_timestamp = due
    subscriptions.charge(sid, sender=keeper)
    merchant_after_first = token.balanceOf(merchant)

    chain.pending_timestamp = due + HOUR
    with ape.reverts(
        subscriptions.ChargeNotDue, subscriptionId=sid, dueAt=due + PERIOD, now_=due + HOUR
    ):
        subscriptions.charge(sid, sender=stranger)

    assert token.balanceOf(merchant) == merchant_after_first
    assert subscriptions.paidThrough(sid) == due + PERIOD


def test_late_charge_keeps_the_fixed_schedule(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    # The grace period must exceed the delay for a 10-day-late charge to be allowed at all.
    plan = create_plan(grace=15 * DAY)
    sub_id = subscribe(plan)
    due = int(subscriptions.paidThrough(sub_id))
    merchant_before = token.balanceOf(merchant)

    chain.pending_timestamp = due + 10 * DAY
    receipt = subscriptions.charge(sub_id, sender=keeper)

    log = _only(receipt, subscriptions, "Charged")
    assert log.periodStart == due
    assert log.paidThrough == due + PERIOD
    assert subscriptions.paidThrough(sub_id) == due + PERIOD  # not now + PERIOD
    assert subscriptions.nextChargeAt(sub_id) == due + PERIOD
    assert token.balanceOf(merchant) == merchant_before + PRICE


def test_keeper_catches_up_missed_periods_within_grace_one_at_a_time(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_plan(period=DAY, grace=10 * DAY)
    sub_id = subscribe(plan)
    due = int(subscriptions.paidThrough(sub_id))
    merchant_before = token.balanceOf(merchant)
    now = due + 2 * DAY + HOUR

    for index in range(3):
        chain.pending_timestamp = now
        receipt = subscriptions.charge(sub_id, sender=keeper)
        log = _only(receipt, subscriptions, "Charged")
        assert (log.periodStart, log.paidThrough) == (due + index * DAY, due + (index + 1) * DAY)

    chain.pending_timestamp = now
    with ape.reverts(
        subscriptions.ChargeNotDue, subscriptionId=sub_id, dueAt=due + 3 * DAY, now_=now
    ):
        subscriptions.charge(sub_id, sender=keeper)
    assert token.balanceOf(merchant) == merchant_before + 3 * PRICE


def test_charge_without_allowance_fails_softly_and_marks_past_due(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    sid: int,
) -> None:
    token.approve(subscriptions, PRICE - 1, sender=customer)
    due = int(subscriptions.paidThrough(sid))
    before = _balances(token, merchant, customer)
    chain.pending_timestamp = due

    receipt = subscriptions.charge(sid, sender=keeper)  # does not revert

    assert receipt.return_value is False
    assert _event_names(receipt, subscriptions) == ["ChargeFailed"]
    log = _only(receipt, subscriptions, "ChargeFailed")
    assert log.subscriptionId == sid
    assert (log.dueAt, log.amount, log.reason) == (due, PRICE, INSUFFICIENT_ALLOWANCE)
    assert _logs(receipt, token, "Transfer") == []
    assert _balances(token, merchant, customer) == before
    assert token.allowance(customer, subscriptions) == PRICE - 1

    stored = subscriptions.getSubscription(sid)
    assert stored.flags & FLAG_PAST_DUE
    assert stored.paidThrough == due
    assert stored.state == STATE_LIVE
    assert subscriptions.statusOf(sid) == PAST_DUE
    assert subscriptions.isActive(sid) is True
    assert subscriptions.nextChargeAt(sid) == due
    assert subscriptions.amountDue(sid) == PRICE


def test_charge_without_balance_fails_softly_with_insufficient_balance(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    sid: int,
) -> None:
    _drain(token, customer, PRICE - 1, stranger)
    assert token.allowance(customer, subscriptions) >= PRICE
    due = int(subscriptions.paidThrough(sid))
    merchant_before = token.balanceOf(merchant)
    chain.pending_timestamp = due

    receipt = subscriptions.charge(sid, sender=keeper)

    assert receipt.return_value is False
    log = _only(receipt, subscriptions, "ChargeFailed")
    assert (log.subscriptionId, log.dueAt, log.amount, log.reason) == (
        sid,
        due,
        PRICE,
        INSUFFICIENT_BALANCE,
    )
    assert _logs(receipt, subscriptions, "Charged") == []
    assert _balances(token, merchant, customer) == [merchant_before, PRICE - 1]
    assert subscriptions.getSubscription(sid).flags & FLAG_PAST_DUE
    assert subscriptions.statusOf(sid) == PAST_DUE


def test_retry_within_grace_after_reapproval_clears_past_due(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    past_due_sid: int,
) -> None:
    sub_id = past_due_sid
    due = int(subscriptions.paidThrough(sub_id))
    token.approve(subscriptions, PRICE, sender=customer)
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due + GRACE - 1  # last second of the grace period
    receipt = subscriptions.charge(sub_id, sender=keeper)

    assert receipt.return_value is True
    log = _only(receipt, subscriptions, "Charged")
    assert (log.periodStart, log.paidThrough, log.amount) == (due, due + PERIOD, PRICE)
    assert _balances(token, merchant, customer) == [before[0] + PRICE, before[1] - PRICE]
    assert subscriptions.getSubscription(sub_id).flags == 0
    assert subscriptions.statusOf(sub_id) == ACTIVE
    assert subscriptions.paidThrough(sub_id) == due + PERIOD


def test_charge_after_grace_reverts_grace_period_expired(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    past_due_sid: int,
) -> None:
    sub_id = past_due_sid
    due = int(subscriptions.paidThrough(sub_id))
    token.approve(subscriptions, PRICE, sender=customer)  # paying now would be possible
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due + GRACE
    with ape.reverts(
        subscriptions.GracePeriodExpired, subscriptionId=sub_id, graceEndedAt=due + GRACE
    ):
        subscriptions.charge(sub_id, sender=keeper)

    assert _balances(token, merchant, customer) == before
    assert subscriptions.statusOf(sub_id) == LAPSED


def test_finalize_lapse_before_grace_end_reverts_grace_period_running(
    subscriptions: Any, stranger: Any, chain: Any, past_due_sid: int
) -> None:
    due = int(subscriptions.paidThrough(past_due_sid))
    chain.pending_timestamp = due + GRACE - 1
    with ape.reverts(
        subscriptions.GracePeriodRunning, subscriptionId=past_due_sid, lapsesAt=due + GRACE
    ):
        subscriptions.finalizeLapse(past_due_sid, sender=stranger)
    assert subscriptions.getSubscription(past_due_sid).state == STATE_LIVE


def test_finalize_lapse_on_paid_subscription_reverts_grace_period_running(
    subscriptions: Any, stranger: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    with ape.reverts(subscriptions.GracePeriodRunning, subscriptionId=sid, lapsesAt=due + GRACE):
        subscriptions.finalizeLapse(sid, sender=stranger)


def test_finalize_lapse_after_grace_ends_the_subscription(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    stranger: Any,
    chain: Any,
    past_due_sid: int,
) -> None:
    sub_id = past_due_sid
    due = int(subscriptions.paidThrough(sub_id))
    token.approve(subscriptions, 10 * PRICE, sender=customer)
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due + GRACE
    receipt = subscriptions.finalizeLapse(sub_id, sender=stranger)  # anyone may

    assert _event_names(receipt, subscriptions) == ["SubscriptionLapsed"]
    log = _only(receipt, subscriptions, "SubscriptionLapsed")
    assert (log.subscriptionId, log.lapsedAt) == (sub_id, due + GRACE)
    assert subscriptions.statusOf(sub_id) == LAPSED
    assert subscriptions.getSubscription(sub_id).state == STATE_LAPSED
    assert subscriptions.isActive(sub_id) is False
    assert subscriptions.nextChargeAt(sub_id) == 0
    assert subscriptions.amountDue(sub_id) == 0
    assert subscriptions.paidThrough(sub_id) == due

    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=LAPSED):
        subscriptions.charge(sub_id, sender=keeper)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=LAPSED):
        subscriptions.finalizeLapse(sub_id, sender=stranger)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=LAPSED):
        subscriptions.cancel(sub_id, False, sender=customer)
    assert _balances(token, merchant, customer) == before


def test_unpaid_subscription_lapses_without_a_failed_charge(
    subscriptions: Any, customer: Any, keeper: Any, chain: Any, sid: int
) -> None:
    """Nobody charged during the grace period: it lapses even with allowance and funds."""
    due = int(subscriptions.paidThrough(sid))
    _travel(chain, due + GRACE)

    assert subscriptions.statusOf(sid) == LAPSED
    assert subscriptions.isActive(sid) is False
    assert subscriptions.nextChargeAt(sid) == 0
    assert subscriptions.amountDue(sid) == 0
    chain.pending_timestamp = due + GRACE + 1
    with ape.reverts(
        subscriptions.GracePeriodExpired, subscriptionId=sid, graceEndedAt=due + GRACE
    ):
        subscriptions.charge(sid, sender=keeper)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=LAPSED):
        subscriptions.cancel(sid, True, sender=customer)


def test_missed_periods_beyond_grace_are_never_collected(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    past_due_sid: int,
) -> None:
    sub_id = past_due_sid
    due = int(subscriptions.paidThrough(sub_id))
    token.approve(subscriptions, 100 * PRICE, sender=customer)
    before = _balances(token, merchant, customer)

    far = due + 10 * PERIOD
    chain.pending_timestamp = far
    with ape.reverts(
        subscriptions.GracePeriodExpired, subscriptionId=sub_id, graceEndedAt=due + GRACE
    ):
        subscriptions.charge(sub_id, sender=keeper)
    receipt = subscriptions.chargeBatch([sub_id], sender=keeper)
    assert receipt.return_value == 0
    assert _only(receipt, subscriptions, "ChargeSkipped").reason == SKIP_GRACE_EXPIRED

    subscriptions.finalizeLapse(sub_id, sender=keeper)
    chain.pending_timestamp = far + 20 * PERIOD
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=LAPSED):
        subscriptions.charge(sub_id, sender=keeper)
    receipt = subscriptions.chargeBatch([sub_id, sub_id], sender=keeper)
    assert receipt.return_value == 0
    assert [log.reason for log in _logs(receipt, subscriptions, "ChargeSkipped")] == [
        SKIP_NOT_LIVE,
        SKIP_NOT_LIVE,
    ]

    assert _balances(token, merchant, customer) == before
    assert subscriptions.paidThrough(sub_id) == due


@pytest.mark.parametrize("unknown", [0, 999])
def test_unknown_subscription_reverts_subscription_not_found(
    subscriptions: Any, customer: Any, keeper: Any, merchant: Any, sid: int, unknown: int
) -> None:
    with ape.reverts(subscriptions.SubscriptionNotFound, subscriptionId=unknown):
        subscriptions.charge(unknown, sender=keeper)
    with ape.reverts(subscriptions.SubscriptionNotFound, subscriptionId=unknown):
        subscriptions.cancel(unknown, False, sender=customer)
    with ape.reverts(subscriptions.SubscriptionNotFound, subscriptionId=unknown):
        subscriptions.cancel(unknown, True, sender=merchant)
    with ape.reverts(subscriptions.SubscriptionNotFound, subscriptionId=unknown):
        subscriptions.finalizeLapse(unknown, sender=keeper)


# -------------------------------------------------------------- chargeBatch


def test_charge_batch_charges_the_due_and_passes_over_the_rest(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    payer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    monthly = create_plan()
    bimonthly = create_plan(period=2 * PERIOD)
    hourly = create_plan(period=MIN_PERIOD, grace=MIN_GRACE_PERIOD)

    good = subscribe(monthly)
    good_other = subscribe(monthly, subscriber=stranger)
    unfunded = subscribe(monthly, subscriber=payer)
    token.approve(subscriptions, 0, sender=payer)
    not_due = subscribe(bimonthly)
    canceled = subscribe(monthly)
    subscriptions.cancel(canceled, False, sender=customer)
    lapsed = subscribe(hourly)
    unknown = 999

    dues = {s: int(subscriptions.paidThrough(s)) for s in (good, good_other, unfunded)}
    now = max(dues.values()) + HOUR
    assert now < min(dues.values()) + GRACE
    assert subscriptions.paidThrough(not_due) > now
    assert subscriptions.paidThrough(lapsed) + MIN_GRACE_PERIOD <= now

    ids = [good, unfunded, not_due, canceled, lapsed, unknown, good, good_other]
    before = _balances(token, merchant, customer, stranger, payer, keeper)

    _travel(chain, now)
    assert subscriptions.chargeBatch.call(ids) == 2
    chain.pending_timestamp = now
    receipt = subscriptions.chargeBatch(ids, sender=keeper)  # does not revert

    assert receipt.return_value == 2
    assert _event_names(receipt, subscriptions) == [
        "Charged",
        "ChargeFailed",
        "ChargeSkipped",
        "ChargeSkipped",
        "ChargeSkipped",
        "ChargeSkipped",
        "ChargeSkipped",
        "Charged",
    ]
    charged = _logs(receipt, subscriptions, "Charged")
    assert [(log.subscriptionId, log.periodStart, log.paidThrough) for log in charged] == [
        (good, dues[good], dues[good] + PERIOD),
        (good_other, dues[good_other], dues[good_other] + PERIOD),
    ]
    assert all((log.amount, log.fee) == (PRICE, 0) for log in charged)
    failed = _only(receipt, subscriptions, "ChargeFailed")
    assert (failed.subscriptionId, failed.dueAt, failed.amount, failed.reason) == (
        unfunded,
        dues[unfunded],
        PRICE,
        INSUFFICIENT_ALLOWANCE,
    )
    skipped = _logs(receipt, subscriptions, "ChargeSkipped")
    assert [(log.subscriptionId, log.reason) for log in skipped] == [
        (not_due, SKIP_NOT_DUE),
        (canceled, SKIP_NOT_LIVE),
        (lapsed, SKIP_GRACE_EXPIRED),
        (unknown, SKIP_NOT_FOUND),
        (good, SKIP_NOT_DUE),  # the duplicate: already paid a moment ago
    ]

    after = _balances(token, merchant, customer, stranger, payer, keeper)
    assert after == [
        before[0] + 2 * PRICE,
        before[1] - PRICE,
        before[2] - PRICE,
        before[3],
        before[4],
    ]
    assert subscriptions.statusOf(good) == ACTIVE
    assert subscriptions.statusOf(good_other) == ACTIVE
    assert subscriptions.statusOf(unfunded) == PAST_DUE
    assert subscriptions.statusOf(not_due) == ACTIVE
    assert subscriptions.statusOf(canceled) == CANCELED
    assert subscriptions.statusOf(lapsed) == LAPSED

    # The same batch again: nothing is collected twice.
    assert subscriptions.chargeBatch.call(ids) == 0
    receipt = subscriptions.chargeBatch(ids, sender=keeper)

    assert receipt.return_value == 0
    assert _logs(receipt, subscriptions, "Charged") == []
    assert _logs(receipt, token, "Transfer") == []
    assert [log.subscriptionId for log in _logs(receipt, subscriptions, "ChargeFailed")] == [
        unfunded
    ]
    skipped = _logs(receipt, subscriptions, "ChargeSkipped")
    assert [(log.subscriptionId, log.reason) for log in skipped] == [
        (good, SKIP_NOT_DUE),
        (not_due, SKIP_NOT_DUE),
        (canceled, SKIP_NOT_LIVE),
        (lapsed, SKIP_GRACE_EXPIRED),
        (unknown, SKIP_NOT_FOUND),
        (good, SKIP_NOT_DUE),
        (good_other, SKIP_NOT_DUE),
    ]
    assert _balances(token, merchant, customer, stranger, payer, keeper) == after
    assert subscriptions.paidThrough(good) == dues[good] + PERIOD


def test_charge_batch_of_nothing_charges_nothing(subscriptions: Any, keeper: Any) -> None:
    receipt = subscriptions.chargeBatch([], sender=keeper)
    assert receipt.return_value == 0
    assert _event_names(receipt, subscriptions) == []


def test_charge_batch_skips_subscription_set_to_cancel_at_period_end(
    subscriptions: Any, merchant: Any, customer: Any, token: Any, keeper: Any, chain: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    subscriptions.cancel(sid, True, sender=customer)
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - 1
    receipt = subscriptions.chargeBatch([sid], sender=keeper)
    assert _only(receipt, subscriptions, "ChargeSkipped").reason == SKIP_NOT_LIVE

    chain.pending_timestamp = due
    receipt = subscriptions.chargeBatch([sid], sender=keeper)
    assert receipt.return_value == 0
    assert _only(receipt, subscriptions, "ChargeSkipped").reason == SKIP_NOT_LIVE
    assert _balances(token, merchant, customer) == before


# ------------------------------------------------------------------- cancel


def test_subscriber_cancels_immediately(
    subscriptions: Any, merchant: Any, customer: Any, token: Any, keeper: Any, chain: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    now = int(chain.blocks.head.timestamp) + DAY
    chain.pending_timestamp = now

    receipt = subscriptions.cancel(sid, False, sender=customer)

    assert _event_names(receipt, subscriptions) == ["SubscriptionCanceled"]
    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.subscriptionId, log.canceledBy, log.effectiveAt, log.atPeriodEnd) == (
        sid,
        customer.address,
        now,
        False,
    )
    assert subscriptions.statusOf(sid) == CANCELED
    assert subscriptions.getSubscription(sid).state == STATE_CANCELED
    assert subscriptions.isActive(sid) is False
    assert subscriptions.nextChargeAt(sid) == 0
    assert subscriptions.amountDue(sid) == 0

    before = _balances(token, merchant, customer)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.charge(sid, sender=keeper)
    chain.pending_timestamp = due
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.charge(sid, sender=keeper)
    assert _balances(token, merchant, customer) == before


def test_merchant_cancels_subscription(
    subscriptions: Any, merchant: Any, keeper: Any, chain: Any, sid: int
) -> None:
    now = int(chain.blocks.head.timestamp) + 5
    chain.pending_timestamp = now
    receipt = subscriptions.cancel(sid, False, sender=merchant)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.canceledBy, log.effectiveAt, log.atPeriodEnd) == (merchant.address, now, False)
    assert subscriptions.statusOf(sid) == CANCELED


def test_operator_cancels_subscription_for_merchant(
    subscriptions: Any, merchant: Any, operator: Any, sid: int
) -> None:
    subscriptions.setOperator(operator, True, sender=merchant)
    receipt = subscriptions.cancel(sid, True, sender=operator)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.canceledBy, log.atPeriodEnd) == (operator.address, True)
    assert log.effectiveAt == subscriptions.paidThrough(sid)


@pytest.mark.parametrize("at_period_end", [False, True])
def test_stranger_cannot_cancel(
    subscriptions: Any, stranger: Any, operator: Any, sid: int, at_period_end: bool
) -> None:
    with ape.reverts(
        subscriptions.NotSubscriberOrMerchant, subscriptionId=sid, caller=stranger.address
    ):
        subscriptions.cancel(sid, at_period_end, sender=stranger)
    # An address that is not (or no longer) the merchant's operator is a stranger too.
    with ape.reverts(
        subscriptions.NotSubscriberOrMerchant, subscriptionId=sid, caller=operator.address
    ):
        subscriptions.cancel(sid, at_period_end, sender=operator)
    assert subscriptions.statusOf(sid) == ACTIVE


def test_cancel_at_period_end_runs_out_the_paid_period(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    sid: int,
) -> None:
    due = int(subscriptions.paidThrough(sid))
    receipt = subscriptions.cancel(sid, True, sender=customer)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.subscriptionId, log.canceledBy, log.effectiveAt, log.atPeriodEnd) == (
        sid,
        customer.address,
        due,
        True,
    )
    assert subscriptions.statusOf(sid) == ACTIVE
    assert subscriptions.isActive(sid) is True
    assert subscriptions.nextChargeAt(sid) == 0
    assert subscriptions.amountDue(sid) == 0
    assert subscriptions.paidThrough(sid) == due
    assert subscriptions.getSubscription(sid).flags & FLAG_CANCEL_AT_PERIOD_END

    _travel(chain, due - 1)
    assert subscriptions.statusOf(sid) == ACTIVE
    assert subscriptions.isActive(sid) is True
    assert subscriptions.nextChargeAt(sid) == 0

    _travel(chain, due)
    assert subscriptions.statusOf(sid) == CANCELED
    assert subscriptions.isActive(sid) is False
    assert subscriptions.getSubscription(sid).state == STATE_LIVE  # derived, nothing stored


def test_cancel_at_period_end_ends_at_paid_through(
    subscriptions: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    sid: int,
) -> None:
    due = int(subscriptions.paidThrough(sid))
    subscriptions.cancel(sid, True, sender=customer)
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = due - 1
    with ape.reverts(subscriptions.CancelAlreadyScheduled, subscriptionId=sid, effectiveAt=due):
        subscriptions.charge(sid, sender=keeper)
    assert subscriptions.statusOf(sid) == ACTIVE

    chain.pending_timestamp = due
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.charge(sid, sender=keeper)
    assert subscriptions.statusOf(sid) == CANCELED
    assert subscriptions.isActive(sid) is False
    assert subscriptions.nextChargeAt(sid) == 0
    assert subscriptions.amountDue(sid) == 0

    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.cancel(sid, False, sender=customer)
    chain.pending_timestamp = due + GRACE + PERIOD
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.finalizeLapse(sid, sender=keeper)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.charge(sid, sender=keeper)
    assert _balances(token, merchant, customer) == before


def test_cancel_at_period_end_during_trial_never_charges(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_plan(trial=TRIAL)
    sub_id = subscribe(plan)
    trial_end = int(subscriptions.paidThrough(sub_id))
    receipt = subscriptions.cancel(sub_id, True, sender=customer)
    assert _only(receipt, subscriptions, "SubscriptionCanceled").effectiveAt == trial_end
    assert subscriptions.statusOf(sub_id) == TRIALING
    before = _balances(token, merchant, customer)

    chain.pending_timestamp = trial_end
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=CANCELED):
        subscriptions.charge(sub_id, sender=keeper)
    assert subscriptions.statusOf(sub_id) == CANCELED
    assert _balances(token, merchant, customer) == before


def test_cancel_at_period_end_of_past_due_subscription_ends_it_at_once(
    subscriptions: Any, customer: Any, keeper: Any, chain: Any, past_due_sid: int
) -> None:
    sub_id = past_due_sid
    due = int(subscriptions.paidThrough(sub_id))
    now = due + HOUR
    chain.pending_timestamp = now

    receipt = subscriptions.cancel(sub_id, True, sender=customer)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.subscriptionId, log.effectiveAt, log.atPeriodEnd) == (sub_id, now, False)
    assert subscriptions.statusOf(sub_id) == CANCELED
    assert subscriptions.getSubscription(sub_id).state == STATE_CANCELED
    assert subscriptions.isActive(sub_id) is False
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sub_id, status=CANCELED):
        subscriptions.charge(sub_id, sender=keeper)


def test_canceling_twice_reverts_subscription_not_live(
    subscriptions: Any, customer: Any, merchant: Any, sid: int
) -> None:
    subscriptions.cancel(sid, False, sender=customer)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.cancel(sid, False, sender=customer)
    with ape.reverts(subscriptions.SubscriptionNotLive, subscriptionId=sid, status=CANCELED):
        subscriptions.cancel(sid, True, sender=merchant)


def test_scheduling_cancel_twice_reverts_cancel_already_scheduled(
    subscriptions: Any, customer: Any, merchant: Any, sid: int
) -> None:
    due = int(subscriptions.paidThrough(sid))
    subscriptions.cancel(sid, True, sender=customer)

    with ape.reverts(subscriptions.CancelAlreadyScheduled, subscriptionId=sid, effectiveAt=due):
        subscriptions.cancel(sid, True, sender=customer)
    with ape.reverts(subscriptions.CancelAlreadyScheduled, subscriptionId=sid, effectiveAt=due):
        subscriptions.cancel(sid, True, sender=merchant)
    assert subscriptions.statusOf(sid) == ACTIVE
    assert subscriptions.getSubscription(sid).flags == FLAG_CANCEL_AT_PERIOD_END


def test_immediate_cancel_after_scheduled_cancel_stops_now(
    subscriptions: Any, customer: Any, chain: Any, sid: int
) -> None:
    subscriptions.cancel(sid, True, sender=customer)
    now = int(chain.blocks.head.timestamp) + HOUR
    chain.pending_timestamp = now

    receipt = subscriptions.cancel(sid, False, sender=customer)

    log = _only(receipt, subscriptions, "SubscriptionCanceled")
    assert (log.effectiveAt, log.atPeriodEnd) == (now, False)
    assert subscriptions.statusOf(sid) == CANCELED
    assert subscriptions.isActive(sid) is False


# -------------------------------------------------------------------- pause


def test_pause_blocks_money_flows_but_not_cancel(
    subscriptions: Any,
    owner: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    plan_id: int,
    sid: int,
) -> None:
    due = int(subscriptions.paidThrough(sid))
    other = int(
        subscriptions.subscribe(plan_id, PRICE, sender=customer).return_value
    )  # the helper's allowance covers it
    receipt = subscriptions.pause(sender=owner)
    assert _only(receipt, subscriptions, "Paused").account == owner.address
    assert subscriptions.paused() is True
    token.approve(subscriptions, PRICE, sender=stranger)
    before = _balances(token, merchant, customer, stranger)

    with ape.reverts(subscriptions.EnforcedPause):
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant)
    with ape.reverts(subscriptions.EnforcedPause):
        subscriptions.subscribe(plan_id, PRICE, sender=stranger)
    chain.pending_timestamp = due
    with ape.reverts(subscriptions.EnforcedPause):
        subscriptions.charge(sid, sender=keeper)
    with ape.reverts(subscriptions.EnforcedPause):
        subscriptions.chargeBatch([sid], sender=keeper)

    receipt = subscriptions.cancel(sid, False, sender=customer)
    assert _only(receipt, subscriptions, "SubscriptionCanceled").subscriptionId == sid
    assert subscriptions.statusOf(sid) == CANCELED
    assert _balances(token, merchant, customer, stranger) == before
    assert subscriptions.planCount() == 1
    assert subscriptions.subscriptionCount() == 2

    receipt = subscriptions.unpause(sender=owner)
    assert _only(receipt, subscriptions, "Unpaused").account == owner.address
    assert subscriptions.paused() is False
    receipt = subscriptions.chargeBatch([sid, other], sender=keeper)
    assert receipt.return_value == 1
    assert _only(receipt, subscriptions, "Charged").subscriptionId == other


@pytest.mark.parametrize("caller_name", ["stranger", "merchant"])
def test_only_owner_pauses_and_unpauses(
    subscriptions: Any, owner: Any, request: Any, caller_name: str
) -> None:
    caller = request.getfixturevalue(caller_name)
    with ape.reverts(subscriptions.OwnableUnauthorizedAccount, account=caller.address):
        subscriptions.pause(sender=caller)
    assert subscriptions.paused() is False

    subscriptions.pause(sender=owner)
    with ape.reverts(subscriptions.OwnableUnauthorizedAccount, account=caller.address):
        subscriptions.unpause(sender=caller)
    assert subscriptions.paused() is True
    assert subscriptions.owner() == owner.address


# -------------------------------------------------------------------- views


def test_views_follow_the_lifecycle(
    subscriptions: Any,
    create_plan: Any,
    subscribe: Any,
    customer: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan = create_plan(trial=TRIAL)
    sub_id = subscribe(plan)
    trial_end = int(subscriptions.paidThrough(sub_id))

    def views() -> tuple[int, bool, int, int, int]:
        return (
            subscriptions.statusOf(sub_id),
            subscriptions.isActive(sub_id),
            subscriptions.paidThrough(sub_id),
            subscriptions.nextChargeAt(sub_id),
            subscriptions.amountDue(sub_id),
        )

    assert views() == (TRIALING, True, trial_end, trial_end, PRICE)

    _travel(chain, trial_end)  # due, not yet charged
    assert views() == (PAST_DUE, True, trial_end, trial_end, PRICE)

    subscriptions.charge(sub_id, sender=keeper)
    second_due = trial_end + PERIOD
    assert views() == (ACTIVE, True, second_due, second_due, PRICE)

    token.approve(subscriptions, 0, sender=customer)
    chain.pending_timestamp = second_due
    subscriptions.charge(sub_id, sender=keeper)
    assert views() == (PAST_DUE, True, second_due, second_due, PRICE)

    _travel(chain, second_due + GRACE - 1)
    assert views() == (PAST_DUE, True, second_due, second_due, PRICE)

    _travel(chain, second_due + GRACE)  # lapsed, not yet finalized
    assert views() == (LAPSED, False, second_due, 0, 0)
    assert subscriptions.getSubscription(sub_id).state == STATE_LIVE

    subscriptions.finalizeLapse(sub_id, sender=keeper)
    assert views() == (LAPSED, False, second_due, 0, 0)
    assert subscriptions.getSubscription(sub_id).state == STATE_LAPSED


def test_views_of_unknown_ids_are_zero(subscriptions: Any, sid: int) -> None:
    unknown = sid + 1
    assert subscriptions.statusOf(unknown) == NONE
    assert subscriptions.isActive(unknown) is False
    assert subscriptions.paidThrough(unknown) == 0
    assert subscriptions.nextChargeAt(unknown) == 0
    assert subscriptions.amountDue(unknown) == 0
    stored = subscriptions.getSubscription(unknown)
    assert stored.subscriber == ZERO_ADDRESS
    assert (stored.paidThrough, stored.planId, stored.state, stored.flags) == (0, 0, 0, 0)
    plan = subscriptions.getPlan(99)
    assert plan.merchant == ZERO_ADDRESS
    assert (plan.price, plan.period, plan.active) == (0, 0, False)


def test_plan_and_subscription_counts(
    subscriptions: Any, create_plan: Any, subscribe: Any, stranger: Any
) -> None:
    assert (subscriptions.planCount(), subscriptions.subscriptionCount()) == (0, 0)
    first = create_plan()
    second = create_plan(trial=TRIAL)
    assert subscriptions.planCount() == 2

    assert subscribe(first) == 1
    assert subscribe(second, subscriber=stranger) == 2
    assert subscribe(first, subscriber=stranger) == 3
    assert subscriptions.subscriptionCount() == 3
    assert subscriptions.planCount() == 2
    assert subscriptions.getSubscription(2).planId == second
    assert subscriptions.getSubscription(2).subscriber == stranger.address


# ------------------------------------------------------------- platform fee


def test_platform_fee_view(
    subscriptions: Any, subscriptions_with_fee: Any, fee_recipient: Any
) -> None:
    assert tuple(subscriptions_with_fee.platformFee()) == (FEE_BPS, fee_recipient.address)
    assert tuple(subscriptions.platformFee()) == (0, ZERO_ADDRESS)


def test_fee_is_split_from_every_charge(
    subscriptions_with_fee: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    manager = subscriptions_with_fee
    assert FEE == 250_000
    plan = create_plan(manager)
    before = _balances(token, merchant, customer, fee_recipient)

    token.approve(manager, 2 * PRICE, sender=customer)
    receipt = manager.subscribe(plan, PRICE, sender=customer)
    sub_id = receipt.return_value

    charged = _only(receipt, manager, "Charged")
    assert (charged.amount, charged.fee) == (PRICE, FEE)
    assert _balances(token, merchant, customer, fee_recipient) == [
        before[0] + PRICE - FEE,
        before[1] - PRICE,
        before[2] + FEE,
    ]
    assert manager.amountDue(sub_id) == PRICE

    due = int(manager.paidThrough(sub_id))
    chain.pending_timestamp = due
    receipt = manager.charge(sub_id, sender=keeper)

    charged = _only(receipt, manager, "Charged")
    assert (charged.periodStart, charged.paidThrough) == (due, due + PERIOD)
    assert (charged.amount, charged.fee) == (PRICE, FEE)
    assert _balances(token, merchant, customer, fee_recipient) == [
        before[0] + 2 * (PRICE - FEE),
        before[1] - 2 * PRICE,
        before[2] + 2 * FEE,
    ]
    assert token.balanceOf(manager) == 0


def test_fee_is_rounded_down(
    subscriptions_with_fee: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    price = 39  # 39 * 250 / 10000 = 0.975 -> 0
    plan = create_plan(subscriptions_with_fee, price=price)
    odd = create_plan(subscriptions_with_fee, price=UNIT + 41)  # fee 25001.025 -> 25001
    before = _balances(token, merchant, fee_recipient)

    sub_id = subscribe(plan, manager=subscriptions_with_fee, cap=price)
    subscribe(odd, manager=subscriptions_with_fee, cap=UNIT + 41)

    assert sub_id == 1
    odd_fee = (UNIT + 41) * FEE_BPS // 10_000
    assert odd_fee == 25_001
    assert _balances(token, merchant, fee_recipient) == [
        before[0] + price + UNIT + 41 - odd_fee,
        before[1] + odd_fee,
    ]


@pytest.mark.parametrize("allowance", [0, FEE, PRICE - FEE, PRICE - 1])
def test_fee_charge_with_partial_allowance_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
    keeper: Any,
    chain: Any,
    allowance: int,
) -> None:
    manager = subscriptions_with_fee
    sub_id = subscribe(create_plan(manager), manager=manager)
    token.approve(manager, allowance, sender=customer)
    due = int(manager.paidThrough(sub_id))
    before = _balances(token, merchant, customer, fee_recipient)

    chain.pending_timestamp = due
    receipt = manager.charge(sub_id, sender=keeper)

    assert receipt.return_value is False
    failed = _only(receipt, manager, "ChargeFailed")
    assert (failed.subscriptionId, failed.dueAt, failed.amount, failed.reason) == (
        sub_id,
        due,
        PRICE,
        INSUFFICIENT_ALLOWANCE,
    )
    assert _logs(receipt, manager, "Charged") == []
    assert _logs(receipt, token, "Transfer") == []
    assert _balances(token, merchant, customer, fee_recipient) == before
    assert token.allowance(customer, manager) == allowance
    assert manager.statusOf(sub_id) == PAST_DUE


def test_fee_charge_with_partial_balance_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Any,
    subscribe: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    fee_recipient: Any,
    token: Any,
    keeper: Any,
    chain: Any,
) -> None:
    manager = subscriptions_with_fee
    sub_id = subscribe(create_plan(manager), manager=manager)
    _drain(token, customer, PRICE - FEE, stranger)  # enough for the merchant's share only
    due = int(manager.paidThrough(sub_id))
    before = _balances(token, merchant, customer, fee_recipient)

    chain.pending_timestamp = due
    receipt = manager.chargeBatch([sub_id], sender=keeper)

    assert receipt.return_value == 0
    failed = _only(receipt, manager, "ChargeFailed")
    assert (failed.amount, failed.reason) == (PRICE, INSUFFICIENT_BALANCE)
    assert _logs(receipt, token, "Transfer") == []
    assert _balances(token, merchant, customer, fee_recipient) == before
    assert manager.statusOf(sub_id) == PAST_DUE


def test_fee_subscribe_with_partial_allowance_reverts_and_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    manager = subscriptions_with_fee
    plan = create_plan(manager)
    token.approve(manager, PRICE - FEE, sender=customer)  # merchant's share, not the fee
    before = _balances(token, merchant, customer, fee_recipient)

    # The error reports the whole amount and the allowance and balance as they were before
    # any transfer, not the state between the merchant's and the fee recipient's transfer.
    with ape.reverts(
        manager.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=PRICE - FEE,
        balance=FUNDS,
        **{"from": customer.address},
    ):
        manager.subscribe(plan, PRICE, sender=customer)

    assert _balances(token, merchant, customer, fee_recipient) == before
    assert manager.subscriptionCount() == 0


def test_fee_subscribe_with_partial_balance_reverts_and_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    manager = subscriptions_with_fee
    plan = create_plan(manager)
    _drain(token, customer, PRICE - 1, stranger)
    token.approve(manager, 2 * PRICE, sender=customer)
    before = _balances(token, merchant, customer, fee_recipient)

    with ape.reverts(
        manager.PaymentFailed,
        token=token.address,
        amount=PRICE,
        allowance=2 * PRICE,
        balance=PRICE - 1,
        **{"from": customer.address},
    ):
        manager.subscribe(plan, PRICE, sender=customer)

    assert _balances(token, merchant, customer, fee_recipient) == before
    assert manager.subscriptionCount() == 0


def test_deploy_rejects_fee_above_maximum(project: Any, owner: Any, fee_recipient: Any) -> None:
    with ape.reverts(project.SubscriptionManager.FeeTooHigh, feeBps=1001, maxFeeBps=MAX_FEE_BPS):
        owner.deploy(project.SubscriptionManager, owner, fee_recipient, 1001)


def test_deploy_rejects_fee_without_recipient(project: Any, owner: Any) -> None:
    with ape.reverts(project.SubscriptionManager.FeeRecipientMissing):
        owner.deploy(project.SubscriptionManager, owner, ZERO_ADDRESS, 1)


def test_deploy_accepts_maximum_fee(project: Any, owner: Any, fee_recipient: Any) -> None:
    manager = owner.deploy(project.SubscriptionManager, owner, fee_recipient, MAX_FEE_BPS)
    assert tuple(manager.platformFee()) == (MAX_FEE_BPS, fee_recipient.address)
    assert manager.owner() == owner.address
