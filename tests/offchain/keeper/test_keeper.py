"""The keeper on Anvil with the real contracts, on SQLite and PostgreSQL: due
subscriptions charged once in gas-bounded batches, nothing sent before it is due, and a
keeper that dies between recording and broadcasting (or before reading receipts) resumes
without ever sending a charge twice; a batch that a reorg takes out is sent again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from offchain.db import keeper_repository as repo
from offchain.db.models import KeeperTxKind, KeeperTxStatus
from offchain.keeper.chain import BroadcastOutcome
from offchain.keeper.keeper import Keeper
from tests.chain_fixtures import PERIOD
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.keeper.helpers import (
    Billing,
    advance,
    charged_periods,
    manager_logs,
    node_call,
    settle,
    wait_mined,
)


def _transactions(mirror: Mirror) -> list[Any]:
    with mirror.engine.connect() as conn:
        return repo.transactions(conn, mirror.chain_id)


def _sent_ids(mirror: Mirror) -> list[int]:
    return [
        int(i)
        for tx in _transactions(mirror)
        if tx.status != KeeperTxStatus.DROPPED
        for i in tx.subscription_ids.split(",")
    ]


def test_charges_each_due_subscription_once_in_bounded_batches(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    billing = Billing.create(mirror, token, merchant, customer, 30)
    mirror.sync()
    keeper = make_keeper(max_batch=8)
    # Nothing is due yet: the first period was charged at subscribe.
    assert settle(keeper)[0].charges_sent == []
    advance(mirror.web3, PERIOD)
    late = Billing.create(mirror, token, merchant, customer, 3)  # due a period from now
    mirror.sync()
    results = settle(keeper)
    assert sorted(results[0].charges_sent) == billing.ids
    assert results[0].charge_transactions == 4  # 30 in batches of at most 8
    # The mirror has not seen the charges yet; the keeper's own receipts keep it from
    # picking the subscriptions again, and after the indexer catches up nothing is due.
    assert all(not r.charges_sent for r in results[1:])
    mirror.sync()
    assert settle(keeper)[0].charges_sent == []
    periods = charged_periods(mirror)
    assert all(n == 1 for n in periods.values())
    assert sum(1 for (i, _start) in periods if i in billing.ids) == 2 * 30
    assert not any(i in late.ids for i in _sent_ids(mirror))
    assert manager_logs(mirror, "ChargeSkipped") == []
    txs = _transactions(mirror)
    assert {tx.status for tx in txs} == {KeeperTxStatus.CONFIRMED}
    assert all(tx.succeeded and tx.kind == KeeperTxKind.CHARGE_BATCH for tx in txs)
    assert len({tx.nonce for tx in txs}) == len(txs)


def test_batches_are_sized_by_gas(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    billing = Billing.create(mirror, token, merchant, customer, 24)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    cap = 250_000  # about seven charges of a batch, with the margin
    keeper = make_keeper(max_gas_per_tx=cap)
    settle(keeper)
    txs = _transactions(mirror)
    assert len(txs) >= 3
    assert all(tx.gas_limit <= cap and (tx.gas_used or 0) <= tx.gas_limit for tx in txs)
    assert sorted(_sent_ids(mirror)) == billing.ids
    assert all(n == 1 for n in charged_periods(mirror).values())


class _Crash(Exception):
    pass


def test_killed_between_recording_and_broadcasting_resumes_with_the_same_transaction(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    billing = Billing.create(mirror, token, merchant, customer, 20)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    first = make_keeper(max_batch=5)
    sent: list[str] = []
    broadcast = first.chain.broadcast

    def crash_on_second(raw: str) -> BroadcastOutcome:
        if len(sent) == 1:
            raise _Crash  # the process dies with batch 2 recorded, not sent
        sent.append(raw)
        return broadcast(raw)

    first.chain.broadcast = crash_on_second  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        first.run_once()
    recorded = _transactions(mirror)
    assert len(recorded) == 2 and all(tx.status == KeeperTxStatus.PENDING for tx in recorded)

    again = make_keeper(max_batch=5)  # a new process: nothing in memory
    results = settle(again)
    # Batch 1 was sent and mined: its receipt is read; batch 2 is sent as it was recorded.
    assert (results[0].mined, results[0].rebroadcast) == (1, 1)
    # The subscriptions of the recorded batches were never put in a new one.
    ids = _sent_ids(mirror)
    assert sorted(ids) == billing.ids and len(ids) == len(set(ids))
    assert all(n == 1 for n in charged_periods(mirror).values())
    assert manager_logs(mirror, "ChargeSkipped") == []
    assert len(_transactions(mirror)) == 4


def test_killed_before_reading_receipts_resumes_without_resending(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    billing = Billing.create(mirror, token, merchant, customer, 12)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    first = make_keeper(max_batch=5)
    assert len(first.run_once().charges_sent) == 12  # sent and mined, receipts unread
    wait_mined(first)
    again = make_keeper(max_batch=5)
    results = settle(again)
    assert results[0].charges_sent == [] and results[0].mined == 3
    assert sorted(_sent_ids(mirror)) == billing.ids
    assert all(n == 1 for n in charged_periods(mirror).values())


def test_a_nonce_taken_by_another_transaction_drops_the_recorded_one(
    mirror: Mirror,
    make_keeper: Callable[..., Keeper],
    token: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
) -> None:
    """The key was used elsewhere while the recorded transaction was not sent: it can never
    be mined, so its subscriptions go to a new transaction (still charged once)."""
    billing = Billing.create(mirror, token, merchant, customer, 4)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    first = make_keeper()

    def lost(raw: str) -> BroadcastOutcome:
        raise _Crash

    first.chain.broadcast = lost  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        first.run_once()
    billing.c.call(keeper, billing.c.token, "approve", merchant.address, 1)  # takes the nonce
    results = settle(make_keeper())
    assert results[0].dropped == 1
    assert {tx.status for tx in _transactions(mirror)} == {
        KeeperTxStatus.DROPPED,
        KeeperTxStatus.CONFIRMED,
    }
    assert all(n == 1 for n in charged_periods(mirror).values())
    assert len(charged_periods(mirror)) == 2 * 4


def test_migrated_schema_serves_two_engines(engine: Engine) -> None:
    with engine.connect() as conn:
        assert repo.transactions(conn, 1) == []


def test_a_mined_batch_holds_its_subscriptions_until_final(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    """Should a reorg take a mined batch out, it is sent again: until it is final its
    subscriptions go into no other transaction."""
    billing = Billing.create(mirror, token, merchant, customer, 3)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    keeper = make_keeper(confirmations=3)
    assert keeper.run_once().charges_sent == billing.ids
    wait_mined(keeper)
    result = keeper.run_once()
    assert result.mined == 1 and result.confirmed == 0 and result.unresolved == 1
    with mirror.engine.connect() as conn:
        rows = repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
    (tx,) = _transactions(mirror)
    assert {r.transaction_id for r in rows if r.subscription_id in billing.ids} == {tx.id}
    assert tx.status == KeeperTxStatus.MINED
    mirror.web3.provider.make_request("anvil_mine", [hex(2)])  # type: ignore[arg-type]
    result = keeper.run_once()
    assert result.confirmed == 1 and result.unresolved == 0
    with mirror.engine.connect() as conn:
        rows = repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
    assert all(r.transaction_id is None for r in rows)
    assert all(n == 1 for n in charged_periods(mirror).values())


def test_a_mined_batch_reorged_out_is_sent_again_and_charges_once(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any, customer: Any
) -> None:
    """A batch seen mined, then taken out of the chain before it was final, goes back to
    pending, is broadcast again as it was (the same signed transaction), mined and
    confirmed: each subscription charged once for the period, held by that batch until
    then; the mirror follows the reorg to the same charges."""
    billing = Billing.create(mirror, token, merchant, customer, 3)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    first_periods = len(manager_logs(mirror, "Charged"))  # charged when subscribing
    keeper = make_keeper(confirmations=3)
    fork_point = node_call(mirror, "evm_snapshot")
    assert keeper.run_once().charges_sent == billing.ids
    wait_mined(keeper)
    assert keeper.run_once().mined == 1
    (tx,) = _transactions(mirror)
    assert tx.status == KeeperTxStatus.MINED
    mined_hash = tx.mined_tx_hash
    mirror.sync()

    assert node_call(mirror, "evm_revert", fork_point) is True
    assert len(manager_logs(mirror, "Charged")) == first_periods  # the batch left the chain
    result = keeper.run_once()
    assert result.confirmed == 0 and result.unresolved == 1
    (tx,) = _transactions(mirror)
    assert tx.status == KeeperTxStatus.PENDING
    with mirror.engine.connect() as conn:
        rows = repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
    assert {r.transaction_id for r in rows if r.subscription_id in billing.ids} == {tx.id}

    for _ in range(10):
        wait_mined(keeper)
        node_call(mirror, "anvil_mine", hex(1))
        if keeper.run_once().unresolved == 0:
            break
    (tx,) = _transactions(mirror)
    assert tx.status == KeeperTxStatus.CONFIRMED
    assert tx.mined_tx_hash == mined_hash
    periods = charged_periods(mirror)
    assert len(periods) == first_periods + len(billing.ids)
    assert all(n == 1 for n in periods.values())
    with mirror.engine.connect() as conn:
        rows = repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
    assert all(r.transaction_id is None for r in rows)
    mirror.sync()
    with mirror.engine.connect() as conn:
        mirrored = conn.exec_driver_sql("SELECT subscription_id, period_start FROM charges").all()
    assert sorted(tuple(r) for r in mirrored) == sorted(periods)
