"""A retired key's transactions: the keeper of another key settles them once that key's
keeper is not running — sends a lost one again from its recorded bytes and records what it
charged, or gives up one that cannot be mined (it cannot be replaced without the key) and
charges those subscriptions itself — and each period is charged once. While that key's
keeper runs (PostgreSQL: it holds its lock), its transactions are left to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from web3 import Web3

from offchain.db import keeper_repository as repo
from offchain.db.models import KeeperTransaction, KeeperTxStatus
from offchain.keeper.keeper import Keeper
from offchain.keeper.locks import idle_senders, keeper_lock
from tests.chain_fixtures import PERIOD
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.keeper.helpers import Billing, advance, charged_periods, node_call, settle

SUBSCRIPTIONS = 4


def _retired_key_leaves_a_lost_batch(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> tuple[Billing, Keeper]:
    """The old key's keeper records and sends a batch, the node loses it (dropped from its
    pool), and that keeper is not started again."""
    billing = Billing.create(mirror, token, merchant, customer, SUBSCRIPTIONS)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    old = make_keeper()
    node_call(mirror, "evm_setAutomine", False)
    try:
        assert old.run_once().charges_sent == billing.ids
        node_call(mirror, "anvil_dropAllTransactions")
    finally:
        node_call(mirror, "evm_setAutomine", True)
    return billing, old


def _transactions(mirror: Mirror, sender: str) -> list[KeeperTransaction]:
    with mirror.engine.connect() as conn:
        return [t for t in repo.transactions(conn, mirror.chain_id) if t.sender == sender]


def _charged_once(mirror: Mirror, billing: Billing) -> bool:
    periods = charged_periods(mirror)
    return all(n == 1 for n in periods.values()) and {s for s, _ in periods} == set(billing.ids)


def test_a_retired_keys_lost_batch_is_sent_again_and_recorded(
    mirror: Mirror, make_keeper: Callable[..., Keeper], second_keeper_key: str, token: Any,
    merchant: Any, customer: Any,
) -> None:  # fmt: skip
    billing, old = _retired_key_leaves_a_lost_batch(mirror, make_keeper, token, merchant, customer)
    before = len(charged_periods(mirror))
    # A keeper that settles only its own: the subscriptions stay held, nothing is charged.
    own_only = make_keeper(key=second_keeper_key)
    assert own_only.run_once().charges_sent == [] and len(charged_periods(mirror)) == before

    new = make_keeper(
        key=second_keeper_key, sender_idle=idle_senders(mirror.engine, mirror.chain_id)
    )
    first = new.run_once()
    assert first.rebroadcast == 1 and first.charges_sent == []  # the old bytes, not a new batch
    settle(new)
    [tx] = _transactions(mirror, old.chain.sender)
    assert tx.status == KeeperTxStatus.CONFIRMED
    assert _transactions(mirror, new.chain.sender) == []
    assert _charged_once(mirror, billing)
    with mirror.engine.connect() as conn:
        rows = repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
    assert all(r.transaction_id is None for r in rows if r.subscription_id in billing.ids)


def test_a_retired_keys_batch_that_cannot_be_mined_is_given_up_and_charged_anew(
    mirror: Mirror, database_url: str, make_keeper: Callable[..., Keeper],
    second_keeper_key: str, token: Any, merchant: Any, customer: Any,
) -> None:  # fmt: skip
    if not database_url.startswith("sqlite"):
        pytest.skip("giving up a transaction does not depend on the database")
    billing, old = _retired_key_leaves_a_lost_batch(mirror, make_keeper, token, merchant, customer)
    # The old key has no ether left: the node refuses its transaction every time.
    node_call(mirror, "anvil_setBalance", Web3.to_checksum_address(old.chain.sender), "0x0")
    new = make_keeper(
        key=second_keeper_key,
        sender_idle=idle_senders(mirror.engine, mirror.chain_id),
        replace_after_blocks=3,
    )
    assert new.run_once().rebroadcast == 1
    for _ in range(2):
        node_call(mirror, "evm_mine")
    assert new.run_once().dropped == 0  # two blocks: not given up yet
    node_call(mirror, "evm_mine")
    given_up = new.run_once()
    assert given_up.dropped == 1 and given_up.charges_sent == billing.ids
    settle(new)
    [tx] = _transactions(mirror, old.chain.sender)
    assert tx.status == KeeperTxStatus.DROPPED
    assert [t.status for t in _transactions(mirror, new.chain.sender)] == [KeeperTxStatus.CONFIRMED]
    assert _charged_once(mirror, billing)


def test_a_running_keys_transactions_are_left_to_its_keeper(
    mirror: Mirror, database_url: str, make_keeper: Callable[..., Keeper],
    second_keeper_key: str, token: Any, merchant: Any, customer: Any,
) -> None:  # fmt: skip
    if database_url.startswith("sqlite"):
        pytest.skip("on SQLite one keeper runs at all: no other key's keeper can be running")
    billing, old = _retired_key_leaves_a_lost_batch(mirror, make_keeper, token, merchant, customer)
    new = make_keeper(
        key=second_keeper_key, sender_idle=idle_senders(mirror.engine, mirror.chain_id)
    )
    running = keeper_lock(mirror.engine, mirror.chain_id, old.chain.sender)
    assert running.try_acquire()  # the old key's keeper is (back) up
    try:
        result = new.run_once()
        assert result.rebroadcast == 0 and result.charges_sent == []
        [tx] = _transactions(mirror, old.chain.sender)
        assert tx.status == KeeperTxStatus.PENDING
    finally:
        running.release()
    assert new.run_once().rebroadcast == 1  # stopped: now it is settled by the other
    settle(new)
    assert _charged_once(mirror, billing)
