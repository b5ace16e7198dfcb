"""Fixtures shared by the contract, indexer and gateway tests: the real compiled contracts
on a real Anvil chain.

Ape reverts the chain to a snapshot after every test, so each test starts from the
state these (session- and module-scoped) fixtures build.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_utils import keccak

# 6-decimal stablecoin amounts.
UNIT = 10**6
PRICE = 10 * UNIT
PERIOD = 30 * 24 * 3600
TRIAL = 14 * 24 * 3600
GRACE = 3 * 24 * 3600
FEE_BPS = 250
FUNDS = 1_000_000 * UNIT
NATIVE_TOKEN = "0xEeeeeEeeeEeEeeEeEeEeeEEEeeeeEeeeeeeeEEeE"


@pytest.fixture(scope="session")
def owner(accounts: Any) -> Any:
    return accounts[0]


@pytest.fixture(scope="session")
def merchant(accounts: Any) -> Any:
    return accounts[1]


@pytest.fixture(scope="session")
def customer(accounts: Any) -> Any:
    return accounts[2]


@pytest.fixture(scope="session")
def stranger(accounts: Any) -> Any:
    return accounts[3]


@pytest.fixture(scope="session")
def keeper(accounts: Any) -> Any:
    return accounts[4]


@pytest.fixture(scope="session")
def fee_recipient(accounts: Any) -> Any:
    return accounts[5]


@pytest.fixture(scope="session")
def operator(accounts: Any) -> Any:
    return accounts[6]


@pytest.fixture(scope="session")
def payer(accounts: Any) -> Any:
    """Someone paying on a customer's behalf."""
    return accounts[7]


@pytest.fixture(scope="session")
def token(project: Any, owner: Any, merchant: Any, customer: Any, stranger: Any, payer: Any) -> Any:
    stablecoin = owner.deploy(project.MockStablecoin, "Test USD", "TUSD")
    for wallet in (merchant, customer, stranger, payer):
        stablecoin.mint(wallet, FUNDS, sender=owner)
    return stablecoin


@pytest.fixture(scope="session")
def subscriptions(project: Any, owner: Any) -> Any:
    return owner.deploy(project.SubscriptionManager, owner, "0x" + "00" * 20, 0)


@pytest.fixture(scope="session")
def subscriptions_with_fee(project: Any, owner: Any, fee_recipient: Any) -> Any:
    return owner.deploy(project.SubscriptionManager, owner, fee_recipient, FEE_BPS)


@pytest.fixture(scope="session")
def invoices(project: Any, owner: Any) -> Any:
    return owner.deploy(project.InvoiceRegistry, owner, "0x" + "00" * 20, 0)


@pytest.fixture(scope="session")
def invoices_with_fee(project: Any, owner: Any, fee_recipient: Any) -> Any:
    return owner.deploy(project.InvoiceRegistry, owner, fee_recipient, FEE_BPS)


def reference(number: str) -> bytes:
    """The on-chain reference of a business invoice number."""
    return keccak(text=number)


def events(receipt: Any, name: str) -> list[Any]:
    return [log for log in receipt.events if log.event_name == name]


@pytest.fixture
def create_plan(subscriptions: Any, merchant: Any, token: Any) -> Callable[..., int]:
    """Creates a plan on `subscriptions` (or another manager) and returns its id."""

    def create(
        manager: Any = None,
        *,
        price: int = PRICE,
        period: int = PERIOD,
        trial: int = 0,
        grace: int = GRACE,
        plan_token: Any = None,
        sender: Any = None,
    ) -> int:
        receipt = (manager or subscriptions).createPlan(
            plan_token or token, price, period, trial, grace, sender=sender or merchant
        )
        return int(receipt.return_value)

    return create


@pytest.fixture
def subscribe(subscriptions: Any, customer: Any, token: Any) -> Callable[..., int]:
    """Approves and subscribes (by default the customer, cap = price) and returns the id."""

    def do(
        plan_id: int,
        *,
        manager: Any = None,
        subscriber: Any = None,
        cap: int = PRICE,
        allowance: int = PRICE * 12,
        plan_token: Any = None,
    ) -> int:
        manager = manager or subscriptions
        subscriber = subscriber or customer
        (plan_token or token).approve(manager, allowance, sender=subscriber)
        return int(manager.subscribe(plan_id, cap, sender=subscriber).return_value)

    return do


@pytest.fixture
def issue(
    invoices: Any, merchant: Any, customer: Any, token: Any, chain: Any
) -> Callable[..., bytes]:
    """Issues an invoice (by default 100.00 TUSD to the customer, due in 30 days) and
    returns its reference."""

    counter = iter(range(1, 1_000_000))

    def do(
        *,
        registry: Any = None,
        number: str | None = None,
        amount: int = 100 * UNIT,
        invoice_token: Any = None,
        invoice_customer: Any = None,
        due_in: int = PERIOD,
        allow_partial: bool = False,
        content_hash: bytes = b"\x42" * 32,
        sender: Any = None,
        for_merchant: Any = None,
    ) -> bytes:
        ref = reference(number or f"INV-{next(counter):05d}")
        (registry or invoices).issue(
            for_merchant or merchant,
            ref,
            invoice_customer if invoice_customer is not None else customer,
            invoice_token or token,
            amount,
            chain.pending_timestamp + due_in,
            allow_partial,
            content_hash,
            sender=sender or merchant,
        )
        return ref

    return do
