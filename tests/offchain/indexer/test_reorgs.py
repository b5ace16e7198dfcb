"""Reorgs: the mirror follows the canonical chain.

Anvil's `anvil_reorg` replaces the last `depth` blocks with new ones (new hashes), mining the
transactions it is given into them; the transactions of the replaced blocks are dropped. The
window of the tests holds one transaction per block, each changing the mirror a different
way; the replacement blocks hold another transaction, and re-include some of the old ones
one block earlier than before. After the sync, the mirror must equal a fresh index of the
canonical chain into an empty database, and reconcile must find nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine
from web3 import Web3

from offchain.db.models import (
    FACT_TABLES,
    Approval,
    Invoice,
    InvoicePayment,
    Plan,
    Subscription,
)
from offchain.indexer.indexer import ReorgTooDeep
from tests.chain_fixtures import GRACE, PERIOD, PRICE, UNIT
from tests.offchain.indexer.activity import Contracts, reference, with_nonces
from tests.offchain.indexer.helpers import Mirror, assert_same_mirror, dump

UNIT_PRICE = 50_000


@dataclass
class World:
    """The base state the window's transactions act on."""

    c: Contracts
    plan: int
    doomed_plan: int
    metered_sub: int
    sub: int
    due: int
    invoice_a: bytes  # open, paid in full in the window's first block
    invoice_b: bytes  # partial allowed, settled in part
    invoice_d: bytes  # voided
    invoice_e: bytes  # paid in full in the replacement blocks instead


@pytest.fixture
def world(
    web3: Web3,
    chain: Any,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    stranger: Any,
    operator: Any,
) -> World:
    c = Contracts.of(web3, subscriptions.address, invoices.address, token.address)
    plan = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    doomed = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    metered = int(
        subscriptions.createMeteredPlan(
            token, PRICE, PERIOD, 0, GRACE, UNIT_PRICE, 100, sender=merchant
        ).return_value
    )
    token.approve(subscriptions, 1_000 * PRICE, sender=customer)
    sub = int(subscriptions.subscribe(plan, PRICE, sender=customer).return_value)
    metered_sub = int(subscriptions.subscribe(metered, 100 * UNIT, sender=customer).return_value)
    due = int(chain.pending_timestamp) + PERIOD
    for number, partial in (("A", False), ("B", True), ("D", False), ("E", False)):
        invoices.issue(
            merchant,
            reference(number),
            customer,
            token,
            20 * UNIT,
            due,
            partial,
            b"\x01" * 32,
            sender=merchant,
        )
    invoices.setSettler(operator, True, sender=merchant)
    token.approve(invoices, 1_000 * UNIT, sender=payer)
    token.approve(invoices, 1_000 * UNIT, sender=stranger)
    return World(
        c,
        plan,
        doomed,
        metered_sub,
        sub,
        due,
        *(c.invoice_id(merchant, n) for n in ("A", "B", "D", "E")),
    )


def _window(
    w: World, merchant: Any, customer: Any, payer: Any, operator: Any, keeper: Any, stranger: Any
) -> list[dict[str, Any]]:
    """Ten transactions, one per block, each changing the mirror another way."""
    c = w.c
    return [
        c.request(payer, c.registry, "pay", merchant.address, reference("A"), 20 * UNIT),
        c.request(
            merchant,
            c.registry,
            "issue",
            merchant.address,
            reference("C"),
            customer.address,
            c.token.address,
            7 * UNIT,
            w.due,
            False,
            b"\x02" * 32,
        ),
        c.request(merchant, c.manager, "reportUsage", w.metered_sub, 150, reference("usage")),
        c.request(operator, c.registry, "settleOffchain", w.invoice_b, 5 * UNIT, reference("wire")),
        c.request(customer, c.manager, "subscribe", w.plan, PRICE),
        c.request(merchant, c.manager, "setOperator", stranger.address, True),
        c.request(merchant, c.manager, "deactivatePlan", w.doomed_plan),
        c.request(customer, c.manager, "cancel", w.sub, True),
        c.request(merchant, c.registry, "voidInvoice", w.invoice_d),
        c.request(keeper, c.manager, "chargeBatch", [w.sub, w.metered_sub, 99]),
    ]


def _assert_canonical(mirror: Mirror) -> None:
    """Every stored log and fact comes from a block of the node's canonical chain."""
    web3 = mirror.web3
    hashes: dict[int, str] = {}

    def canonical(number: int) -> str:
        if number not in hashes:
            hashes[number] = Web3.to_hex(web3.eth.get_block(number)["hash"])
        return hashes[number]

    for row in mirror.raw_events():
        assert row["block_hash"] == canonical(row["block_number"])
    for model in FACT_TABLES:
        for row in mirror.rows(model):
            assert row["block_hash"] == canonical(row["block_number"]), model.__tablename__


@pytest.mark.parametrize("depth", range(1, 11))
def test_reorg_is_followed(
    depth: int,
    mirror: Mirror,
    other_engine: Engine,
    world: World,
    web3: Web3,
    chain: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    operator: Any,
    keeper: Any,
    stranger: Any,
) -> None:
    mirror.confirmations = depth + 1
    c = world.c
    mirror.sync()
    fork_point = web3.eth.block_number
    window = _window(world, merchant, customer, payer, operator, keeper, stranger)[:depth]
    for request in window:
        c.send(request)
    assert web3.eth.block_number == fork_point + depth
    mirror.sync()
    # The orphaned first block paid invoice A in full.
    assert mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_a))["status"] == "paid"
    before = {
        Web3.to_hex(web3.eth.get_block(n)["hash"])
        for n in range(fork_point + 1, fork_point + depth + 1)
    }

    # The new blocks: E is paid instead of A; odd-numbered transactions come back one block
    # earlier than they were.
    replacement = [
        c.request(stranger, c.registry, "pay", merchant.address, reference("E"), 20 * UNIT)
    ]
    offsets = [0]
    for i in range(1, depth, 2):
        replacement.append(window[i])
        offsets.append(i - 1)
    replacement = with_nonces(web3, replacement, fork_point)
    chain.provider.make_request(
        "anvil_reorg",
        [depth, [[tx, offset] for tx, offset in zip(replacement, offsets, strict=True)]],
    )
    extra = depth % 3  # sometimes the chain has grown past the old head too
    if extra:
        chain.provider.make_request("anvil_mine", [hex(extra)])
    after = {
        Web3.to_hex(web3.eth.get_block(n)["hash"])
        for n in range(fork_point + 1, fork_point + depth + 1)
    }
    assert not before & after

    results = mirror.sync()
    assert [r.reorged_from for r in results if r.reorged_from is not None] == [fork_point + 1]
    state = mirror.state()
    assert state is not None and state.last_block == web3.eth.block_number

    fresh = mirror.with_engine(other_engine)
    fresh.sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.reconcile() == []
    _assert_canonical(mirror)

    # The facts of the orphaned blocks are gone and the projections are restored.
    invoice_a = mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_a))
    assert (invoice_a["paid"], invoice_a["status"]) == (0, "open")
    assert mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_e))["status"] == "paid"
    payments = {r["invoice_id"] for r in mirror.rows(InvoicePayment)}
    assert payments == {Web3.to_hex(world.invoice_e)}
    subscriptions = mirror.rows(Subscription)
    assert len(subscriptions) == 2  # the window's subscribe (an even one) is gone
    if depth > 6:  # deactivatePlan (even) was orphaned
        assert mirror.row(Plan, plan_id=world.doomed_plan)["active"] is True
    if depth > 5:  # setOperator (odd) came back
        assert [r["approved"] for r in mirror.rows(Approval, role="operator")] == [True]
    if depth > 8:  # voidInvoice (even) was orphaned
        assert mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_d))["status"] == "open"
    if depth > 3:  # settleOffchain (odd) came back
        assert mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_b))["paid"] == 5 * UNIT


def test_reorg_of_exactly_the_confirmation_depth_is_followed(
    mirror: Mirror,
    other_engine: Engine,
    world: World,
    web3: Web3,
    chain: Any,
    merchant: Any,
    stranger: Any,
) -> None:
    """With `confirmations=c` the mirror treats block head - c as final and the c blocks
    above it as reorgable: replacing exactly those must be followed, not refused."""
    mirror.confirmations = 2
    c = world.c
    c.call(merchant, c.manager, "setOperator", stranger.address, True)
    c.call(merchant, c.manager, "deactivatePlan", world.doomed_plan)
    mirror.sync()
    chain.provider.make_request("anvil_reorg", [2, []])
    mirror.sync()  # ReorgTooDeep here is the bug: block head - 2 did not change
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.rows(Approval, role="operator") == []
    assert mirror.reconcile() == []


def test_reorg_below_the_confirmation_depth_is_refused(
    mirror: Mirror, world: World, web3: Web3, chain: Any, merchant: Any, stranger: Any
) -> None:
    """A reorg deeper than the confirmations reaches blocks the mirror holds as final: the
    indexer raises ReorgTooDeep and leaves the mirror untouched (rebuilding it is an
    operator's decision)."""
    mirror.confirmations = 2
    c = world.c
    for _ in range(3):
        c.call(merchant, c.manager, "setOperator", stranger.address, True)
    mirror.sync()
    before = dump(mirror.engine)
    state = mirror.state()
    assert state is not None
    chain.provider.make_request("anvil_reorg", [4, []])
    indexer = mirror.indexer()
    with pytest.raises(ReorgTooDeep, match=r"confirmations=2"):
        indexer.sync_once()
    with pytest.raises(ReorgTooDeep):
        indexer.sync_once()  # and again: it does not guess
    assert dump(mirror.engine) == before
    assert state.last_block == web3.eth.block_number


def test_node_behind_the_mirror_rolls_back(
    mirror: Mirror,
    other_engine: Engine,
    world: World,
    web3: Web3,
    chain: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    stranger: Any,
) -> None:
    """The node's chain got shorter than the mirror's (a node restored from an older state):
    the blocks the node no longer has are rolled back, and indexing goes on from there."""
    mirror.confirmations = 6
    c = world.c
    snapshot = chain.snapshot()
    fork_point = web3.eth.block_number
    c.call(payer, c.registry, "pay", merchant.address, reference("A"), 20 * UNIT)
    c.call(customer, c.manager, "subscribe", world.plan, PRICE)
    c.call(merchant, c.manager, "setOperator", stranger.address, True)
    mirror.sync()
    assert len(mirror.rows(Subscription)) == 3
    chain.restore(snapshot)
    assert web3.eth.block_number == fork_point
    results = mirror.sync()
    assert [r.reorged_from for r in results] == [fork_point + 1]
    assert len(mirror.rows(Subscription)) == 2
    assert mirror.row(Invoice, invoice_id=Web3.to_hex(world.invoice_a))["status"] == "open"

    c.call(stranger, c.registry, "pay", merchant.address, reference("E"), 20 * UNIT)
    mirror.sync()
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_may_differ=True)
    assert mirror.reconcile() == []
    _assert_canonical(mirror)
