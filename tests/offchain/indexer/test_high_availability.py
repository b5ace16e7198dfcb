"""One active indexer per chain: a second `chainbill index` on the same database waits as a
standby (it does not even talk to the node) while the first lives, and takes over when the
first dies. On PostgreSQL the lock is a session advisory lock, on SQLite a lock file next to
the database; both are exercised, through the command line and through LeaderLock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from web3 import Web3

from offchain.db.engine import make_engine
from offchain.db.models import Subscription
from offchain.ha import LeaderLock
from tests.chain_fixtures import GRACE, PERIOD, PRICE
from tests.offchain.indexer.activity import Contracts
from tests.offchain.indexer.helpers import (
    Mirror,
    RpcProxy,
    assert_same_mirror,
    chainbill_index,
    eventually,
    kill,
    make_manifest,
    running,
    wait_until,
)


def _cursor(mirror: Mirror) -> int:
    state = mirror.state()
    return -1 if state is None else state.last_block


def test_standby_waits_then_takes_over_when_the_leader_dies(
    database_url: str,
    mirror: Mirror,
    other_engine: Engine,
    web3: Web3,
    tmp_path: Path,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    """PostgreSQL: an advisory lock; SQLite: the lock file next to the database."""
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
    plan = int(c.manager.functions.planCount().call())
    c.call(customer, c.token, "approve", c.manager.address, 10**30)

    def subscribe(times: int) -> None:
        for _ in range(times):
            c.call(customer, c.manager, "subscribe", plan, PRICE)

    subscribe(3)
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    leader_log, standby_log = tmp_path / "leader.log", tmp_path / "standby.log"

    # The standby reaches the node through a proxy that counts what it is asked.
    with RpcProxy(mirror.rpc_url) as standby_node:
        leader = chainbill_index(
            database_url, mirror.rpc_url, manifest, leader_log, follow=True,
            extra=["--poll-interval", "0.1"],
        )  # fmt: skip
        with running(leader):
            wait_until(
                lambda: _cursor(mirror) == web3.eth.block_number, 60, "the leader at the head"
            )
            standby = chainbill_index(database_url, standby_node.url, manifest, standby_log)
            with running(standby):
                wait_until(
                    lambda: "standby" in standby_log.read_text(), 60, "the standby's message"
                )
                subscribe(2)
                wait_until(
                    lambda: _cursor(mirror) == web3.eth.block_number, 60, "the leader following"
                )
                assert standby.poll() is None
                assert standby_node.log.methods == [], "the standby indexed while the leader lived"

                kill(leader)
                subscribe(2)  # only the standby can index these
                assert standby.wait(timeout=60) == 0, standby_log.read_text()
        assert "eth_getLogs" in standby_node.log.methods
    assert "standby" not in leader_log.read_text()
    assert _cursor(mirror) == web3.eth.block_number
    assert len(mirror.rows(Subscription)) == 7
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.reconcile() == []


def test_a_leader_that_lost_its_lock_stops_writing(
    database_url: str,
    mirror: Mirror,
    second_engine: Engine,
    web3: Web3,
    tmp_path: Path,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    """The session holding the advisory lock can go away under a live leader (a server
    restart or failover, an idle-session timeout, a DBA ending it): the lock is then free and
    a standby takes over. From then on the old leader must not write any more, or two
    indexers write one mirror."""
    if database_url.startswith("sqlite"):
        pytest.skip("a lock file cannot be taken away from a live process")
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    log = tmp_path / "leader.log"
    leader = chainbill_index(
        database_url, mirror.rpc_url, manifest, log, follow=True, extra=["--poll-interval", "0.1"]
    )
    new_leader = LeaderLock(second_engine, f"chainbill-indexer:{mirror.chain_id}")
    with running(leader):
        wait_until(lambda: _cursor(mirror) == web3.eth.block_number, 60, "the leader at the head")
        with mirror.engine.begin() as conn:
            holders = (
                conn.execute(
                    text(
                        "select pid from pg_locks join pg_database d on d.oid = pg_locks.database "
                        "where locktype = 'advisory' and granted and d.datname = current_database()"
                    )
                )
                .scalars()
                .all()
            )
            assert len(holders) == 1
            conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": holders[0]})
        wait_until(new_leader.try_acquire, 10, "the lock to be free")
        try:
            indexed = _cursor(mirror)
            c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
            # It polls every 0.1 s: three seconds are plenty to see it write, if it does.
            assert not eventually(lambda: _cursor(mirror) > indexed, 3), (
                "the old leader went on indexing after its lock was lost and taken by another"
            )
        finally:
            new_leader.release()


def test_two_indexers_starting_together_on_a_new_database(
    database_url: str, rpc_url: str, chain: Any, subscriptions: Any, invoices: Any, tmp_path: Path
) -> None:
    """Two `chainbill index` started at once on an empty database (a deployment rolling out
    two replicas): one leads, the other waits or finds nothing left to do; neither fails.
    Deterministic: an uncommitted `alembic_version` table holds the leader at the first
    statement of the schema creation (the lock is taken before the schema is touched, so the
    other instance waits as a standby meanwhile) until both have started."""
    if database_url.startswith("sqlite"):
        pytest.skip("the race is held deterministically with PostgreSQL's locks only")
    manifest_path = tmp_path / "manifest.json"
    manifest = make_manifest(chain.chain_id, subscriptions.address, invoices.address)
    manifest.write(manifest_path)
    blocker = make_engine(database_url)
    monitor = make_engine(database_url, isolation_level="AUTOCOMMIT")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    try:
        with blocker.connect() as hold, monitor.connect() as watch:
            hold.execute(text("create table alembic_version (version_num varchar(32) not null)"))
            first = chainbill_index(database_url, rpc_url, manifest_path, logs[0])
            second = chainbill_index(database_url, rpc_url, manifest_path, logs[1])
            with running(first), running(second):
                wait_until(
                    lambda: (
                        watch.execute(
                            text(
                                "select count(*) from pg_stat_activity where "
                                "datname = current_database() and wait_event_type = 'Lock'"
                            )
                        ).scalar_one()
                        == 1
                        and any("standby" in log.read_text() for log in logs if log.exists())
                    ),
                    60,
                    "the leader at the schema creation and the other instance on standby",
                )
                hold.rollback()
                codes = [first.wait(timeout=120), second.wait(timeout=120)]
        assert codes == [0, 0], "\n".join(log.read_text()[-1500:] for log in logs)
        mirror = Mirror(blocker, rpc_url, manifest)
        assert mirror.reconcile() == []
    finally:
        monitor.dispose()
        blocker.dispose()


# ---------------------------------------------------------------------- LeaderLock


@pytest.fixture
def second_engine(database_url: str, engine: Engine) -> Iterator[Engine]:
    """Another engine on the same database: what a second process would hold."""
    other = make_engine(database_url)
    yield other
    other.dispose()


def test_a_held_lock_excludes_others_until_released(engine: Engine, second_engine: Engine) -> None:
    first = LeaderLock(engine, "chainbill-indexer:31337")
    second = LeaderLock(second_engine, "chainbill-indexer:31337")
    another_chain = LeaderLock(second_engine, "chainbill-indexer:1")
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert not second.try_acquire()
        assert another_chain.try_acquire(), "indexers of other chains are independent"
        first.release()
        assert second.try_acquire(), "the lock was released, yet cannot be taken"
        assert not first.try_acquire()
    finally:
        for lock in (first, second, another_chain):
            lock.release()


def test_acquire_waits_as_standby_until_the_leader_releases(
    engine: Engine, second_engine: Engine
) -> None:
    leader = LeaderLock(engine, "chainbill-indexer:31337")
    standby = LeaderLock(second_engine, "chainbill-indexer:31337")
    stop = threading.Event()
    waits: list[int] = []
    outcome: list[bool] = []
    assert leader.try_acquire()
    thread = threading.Thread(
        target=lambda: outcome.append(
            standby.acquire(stop, poll=0.01, on_wait=lambda: waits.append(1))
        )
    )
    thread.start()
    try:
        wait_until(lambda: bool(waits), 10, "the standby to wait")
        assert thread.is_alive() and outcome == []
        leader.release()
        try:
            wait_until(lambda: not thread.is_alive(), 3, "the standby to take over")
        finally:
            stop.set()
            thread.join(timeout=10)
        assert outcome == [True]
        assert waits == [1], "the standby reports waiting once"
    finally:
        stop.set()
        leader.release()
        standby.release()


def test_acquire_gives_up_when_stopped(engine: Engine, second_engine: Engine) -> None:
    leader = LeaderLock(engine, "chainbill-indexer:31337")
    standby = LeaderLock(second_engine, "chainbill-indexer:31337")
    stop = threading.Event()
    stop.set()
    try:
        assert leader.try_acquire()
        assert standby.acquire(stop, poll=0.01) is False
    finally:
        leader.release()
        standby.release()


def test_sqlite_lock_is_a_file_next_to_the_database(database_url: str, engine: Engine) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL uses an advisory lock")
    lock = LeaderLock(engine, "chainbill-indexer:31337")
    database = Path(database_url.removeprefix("sqlite:///"))
    try:
        assert lock.try_acquire()
        assert Path(f"{database}.chainbill-indexer-31337.lock").exists()
    finally:
        lock.release()
