"""Dunning on Anvil (SQLite and PostgreSQL): a failed charge is retried on the schedule
inside its grace period and not before, collected once the subscriber can pay, lapsed with
`finalizeLapse` after the grace period; charges of the coming days that the allowance or
balance will not cover are flagged at risk, spending a wallet's funds in due order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from offchain.db import keeper_repository as repo
from offchain.db.models import KeeperTxKind
from offchain.keeper.chain import SubscriptionStatus
from offchain.keeper.dunning import next_retry_at, parse_retry_schedule
from offchain.keeper.keeper import Keeper
from tests.chain_fixtures import FUNDS, GRACE, PERIOD, PRICE
from tests.offchain.indexer.activity import Contracts
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.keeper.helpers import advance, charged_periods, manager_logs, settle

SCHEDULE = (0.25, 0.5, 0.75)
DAY = 24 * 3600


def _subscribe(c: Contracts, who: Any, plan: int, allowance: int) -> int:
    c.call(who, c.token, "approve", c.manager.address, allowance)
    c.call(who, c.manager, "subscribe", plan, PRICE)
    return int(c.manager.functions.subscriptionCount().call())


def _rows(mirror: Mirror) -> dict[int, Any]:
    with mirror.engine.connect() as conn:
        return {
            r.subscription_id: r
            for r in repo.keeper_subscriptions(conn, mirror.chain_id, mirror.manager)
        }


def test_retries_on_schedule_then_lapses(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any,
    customer: Any, stranger: Any, payer: Any,
) -> None:  # fmt: skip
    c = Contracts.of(mirror.web3, mirror.manager, mirror.registry, token.address)
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
    plan = int(c.manager.functions.planCount().call())
    _subscribe(c, customer, plan, 10**30)  # always paid: never among the failures
    recovers = _subscribe(c, stranger, plan, PRICE)  # nothing left after the first period
    never = _subscribe(c, payer, plan, PRICE)
    # The lapsing subscription's own first due date: each subscription starts in a block of
    # its own, and a second can pass between them.
    never_due = int(c.manager.functions.paidThrough(never).call())
    keeper = make_keeper(retry_schedule=SCHEDULE)

    advance(mirror.web3, PERIOD)
    mirror.sync()
    settle(keeper)
    failures = manager_logs(mirror, "ChargeFailed")
    assert sorted(int.from_bytes(f["topics"][1], "big") for f in failures) == [recovers, never]
    rows = _rows(mirror)
    for subscription_id in (recovers, never):
        assert rows[subscription_id].failures == 1
        assert rows[subscription_id].last_failure_reason == "insufficient_allowance"
        assert (
            rows[subscription_id].next_retry_at
            == int(c.manager.functions.paidThrough(subscription_id).call()) + GRACE // 4
        )
    # Before the first retry point nothing is sent, however often the keeper runs.
    mirror.sync()
    assert settle(keeper)[0].charges_sent == []

    c.call(stranger, c.token, "approve", c.manager.address, 10**30)
    advance(mirror.web3, GRACE // 4)
    mirror.sync()
    assert sorted(settle(keeper)[0].charges_sent) == [recovers, never]
    rows = _rows(mirror)
    assert rows[recovers].failures == 0 and rows[recovers].next_retry_at is None
    assert rows[never].failures == 2
    assert rows[never].next_retry_at == rows[never].failed_due_at + GRACE // 2
    assert len(manager_logs(mirror, "ChargeFailed")) == 3

    advance(mirror.web3, GRACE)  # past the grace end: only the lapse is left
    mirror.sync()
    results = settle(keeper)
    assert results[0].charges_sent == [] and results[0].lapse_transactions == 1
    assert c.manager.functions.statusOf(never).call() == SubscriptionStatus.LAPSED
    lapses = manager_logs(mirror, "SubscriptionLapsed")
    assert [int.from_bytes(e["topics"][1], "big") for e in lapses] == [never]
    assert int.from_bytes(bytes(lapses[0]["data"])[:32], "big") == never_due + GRACE
    with mirror.engine.connect() as conn:
        kinds = [tx.kind for tx in repo.transactions(conn, mirror.chain_id)]
    assert kinds.count(KeeperTxKind.FINALIZE_LAPSE) == 1
    mirror.sync()
    assert settle(keeper)[0].sent == 0  # lapsed: never charged nor lapsed again
    assert all(n == 1 for n in charged_periods(mirror).values())
    assert c.manager.functions.statusOf(recovers).call() == SubscriptionStatus.ACTIVE


def test_flags_charges_the_funds_will_not_cover(
    mirror: Mirror, make_keeper: Callable[..., Keeper], token: Any, merchant: Any,
    customer: Any, stranger: Any, payer: Any,
) -> None:  # fmt: skip
    c = Contracts.of(mirror.web3, mirror.manager, mirror.registry, token.address)
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
    plan = int(c.manager.functions.planCount().call())
    covered = _subscribe(c, customer, plan, 10**30)
    no_allowance = _subscribe(c, stranger, plan, PRICE)
    # Two subscriptions of one wallet, allowance for three periods: after the two first
    # charges, enough for one of the next two.
    c.call(payer, c.token, "approve", c.manager.address, 3 * PRICE)
    c.call(payer, c.manager, "subscribe", plan, PRICE)
    first_of_two = int(c.manager.functions.subscriptionCount().call())
    c.call(payer, c.manager, "subscribe", plan, PRICE)
    second_of_two = first_of_two + 1
    mirror.sync()
    keeper = make_keeper(at_risk_days=3, at_risk_interval=0)
    assert keeper.run_once().at_risk == 0  # due in 30 days: outside the window

    advance(mirror.web3, PERIOD - 2 * DAY)
    mirror.sync()
    assert keeper.run_once().at_risk == 2
    with mirror.engine.connect() as conn:
        flagged = {
            r.subscription_id: r for r in repo.at_risk(conn, mirror.chain_id, mirror.manager)
        }
    assert set(flagged) == {no_allowance, second_of_two}
    assert flagged[no_allowance].at_risk_reason == "insufficient_allowance"
    assert flagged[no_allowance].at_risk_amount == PRICE
    assert (
        flagged[no_allowance].at_risk_due_at == c.manager.functions.paidThrough(no_allowance).call()
    )
    assert covered not in flagged and first_of_two not in flagged

    # The subscriber approves: the flag clears at the next scan.
    c.call(stranger, c.token, "approve", c.manager.address, 10**30)
    assert keeper.run_once().at_risk == 1
    # A balance too low is named as such: the payer approves plenty but spends its tokens.
    c.call(payer, c.token, "approve", c.manager.address, 10**30)
    c.call(payer, c.token, "transfer", merchant.address, FUNDS - 2 * PRICE - PRICE // 2)
    assert keeper.run_once().at_risk == 2
    with mirror.engine.connect() as conn:
        flagged = {
            r.subscription_id: r for r in repo.at_risk(conn, mirror.chain_id, mirror.manager)
        }
    assert set(flagged) == {first_of_two, second_of_two}
    assert {r.at_risk_reason for r in flagged.values()} == {"insufficient_balance"}


def test_retry_schedule_points() -> None:
    schedule = parse_retry_schedule("0.25,0.5,0.9")
    assert next_retry_at(1000, 400, 1000, schedule) == 1100
    assert next_retry_at(1000, 400, 1100, schedule) == 1200
    assert next_retry_at(1000, 400, 1250, schedule) == 1360  # a late keeper skips points
    assert next_retry_at(1000, 400, 1360, schedule) == 1400  # none left: the grace end
    for bad in ("0.5,0.25", "0,0.5", "0.5,1", "soon"):
        with pytest.raises(ValueError, match="retry schedule"):
            parse_retry_schedule(bad)
