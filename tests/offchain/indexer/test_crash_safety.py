"""Crash safety: `chainbill index` killed with SIGKILL at random moments of a backfill, and
restarted each time, ends with the same mirror as an uninterrupted run.

The command has no option for its `eth_getLogs` range size, so it reads the chain through a
proxy that refuses ranges of more than two blocks, the way big providers refuse large
ranges: the indexer then works in two-block ranges and a kill lands mid-backfill. Set
CHAINBILL_CRASH_SEED to replay a run's kill moments (each run prints its seed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from web3 import Web3

from offchain.db.engine import make_engine, upgrade_schema
from offchain.db.models import Base, Charge, Invoice, Subscription
from tests.chain_fixtures import PERIOD, PRICE, UNIT
from tests.offchain.indexer.activity import Contracts, reference
from tests.offchain.indexer.helpers import (
    Mirror,
    RpcProxy,
    assert_same_mirror,
    chainbill_index,
    make_manifest,
    running,
    wait_until,
)

# Twenty kills on SQLite; ten on PostgreSQL (where a kill is a dropped connection and the
# server rolls back), to keep the folder's CI time reasonable.
KILLS = {"sqlite": 20, "postgresql": 10}
SUBSCRIPTIONS = 50
PERIODS = 40  # each charges every subscription and skips an unknown one
INVOICES = 80
MAX_LOG_RANGE = 2
CONFIRMATIONS = 3


def _generate(c: Contracts, merchant: Any, customer: Any, payer: Any, keeper: Any) -> int:
    """A few thousand logs over a few hundred blocks; returns the number of logs."""
    web3 = c.web3
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, 3 * 24 * 3600)
    plan = int(c.manager.functions.planCount().call())
    first = int(c.manager.functions.subscriptionCount().call()) + 1
    c.call(customer, c.token, "approve", c.manager.address, 10**30)
    for _ in range(SUBSCRIPTIONS):
        c.call(customer, c.manager, "subscribe", plan, PRICE)
    ids = list(range(first, first + SUBSCRIPTIONS))
    c.call(payer, c.token, "approve", c.registry.address, 10**30)
    due = int(web3.eth.get_block("latest")["timestamp"]) + PERIODS * PERIOD + PERIOD
    for period in range(PERIODS):
        web3.provider.make_request("evm_increaseTime", [PERIOD])  # type: ignore[arg-type]
        c.call(keeper, c.manager, "chargeBatch", [*ids, 10**6], gas=20_000_000)
        for n in range(INVOICES // PERIODS):
            number = f"CRASH-{period}-{n}"
            c.call(
                merchant, c.registry, "issue", merchant.address, reference(number),
                customer.address, c.token.address, 5 * UNIT, due, True, b"\x00" * 32,
            )  # fmt: skip
            c.call(payer, c.registry, "pay", merchant.address, reference(number), 2 * UNIT)
    web3.provider.make_request("anvil_mine", [hex(100)])  # type: ignore[arg-type]
    return SUBSCRIPTIONS * 2 + PERIODS * (SUBSCRIPTIONS + 1) + INVOICES * 2 + 1


def _cursor(mirror: Mirror) -> int:
    state = mirror.state()
    return -1 if state is None else state.last_block


def test_killed_backfills_end_with_the_uninterrupted_mirror(
    mirror: Mirror,
    database_url: str,
    other_engine: Engine,
    web3: Web3,
    tmp_path: Path,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    keeper: Any,
) -> None:
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    started = time.monotonic()
    logs = _generate(c, merchant, customer, payer, keeper)
    head = web3.eth.block_number
    print(f"generated {logs} logs in {head} blocks in {time.monotonic() - started:.1f} s")
    assert len(mirror.node_logs()) >= logs >= 2_000
    mirror.confirmations = CONFIRMATIONS
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    output = tmp_path / "index.log"
    seed = int(os.environ.get("CHAINBILL_CRASH_SEED") or time.time_ns() % 1_000_000)
    print(f"CHAINBILL_CRASH_SEED={seed}")
    rng = random.Random(seed)

    with RpcProxy(mirror.rpc_url, max_log_range=MAX_LOG_RANGE) as proxy:
        cursors = [_cursor(mirror)]
        kills = KILLS[mirror.engine.dialect.name]
        for kill_number in range(kills):
            before = cursors[-1]
            # Each run may read at most one more share of the chain, so that a fast machine
            # cannot finish the backfill between two kills; a run that reaches its share waits
            # on the node, which is one more moment to be killed at.
            proxy.log_block_limit = cursors[0] + (head - cursors[0]) * (kill_number + 1) // (
                kills + 1
            )
            process = chainbill_index(
                database_url, proxy.url, manifest, output, confirmations=CONFIRMATIONS
            )
            with running(process):
                if kill_number % 4 == 3:
                    # Anywhere: start-up, taking the lock, the first ranges.
                    time.sleep(rng.uniform(0.0, 1.5))
                else:
                    wait_until(
                        lambda: _cursor(mirror) > before or process.poll() is not None,  # noqa: B023
                        timeout=60,
                        what="the restarted indexer's first range",
                    )
                    time.sleep(rng.uniform(0.0, 0.15))
                assert process.poll() is None, (
                    f"the indexer stopped before kill {kill_number + 1} "
                    f"(exit {process.returncode}): {output.read_text()[-2000:]}"
                )
            cursors.append(_cursor(mirror))
        print(
            f"cursors after each kill: {cursors} (head {head}) {time.monotonic() - started:.1f} s"
        )
        assert cursors == sorted(cursors), "a restart lost committed ranges"
        assert cursors[-1] < head, "the backfill was over before the last kill"
        assert len(proxy.log.refused_spans) > 0

        proxy.log_block_limit = None
        final = chainbill_index(
            database_url, proxy.url, manifest, output, confirmations=CONFIRMATIONS
        )
        with running(final):
            assert final.wait(timeout=180) == 0, output.read_text()[-2000:]
    assert "standby" not in output.read_text()

    state = mirror.state()
    assert state is not None and state.last_block == head
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert len(mirror.raw_events()) == len(mirror.node_logs())
    assert len(mirror.rows(Subscription)) == SUBSCRIPTIONS
    assert len(mirror.rows(Charge)) == SUBSCRIPTIONS * (PERIODS + 1)
    assert {r["paid"] for r in mirror.rows(Invoice)} == {2 * UNIT}
    assert mirror.reconcile() == []


_DIE_DURING_MIGRATION = """
import os, signal, sys
from alembic.operations import Operations
from offchain.db.engine import make_engine, upgrade_schema

create_table = Operations.create_table
made = []

def create_then_die(self, *args, **kwargs):
    if len(made) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    made.append(args[0])
    return create_table(self, *args, **kwargs)

Operations.create_table = create_then_die
upgrade_schema(make_engine(sys.argv[1]))
"""


def test_a_start_killed_while_creating_the_schema_can_start_again(
    database_url: str, rpc_url: str, chain: Any, subscriptions: Any, invoices: Any
) -> None:
    """The first start of `chainbill index` creates the schema. Killed in the middle of it
    (here deterministically, after three tables), the next start must still get a complete
    schema and index."""
    died = subprocess.run(
        [sys.executable, "-c", _DIE_DURING_MIGRATION, database_url], timeout=120, check=False
    )
    assert died.returncode == -9
    engine = make_engine(database_url)
    try:
        upgrade_schema(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        manifest = make_manifest(chain.chain_id, subscriptions.address, invoices.address)
        Mirror(engine, rpc_url, manifest).sync()
    finally:
        engine.dispose()


def test_sigterm_stops_after_the_current_range(
    mirror: Mirror, database_url: str, tmp_path: Path, web3: Web3, token: Any, merchant: Any,
    customer: Any,
) -> None:  # fmt: skip
    """SIGTERM (and Ctrl-C) let the range being written finish: exit 0, a consistent mirror,
    and the next run goes on from there."""
    if not database_url.startswith("sqlite"):
        pytest.skip("signal handling does not depend on the database; once is enough")
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, 3 * 24 * 3600)
    c.call(customer, c.token, "approve", c.manager.address, 10**30)
    plan = int(c.manager.functions.planCount().call())
    for _ in range(30):
        c.call(customer, c.manager, "subscribe", plan, PRICE)
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    output = tmp_path / "index.log"
    with RpcProxy(mirror.rpc_url, max_log_range=1) as proxy:
        # The first run cannot read far, so SIGTERM reaches it before the backfill is over.
        proxy.log_block_limit = web3.eth.block_number // 2
        process = chainbill_index(database_url, proxy.url, manifest, output)
        with running(process):
            wait_until(lambda: _cursor(mirror) >= 0, 60, "the first range")
            process.terminate()
            # A range held by the proxy is let through: the run finishes it, then stops.
            proxy.log_block_limit = None
            assert process.wait(timeout=60) == 0, output.read_text()
        assert "received SIGTERM" in output.read_text()
        stopped_at = _cursor(mirror)
        assert stopped_at < web3.eth.block_number
        again = chainbill_index(database_url, proxy.url, manifest, output)
        with running(again):
            assert again.wait(timeout=120) == 0
    assert _cursor(mirror) == web3.eth.block_number
    assert mirror.reconcile() == []
