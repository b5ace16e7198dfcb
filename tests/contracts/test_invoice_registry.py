"""Tests of InvoiceRegistry: issuing, paying (ERC-20 and ETH), voiding, refunding,
off-chain settlement, overdue views, the emergency pause and the platform fee.

Every revert is checked with its custom error and all of the error's values (see
`reverts_with`), every transfer with the exact balances it moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ape
import pytest
from eth_abi import decode, encode
from eth_account import Account
from eth_utils import keccak
from hexbytes import HexBytes

from tests.chain_fixtures import FEE_BPS, FUNDS, NATIVE_TOKEN, PERIOD, UNIT, reference

ZERO_ADDRESS = "0x" + "00" * 20
CONTENT = b"\x42" * 32
MAX_AMOUNT = 2**96 - 1
AMOUNT = 100 * UNIT
ETH = 10**18
ETH_AMOUNT = 2 * ETH

# IInvoiceRegistry.InvoiceStatus
NONE, OPEN, PARTIALLY_PAID, PAID, VOID = range(5)

Issue = Callable[..., bytes]


# ----------------------------------------------------------------------------- helpers


def _address(value: Any) -> Any:
    return value.address if hasattr(value, "address") else value


def _normalize(value: Any) -> Any:
    value = _address(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return value.lower()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def _normalize_all(values: Any) -> dict[str, Any]:
    return {name: _normalize(value) for name, value in dict(values).items()}


@contextmanager
def reverts_with(error: Any, **inputs: Any) -> Iterator[None]:
    """Like `ape.reverts(error, **inputs)`, but strict: the revert must decode to exactly
    this custom error and every one of its inputs must be given and match (ape alone
    accepts an undecoded revert and ignores inputs it does not know)."""
    expected = {name: _address(value) for name, value in inputs.items()}
    with ape.reverts(error, **expected) as info:
        yield
    raised = info.value
    assert type(raised).__name__ == error.__name__, f"reverted with {raised!r}"
    assert _normalize_all(raised.inputs) == _normalize_all(expected)


def invoice_id(merchant: Any, ref: bytes) -> bytes:
    """`keccak256(abi.encode(merchant, referenceHash))`, computed off-chain."""
    return keccak(encode(["address", "bytes32"], [_address(merchant), ref]))


def emitted(receipt: Any, contract: Any, name: str) -> list[Any]:
    return [
        log
        for log in receipt.events
        if log.event_name == name and _normalize(log.contract_address) == _normalize(contract)
    ]


def assert_single_event(receipt: Any, contract: Any, name: str, **fields: Any) -> None:
    """The receipt holds exactly one `name` event of `contract`, with exactly these fields."""
    logs = emitted(receipt, contract, name)
    assert len(logs) == 1, f"expected one {name}, got {len(logs)}"
    assert _normalize_all(logs[0].event_arguments) == _normalize_all(fields)


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def revert_data(error: Exception) -> HexBytes:
    return HexBytes(str(error.revert_message))  # type: ignore[attr-defined]


def set_time(chain: Any, timestamp: int) -> None:
    """Mines a block at `timestamp`, so that views see it as `block.timestamp`."""
    chain.pending_timestamp = timestamp
    chain.mine()


def sign_permit(token: Any, holder: Any, spender: Any, value: int, deadline: int) -> tuple:
    """An EIP-2612 permit of `holder` for `spender`, as (v, r, s)."""
    signed = Account.sign_typed_data(
        holder.private_key,
        {
            "name": token.name(),
            "version": "1",
            "chainId": ape.chain.chain_id,
            "verifyingContract": token.address,
        },
        {
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        },
        {
            "owner": holder.address,
            "spender": _address(spender),
            "value": value,
            "nonce": token.nonces(holder),
            "deadline": deadline,
        },
    )
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@pytest.fixture
def broke(accounts: Any) -> Any:
    """An account without any TUSD."""
    return accounts[8]


@pytest.fixture
def eth_merchant_without_receive(
    project: Any, owner: Any, invoices: Any, customer: Any, chain: Any
) -> tuple[Any, bytes]:
    """A contract merchant that cannot receive ETH, with an open 2 ETH invoice.

    ReentrantToken has neither `receive` nor `fallback`, and calls an armed target from
    its own address: it is made to call `issue` for itself, so it is the merchant."""
    contract = owner.deploy(project.ReentrantToken)
    ref = reference("ETH-CONTRACT-MERCHANT")
    calldata = invoices.issue.encode_input(
        contract,
        ref,
        customer,
        NATIVE_TOKEN,
        ETH_AMOUNT,
        chain.pending_timestamp + PERIOD,
        True,
        CONTENT,
    )
    contract.arm(invoices, calldata, sender=owner)
    contract.transferFrom(owner, owner, 0, sender=owner)
    assert contract.lastReentrySucceeded()
    assert invoices.getInvoice(invoice_id(contract, ref)).merchant == contract.address
    return contract, ref


# ------------------------------------------------------------------------------- issue


def test_invoice_id_is_known_before_issue_and_returned_by_it(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = reference("INV-2024-0001")
    expected = invoice_id(merchant, ref)
    assert invoices.invoiceIdOf(merchant, ref) == expected
    assert invoices.statusOf(expected) == NONE

    receipt = invoices.issue(
        merchant,
        ref,
        customer,
        token,
        AMOUNT,
        chain.pending_timestamp + PERIOD,
        False,
        CONTENT,
        sender=merchant,
    )

    assert receipt.return_value == expected
    assert invoices.statusOf(expected) == OPEN


def test_issue_emits_invoice_issued_with_all_fields(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = reference("INV-EVENT")
    due_date = chain.pending_timestamp + PERIOD
    receipt = invoices.issue(
        merchant, ref, customer, token, AMOUNT, due_date, True, CONTENT, sender=merchant
    )

    assert_single_event(
        receipt,
        invoices,
        "InvoiceIssued",
        invoiceId=invoice_id(merchant, ref),
        merchant=merchant,
        customer=customer,
        referenceHash=ref,
        token=token,
        amount=AMOUNT,
        dueDate=due_date,
        allowPartial=True,
        contentHash=CONTENT,
    )


def test_issued_invoice_views(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = reference("INV-VIEWS")
    due_date = chain.pending_timestamp + PERIOD
    invoices.issue(merchant, ref, customer, token, AMOUNT, due_date, True, CONTENT, sender=merchant)
    iid = invoice_id(merchant, ref)

    invoice = invoices.getInvoice(iid)
    assert invoice.merchant == merchant.address
    assert invoice.customer == customer.address
    assert invoice.token == token.address
    assert invoice.amount == AMOUNT
    assert invoice.paid == 0
    assert invoice.dueDate == due_date
    assert invoice.allowPartial is True
    assert invoice.voided is False
    assert invoices.statusOf(iid) == OPEN
    assert invoices.amountDue(iid) == AMOUNT
    assert invoices.isOverdue(iid) is False


def test_unknown_invoice_views_are_empty(invoices: Any, merchant: Any) -> None:
    iid = invoice_id(merchant, reference("NEVER-ISSUED"))

    invoice = invoices.getInvoice(iid)
    assert invoice.merchant == ZERO_ADDRESS
    assert invoice.token == ZERO_ADDRESS
    assert invoice.amount == 0
    assert invoice.paid == 0
    assert invoices.statusOf(iid) == NONE
    assert invoices.amountDue(iid) == 0
    assert invoices.isOverdue(iid) is False


def test_public_constants(invoices: Any) -> None:
    assert invoices.NATIVE_TOKEN() == NATIVE_TOKEN
    assert invoices.MAX_AMOUNT() == MAX_AMOUNT
    assert invoices.MAX_FEE_BPS() == 1_000


def test_approved_operator_issues_for_merchant(
    invoices: Any, issue: Issue, merchant: Any, operator: Any
) -> None:
    receipt = invoices.setOperator(operator, True, sender=merchant)
    assert_single_event(
        receipt, invoices, "OperatorSet", merchant=merchant, operator=operator, approved=True
    )
    assert invoices.isOperator(merchant, operator) is True

    ref = issue(sender=operator, for_merchant=merchant)

    iid = invoice_id(merchant, ref)
    assert invoices.getInvoice(iid).merchant == merchant.address
    assert invoices.statusOf(iid) == OPEN


def test_operator_cannot_issue_for_another_merchant(
    invoices: Any, issue: Issue, merchant: Any, operator: Any, stranger: Any
) -> None:
    invoices.setOperator(operator, True, sender=merchant)

    with reverts_with(invoices.NotMerchantOrOperator, merchant=stranger, caller=operator):
        issue(sender=operator, for_merchant=stranger)


def test_revoked_operator_cannot_issue(
    invoices: Any, issue: Issue, merchant: Any, operator: Any
) -> None:
    invoices.setOperator(operator, True, sender=merchant)
    receipt = invoices.setOperator(operator, False, sender=merchant)
    assert_single_event(
        receipt, invoices, "OperatorSet", merchant=merchant, operator=operator, approved=False
    )
    assert invoices.isOperator(merchant, operator) is False

    with reverts_with(invoices.NotMerchantOrOperator, merchant=merchant, caller=operator):
        issue(sender=operator, for_merchant=merchant)


def test_stranger_cannot_issue_for_merchant(
    invoices: Any, issue: Issue, merchant: Any, stranger: Any
) -> None:
    with reverts_with(invoices.NotMerchantOrOperator, merchant=merchant, caller=stranger):
        issue(sender=stranger, for_merchant=merchant)


def test_same_reference_cannot_be_issued_twice(invoices: Any, issue: Issue, merchant: Any) -> None:
    ref = issue(number="INV-DUP")

    with reverts_with(invoices.InvoiceAlreadyIssued, invoiceId=invoice_id(merchant, ref)):
        issue(number="INV-DUP", amount=5 * UNIT)


def test_reference_cannot_be_reissued_after_void(
    invoices: Any, issue: Issue, merchant: Any
) -> None:
    ref = issue(number="INV-VOIDED")
    iid = invoice_id(merchant, ref)
    invoices.voidInvoice(iid, sender=merchant)

    with reverts_with(invoices.InvoiceAlreadyIssued, invoiceId=iid):
        issue(number="INV-VOIDED")


def test_same_reference_by_two_merchants_gives_two_invoices(
    invoices: Any, issue: Issue, merchant: Any, stranger: Any
) -> None:
    ref = issue(number="INV-0001", amount=AMOUNT)
    other_ref = issue(number="INV-0001", amount=7 * UNIT, sender=stranger, for_merchant=stranger)

    assert ref == other_ref
    first, second = invoice_id(merchant, ref), invoice_id(stranger, ref)
    assert first != second
    assert invoices.getInvoice(first).merchant == merchant.address
    assert invoices.getInvoice(first).amount == AMOUNT
    assert invoices.getInvoice(second).merchant == stranger.address
    assert invoices.getInvoice(second).amount == 7 * UNIT


def test_issue_rejects_zero_token(invoices: Any, issue: Issue) -> None:
    with reverts_with(invoices.InvalidToken, token=ZERO_ADDRESS):
        issue(invoice_token=ZERO_ADDRESS)


def test_issue_rejects_token_without_code(invoices: Any, issue: Issue, stranger: Any) -> None:
    with reverts_with(invoices.InvalidToken, token=stranger):
        issue(invoice_token=stranger)


@pytest.mark.parametrize("amount", [0, MAX_AMOUNT + 1], ids=["zero", "2**96"])
def test_issue_rejects_amount_out_of_range(invoices: Any, issue: Issue, amount: int) -> None:
    with reverts_with(invoices.InvalidAmount, amount=amount, max=MAX_AMOUNT):
        issue(amount=amount)


def test_issue_accepts_max_amount(invoices: Any, issue: Issue, merchant: Any) -> None:
    ref = issue(amount=MAX_AMOUNT)

    assert invoices.amountDue(invoice_id(merchant, ref)) == MAX_AMOUNT


def test_issue_rejects_due_date_in_past(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    now = chain.pending_timestamp + 100
    chain.pending_timestamp = now

    with reverts_with(invoices.DueDateInPast, dueDate=now - 1, now_=now):
        invoices.issue(
            merchant,
            reference("INV-LATE"),
            customer,
            token,
            AMOUNT,
            now - 1,
            False,
            CONTENT,
            sender=merchant,
        )


def test_issue_accepts_due_date_now(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    now = chain.pending_timestamp + 100
    chain.pending_timestamp = now
    ref = reference("INV-DUE-NOW")

    invoices.issue(merchant, ref, customer, token, AMOUNT, now, False, CONTENT, sender=merchant)

    assert invoices.getInvoice(invoice_id(merchant, ref)).dueDate == now


def test_issue_rejects_due_date_beyond_uint40(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    now = chain.pending_timestamp + 100
    chain.pending_timestamp = now

    with reverts_with(invoices.DueDateTooFar, dueDate=2**40, max=2**40 - 1):
        invoices.issue(
            merchant,
            reference("INV-FAR"),
            customer,
            token,
            AMOUNT,
            2**40,
            False,
            CONTENT,
            sender=merchant,
        )


def test_payment_link_without_customer_is_payable_by_anyone(
    invoices: Any, issue: Issue, merchant: Any, stranger: Any, token: Any
) -> None:
    ref = issue(invoice_customer=ZERO_ADDRESS)
    iid = invoice_id(merchant, ref)
    assert invoices.getInvoice(iid).customer == ZERO_ADDRESS
    token.approve(invoices, AMOUNT, sender=stranger)

    receipt = invoices.pay(merchant, ref, AMOUNT, sender=stranger)

    assert_single_event(
        receipt, invoices, "InvoicePaid", invoiceId=iid, payer=stranger, amount=AMOUNT, fee=0
    )
    assert invoices.statusOf(iid) == PAID
    assert token.balanceOf(stranger) == FUNDS - AMOUNT
    assert token.balanceOf(merchant) == FUNDS + AMOUNT


# ------------------------------------------------------------------------ pay in ERC-20


def test_customer_pays_invoice_in_full(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT, sender=customer)

    receipt = invoices.pay(merchant, ref, AMOUNT, sender=customer)

    assert_single_event(
        receipt, invoices, "InvoicePaid", invoiceId=iid, payer=customer, amount=AMOUNT, fee=0
    )
    assert token.balanceOf(customer) == FUNDS - AMOUNT
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert token.balanceOf(invoices) == 0
    assert token.allowance(customer, invoices) == 0
    assert invoices.statusOf(iid) == PAID
    assert invoices.amountDue(iid) == 0
    assert invoices.getInvoice(iid).paid == AMOUNT


def test_payer_pays_on_behalf_of_customer(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, payer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT, sender=payer)

    receipt = invoices.pay(merchant, ref, AMOUNT, sender=payer)

    assert_single_event(
        receipt, invoices, "InvoicePaid", invoiceId=iid, payer=payer, amount=AMOUNT, fee=0
    )
    assert token.balanceOf(payer) == FUNDS - AMOUNT
    assert token.balanceOf(customer) == FUNDS
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert invoices.statusOf(iid) == PAID


def test_partial_payment_rejected_without_installments(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=False)
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(
        invoices.PartialPaymentNotAllowed,
        invoiceId=invoice_id(merchant, ref),
        amount=AMOUNT - 1,
        due=AMOUNT,
    ):
        invoices.pay(merchant, ref, AMOUNT - 1, sender=customer)


def test_installments_add_up_to_paid(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT, sender=customer)

    first = invoices.pay(merchant, ref, 30 * UNIT, sender=customer)
    assert_single_event(
        first, invoices, "InvoicePaid", invoiceId=iid, payer=customer, amount=30 * UNIT, fee=0
    )
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.amountDue(iid) == 70 * UNIT
    assert invoices.getInvoice(iid).paid == 30 * UNIT

    invoices.pay(merchant, ref, 25 * UNIT, sender=customer)
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.amountDue(iid) == 45 * UNIT

    invoices.pay(merchant, ref, 45 * UNIT, sender=customer)
    assert invoices.statusOf(iid) == PAID
    assert invoices.amountDue(iid) == 0
    assert invoices.getInvoice(iid).paid == AMOUNT
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert token.balanceOf(customer) == FUNDS - AMOUNT


@pytest.mark.parametrize("allow_partial", [False, True])
def test_payment_above_amount_due_reverts(
    invoices: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    token: Any,
    allow_partial: bool,
) -> None:
    ref = issue(allow_partial=allow_partial)
    token.approve(invoices, 2 * AMOUNT, sender=customer)

    with reverts_with(
        invoices.AmountExceedsDue,
        invoiceId=invoice_id(merchant, ref),
        amount=AMOUNT + 1,
        due=AMOUNT,
    ):
        invoices.pay(merchant, ref, AMOUNT + 1, sender=customer)


def test_last_installment_cannot_overpay(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    iid = invoice_id(merchant, ref)
    token.approve(invoices, 2 * AMOUNT, sender=customer)
    invoices.pay(merchant, ref, 70 * UNIT, sender=customer)

    with reverts_with(invoices.AmountExceedsDue, invoiceId=iid, amount=31 * UNIT, due=30 * UNIT):
        invoices.pay(merchant, ref, 31 * UNIT, sender=customer)

    assert invoices.amountDue(iid) == 30 * UNIT
    assert token.balanceOf(merchant) == FUNDS + 70 * UNIT


def test_paying_paid_invoice_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    token.approve(invoices, 2 * AMOUNT, sender=customer)
    invoices.pay(merchant, ref, AMOUNT, sender=customer)

    with reverts_with(invoices.InvoiceAlreadyPaid, invoiceId=invoice_id(merchant, ref)):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)


def test_paying_unknown_invoice_reverts(
    invoices: Any, merchant: Any, customer: Any, token: Any
) -> None:
    ref = reference("NEVER-ISSUED")
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(invoices.InvoiceNotFound, invoiceId=invoice_id(merchant, ref)):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)
    with reverts_with(invoices.InvoiceNotFound, invoiceId=invoice_id(merchant, ref)):
        invoices.payEth(merchant, ref, sender=customer, value=ETH)


def test_paying_another_merchants_reference_reverts_not_found(
    invoices: Any, issue: Issue, customer: Any, stranger: Any, token: Any
) -> None:
    ref = issue()
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(invoices.InvoiceNotFound, invoiceId=invoice_id(stranger, ref)):
        invoices.pay(stranger, ref, AMOUNT, sender=customer)


def test_zero_payment_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(invoices.InvalidAmount, amount=0, max=AMOUNT):
        invoices.pay(merchant, ref, 0, sender=customer)


def test_payment_without_allowance_reverts_payment_failed(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()

    with reverts_with(
        invoices.PaymentFailed,
        token=token,
        **{"from": customer},
        amount=AMOUNT,
        allowance=0,
        balance=FUNDS,
    ):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)


def test_payment_with_short_allowance_reverts_payment_failed(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT - 1, sender=customer)

    with reverts_with(
        invoices.PaymentFailed,
        token=token,
        **{"from": customer},
        amount=AMOUNT,
        allowance=AMOUNT - 1,
        balance=FUNDS,
    ):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)

    assert invoices.amountDue(iid) == AMOUNT
    assert token.balanceOf(customer) == FUNDS


def test_payment_with_short_balance_reverts_payment_failed(
    invoices: Any, issue: Issue, merchant: Any, broke: Any, token: Any
) -> None:
    ref = issue()
    token.mint(broke, AMOUNT - 1, sender=broke)
    token.approve(invoices, AMOUNT, sender=broke)

    with reverts_with(
        invoices.PaymentFailed,
        token=token,
        **{"from": broke},
        amount=AMOUNT,
        allowance=AMOUNT,
        balance=AMOUNT - 1,
    ):
        invoices.pay(merchant, ref, AMOUNT, sender=broke)


def test_eth_sent_to_token_invoice_reverts_wrong_asset(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()

    with reverts_with(invoices.WrongPaymentAsset, invoiceId=invoice_id(merchant, ref), token=token):
        invoices.payEth(merchant, ref, sender=customer, value=AMOUNT)


def test_token_payment_of_eth_invoice_reverts_wrong_asset(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    token.approve(invoices, ETH_AMOUNT, sender=customer)

    with reverts_with(
        invoices.WrongPaymentAsset, invoiceId=invoice_id(merchant, ref), token=NATIVE_TOKEN
    ):
        invoices.pay(merchant, ref, ETH_AMOUNT, sender=customer)


def test_pay_with_permit_needs_no_prior_approval(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    deadline = chain.pending_timestamp + 3600
    v, r, s = sign_permit(token, customer, invoices, AMOUNT, deadline)

    receipt = invoices.payWithPermit(merchant, ref, AMOUNT, deadline, v, r, s, sender=customer)

    assert_single_event(
        receipt, invoices, "InvoicePaid", invoiceId=iid, payer=customer, amount=AMOUNT, fee=0
    )
    assert invoices.statusOf(iid) == PAID
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert token.balanceOf(customer) == FUNDS - AMOUNT


def test_pay_with_used_permit_falls_back_to_allowance(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    deadline = chain.pending_timestamp + 3600
    v, r, s = sign_permit(token, customer, invoices, AMOUNT, deadline)
    # Front-run: someone submits the permit first, so the registry's own call fails.
    token.permit(customer, invoices, AMOUNT, deadline, v, r, s, sender=merchant)

    invoices.payWithPermit(merchant, ref, AMOUNT, deadline, v, r, s, sender=customer)

    assert invoices.statusOf(iid) == PAID
    assert token.balanceOf(merchant) == FUNDS + AMOUNT


def test_pay_with_permit_of_unknown_invoice_reverts_not_found(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = reference("NEVER-ISSUED")
    deadline = chain.pending_timestamp + 3600
    v, r, s = sign_permit(token, customer, invoices, AMOUNT, deadline)

    with reverts_with(invoices.InvoiceNotFound, invoiceId=invoice_id(merchant, ref)):
        invoices.payWithPermit(merchant, ref, AMOUNT, deadline, v, r, s, sender=customer)


def test_pay_with_permit_of_eth_invoice_reverts_wrong_asset(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    deadline = chain.pending_timestamp + 3600
    v, r, s = sign_permit(token, customer, invoices, ETH_AMOUNT, deadline)

    with reverts_with(
        invoices.WrongPaymentAsset, invoiceId=invoice_id(merchant, ref), token=NATIVE_TOKEN
    ):
        invoices.payWithPermit(merchant, ref, ETH_AMOUNT, deadline, v, r, s, sender=customer)


def test_reentrant_token_cannot_pay_twice_in_one_payment(
    project: Any, owner: Any, invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    hostile = owner.deploy(project.ReentrantToken)
    hostile.mint(customer, AMOUNT, sender=owner)
    hostile.mint(hostile, AMOUNT, sender=owner)
    ref = issue(invoice_token=hostile, allow_partial=True)
    iid = invoice_id(merchant, ref)
    hostile.approve(invoices, AMOUNT, sender=customer)
    hostile.arm(invoices, invoices.pay.encode_input(merchant, ref, 10 * UNIT), sender=owner)

    invoices.pay(merchant, ref, 10 * UNIT, sender=customer)

    assert hostile.reentryAttempts() == 1
    assert hostile.lastReentrySucceeded() is False
    assert HexBytes(hostile.lastReentryResult()) == selector("ReentrancyGuardReentrantCall()")
    assert invoices.amountDue(iid) == 90 * UNIT
    assert hostile.balanceOf(merchant) == 10 * UNIT


# --------------------------------------------------------------------------- pay in ETH


def test_customer_pays_eth_invoice(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    iid = invoice_id(merchant, ref)
    merchant_before, customer_before = merchant.balance, customer.balance

    receipt = invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)

    assert_single_event(
        receipt, invoices, "InvoicePaid", invoiceId=iid, payer=customer, amount=ETH_AMOUNT, fee=0
    )
    assert merchant.balance == merchant_before + ETH_AMOUNT
    assert customer.balance == customer_before - ETH_AMOUNT - receipt.total_fees_paid
    assert invoices.balance == 0
    assert invoices.statusOf(iid) == PAID
    assert invoices.amountDue(iid) == 0
    assert invoices.getInvoice(iid).paid == ETH_AMOUNT
    assert invoices.getInvoice(iid).token == NATIVE_TOKEN


def test_eth_installments_add_up_to_paid(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, payer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT, allow_partial=True)
    iid = invoice_id(merchant, ref)
    merchant_before = merchant.balance

    invoices.payEth(merchant, ref, sender=customer, value=ETH // 2)
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.amountDue(iid) == ETH_AMOUNT - ETH // 2

    receipt = invoices.payEth(merchant, ref, sender=payer, value=ETH_AMOUNT - ETH // 2)
    assert_single_event(
        receipt,
        invoices,
        "InvoicePaid",
        invoiceId=iid,
        payer=payer,
        amount=ETH_AMOUNT - ETH // 2,
        fee=0,
    )
    assert invoices.statusOf(iid) == PAID
    assert merchant.balance == merchant_before + ETH_AMOUNT


@pytest.mark.parametrize("allow_partial", [False, True])
def test_eth_overpayment_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, allow_partial: bool
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT, allow_partial=allow_partial)

    with reverts_with(
        invoices.AmountExceedsDue,
        invoiceId=invoice_id(merchant, ref),
        amount=ETH_AMOUNT + 1,
        due=ETH_AMOUNT,
    ):
        invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT + 1)


def test_eth_last_installment_cannot_overpay(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT, allow_partial=True)
    invoices.payEth(merchant, ref, sender=customer, value=ETH)

    with reverts_with(
        invoices.AmountExceedsDue, invoiceId=invoice_id(merchant, ref), amount=ETH + 1, due=ETH
    ):
        invoices.payEth(merchant, ref, sender=customer, value=ETH + 1)


def test_eth_partial_payment_rejected_without_installments(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)

    with reverts_with(
        invoices.PartialPaymentNotAllowed,
        invoiceId=invoice_id(merchant, ref),
        amount=ETH,
        due=ETH_AMOUNT,
    ):
        invoices.payEth(merchant, ref, sender=customer, value=ETH)


def test_eth_payment_without_value_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT, allow_partial=True)

    with reverts_with(invoices.InvalidAmount, amount=0, max=ETH_AMOUNT):
        invoices.payEth(merchant, ref, sender=customer, value=0)


def test_paying_paid_eth_invoice_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)

    with reverts_with(invoices.InvoiceAlreadyPaid, invoiceId=invoice_id(merchant, ref)):
        invoices.payEth(merchant, ref, sender=customer, value=1)


def test_eth_payment_to_merchant_that_cannot_receive_reverts(
    invoices: Any, customer: Any, eth_merchant_without_receive: tuple[Any, bytes]
) -> None:
    contract, ref = eth_merchant_without_receive
    iid = invoice_id(contract, ref)

    with reverts_with(invoices.EthTransferFailed, recipient=contract, amount=ETH):
        invoices.payEth(contract, ref, sender=customer, value=ETH)

    assert invoices.amountDue(iid) == ETH_AMOUNT
    assert invoices.statusOf(iid) == OPEN


def test_eth_fee_to_recipient_that_cannot_receive_reverts(
    project: Any, owner: Any, token: Any, merchant: Any, customer: Any, chain: Any
) -> None:
    # The fee recipient is a contract without receive or fallback (the stablecoin).
    registry = owner.deploy(project.InvoiceRegistry, owner, token, FEE_BPS)
    ref = reference("INV-ETH-FEE")
    registry.issue(
        merchant,
        ref,
        customer,
        NATIVE_TOKEN,
        ETH_AMOUNT,
        chain.pending_timestamp + PERIOD,
        False,
        CONTENT,
        sender=merchant,
    )

    with reverts_with(
        registry.EthTransferFailed, recipient=token, amount=ETH_AMOUNT * FEE_BPS // 10_000
    ):
        registry.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)


# -------------------------------------------------------------------------------- void


def test_merchant_voids_unpaid_invoice(
    invoices: Any, issue: Issue, merchant: Any, chain: Any
) -> None:
    ref = issue(due_in=3600)
    iid = invoice_id(merchant, ref)

    receipt = invoices.voidInvoice(iid, sender=merchant)

    assert_single_event(receipt, invoices, "InvoiceVoided", invoiceId=iid, voidedBy=merchant)
    assert invoices.statusOf(iid) == VOID
    assert invoices.amountDue(iid) == 0
    invoice = invoices.getInvoice(iid)
    assert invoice.voided is True
    assert invoice.paid == 0
    assert invoice.amount == AMOUNT
    set_time(chain, invoice.dueDate + 1)
    assert invoices.isOverdue(iid) is False


def test_operator_voids_invoice(invoices: Any, issue: Issue, merchant: Any, operator: Any) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    invoices.setOperator(operator, True, sender=merchant)

    receipt = invoices.voidInvoice(iid, sender=operator)

    assert_single_event(receipt, invoices, "InvoiceVoided", invoiceId=iid, voidedBy=operator)
    assert invoices.statusOf(iid) == VOID


@pytest.mark.parametrize("caller_name", ["stranger", "customer"])
def test_others_cannot_void(
    invoices: Any, issue: Issue, merchant: Any, request: Any, caller_name: str
) -> None:
    caller = request.getfixturevalue(caller_name)
    iid = invoice_id(merchant, issue())

    with reverts_with(invoices.NotMerchantOrOperator, merchant=merchant, caller=caller):
        invoices.voidInvoice(iid, sender=caller)


def test_partially_paid_invoice_cannot_be_voided(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    iid = invoice_id(merchant, ref)
    token.approve(invoices, 30 * UNIT, sender=customer)
    invoices.pay(merchant, ref, 30 * UNIT, sender=customer)

    with reverts_with(invoices.InvoiceNotVoidable, invoiceId=iid, paid=30 * UNIT):
        invoices.voidInvoice(iid, sender=merchant)

    assert invoices.statusOf(iid) == PARTIALLY_PAID


def test_paid_invoice_cannot_be_voided(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT, sender=customer)
    invoices.pay(merchant, ref, AMOUNT, sender=customer)

    with reverts_with(invoices.InvoiceNotVoidable, invoiceId=iid, paid=AMOUNT):
        invoices.voidInvoice(iid, sender=merchant)


def test_offchain_settled_invoice_cannot_be_voided(
    invoices: Any, issue: Issue, merchant: Any
) -> None:
    iid = invoice_id(merchant, issue(allow_partial=True))
    invoices.settleOffchain(iid, 10 * UNIT, reference("FIAT-1"), sender=merchant)

    with reverts_with(invoices.InvoiceNotVoidable, invoiceId=iid, paid=10 * UNIT):
        invoices.voidInvoice(iid, sender=merchant)


def test_fully_refunded_invoice_can_be_voided(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    token.approve(invoices, AMOUNT, sender=customer)
    invoices.pay(merchant, ref, AMOUNT, sender=customer)
    token.approve(invoices, AMOUNT, sender=merchant)
    invoices.refund(iid, customer, AMOUNT, sender=merchant)

    invoices.voidInvoice(iid, sender=merchant)

    assert invoices.statusOf(iid) == VOID


def test_void_invoice_cannot_be_paid(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue()
    iid = invoice_id(merchant, ref)
    invoices.voidInvoice(iid, sender=merchant)
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(invoices.InvoiceIsVoid, invoiceId=iid):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)

    assert token.balanceOf(customer) == FUNDS


def test_void_eth_invoice_cannot_be_paid(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    iid = invoice_id(merchant, ref)
    invoices.voidInvoice(iid, sender=merchant)

    with reverts_with(invoices.InvoiceIsVoid, invoiceId=iid):
        invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)


def test_void_invoice_cannot_be_settled_or_refunded(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    iid = invoice_id(merchant, issue())
    invoices.voidInvoice(iid, sender=merchant)

    with reverts_with(invoices.InvoiceIsVoid, invoiceId=iid):
        invoices.settleOffchain(iid, AMOUNT, reference("FIAT-VOID"), sender=merchant)
    with reverts_with(invoices.InvoiceIsVoid, invoiceId=iid):
        invoices.refund(iid, customer, 1, sender=merchant)


def test_void_twice_reverts(invoices: Any, issue: Issue, merchant: Any) -> None:
    iid = invoice_id(merchant, issue())
    invoices.voidInvoice(iid, sender=merchant)

    with reverts_with(invoices.InvoiceIsVoid, invoiceId=iid):
        invoices.voidInvoice(iid, sender=merchant)


def test_void_unknown_invoice_reverts(invoices: Any, merchant: Any) -> None:
    iid = invoice_id(merchant, reference("NEVER-ISSUED"))

    with reverts_with(invoices.InvoiceNotFound, invoiceId=iid):
        invoices.voidInvoice(iid, sender=merchant)


# ------------------------------------------------------------------------------ refund


def _paid_invoice(
    invoices: Any, issue: Issue, merchant: Any, payer: Any, token: Any, **options: Any
) -> tuple[bytes, bytes]:
    ref = issue(**options)
    amount = options.get("amount", AMOUNT)
    token.approve(invoices, amount, sender=payer)
    invoices.pay(merchant, ref, amount, sender=payer)
    return ref, invoice_id(merchant, ref)


def test_merchant_refunds_part_of_token_payment(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, payer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, payer, token)
    token.approve(invoices, 40 * UNIT, sender=merchant)

    receipt = invoices.refund(iid, payer, 40 * UNIT, sender=merchant)

    assert_single_event(
        receipt, invoices, "InvoiceRefunded", invoiceId=iid, recipient=payer, amount=40 * UNIT
    )
    assert token.balanceOf(payer) == FUNDS - AMOUNT + 40 * UNIT
    assert token.balanceOf(merchant) == FUNDS + AMOUNT - 40 * UNIT
    assert token.balanceOf(customer) == FUNDS
    assert token.balanceOf(invoices) == 0
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.amountDue(iid) == 40 * UNIT
    assert invoices.getInvoice(iid).paid == 60 * UNIT


def test_full_refund_reopens_invoice(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=merchant)

    invoices.refund(iid, customer, AMOUNT, sender=merchant)

    assert invoices.statusOf(iid) == OPEN
    assert invoices.amountDue(iid) == AMOUNT
    assert invoices.getInvoice(iid).paid == 0
    assert token.balanceOf(customer) == FUNDS
    assert token.balanceOf(merchant) == FUNDS


@pytest.mark.parametrize("caller_name", ["operator", "stranger", "customer"])
def test_only_merchant_may_refund(
    invoices: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    token: Any,
    request: Any,
    caller_name: str,
) -> None:
    caller = request.getfixturevalue(caller_name)
    invoices.setOperator(request.getfixturevalue("operator"), True, sender=merchant)
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=caller)

    with reverts_with(invoices.NotInvoiceMerchant, invoiceId=iid, caller=caller):
        invoices.refund(iid, customer, AMOUNT, sender=caller)


def test_refund_above_paid_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, 2 * AMOUNT, sender=merchant)

    with reverts_with(invoices.RefundExceedsPaid, invoiceId=iid, amount=AMOUNT + 1, paid=AMOUNT):
        invoices.refund(iid, customer, AMOUNT + 1, sender=merchant)

    invoices.refund(iid, customer, 60 * UNIT, sender=merchant)

    with reverts_with(
        invoices.RefundExceedsPaid, invoiceId=iid, amount=40 * UNIT + 1, paid=40 * UNIT
    ):
        invoices.refund(iid, customer, 40 * UNIT + 1, sender=merchant)


def test_zero_refund_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)

    with reverts_with(invoices.RefundExceedsPaid, invoiceId=iid, amount=0, paid=AMOUNT):
        invoices.refund(iid, customer, 0, sender=merchant)


def test_refund_of_unpaid_invoice_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    iid = invoice_id(merchant, issue())
    token.approve(invoices, AMOUNT, sender=merchant)

    with reverts_with(invoices.RefundExceedsPaid, invoiceId=iid, amount=1, paid=0):
        invoices.refund(iid, customer, 1, sender=merchant)


def test_refund_to_zero_address_reverts(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=merchant)

    with reverts_with(invoices.InvalidRecipient):
        invoices.refund(iid, ZERO_ADDRESS, AMOUNT, sender=merchant)


def test_refund_of_unknown_invoice_reverts(invoices: Any, merchant: Any, customer: Any) -> None:
    iid = invoice_id(merchant, reference("NEVER-ISSUED"))

    with reverts_with(invoices.InvoiceNotFound, invoiceId=iid):
        invoices.refund(iid, customer, 1, sender=merchant)


def test_refund_without_merchant_allowance_reverts_payment_failed(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)

    with reverts_with(
        invoices.PaymentFailed,
        token=token,
        **{"from": merchant},
        amount=AMOUNT,
        allowance=0,
        balance=FUNDS + AMOUNT,
    ):
        invoices.refund(iid, customer, AMOUNT, sender=merchant)

    assert invoices.amountDue(iid) == 0


def test_token_refund_with_eth_reverts_wrong_asset(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=merchant)

    with reverts_with(invoices.WrongPaymentAsset, invoiceId=iid, token=token):
        invoices.refund(iid, customer, AMOUNT, sender=merchant, value=1)


def test_eth_refund_sends_value_to_recipient(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, payer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    iid = invoice_id(merchant, ref)
    invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)
    payer_before = payer.balance

    receipt = invoices.refund(iid, payer, ETH, sender=merchant, value=ETH)

    assert_single_event(
        receipt, invoices, "InvoiceRefunded", invoiceId=iid, recipient=payer, amount=ETH
    )
    assert payer.balance == payer_before + ETH
    assert invoices.balance == 0
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.amountDue(iid) == ETH_AMOUNT - ETH
    assert invoices.getInvoice(iid).paid == ETH_AMOUNT - ETH


@pytest.mark.parametrize("sent", [0, ETH - 1, ETH + 1])
def test_eth_refund_with_other_value_reverts_mismatch(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, sent: int
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    iid = invoice_id(merchant, ref)
    invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)

    with reverts_with(invoices.EthAmountMismatch, expected=ETH, sent=sent):
        invoices.refund(iid, customer, ETH, sender=merchant, value=sent)


def test_refund_works_while_paused(
    invoices: Any, issue: Issue, owner: Any, merchant: Any, customer: Any, token: Any
) -> None:
    _, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=merchant)
    invoices.pause(sender=owner)

    invoices.refund(iid, customer, AMOUNT, sender=merchant)

    assert token.balanceOf(customer) == FUNDS
    assert invoices.statusOf(iid) == OPEN


def test_refunded_invoice_can_be_paid_again_only_up_to_amount(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref, iid = _paid_invoice(invoices, issue, merchant, customer, token)
    token.approve(invoices, AMOUNT, sender=merchant)
    invoices.refund(iid, customer, 30 * UNIT, sender=merchant)
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(
        invoices.AmountExceedsDue, invoiceId=iid, amount=30 * UNIT + 1, due=30 * UNIT
    ):
        invoices.pay(merchant, ref, 30 * UNIT + 1, sender=customer)

    invoices.pay(merchant, ref, 30 * UNIT, sender=customer)

    assert invoices.statusOf(iid) == PAID
    assert invoices.getInvoice(iid).paid == AMOUNT
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert token.balanceOf(customer) == FUNDS - AMOUNT


def test_paid_is_payments_plus_settlements_minus_refunds(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    iid = invoice_id(merchant, ref)
    token.approve(invoices, 2 * AMOUNT, sender=customer)
    token.approve(invoices, AMOUNT, sender=merchant)
    payments = settlements = refunds = 0

    steps: list[tuple[str, int]] = [
        ("pay", 60 * UNIT),
        ("settle", 40 * UNIT),
        ("refund", 50 * UNIT),
        ("pay", 20 * UNIT),
        ("refund", 5 * UNIT),
        ("settle", 35 * UNIT),
    ]
    for number, (action, amount) in enumerate(steps):
        if action == "pay":
            invoices.pay(merchant, ref, amount, sender=customer)
            payments += amount
        elif action == "settle":
            invoices.settleOffchain(iid, amount, reference(f"FIAT-{number}"), sender=merchant)
            settlements += amount
        else:
            invoices.refund(iid, customer, amount, sender=merchant)
            refunds += amount
        paid = payments + settlements - refunds
        assert invoices.getInvoice(iid).paid == paid
        assert invoices.amountDue(iid) == AMOUNT - paid
        assert paid <= AMOUNT

    assert invoices.statusOf(iid) == PAID
    with reverts_with(invoices.InvoiceAlreadyPaid, invoiceId=iid):
        invoices.pay(merchant, ref, 1, sender=customer)
    # Tokens moved: the merchant got the on-chain payments and gave back the refunds.
    assert token.balanceOf(merchant) == FUNDS + payments - refunds
    assert token.balanceOf(customer) == FUNDS - payments + refunds


# ---------------------------------------------------------------------- settle offchain


def test_merchant_settles_offchain(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    iid = invoice_id(merchant, issue())
    fiat = reference("stripe:pi_123")
    assert invoices.isFiatReferenceUsed(merchant, fiat) is False

    receipt = invoices.settleOffchain(iid, AMOUNT, fiat, sender=merchant)

    assert_single_event(
        receipt,
        invoices,
        "InvoiceSettledOffchain",
        invoiceId=iid,
        settler=merchant,
        amount=AMOUNT,
        fiatReference=fiat,
    )
    assert emitted(receipt, invoices, "InvoicePaid") == []
    assert invoices.statusOf(iid) == PAID
    assert invoices.getInvoice(iid).paid == AMOUNT
    assert invoices.isFiatReferenceUsed(merchant, fiat) is True
    assert token.balanceOf(merchant) == FUNDS
    assert token.balanceOf(customer) == FUNDS


def test_approved_settler_settles_offchain(
    invoices: Any, issue: Issue, merchant: Any, keeper: Any
) -> None:
    iid = invoice_id(merchant, issue())
    receipt = invoices.setSettler(keeper, True, sender=merchant)
    assert_single_event(
        receipt, invoices, "SettlerSet", merchant=merchant, settler=keeper, approved=True
    )
    assert invoices.isSettler(merchant, keeper) is True
    fiat = reference("bank:TRX-1")

    receipt = invoices.settleOffchain(iid, AMOUNT, fiat, sender=keeper)

    assert_single_event(
        receipt,
        invoices,
        "InvoiceSettledOffchain",
        invoiceId=iid,
        settler=keeper,
        amount=AMOUNT,
        fiatReference=fiat,
    )
    assert invoices.statusOf(iid) == PAID
    assert invoices.isFiatReferenceUsed(merchant, fiat) is True
    assert invoices.isFiatReferenceUsed(keeper, fiat) is False


@pytest.mark.parametrize("caller_name", ["stranger", "customer", "operator"])
def test_others_cannot_settle(
    invoices: Any, issue: Issue, merchant: Any, request: Any, caller_name: str
) -> None:
    caller = request.getfixturevalue(caller_name)
    # Operators issue and void, but settling needs a settler approval of its own.
    invoices.setOperator(request.getfixturevalue("operator"), True, sender=merchant)
    iid = invoice_id(merchant, issue())

    with reverts_with(invoices.NotSettler, merchant=merchant, caller=caller):
        invoices.settleOffchain(iid, AMOUNT, reference("FIAT-X"), sender=caller)


def test_settler_of_another_merchant_cannot_settle(
    invoices: Any, issue: Issue, merchant: Any, stranger: Any, keeper: Any
) -> None:
    invoices.setSettler(keeper, True, sender=stranger)
    iid = invoice_id(merchant, issue())

    with reverts_with(invoices.NotSettler, merchant=merchant, caller=keeper):
        invoices.settleOffchain(iid, AMOUNT, reference("FIAT-X"), sender=keeper)


def test_revoked_settler_cannot_settle(
    invoices: Any, issue: Issue, merchant: Any, keeper: Any
) -> None:
    iid = invoice_id(merchant, issue(allow_partial=True))
    invoices.setSettler(keeper, True, sender=merchant)
    invoices.settleOffchain(iid, 10 * UNIT, reference("FIAT-1"), sender=keeper)

    receipt = invoices.setSettler(keeper, False, sender=merchant)

    assert_single_event(
        receipt, invoices, "SettlerSet", merchant=merchant, settler=keeper, approved=False
    )
    assert invoices.isSettler(merchant, keeper) is False
    with reverts_with(invoices.NotSettler, merchant=merchant, caller=keeper):
        invoices.settleOffchain(iid, 10 * UNIT, reference("FIAT-2"), sender=keeper)


def test_settle_unknown_invoice_reverts(invoices: Any, merchant: Any) -> None:
    iid = invoice_id(merchant, reference("NEVER-ISSUED"))

    with reverts_with(invoices.InvoiceNotFound, invoiceId=iid):
        invoices.settleOffchain(iid, AMOUNT, reference("FIAT-X"), sender=merchant)


def test_fiat_reference_cannot_be_used_twice_on_same_invoice(
    invoices: Any, issue: Issue, merchant: Any
) -> None:
    iid = invoice_id(merchant, issue(allow_partial=True))
    fiat = reference("FIAT-ONCE")
    invoices.settleOffchain(iid, 10 * UNIT, fiat, sender=merchant)

    with reverts_with(invoices.FiatReferenceAlreadyUsed, merchant=merchant, fiatReference=fiat):
        invoices.settleOffchain(iid, 10 * UNIT, fiat, sender=merchant)

    assert invoices.amountDue(iid) == 90 * UNIT


def test_fiat_reference_cannot_be_reused_on_another_invoice(
    invoices: Any, issue: Issue, merchant: Any, keeper: Any
) -> None:
    first = invoice_id(merchant, issue())
    second = invoice_id(merchant, issue())
    invoices.setSettler(keeper, True, sender=merchant)
    fiat = reference("FIAT-ONCE")
    invoices.settleOffchain(first, AMOUNT, fiat, sender=merchant)

    # Neither the merchant nor its settler can reuse it.
    with reverts_with(invoices.FiatReferenceAlreadyUsed, merchant=merchant, fiatReference=fiat):
        invoices.settleOffchain(second, AMOUNT, fiat, sender=merchant)
    with reverts_with(invoices.FiatReferenceAlreadyUsed, merchant=merchant, fiatReference=fiat):
        invoices.settleOffchain(second, AMOUNT, fiat, sender=keeper)

    assert invoices.statusOf(second) == OPEN


def test_failed_settlement_does_not_use_fiat_reference(
    invoices: Any, issue: Issue, merchant: Any
) -> None:
    iid = invoice_id(merchant, issue())
    fiat = reference("FIAT-RETRY")

    with reverts_with(invoices.AmountExceedsDue, invoiceId=iid, amount=AMOUNT + 1, due=AMOUNT):
        invoices.settleOffchain(iid, AMOUNT + 1, fiat, sender=merchant)

    assert invoices.isFiatReferenceUsed(merchant, fiat) is False
    invoices.settleOffchain(iid, AMOUNT, fiat, sender=merchant)
    assert invoices.statusOf(iid) == PAID


def test_fiat_reference_is_scoped_to_merchant(
    invoices: Any, issue: Issue, merchant: Any, stranger: Any
) -> None:
    mine = invoice_id(merchant, issue())
    theirs = invoice_id(stranger, issue(sender=stranger, for_merchant=stranger))
    fiat = reference("FIAT-SHARED")
    invoices.settleOffchain(mine, AMOUNT, fiat, sender=merchant)
    assert invoices.isFiatReferenceUsed(stranger, fiat) is False

    receipt = invoices.settleOffchain(theirs, AMOUNT, fiat, sender=stranger)

    assert len(emitted(receipt, invoices, "InvoiceSettledOffchain")) == 1
    assert invoices.isFiatReferenceUsed(stranger, fiat) is True
    assert invoices.statusOf(theirs) == PAID


def test_settlement_respects_installment_rules(invoices: Any, issue: Issue, merchant: Any) -> None:
    iid = invoice_id(merchant, issue(allow_partial=False))

    with reverts_with(
        invoices.PartialPaymentNotAllowed, invoiceId=iid, amount=AMOUNT - 1, due=AMOUNT
    ):
        invoices.settleOffchain(iid, AMOUNT - 1, reference("FIAT-1"), sender=merchant)
    with reverts_with(invoices.AmountExceedsDue, invoiceId=iid, amount=AMOUNT + 1, due=AMOUNT):
        invoices.settleOffchain(iid, AMOUNT + 1, reference("FIAT-2"), sender=merchant)
    with reverts_with(invoices.InvalidAmount, amount=0, max=AMOUNT):
        invoices.settleOffchain(iid, 0, reference("FIAT-3"), sender=merchant)

    invoices.settleOffchain(iid, AMOUNT, reference("FIAT-4"), sender=merchant)

    with reverts_with(invoices.InvoiceAlreadyPaid, invoiceId=iid):
        invoices.settleOffchain(iid, 1, reference("FIAT-5"), sender=merchant)


def test_settlement_cannot_exceed_remaining_due(invoices: Any, issue: Issue, merchant: Any) -> None:
    iid = invoice_id(merchant, issue(allow_partial=True))
    invoices.settleOffchain(iid, 70 * UNIT, reference("FIAT-1"), sender=merchant)
    assert invoices.statusOf(iid) == PARTIALLY_PAID

    with reverts_with(invoices.AmountExceedsDue, invoiceId=iid, amount=31 * UNIT, due=30 * UNIT):
        invoices.settleOffchain(iid, 31 * UNIT, reference("FIAT-2"), sender=merchant)


def test_settlement_and_onchain_payment_mix_to_paid(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    ref = issue(allow_partial=True)
    iid = invoice_id(merchant, ref)
    invoices.settleOffchain(iid, 45 * UNIT, reference("FIAT-1"), sender=merchant)
    token.approve(invoices, AMOUNT, sender=customer)

    with reverts_with(invoices.AmountExceedsDue, invoiceId=iid, amount=AMOUNT, due=55 * UNIT):
        invoices.pay(merchant, ref, AMOUNT, sender=customer)

    invoices.pay(merchant, ref, 55 * UNIT, sender=customer)

    assert invoices.statusOf(iid) == PAID
    assert invoices.getInvoice(iid).paid == AMOUNT
    assert token.balanceOf(merchant) == FUNDS + 55 * UNIT
    assert token.balanceOf(customer) == FUNDS - 55 * UNIT


def test_eth_invoice_can_be_settled_offchain(
    invoices: Any, issue: Issue, merchant: Any, customer: Any
) -> None:
    ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT, allow_partial=True)
    iid = invoice_id(merchant, ref)
    invoices.settleOffchain(iid, ETH, reference("FIAT-1"), sender=merchant)
    merchant_before = merchant.balance

    invoices.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT - ETH)

    assert invoices.statusOf(iid) == PAID
    assert merchant.balance == merchant_before + ETH_AMOUNT - ETH


# ----------------------------------------------------------------------------- overdue


def test_is_overdue_after_due_date_until_paid(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    due_date = chain.pending_timestamp + PERIOD
    ref = reference("INV-OVERDUE")
    invoices.issue(merchant, ref, customer, token, AMOUNT, due_date, True, CONTENT, sender=merchant)
    iid = invoice_id(merchant, ref)
    assert invoices.isOverdue(iid) is False

    set_time(chain, due_date)
    assert invoices.isOverdue(iid) is False

    set_time(chain, due_date + 1)
    assert invoices.isOverdue(iid) is True

    token.approve(invoices, AMOUNT, sender=customer)
    invoices.pay(merchant, ref, 40 * UNIT, sender=customer)
    assert invoices.statusOf(iid) == PARTIALLY_PAID
    assert invoices.isOverdue(iid) is True

    invoices.pay(merchant, ref, 60 * UNIT, sender=customer)
    assert invoices.isOverdue(iid) is False


def test_late_payment_is_accepted(
    invoices: Any, issue: Issue, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = issue(due_in=3600)
    iid = invoice_id(merchant, ref)
    set_time(chain, invoices.getInvoice(iid).dueDate + PERIOD)
    assert invoices.isOverdue(iid) is True
    token.approve(invoices, AMOUNT, sender=customer)

    invoices.pay(merchant, ref, AMOUNT, sender=customer)

    assert invoices.statusOf(iid) == PAID
    assert invoices.isOverdue(iid) is False


def test_settled_invoice_is_not_overdue(
    invoices: Any, issue: Issue, merchant: Any, chain: Any
) -> None:
    iid = invoice_id(merchant, issue(due_in=3600))
    invoices.settleOffchain(iid, AMOUNT, reference("FIAT-1"), sender=merchant)

    set_time(chain, invoices.getInvoice(iid).dueDate + 1)

    assert invoices.isOverdue(iid) is False


# ------------------------------------------------------------------------------- pause


def test_owner_pauses_and_unpauses(invoices: Any, owner: Any) -> None:
    receipt = invoices.pause(sender=owner)
    assert_single_event(receipt, invoices, "Paused", account=owner)
    assert invoices.paused() is True

    receipt = invoices.unpause(sender=owner)
    assert_single_event(receipt, invoices, "Unpaused", account=owner)
    assert invoices.paused() is False


def test_pause_blocks_issue(
    invoices: Any, issue: Issue, owner: Any, merchant: Any, operator: Any
) -> None:
    invoices.setOperator(operator, True, sender=merchant)
    invoices.pause(sender=owner)

    with reverts_with(invoices.EnforcedPause):
        issue()
    with reverts_with(invoices.EnforcedPause):
        issue(sender=operator, for_merchant=merchant)

    invoices.unpause(sender=owner)
    ref = issue()
    assert invoices.statusOf(invoice_id(merchant, ref)) == OPEN


def test_pause_blocks_offchain_settlement(
    invoices: Any, issue: Issue, owner: Any, merchant: Any, keeper: Any
) -> None:
    iid = invoice_id(merchant, issue())
    invoices.setSettler(keeper, True, sender=merchant)
    fiat = reference("FIAT-PAUSED")
    invoices.pause(sender=owner)

    with reverts_with(invoices.EnforcedPause):
        invoices.settleOffchain(iid, AMOUNT, fiat, sender=merchant)
    with reverts_with(invoices.EnforcedPause):
        invoices.settleOffchain(iid, AMOUNT, fiat, sender=keeper)

    assert invoices.isFiatReferenceUsed(merchant, fiat) is False


def test_payments_and_voids_stay_open_while_paused(
    invoices: Any, issue: Issue, owner: Any, merchant: Any, customer: Any, token: Any
) -> None:
    token_ref = issue()
    eth_ref = issue(invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    unpaid = invoice_id(merchant, issue())
    token.approve(invoices, AMOUNT, sender=customer)
    merchant_eth = merchant.balance
    invoices.pause(sender=owner)

    invoices.pay(merchant, token_ref, AMOUNT, sender=customer)
    invoices.payEth(merchant, eth_ref, sender=customer, value=ETH_AMOUNT)
    void_receipt = invoices.voidInvoice(unpaid, sender=merchant)

    assert invoices.statusOf(invoice_id(merchant, token_ref)) == PAID
    assert invoices.statusOf(invoice_id(merchant, eth_ref)) == PAID
    assert invoices.statusOf(unpaid) == VOID
    assert token.balanceOf(merchant) == FUNDS + AMOUNT
    assert merchant.balance == merchant_eth + ETH_AMOUNT - void_receipt.total_fees_paid


def test_pay_with_permit_stays_open_while_paused(
    invoices: Any, issue: Issue, owner: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> None:
    ref = issue()
    deadline = chain.pending_timestamp + 3600
    v, r, s = sign_permit(token, customer, invoices, AMOUNT, deadline)
    invoices.pause(sender=owner)

    invoices.payWithPermit(merchant, ref, AMOUNT, deadline, v, r, s, sender=customer)

    assert invoices.statusOf(invoice_id(merchant, ref)) == PAID


@pytest.mark.parametrize("caller_name", ["stranger", "merchant"])
def test_only_owner_may_pause_or_unpause(
    invoices: Any, owner: Any, request: Any, caller_name: str
) -> None:
    caller = request.getfixturevalue(caller_name)

    with reverts_with(invoices.OwnableUnauthorizedAccount, account=caller):
        invoices.pause(sender=caller)

    invoices.pause(sender=owner)
    with reverts_with(invoices.OwnableUnauthorizedAccount, account=caller):
        invoices.unpause(sender=caller)
    assert invoices.paused() is True


# ------------------------------------------------------------------------ platform fee


def test_platform_fee_views(invoices: Any, invoices_with_fee: Any, fee_recipient: Any) -> None:
    assert invoices.platformFee() == (0, ZERO_ADDRESS)
    assert invoices_with_fee.platformFee() == (FEE_BPS, fee_recipient.address)


@pytest.mark.parametrize(
    "amount", [AMOUNT, 12_345, 39], ids=["100-units", "odd", "fee-rounds-to-0"]
)
def test_token_payment_splits_platform_fee(
    invoices_with_fee: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
    amount: int,
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry, amount=amount)
    iid = invoice_id(merchant, ref)
    fee = amount * FEE_BPS // 10_000
    token.approve(registry, amount, sender=customer)

    receipt = registry.pay(merchant, ref, amount, sender=customer)

    assert_single_event(
        receipt, registry, "InvoicePaid", invoiceId=iid, payer=customer, amount=amount, fee=fee
    )
    assert token.balanceOf(customer) == FUNDS - amount
    assert token.balanceOf(merchant) == FUNDS + amount - fee
    assert token.balanceOf(fee_recipient) == fee
    assert token.balanceOf(registry) == 0
    assert registry.statusOf(iid) == PAID
    assert registry.getInvoice(iid).paid == amount


def test_fee_is_taken_from_every_installment(
    invoices_with_fee: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry, allow_partial=True)
    token.approve(registry, AMOUNT, sender=customer)

    first = registry.pay(merchant, ref, 30 * UNIT, sender=customer)
    second = registry.pay(merchant, ref, 70 * UNIT, sender=customer)

    first_fee, second_fee = 30 * UNIT * FEE_BPS // 10_000, 70 * UNIT * FEE_BPS // 10_000
    assert emitted(first, registry, "InvoicePaid")[0].fee == first_fee
    assert emitted(second, registry, "InvoicePaid")[0].fee == second_fee
    assert token.balanceOf(fee_recipient) == first_fee + second_fee
    assert token.balanceOf(merchant) == FUNDS + AMOUNT - first_fee - second_fee


def test_offchain_settlement_pays_no_fee(
    invoices_with_fee: Any, issue: Issue, merchant: Any, fee_recipient: Any, token: Any
) -> None:
    registry = invoices_with_fee
    iid = invoice_id(merchant, issue(registry=registry))

    registry.settleOffchain(iid, AMOUNT, reference("FIAT-1"), sender=merchant)

    assert registry.statusOf(iid) == PAID
    assert token.balanceOf(fee_recipient) == 0


def test_eth_payment_splits_platform_fee(
    invoices_with_fee: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry, invoice_token=NATIVE_TOKEN, amount=ETH_AMOUNT)
    iid = invoice_id(merchant, ref)
    fee = ETH_AMOUNT * FEE_BPS // 10_000
    merchant_before, recipient_before = merchant.balance, fee_recipient.balance

    receipt = registry.payEth(merchant, ref, sender=customer, value=ETH_AMOUNT)

    assert_single_event(
        receipt, registry, "InvoicePaid", invoiceId=iid, payer=customer, amount=ETH_AMOUNT, fee=fee
    )
    assert merchant.balance == merchant_before + ETH_AMOUNT - fee
    assert fee_recipient.balance == recipient_before + fee
    assert registry.balance == 0


def test_refund_with_fee_comes_from_merchant_in_full(
    invoices_with_fee: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry)
    iid = invoice_id(merchant, ref)
    fee = AMOUNT * FEE_BPS // 10_000
    token.approve(registry, AMOUNT, sender=customer)
    registry.pay(merchant, ref, AMOUNT, sender=customer)
    token.approve(registry, AMOUNT, sender=merchant)

    registry.refund(iid, customer, AMOUNT, sender=merchant)

    assert token.balanceOf(customer) == FUNDS
    assert token.balanceOf(merchant) == FUNDS - fee
    assert token.balanceOf(fee_recipient) == fee
    assert registry.statusOf(iid) == OPEN


def test_fee_payment_without_allowance_reports_full_amount(
    invoices_with_fee: Any, issue: Issue, merchant: Any, customer: Any, token: Any
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry)

    with reverts_with(
        registry.PaymentFailed,
        token=token,
        **{"from": customer},
        amount=AMOUNT,
        allowance=0,
        balance=FUNDS,
    ):
        registry.pay(merchant, ref, AMOUNT, sender=customer)


def test_fee_payment_with_allowance_short_of_fee_reverts_whole_payment(
    invoices_with_fee: Any,
    issue: Issue,
    merchant: Any,
    customer: Any,
    fee_recipient: Any,
    token: Any,
) -> None:
    registry = invoices_with_fee
    ref = issue(registry=registry)
    fee = AMOUNT * FEE_BPS // 10_000
    # Enough for the merchant's share, not for the fee on top.
    token.approve(registry, AMOUNT - fee, sender=customer)

    with reverts_with(
        registry.PaymentFailed,
        token=token,
        **{"from": customer},
        amount=AMOUNT,
        allowance=AMOUNT - fee,
        balance=FUNDS,
    ):
        registry.pay(merchant, ref, AMOUNT, sender=customer)

    assert token.balanceOf(customer) == FUNDS
    assert token.balanceOf(merchant) == FUNDS
    assert token.balanceOf(fee_recipient) == 0
    assert registry.amountDue(invoice_id(merchant, ref)) == AMOUNT


def _deploy_reverts(deploy: Callable[[], Any], signature: str, types: list[str]) -> tuple:
    """Deploys, expecting a revert with the custom error `signature`; returns its values.

    Ape does not decode custom errors of a constructor, so the revert data is decoded here."""
    with ape.reverts() as info:
        deploy()
    data = revert_data(info.value)
    assert data[:4] == selector(signature), f"reverted with {data.hex()}"
    return tuple(decode(types, data[4:]))


def test_constructor_rejects_fee_above_max(project: Any, owner: Any, fee_recipient: Any) -> None:
    values = _deploy_reverts(
        lambda: owner.deploy(project.InvoiceRegistry, owner, fee_recipient, 1_001),
        "FeeTooHigh(uint256,uint256)",
        ["uint256", "uint256"],
    )

    assert values == (1_001, 1_000)


def test_constructor_requires_fee_recipient_for_fee(project: Any, owner: Any) -> None:
    values = _deploy_reverts(
        lambda: owner.deploy(project.InvoiceRegistry, owner, ZERO_ADDRESS, 1),
        "FeeRecipientMissing()",
        [],
    )

    assert values == ()


def test_constructor_accepts_max_fee(project: Any, owner: Any, fee_recipient: Any) -> None:
    registry = owner.deploy(project.InvoiceRegistry, owner, fee_recipient, 1_000)

    assert registry.platformFee() == (1_000, fee_recipient.address)
    assert registry.owner() == owner.address
