"""Token-compatibility tests of both billing contracts.

Every non-standard token the contracts claim to handle is exercised in both the
`SubscriptionManager` and the `InvoiceRegistry`:

* `NoReturnToken` (USDT-like, no return values): fully supported.
* `FalseReturningToken` (answers `false` instead of reverting): `false` is a failed payment.
* `FeeOnTransferToken` (burns 1% of each transfer): the contracts book what the payer is
  debited; the recipients receive what the token delivers.
* `ReentrantToken` (calls back into the contract during `transferFrom`): the re-entry is
  refused by OpenZeppelin's `ReentrancyGuardReentrantCall`, the outer operation completes once.
* `MockStablecoin` EIP-2612 permits: `subscribeWithPermit` and `payWithPermit`, including
  expired, wrongly signed and front-run permits.
* The platform-fee path with an allowance that only covers the merchant's part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_utils import keccak

from tests.chain_fixtures import FEE_BPS, FUNDS, PERIOD, PRICE, UNIT
from tests.contracts.helpers import balances as _balances

# ChargeFailureReason
INSUFFICIENT_ALLOWANCE = 0
INSUFFICIENT_BALANCE = 1

# SubscriptionStatus
SUB_ACTIVE = 2
SUB_PAST_DUE = 3

# InvoiceStatus
INV_OPEN = 1
INV_PARTIALLY_PAID = 2
INV_PAID = 3

INVOICE_AMOUNT = 100 * UNIT
PLATFORM_FEE = PRICE * FEE_BPS // 10_000
INVOICE_FEE = INVOICE_AMOUNT * FEE_BPS // 10_000
# FeeOnTransferToken burns FOT_BPS of every transfer.
FOT_BPS = 100

REENTRANCY_SELECTOR = keccak(text="ReentrancyGuardReentrantCall()")[:4]


# ------------------------------------------------------------------ helpers


def _burned(value: int) -> int:
    """What FeeOnTransferToken burns of a transfer of `value`."""
    return value * FOT_BPS // 10_000


def _delivered(value: int) -> int:
    """What FeeOnTransferToken delivers of a transfer of `value`."""
    return value - _burned(value)


def _events(receipt: Any, contract: Any, name: str) -> list[Any]:
    return [
        log
        for log in receipt.events
        if log.event_name == name and log.contract_address == contract.address
    ]


def _payment_failed(token: Any, payer: Any, amount: int, allowance: int, balance: int) -> dict:
    return {
        "token": token.address,
        "from": payer.address,
        "amount": amount,
        "allowance": allowance,
        "balance": balance,
    }


def _sign_permit(
    tkn: Any, holder: Any, spender: Any, value: int, deadline: int, chain: Any, signer: Any = None
) -> tuple[int, bytes, bytes]:
    """EIP-2612 permit of `holder` for `spender`, signed by `signer` (default: `holder`)."""
    domain = {
        "name": tkn.name(),
        "version": "1",
        "chainId": chain.chain_id,
        "verifyingContract": tkn.address,
    }
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {
        "owner": holder.address,
        "spender": spender.address,
        "value": value,
        "nonce": int(tkn.nonces(holder)),
        "deadline": deadline,
    }
    signed = Account.sign_typed_data((signer or holder).private_key, domain, types, message)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


# ----------------------------------------------------------------- fixtures


def _deploy_funded(
    contract_type: Any, owner: Any, merchant: Any, customer: Any, payer: Any, stranger: Any
) -> Any:
    deployed = owner.deploy(contract_type)
    for wallet in (merchant, customer, payer, stranger):
        deployed.mint(wallet, FUNDS, sender=owner)
    return deployed


@pytest.fixture
def no_return_token(
    project: Any, owner: Any, merchant: Any, customer: Any, payer: Any, stranger: Any
) -> Any:
    return _deploy_funded(project.NoReturnToken, owner, merchant, customer, payer, stranger)


@pytest.fixture
def false_token(
    project: Any, owner: Any, merchant: Any, customer: Any, payer: Any, stranger: Any
) -> Any:
    return _deploy_funded(project.FalseReturningToken, owner, merchant, customer, payer, stranger)


@pytest.fixture
def fot_token(
    project: Any, owner: Any, merchant: Any, customer: Any, payer: Any, stranger: Any
) -> Any:
    return _deploy_funded(project.FeeOnTransferToken, owner, merchant, customer, payer, stranger)


@pytest.fixture
def reentrant_token(
    project: Any, owner: Any, merchant: Any, customer: Any, payer: Any, stranger: Any
) -> Any:
    return _deploy_funded(project.ReentrantToken, owner, merchant, customer, payer, stranger)


def _assert_reentry_refused(tkn: Any) -> None:
    assert tkn.reentryAttempts() == 1
    assert tkn.lastReentrySucceeded() is False
    result = bytes(tkn.lastReentryResult())
    assert result[:4] == REENTRANCY_SELECTOR
    assert len(result) == 4


# ============================================================ NoReturnToken


def test_no_return_token_subscribe_collects_exact_price(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)
    sid = subscribe(plan_id, plan_token=no_return_token)

    assert _balances(no_return_token, customer, merchant, subscriptions) == [
        FUNDS - PRICE,
        FUNDS + PRICE,
        0,
    ]
    assert no_return_token.allowance(customer, subscriptions) == PRICE * 12 - PRICE
    assert subscriptions.statusOf(sid) == SUB_ACTIVE


def test_no_return_token_charge_collects_exact_price(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)
    sid = subscribe(plan_id, plan_token=no_return_token)
    due_at = subscriptions.paidThrough(sid)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.charge(sid, sender=keeper)

    charged = _events(receipt, subscriptions, "Charged")
    assert len(charged) == 1
    assert charged[0].subscriptionId == sid
    assert charged[0].amount == PRICE
    assert charged[0].fee == 0
    assert charged[0].periodStart == due_at
    assert charged[0].paidThrough == due_at + PERIOD
    assert _events(receipt, subscriptions, "ChargeFailed") == []
    assert _balances(no_return_token, customer, merchant) == [
        FUNDS - 2 * PRICE,
        FUNDS + 2 * PRICE,
    ]
    assert subscriptions.paidThrough(sid) == due_at + PERIOD
    assert subscriptions.statusOf(sid) == SUB_ACTIVE


def test_no_return_token_charge_batch_collects_every_due_subscription(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    no_return_token: Any,
    customer: Any,
    payer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)
    first = subscribe(plan_id, plan_token=no_return_token)
    second = subscribe(plan_id, subscriber=payer, plan_token=no_return_token)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.chargeBatch([first, second], sender=keeper)

    charged = _events(receipt, subscriptions, "Charged")
    assert sorted(log.subscriptionId for log in charged) == [first, second]
    assert all(log.amount == PRICE for log in charged)
    assert _events(receipt, subscriptions, "ChargeFailed") == []
    assert _events(receipt, subscriptions, "ChargeSkipped") == []
    assert _balances(no_return_token, customer, payer, merchant) == [
        FUNDS - 2 * PRICE,
        FUNDS - 2 * PRICE,
        FUNDS + 4 * PRICE,
    ]


def test_no_return_token_charge_with_short_allowance_fails_softly(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)
    # Enough for the first period only.
    sid = subscribe(plan_id, plan_token=no_return_token, allowance=PRICE)
    due_at = subscriptions.paidThrough(sid)
    chain.pending_timestamp += PERIOD
    before = _balances(no_return_token, customer, merchant)

    receipt = subscriptions.charge(sid, sender=keeper)

    failed = _events(receipt, subscriptions, "ChargeFailed")
    assert len(failed) == 1
    assert failed[0].subscriptionId == sid
    assert failed[0].dueAt == due_at
    assert failed[0].amount == PRICE
    assert failed[0].reason == INSUFFICIENT_ALLOWANCE
    assert _events(receipt, subscriptions, "Charged") == []
    assert _balances(no_return_token, customer, merchant) == before
    assert subscriptions.paidThrough(sid) == due_at
    assert subscriptions.statusOf(sid) == SUB_PAST_DUE


def test_no_return_token_charge_with_short_balance_fails_softly(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    no_return_token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)
    sid = subscribe(plan_id, plan_token=no_return_token)
    # Leave the customer with less than one price.
    no_return_token.transfer(stranger, FUNDS - PRICE - 1, sender=customer)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.charge(sid, sender=keeper)

    failed = _events(receipt, subscriptions, "ChargeFailed")
    assert len(failed) == 1
    assert failed[0].reason == INSUFFICIENT_BALANCE
    assert _balances(no_return_token, customer, merchant) == [1, FUNDS + PRICE]
    assert subscriptions.statusOf(sid) == SUB_PAST_DUE


def test_no_return_token_subscribe_without_allowance_reverts_payment_failed(
    subscriptions: Any,
    create_plan: Callable[..., int],
    no_return_token: Any,
    customer: Any,
) -> None:
    plan_id = create_plan(plan_token=no_return_token)

    with ape.reverts(subscriptions.PaymentFailed) as info:
        subscriptions.subscribe(plan_id, PRICE, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(no_return_token, customer, PRICE, 0, FUNDS)
    assert subscriptions.subscriptionCount() == 0


def test_no_return_token_invoice_pay_moves_exact_amount(
    invoices: Any,
    issue: Callable[..., bytes],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=no_return_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    no_return_token.approve(invoices, INVOICE_AMOUNT, sender=customer)

    receipt = invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    paid = _events(receipt, invoices, "InvoicePaid")
    assert len(paid) == 1
    assert paid[0].amount == INVOICE_AMOUNT
    assert paid[0].fee == 0
    assert invoices.statusOf(invoice_id) == INV_PAID
    assert invoices.amountDue(invoice_id) == 0
    assert _balances(no_return_token, customer, merchant, invoices) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + INVOICE_AMOUNT,
        0,
    ]
    assert no_return_token.allowance(customer, invoices) == 0


def test_no_return_token_invoice_pay_with_short_allowance_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=no_return_token)
    no_return_token.approve(invoices, INVOICE_AMOUNT - 1, sender=customer)

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(
        no_return_token, customer, INVOICE_AMOUNT, INVOICE_AMOUNT - 1, FUNDS
    )
    assert invoices.statusOf(invoices.invoiceIdOf(merchant, ref)) == INV_OPEN


def test_no_return_token_invoice_pay_with_short_balance_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    no_return_token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=no_return_token)
    no_return_token.transfer(stranger, FUNDS - 5 * UNIT, sender=customer)
    no_return_token.approve(invoices, INVOICE_AMOUNT, sender=customer)

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(
        no_return_token, customer, INVOICE_AMOUNT, INVOICE_AMOUNT, 5 * UNIT
    )


def test_no_return_token_refund_moves_exact_amount(
    invoices: Any,
    issue: Callable[..., bytes],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=no_return_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    no_return_token.approve(invoices, INVOICE_AMOUNT, sender=customer)
    invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)
    refund = 40 * UNIT
    no_return_token.approve(invoices, refund, sender=merchant)

    receipt = invoices.refund(invoice_id, customer, refund, sender=merchant)

    refunded = _events(receipt, invoices, "InvoiceRefunded")
    assert len(refunded) == 1
    assert refunded[0].amount == refund
    assert _balances(no_return_token, customer, merchant, invoices) == [
        FUNDS - INVOICE_AMOUNT + refund,
        FUNDS + INVOICE_AMOUNT - refund,
        0,
    ]
    assert invoices.statusOf(invoice_id) == INV_PARTIALLY_PAID
    assert invoices.amountDue(invoice_id) == refund


def test_no_return_token_fee_split_on_charge_and_invoice_pay(
    subscriptions_with_fee: Any,
    invoices_with_fee: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    issue: Callable[..., bytes],
    no_return_token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(subscriptions_with_fee, plan_token=no_return_token)
    sid = subscribe(plan_id, manager=subscriptions_with_fee, plan_token=no_return_token)
    chain.pending_timestamp += PERIOD
    receipt = subscriptions_with_fee.charge(sid, sender=keeper)
    charged = _events(receipt, subscriptions_with_fee, "Charged")
    assert [(log.amount, log.fee) for log in charged] == [(PRICE, PLATFORM_FEE)]

    ref = issue(registry=invoices_with_fee, invoice_token=no_return_token)
    no_return_token.approve(invoices_with_fee, INVOICE_AMOUNT, sender=customer)
    receipt = invoices_with_fee.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)
    paid = _events(receipt, invoices_with_fee, "InvoicePaid")
    assert [(log.amount, log.fee) for log in paid] == [(INVOICE_AMOUNT, INVOICE_FEE)]

    assert _balances(no_return_token, customer, merchant, fee_recipient) == [
        FUNDS - 2 * PRICE - INVOICE_AMOUNT,
        FUNDS + 2 * (PRICE - PLATFORM_FEE) + INVOICE_AMOUNT - INVOICE_FEE,
        2 * PLATFORM_FEE + INVOICE_FEE,
    ]


# ======================================================= FalseReturningToken


def test_false_returning_token_charge_with_short_allowance_fails_without_moving_tokens(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    false_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=false_token)
    sid = subscribe(plan_id, plan_token=false_token, allowance=PRICE)
    due_at = subscriptions.paidThrough(sid)
    chain.pending_timestamp += PERIOD
    before = _balances(false_token, customer, merchant, subscriptions)

    receipt = subscriptions.charge(sid, sender=keeper)

    failed = _events(receipt, subscriptions, "ChargeFailed")
    assert len(failed) == 1
    assert failed[0].subscriptionId == sid
    assert failed[0].dueAt == due_at
    assert failed[0].amount == PRICE
    assert failed[0].reason == INSUFFICIENT_ALLOWANCE
    assert _events(receipt, subscriptions, "Charged") == []
    assert _balances(false_token, customer, merchant, subscriptions) == before
    assert subscriptions.paidThrough(sid) == due_at
    assert subscriptions.statusOf(sid) == SUB_PAST_DUE


def test_false_returning_token_charge_with_short_balance_fails_without_moving_tokens(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    false_token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=false_token)
    sid = subscribe(plan_id, plan_token=false_token)
    false_token.transfer(stranger, FUNDS - PRICE - 1, sender=customer)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.charge(sid, sender=keeper)

    failed = _events(receipt, subscriptions, "ChargeFailed")
    assert len(failed) == 1
    assert failed[0].reason == INSUFFICIENT_BALANCE
    assert _events(receipt, subscriptions, "Charged") == []
    assert _balances(false_token, customer, merchant) == [1, FUNDS + PRICE]
    assert subscriptions.statusOf(sid) == SUB_PAST_DUE


def test_false_returning_token_charge_batch_with_short_allowance_fails_softly(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    false_token: Any,
    customer: Any,
    payer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=false_token)
    short = subscribe(plan_id, plan_token=false_token, allowance=PRICE)
    funded = subscribe(plan_id, subscriber=payer, plan_token=false_token)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.chargeBatch([short, funded], sender=keeper)

    assert [log.subscriptionId for log in _events(receipt, subscriptions, "ChargeFailed")] == [
        short
    ]
    assert [log.subscriptionId for log in _events(receipt, subscriptions, "Charged")] == [funded]
    assert _balances(false_token, customer, payer, merchant) == [
        FUNDS - PRICE,
        FUNDS - 2 * PRICE,
        FUNDS + 3 * PRICE,
    ]
    assert subscriptions.statusOf(short) == SUB_PAST_DUE
    assert subscriptions.statusOf(funded) == SUB_ACTIVE


def test_false_returning_token_subscribe_without_allowance_reverts_payment_failed(
    subscriptions: Any,
    create_plan: Callable[..., int],
    false_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    plan_id = create_plan(plan_token=false_token)

    with ape.reverts(subscriptions.PaymentFailed) as info:
        subscriptions.subscribe(plan_id, PRICE, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(false_token, customer, PRICE, 0, FUNDS)
    assert subscriptions.subscriptionCount() == 0
    assert _balances(false_token, customer, merchant) == [FUNDS, FUNDS]


def test_false_returning_token_invoice_pay_without_allowance_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    false_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=false_token)

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(
        false_token, customer, INVOICE_AMOUNT, 0, FUNDS
    )
    assert invoices.statusOf(invoices.invoiceIdOf(merchant, ref)) == INV_OPEN
    assert _balances(false_token, customer, merchant) == [FUNDS, FUNDS]


def test_false_returning_token_refund_without_merchant_allowance_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    false_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=false_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    false_token.approve(invoices, INVOICE_AMOUNT, sender=customer)
    invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.refund(invoice_id, customer, 10 * UNIT, sender=merchant)

    assert dict(info.value.inputs) == _payment_failed(
        false_token, merchant, 10 * UNIT, 0, FUNDS + INVOICE_AMOUNT
    )
    assert invoices.statusOf(invoice_id) == INV_PAID


def test_false_returning_token_with_allowance_subscribe_charge_pay_and_refund_work(
    subscriptions: Any,
    invoices: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    issue: Callable[..., bytes],
    false_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=false_token)
    sid = subscribe(plan_id, plan_token=false_token)
    chain.pending_timestamp += PERIOD
    receipt = subscriptions.charge(sid, sender=keeper)
    assert [log.amount for log in _events(receipt, subscriptions, "Charged")] == [PRICE]
    assert subscriptions.statusOf(sid) == SUB_ACTIVE

    ref = issue(invoice_token=false_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    false_token.approve(invoices, INVOICE_AMOUNT, sender=customer)
    invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)
    assert invoices.statusOf(invoice_id) == INV_PAID

    false_token.approve(invoices, INVOICE_AMOUNT, sender=merchant)
    invoices.refund(invoice_id, customer, INVOICE_AMOUNT, sender=merchant)
    assert invoices.statusOf(invoice_id) == INV_OPEN

    assert _balances(false_token, customer, merchant, subscriptions, invoices) == [
        FUNDS - 2 * PRICE,
        FUNDS + 2 * PRICE,
        0,
        0,
    ]


# ======================================================== FeeOnTransferToken


def test_fee_on_transfer_token_subscribe_books_debited_price(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    fot_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    plan_id = create_plan(plan_token=fot_token)
    supply = fot_token.totalSupply()

    sid = subscribe(plan_id, plan_token=fot_token)

    assert subscriptions.statusOf(sid) == SUB_ACTIVE
    assert _balances(fot_token, customer, merchant, subscriptions) == [
        FUNDS - PRICE,
        FUNDS + _delivered(PRICE),
        0,
    ]
    assert fot_token.totalSupply() == supply - _burned(PRICE)


def test_fee_on_transfer_token_charge_books_debited_price(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    fot_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(plan_token=fot_token)
    sid = subscribe(plan_id, plan_token=fot_token)
    due_at = subscriptions.paidThrough(sid)
    chain.pending_timestamp += PERIOD
    before_customer, before_merchant = _balances(fot_token, customer, merchant)

    receipt = subscriptions.charge(sid, sender=keeper)

    charged = _events(receipt, subscriptions, "Charged")
    assert [(log.amount, log.fee) for log in charged] == [(PRICE, 0)]
    assert _balances(fot_token, customer, merchant) == [
        before_customer - PRICE,
        before_merchant + _delivered(PRICE),
    ]
    assert _delivered(PRICE) == PRICE * 99 // 100
    assert subscriptions.paidThrough(sid) == due_at + PERIOD


def test_fee_on_transfer_token_charge_with_platform_fee_splits_debited_price(
    subscriptions_with_fee: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    fot_token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(subscriptions_with_fee, plan_token=fot_token)
    sid = subscribe(plan_id, manager=subscriptions_with_fee, plan_token=fot_token)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions_with_fee.charge(sid, sender=keeper)

    charged = _events(receipt, subscriptions_with_fee, "Charged")
    assert [(log.amount, log.fee) for log in charged] == [(PRICE, PLATFORM_FEE)]
    # Two periods paid (subscribe and charge), each debited exactly PRICE.
    assert _balances(fot_token, customer, merchant, fee_recipient) == [
        FUNDS - 2 * PRICE,
        FUNDS + 2 * _delivered(PRICE - PLATFORM_FEE),
        2 * _delivered(PLATFORM_FEE),
    ]


def test_fee_on_transfer_token_invoice_paid_in_full_while_merchant_receives_99_percent(
    invoices: Any,
    issue: Callable[..., bytes],
    fot_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=fot_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    fot_token.approve(invoices, INVOICE_AMOUNT, sender=customer)

    receipt = invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    paid = _events(receipt, invoices, "InvoicePaid")
    assert [(log.amount, log.fee) for log in paid] == [(INVOICE_AMOUNT, 0)]
    assert invoices.statusOf(invoice_id) == INV_PAID
    assert invoices.amountDue(invoice_id) == 0
    assert invoices.getInvoice(invoice_id).paid == INVOICE_AMOUNT
    assert _balances(fot_token, customer, merchant, invoices) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + 99 * UNIT,
        0,
    ]


def test_fee_on_transfer_token_invoice_installments_book_debited_amounts(
    invoices: Any,
    issue: Callable[..., bytes],
    fot_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=fot_token, allow_partial=True)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    fot_token.approve(invoices, INVOICE_AMOUNT, sender=customer)

    invoices.pay(merchant, ref, 30 * UNIT, sender=customer)
    assert invoices.statusOf(invoice_id) == INV_PARTIALLY_PAID
    assert invoices.amountDue(invoice_id) == 70 * UNIT

    invoices.pay(merchant, ref, 70 * UNIT, sender=customer)
    assert invoices.statusOf(invoice_id) == INV_PAID
    assert _balances(fot_token, customer, merchant) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + _delivered(30 * UNIT) + _delivered(70 * UNIT),
    ]


def test_fee_on_transfer_token_invoice_pay_with_platform_fee(
    invoices_with_fee: Any,
    issue: Callable[..., bytes],
    fot_token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
) -> None:
    ref = issue(registry=invoices_with_fee, invoice_token=fot_token)
    invoice_id = invoices_with_fee.invoiceIdOf(merchant, ref)
    fot_token.approve(invoices_with_fee, INVOICE_AMOUNT, sender=customer)

    receipt = invoices_with_fee.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    paid = _events(receipt, invoices_with_fee, "InvoicePaid")
    assert [(log.amount, log.fee) for log in paid] == [(INVOICE_AMOUNT, INVOICE_FEE)]
    assert invoices_with_fee.statusOf(invoice_id) == INV_PAID
    assert _balances(fot_token, customer, merchant, fee_recipient) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + _delivered(INVOICE_AMOUNT - INVOICE_FEE),
        _delivered(INVOICE_FEE),
    ]


def test_fee_on_transfer_token_refund_books_debited_amount(
    invoices: Any,
    issue: Callable[..., bytes],
    fot_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=fot_token)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    fot_token.approve(invoices, INVOICE_AMOUNT, sender=customer)
    invoices.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)
    fot_token.approve(invoices, 50 * UNIT, sender=merchant)

    receipt = invoices.refund(invoice_id, customer, 50 * UNIT, sender=merchant)

    assert [log.amount for log in _events(receipt, invoices, "InvoiceRefunded")] == [50 * UNIT]
    assert invoices.amountDue(invoice_id) == 50 * UNIT
    assert _balances(fot_token, customer, merchant) == [
        FUNDS - INVOICE_AMOUNT + _delivered(50 * UNIT),
        FUNDS + _delivered(INVOICE_AMOUNT) - 50 * UNIT,
    ]


# ============================================================ ReentrantToken


@pytest.fixture
def reentrant_subscription(
    subscriptions: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    reentrant_token: Any,
    chain: Any,
) -> tuple[int, int]:
    """A subscription paid in the reentrant token whose second period is due: (plan, id)."""
    plan_id = create_plan(plan_token=reentrant_token)
    sid = subscribe(plan_id, plan_token=reentrant_token)
    chain.pending_timestamp += PERIOD
    return plan_id, sid


def _assert_charged_once(
    receipt: Any,
    subscriptions: Any,
    tkn: Any,
    sid: int,
    due_at: int,
    customer: Any,
    merchant: Any,
) -> None:
    charged = _events(receipt, subscriptions, "Charged")
    assert [(log.subscriptionId, log.amount, log.periodStart) for log in charged] == [
        (sid, PRICE, due_at)
    ]
    assert _events(receipt, subscriptions, "ChargeFailed") == []
    assert subscriptions.paidThrough(sid) == due_at + PERIOD
    assert _balances(tkn, customer, merchant, subscriptions) == [
        FUNDS - 2 * PRICE,
        FUNDS + 2 * PRICE,
        0,
    ]


def test_reentrant_token_reentry_into_charge_same_subscription_is_refused(
    subscriptions: Any,
    reentrant_subscription: tuple[int, int],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
) -> None:
    _, sid = reentrant_subscription
    due_at = subscriptions.paidThrough(sid)
    reentrant_token.arm(subscriptions, subscriptions.charge.encode_input(sid), sender=keeper)

    receipt = subscriptions.charge(sid, sender=keeper)

    _assert_reentry_refused(reentrant_token)
    _assert_charged_once(receipt, subscriptions, reentrant_token, sid, due_at, customer, merchant)


def test_reentrant_token_reentry_into_charge_batch_is_refused(
    subscriptions: Any,
    reentrant_subscription: tuple[int, int],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
) -> None:
    _, sid = reentrant_subscription
    due_at = subscriptions.paidThrough(sid)
    reentrant_token.arm(
        subscriptions, subscriptions.chargeBatch.encode_input([sid, sid]), sender=keeper
    )

    receipt = subscriptions.charge(sid, sender=keeper)

    _assert_reentry_refused(reentrant_token)
    _assert_charged_once(receipt, subscriptions, reentrant_token, sid, due_at, customer, merchant)
    assert _events(receipt, subscriptions, "ChargeSkipped") == []


def test_reentrant_token_reentry_into_subscribe_is_refused(
    subscriptions: Any,
    reentrant_subscription: tuple[int, int],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
) -> None:
    plan_id, sid = reentrant_subscription
    due_at = subscriptions.paidThrough(sid)
    reentrant_token.arm(
        subscriptions, subscriptions.subscribe.encode_input(plan_id, PRICE), sender=keeper
    )

    receipt = subscriptions.charge(sid, sender=keeper)

    _assert_reentry_refused(reentrant_token)
    _assert_charged_once(receipt, subscriptions, reentrant_token, sid, due_at, customer, merchant)
    assert subscriptions.subscriptionCount() == 1
    assert _events(receipt, subscriptions, "Subscribed") == []


def test_reentrant_token_reentry_during_charge_batch_into_charge_is_refused(
    subscriptions: Any,
    reentrant_subscription: tuple[int, int],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
) -> None:
    _, sid = reentrant_subscription
    due_at = subscriptions.paidThrough(sid)
    reentrant_token.arm(subscriptions, subscriptions.charge.encode_input(sid), sender=keeper)

    receipt = subscriptions.chargeBatch([sid], sender=keeper)

    _assert_reentry_refused(reentrant_token)
    _assert_charged_once(receipt, subscriptions, reentrant_token, sid, due_at, customer, merchant)


def test_reentrant_token_reentry_during_subscribe_into_charge_is_refused(
    subscriptions: Any,
    reentrant_subscription: tuple[int, int],
    reentrant_token: Any,
    payer: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
) -> None:
    plan_id, due_sid = reentrant_subscription
    due_at = subscriptions.paidThrough(due_sid)
    reentrant_token.arm(subscriptions, subscriptions.charge.encode_input(due_sid), sender=keeper)
    reentrant_token.approve(subscriptions, PRICE, sender=payer)

    receipt = subscriptions.subscribe(plan_id, PRICE, sender=payer)

    _assert_reentry_refused(reentrant_token)
    charged = _events(receipt, subscriptions, "Charged")
    assert [(log.subscriptionId, log.amount) for log in charged] == [(due_sid + 1, PRICE)]
    # The due subscription was not charged by the re-entry.
    assert subscriptions.paidThrough(due_sid) == due_at
    assert _balances(reentrant_token, customer, payer, merchant) == [
        FUNDS - PRICE,
        FUNDS - PRICE,
        FUNDS + 2 * PRICE,
    ]


@pytest.fixture
def reentrant_invoices(
    issue: Callable[..., bytes], reentrant_token: Any, invoices: Any, customer: Any
) -> tuple[bytes, bytes]:
    """Two open invoices in the reentrant token, with the customer's allowance for both."""
    first = issue(invoice_token=reentrant_token)
    second = issue(invoice_token=reentrant_token)
    reentrant_token.approve(invoices, 2 * INVOICE_AMOUNT, sender=customer)
    return first, second


def test_reentrant_token_reentry_into_pay_of_another_invoice_is_refused(
    invoices: Any,
    reentrant_invoices: tuple[bytes, bytes],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    first, second = reentrant_invoices
    reentrant_token.arm(
        invoices, invoices.pay.encode_input(merchant, second, INVOICE_AMOUNT), sender=customer
    )

    receipt = invoices.pay(merchant, first, INVOICE_AMOUNT, sender=customer)

    _assert_reentry_refused(reentrant_token)
    paid = _events(receipt, invoices, "InvoicePaid")
    assert [(log.invoiceId, log.amount) for log in paid] == [
        (invoices.invoiceIdOf(merchant, first), INVOICE_AMOUNT)
    ]
    assert invoices.statusOf(invoices.invoiceIdOf(merchant, first)) == INV_PAID
    assert invoices.statusOf(invoices.invoiceIdOf(merchant, second)) == INV_OPEN
    assert _balances(reentrant_token, customer, merchant, invoices) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + INVOICE_AMOUNT,
        0,
    ]


def test_reentrant_token_reentry_into_pay_of_same_invoice_is_refused(
    invoices: Any,
    issue: Callable[..., bytes],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(invoice_token=reentrant_token, allow_partial=True)
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    reentrant_token.approve(invoices, INVOICE_AMOUNT, sender=customer)
    half = INVOICE_AMOUNT // 2
    reentrant_token.arm(invoices, invoices.pay.encode_input(merchant, ref, half), sender=customer)

    receipt = invoices.pay(merchant, ref, half, sender=customer)

    _assert_reentry_refused(reentrant_token)
    assert [log.amount for log in _events(receipt, invoices, "InvoicePaid")] == [half]
    assert invoices.statusOf(invoice_id) == INV_PARTIALLY_PAID
    assert invoices.amountDue(invoice_id) == INVOICE_AMOUNT - half
    assert _balances(reentrant_token, customer, merchant) == [FUNDS - half, FUNDS + half]


def test_reentrant_token_reentry_during_refund_is_refused(
    invoices: Any,
    reentrant_invoices: tuple[bytes, bytes],
    reentrant_token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    first, _ = reentrant_invoices
    invoice_id = invoices.invoiceIdOf(merchant, first)
    invoices.pay(merchant, first, INVOICE_AMOUNT, sender=customer)
    reentrant_token.approve(invoices, INVOICE_AMOUNT, sender=merchant)
    refund = 10 * UNIT
    reentrant_token.arm(
        invoices, invoices.refund.encode_input(invoice_id, customer, refund), sender=merchant
    )

    receipt = invoices.refund(invoice_id, customer, refund, sender=merchant)

    _assert_reentry_refused(reentrant_token)
    assert [log.amount for log in _events(receipt, invoices, "InvoiceRefunded")] == [refund]
    assert invoices.amountDue(invoice_id) == refund
    assert _balances(reentrant_token, customer, merchant) == [
        FUNDS - INVOICE_AMOUNT + refund,
        FUNDS + INVOICE_AMOUNT - refund,
    ]


# ================================================================== permits


def test_subscribe_with_permit_without_prior_approve_charges_first_period(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    merchant: Any,
    chain: Any,
) -> None:
    plan_id = create_plan()
    assert token.allowance(customer, subscriptions) == 0
    value = 12 * PRICE
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, subscriptions, value, deadline, chain)

    receipt = subscriptions.subscribeWithPermit(
        plan_id, PRICE, value, deadline, v, r, s, sender=customer
    )

    sid = int(receipt.return_value)
    assert [log.amount for log in _events(receipt, subscriptions, "Charged")] == [PRICE]
    assert subscriptions.statusOf(sid) == SUB_ACTIVE
    assert token.nonces(customer) == 1
    assert token.allowance(customer, subscriptions) == value - PRICE
    assert _balances(token, customer, merchant) == [FUNDS - PRICE, FUNDS + PRICE]


def test_subscribe_with_permit_allowance_pays_later_charges(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    merchant: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan()
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, subscriptions, 2 * PRICE, deadline, chain)
    receipt = subscriptions.subscribeWithPermit(
        plan_id, PRICE, 2 * PRICE, deadline, v, r, s, sender=customer
    )
    sid = int(receipt.return_value)
    chain.pending_timestamp += PERIOD

    receipt = subscriptions.charge(sid, sender=keeper)

    assert [log.amount for log in _events(receipt, subscriptions, "Charged")] == [PRICE]
    assert token.allowance(customer, subscriptions) == 0
    assert _balances(token, customer, merchant) == [FUNDS - 2 * PRICE, FUNDS + 2 * PRICE]


def test_pay_with_permit_pays_invoice_without_prior_approve(
    invoices: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    merchant: Any,
    chain: Any,
) -> None:
    ref = issue()
    invoice_id = invoices.invoiceIdOf(merchant, ref)
    assert token.allowance(customer, invoices) == 0
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, invoices, INVOICE_AMOUNT, deadline, chain)

    receipt = invoices.payWithPermit(
        merchant, ref, INVOICE_AMOUNT, deadline, v, r, s, sender=customer
    )

    paid = _events(receipt, invoices, "InvoicePaid")
    assert [(log.payer, log.amount) for log in paid] == [(customer.address, INVOICE_AMOUNT)]
    assert invoices.statusOf(invoice_id) == INV_PAID
    assert token.nonces(customer) == 1
    assert token.allowance(customer, invoices) == 0
    assert _balances(token, customer, merchant) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + INVOICE_AMOUNT,
    ]


def test_subscribe_with_expired_permit_reverts_payment_failed(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    chain: Any,
) -> None:
    plan_id = create_plan()
    deadline = chain.pending_timestamp - 1
    v, r, s = _sign_permit(token, customer, subscriptions, PRICE, deadline, chain)

    with ape.reverts(subscriptions.PaymentFailed) as info:
        subscriptions.subscribeWithPermit(plan_id, PRICE, PRICE, deadline, v, r, s, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, PRICE, 0, FUNDS)
    assert token.nonces(customer) == 0
    assert subscriptions.subscriptionCount() == 0


def test_subscribe_with_permit_signed_by_wrong_key_reverts_payment_failed(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    stranger: Any,
    chain: Any,
) -> None:
    plan_id = create_plan()
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, subscriptions, PRICE, deadline, chain, signer=stranger)

    with ape.reverts(subscriptions.PaymentFailed) as info:
        subscriptions.subscribeWithPermit(plan_id, PRICE, PRICE, deadline, v, r, s, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, PRICE, 0, FUNDS)
    assert token.nonces(customer) == 0


def test_subscribe_with_permit_of_another_holder_cannot_spend_their_funds(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    stranger: Any,
    chain: Any,
) -> None:
    """A permit signed by the customer, submitted by a stranger, grants nothing to the
    stranger's subscription: the permit is checked against the caller."""
    plan_id = create_plan()
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, subscriptions, PRICE, deadline, chain)

    with ape.reverts(subscriptions.PaymentFailed) as info:
        subscriptions.subscribeWithPermit(plan_id, PRICE, PRICE, deadline, v, r, s, sender=stranger)

    assert dict(info.value.inputs) == _payment_failed(token, stranger, PRICE, 0, FUNDS)
    assert token.allowance(customer, subscriptions) == 0
    assert _balances(token, customer) == [FUNDS]


def test_pay_with_expired_permit_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    merchant: Any,
    chain: Any,
) -> None:
    ref = issue()
    deadline = chain.pending_timestamp - 1
    v, r, s = _sign_permit(token, customer, invoices, INVOICE_AMOUNT, deadline, chain)

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.payWithPermit(merchant, ref, INVOICE_AMOUNT, deadline, v, r, s, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, INVOICE_AMOUNT, 0, FUNDS)
    assert invoices.statusOf(invoices.invoiceIdOf(merchant, ref)) == INV_OPEN


def test_pay_with_permit_signed_by_wrong_key_reverts_payment_failed(
    invoices: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
    chain: Any,
) -> None:
    ref = issue()
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(
        token, customer, invoices, INVOICE_AMOUNT, deadline, chain, signer=stranger
    )

    with ape.reverts(invoices.PaymentFailed) as info:
        invoices.payWithPermit(merchant, ref, INVOICE_AMOUNT, deadline, v, r, s, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, INVOICE_AMOUNT, 0, FUNDS)
    assert token.nonces(customer) == 0


def test_subscribe_with_front_run_permit_still_succeeds(
    subscriptions: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
    chain: Any,
) -> None:
    plan_id = create_plan()
    value = 12 * PRICE
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, subscriptions, value, deadline, chain)
    # Someone copies the permit from the mempool and submits it first.
    token.permit(customer, subscriptions, value, deadline, v, r, s, sender=stranger)
    assert token.allowance(customer, subscriptions) == value

    receipt = subscriptions.subscribeWithPermit(
        plan_id, PRICE, value, deadline, v, r, s, sender=customer
    )

    sid = int(receipt.return_value)
    assert [log.amount for log in _events(receipt, subscriptions, "Charged")] == [PRICE]
    assert subscriptions.statusOf(sid) == SUB_ACTIVE
    assert token.nonces(customer) == 1
    assert token.allowance(customer, subscriptions) == value - PRICE
    assert _balances(token, customer, merchant) == [FUNDS - PRICE, FUNDS + PRICE]


def test_pay_with_front_run_permit_still_succeeds(
    invoices: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    stranger: Any,
    merchant: Any,
    chain: Any,
) -> None:
    ref = issue()
    deadline = chain.pending_timestamp + 3600
    v, r, s = _sign_permit(token, customer, invoices, INVOICE_AMOUNT, deadline, chain)
    token.permit(customer, invoices, INVOICE_AMOUNT, deadline, v, r, s, sender=stranger)

    invoices.payWithPermit(merchant, ref, INVOICE_AMOUNT, deadline, v, r, s, sender=customer)

    assert invoices.statusOf(invoices.invoiceIdOf(merchant, ref)) == INV_PAID
    assert _balances(token, customer, merchant) == [
        FUNDS - INVOICE_AMOUNT,
        FUNDS + INVOICE_AMOUNT,
    ]


# ============================================= fee path with partial allowance


@pytest.mark.parametrize("token_kind", ["stablecoin", "no_return", "false_returning"])
def test_fee_charge_with_allowance_for_merchant_part_only_moves_nothing(
    token_kind: str,
    request: Any,
    subscriptions_with_fee: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
    keeper: Any,
    chain: Any,
) -> None:
    tkn = request.getfixturevalue(
        {"stablecoin": "token", "no_return": "no_return_token", "false_returning": "false_token"}[
            token_kind
        ]
    )
    plan_id = create_plan(subscriptions_with_fee, plan_token=tkn)
    # The first period, plus the merchant's part (not the fee) of the second.
    sid = subscribe(
        plan_id,
        manager=subscriptions_with_fee,
        plan_token=tkn,
        allowance=PRICE + (PRICE - PLATFORM_FEE),
    )
    due_at = subscriptions_with_fee.paidThrough(sid)
    chain.pending_timestamp += PERIOD
    before = _balances(tkn, customer, merchant, fee_recipient, subscriptions_with_fee)
    assert tkn.allowance(customer, subscriptions_with_fee) == PRICE - PLATFORM_FEE

    receipt = subscriptions_with_fee.charge(sid, sender=keeper)

    failed = _events(receipt, subscriptions_with_fee, "ChargeFailed")
    assert [(log.subscriptionId, log.amount, log.reason) for log in failed] == [
        (sid, PRICE, INSUFFICIENT_ALLOWANCE)
    ]
    assert _events(receipt, subscriptions_with_fee, "Charged") == []
    assert _balances(tkn, customer, merchant, fee_recipient, subscriptions_with_fee) == before
    assert tkn.allowance(customer, subscriptions_with_fee) == PRICE - PLATFORM_FEE
    assert subscriptions_with_fee.paidThrough(sid) == due_at
    assert subscriptions_with_fee.statusOf(sid) == SUB_PAST_DUE


def test_fee_charge_batch_with_allowance_for_merchant_part_only_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
    keeper: Any,
    chain: Any,
) -> None:
    plan_id = create_plan(subscriptions_with_fee)
    sid = subscribe(plan_id, manager=subscriptions_with_fee, allowance=2 * PRICE - PLATFORM_FEE)
    chain.pending_timestamp += PERIOD
    before = _balances(token, customer, merchant, fee_recipient)

    receipt = subscriptions_with_fee.chargeBatch([sid], sender=keeper)

    assert [log.reason for log in _events(receipt, subscriptions_with_fee, "ChargeFailed")] == [
        INSUFFICIENT_ALLOWANCE
    ]
    assert _balances(token, customer, merchant, fee_recipient) == before
    assert subscriptions_with_fee.statusOf(sid) == SUB_PAST_DUE


def test_fee_subscribe_with_allowance_for_merchant_part_only_reverts_and_moves_nothing(
    subscriptions_with_fee: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
) -> None:
    plan_id = create_plan(subscriptions_with_fee)
    token.approve(subscriptions_with_fee, PRICE - PLATFORM_FEE, sender=customer)

    with ape.reverts(subscriptions_with_fee.PaymentFailed):
        subscriptions_with_fee.subscribe(plan_id, PRICE, sender=customer)

    assert _balances(token, customer, merchant, fee_recipient) == [FUNDS, FUNDS, 0]
    assert subscriptions_with_fee.subscriptionCount() == 0


def test_fee_invoice_pay_with_allowance_for_merchant_part_only_reverts_and_moves_nothing(
    invoices_with_fee: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    merchant: Any,
    fee_recipient: Any,
) -> None:
    ref = issue(registry=invoices_with_fee)
    token.approve(invoices_with_fee, INVOICE_AMOUNT - INVOICE_FEE, sender=customer)

    with ape.reverts(invoices_with_fee.PaymentFailed):
        invoices_with_fee.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert _balances(token, customer, merchant, fee_recipient) == [FUNDS, FUNDS, 0]
    assert invoices_with_fee.statusOf(invoices_with_fee.invoiceIdOf(merchant, ref)) == INV_OPEN


# PaymentFailed on the fee path must describe the payment as a whole, as on the fee-less path:
# the full amount asked for, and the payer's allowance and balance as they are (the failed
# transaction reverts, so whatever a first transfer leg did is undone).


def test_fee_invoice_pay_without_allowance_reports_full_amount_in_payment_failed(
    invoices_with_fee: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(registry=invoices_with_fee)

    with ape.reverts(invoices_with_fee.PaymentFailed) as info:
        invoices_with_fee.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, INVOICE_AMOUNT, 0, FUNDS)


def test_fee_invoice_pay_with_merchant_part_allowance_reports_payers_real_allowance(
    invoices_with_fee: Any,
    issue: Callable[..., bytes],
    token: Any,
    customer: Any,
    merchant: Any,
) -> None:
    ref = issue(registry=invoices_with_fee)
    token.approve(invoices_with_fee, INVOICE_AMOUNT - INVOICE_FEE, sender=customer)

    with ape.reverts(invoices_with_fee.PaymentFailed) as info:
        invoices_with_fee.pay(merchant, ref, INVOICE_AMOUNT, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(
        token, customer, INVOICE_AMOUNT, INVOICE_AMOUNT - INVOICE_FEE, FUNDS
    )
    assert token.allowance(customer, invoices_with_fee) == INVOICE_AMOUNT - INVOICE_FEE


def test_fee_subscribe_without_allowance_reports_full_price_in_payment_failed(
    subscriptions_with_fee: Any,
    create_plan: Callable[..., int],
    token: Any,
    customer: Any,
) -> None:
    plan_id = create_plan(subscriptions_with_fee)

    with ape.reverts(subscriptions_with_fee.PaymentFailed) as info:
        subscriptions_with_fee.subscribe(plan_id, PRICE, sender=customer)

    assert dict(info.value.inputs) == _payment_failed(token, customer, PRICE, 0, FUNDS)
