"""Replays change nothing: a range indexed twice (the cursor set back by hand, or lost)
writes no row twice and leaves every projection as it was; new logs in a replayed range are
applied exactly once."""

from __future__ import annotations

from typing import Any

from eth_utils import keccak
from sqlalchemy import Engine, text
from web3 import Web3

from offchain.db.models import Invoice, InvoicePayment
from tests.chain_fixtures import GRACE, PERIOD, PRICE, UNIT
from tests.offchain.indexer.helpers import Mirror, assert_same_mirror, dump


def _activity(
    chain: Any,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    keeper: Any,
    operator: Any,
) -> None:
    """A bit of everything, spread over a few dozen blocks."""
    flat = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    metered = int(
        subscriptions.createMeteredPlan(
            token, PRICE, PERIOD, 0, GRACE, 50_000, 10, sender=merchant
        ).return_value
    )
    token.approve(subscriptions, 1_000 * PRICE, sender=customer)
    sub = int(subscriptions.subscribe(flat, PRICE, sender=customer).return_value)
    msub = int(subscriptions.subscribe(metered, 100 * UNIT, sender=customer).return_value)
    subscriptions.reportUsage(msub, 25, keccak(text="u1"), sender=merchant)
    subscriptions.setOperator(operator, True, sender=merchant)
    chain.pending_timestamp = int(subscriptions.paidThrough(msub))
    subscriptions.chargeBatch([sub, msub], sender=keeper)
    subscriptions.cancel(sub, True, sender=customer)
    due = int(chain.pending_timestamp) + PERIOD
    for n in range(3):
        invoices.issue(
            merchant,
            keccak(text=f"I-{n}"),
            customer,
            token,
            10 * UNIT,
            due,
            True,
            b"\x00" * 32,
            sender=merchant,
        )
    token.approve(invoices, 1_000 * UNIT, sender=payer)
    invoices.pay(merchant, keccak(text="I-0"), 4 * UNIT, sender=payer)
    invoices.pay(merchant, keccak(text="I-0"), 6 * UNIT, sender=payer)
    invoices.setSettler(operator, True, sender=merchant)
    invoices.settleOffchain(
        invoices.invoiceIdOf(merchant, keccak(text="I-1")),
        3 * UNIT,
        keccak(text="w"),
        sender=operator,
    )
    invoices.voidInvoice(invoices.invoiceIdOf(merchant, keccak(text="I-2")), sender=merchant)


def _set_cursor(mirror: Mirror, block: int | None) -> None:
    """Sets the cursor back to `block` by hand (None: forget it, as a new mirror)."""
    with mirror.engine.begin() as conn:
        if block is None:
            conn.execute(text("delete from indexer_state"))
            return
        block_hash = Web3.to_hex(mirror.web3.eth.get_block(block)["hash"])
        conn.execute(
            text("update indexer_state set last_block = :b, last_block_hash = :h"),
            {"b": block, "h": block_hash},
        )


def test_replayed_ranges_change_nothing(
    mirror: Mirror,
    chain: Any,
    web3: Web3,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    keeper: Any,
    operator: Any,
) -> None:
    _activity(chain, subscriptions, invoices, token, merchant, customer, payer, keeper, operator)
    mirror.confirmations = 4
    assert sum(r.events for r in mirror.sync()) == len(mirror.node_logs()) > 20
    indexed = dump(mirror.engine)
    head = web3.eth.block_number

    for cursor in (head - 2, head - 12, None):  # in the unconfirmed window, below it, lost
        for initial_range in (2_000, 3):
            _set_cursor(mirror, cursor)
            results = mirror.sync(initial_range=initial_range)
            assert results, "nothing was read again"
            assert sum(r.events for r in results) == 0
            assert dump(mirror.engine) == indexed, (cursor, initial_range)
            assert mirror.indexer().sync_once() is None
    assert mirror.reconcile() == []


def test_new_logs_in_a_replayed_range_apply_once(
    mirror: Mirror,
    other_engine: Engine,
    chain: Any,
    web3: Web3,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
) -> None:
    due = int(chain.pending_timestamp) + PERIOD
    invoices.issue(
        merchant,
        keccak(text="R-1"),
        customer,
        token,
        10 * UNIT,
        due,
        True,
        b"\x00" * 32,
        sender=merchant,
    )
    token.approve(invoices, 1_000 * UNIT, sender=payer)
    invoices.pay(merchant, keccak(text="R-1"), 2 * UNIT, sender=payer)
    mirror.sync()
    replay_from = web3.eth.block_number - 2
    invoices.pay(merchant, keccak(text="R-1"), 3 * UNIT, sender=payer)
    invoices.pay(merchant, keccak(text="R-1"), 5 * UNIT, sender=payer)

    _set_cursor(mirror, replay_from)
    results = mirror.sync(initial_range=2)
    assert sum(r.events for r in results) == 2  # only the two new payments
    invoice = mirror.rows(Invoice)[0]
    assert (invoice["paid"], invoice["status"]) == (10 * UNIT, "paid")
    assert sorted(p["amount"] for p in mirror.rows(InvoicePayment)) == [
        2 * UNIT,
        3 * UNIT,
        5 * UNIT,
    ]
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.reconcile() == []
