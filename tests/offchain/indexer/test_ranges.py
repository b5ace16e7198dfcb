"""Range sizing and reading ahead.

Ranges start with a small probe and are then sized from the density of each answer to
hold about `target_logs` logs, growing at most `max_growth` times a step. While a range is
written, the next one is read (in a background thread) and turned into rows: that work is
used only if it still follows the mirror's cursor and the node still has the blocks it
read; a reorg, or a failed write, drops it. Indexer.close() stops the threads."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

import pytest
from sqlalchemy import Engine
from web3 import Web3

from offchain.db import repository
from offchain.db.models import FACT_TABLES
from offchain.indexer import indexer as indexer_module
from offchain.indexer.indexer import Indexer, SyncResult
from offchain.indexer.rpc import RpcClient
from tests.chain_fixtures import GRACE, PERIOD, PRICE
from tests.offchain.indexer.activity import Contracts, with_nonces
from tests.offchain.indexer.helpers import Mirror, assert_same_mirror, make_manifest, sync_to_head


def _dense_then_sparse(
    c: Contracts, merchant: Any, customer: Any, blocks: int, empty: int, empty_first: int = 0
) -> int:
    """A plan, (`empty_first` empty blocks,) then `blocks` blocks of exactly two logs (a
    subscription and its first charge), then `empty` blocks without any; returns the
    plan's block."""
    receipt = c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, PERIOD, 0, GRACE)
    plan = int(c.manager.functions.planCount().call())
    c.call(customer, c.token, "approve", c.manager.address, 10**30)
    if empty_first:
        c.web3.provider.make_request("anvil_mine", [hex(empty_first)])  # type: ignore[arg-type]
    for _ in range(blocks):
        c.call(customer, c.manager, "subscribe", plan, PRICE)
    if empty:
        c.web3.provider.make_request("anvil_mine", [hex(empty)])  # type: ignore[arg-type]
    return int(receipt["blockNumber"], 16)


def _from_block(mirror: Mirror, start_block: int) -> Mirror:
    manifest = make_manifest(
        mirror.chain_id, mirror.manager, mirror.registry, start_block=start_block
    )
    return Mirror(mirror.engine, mirror.rpc_url, manifest, mirror.confirmations)


def _assert_canonical(mirror: Mirror) -> None:
    """Every stored log and fact comes from a block of the node's canonical chain."""
    hashes: dict[int, str] = {}

    def canonical(number: int) -> str:
        if number not in hashes:
            hashes[number] = Web3.to_hex(mirror.web3.eth.get_block(number)["hash"])
        return hashes[number]

    for row in mirror.raw_events():
        assert row["block_hash"] == canonical(row["block_number"])
    for model in FACT_TABLES:
        for row in mirror.rows(model):
            assert row["block_hash"] == canonical(row["block_number"]), model.__tablename__


def test_ranges_hold_about_target_logs_whatever_the_density(
    mirror: Mirror,
    other_engine: Engine,
    web3: Web3,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    plan_block = _dense_then_sparse(c, merchant, customer, blocks=40, empty=600)
    dense_end = plan_block + 41
    head = web3.eth.block_number
    mirror = _from_block(mirror, plan_block)
    target, probe, growth = 10, 2, 4
    indexer = mirror.indexer(initial_range=probe, target_logs=target, max_growth=growth)
    with indexer:
        results = sync_to_head(indexer)
    spans = [r.last_block - r.first_block + 1 for r in results]
    events = [r.events for r in results]

    assert results[0].first_block == plan_block and spans[0] == probe
    assert all(a.last_block + 1 == b.first_block for a, b in itertools.pairwise(results))
    assert results[-1].last_block == head
    # Growth is bounded; in the dense stretch (2 logs a block) ranges settle at the target.
    assert all(b <= a * growth for a, b in itertools.pairwise(spans)), spans
    assert max(events) <= 2 * target, events
    settled = [
        r for r in results if r.first_block > plan_block + probe and r.last_block < dense_end
    ]
    assert len(settled) >= 5 and all(r.events == target for r in settled), events
    # The sparse stretch is crossed in a few ever larger ranges.
    sparse = [s for r, s in zip(results, spans, strict=True) if r.first_block > dense_end]
    assert len(sparse) <= 5 and sparse[:-1] == sorted(sparse[:-1]), spans  # last: the head
    assert sum(events) == 1 + 2 * 40

    fresh = Mirror(other_engine, mirror.rpc_url, mirror.manifest, mirror.confirmations)
    fresh.sync(prefetch=False, initial_range=1_000)
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)


@pytest.mark.parametrize("prefetch", [True, False], ids=["read-ahead", "serial"])
def test_an_answer_far_above_the_target_is_read_again_smaller(
    mirror: Mirror,
    other_engine: Engine,
    web3: Web3,
    token: Any,
    merchant: Any,
    customer: Any,
    caplog: pytest.LogCaptureFixture,
    prefetch: bool,
) -> None:
    """Ranges grown over a long empty stretch run into a dense one: the answer that holds
    more than 1.5 x target_logs is not used but read again, smaller."""
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    plan_block = _dense_then_sparse(c, merchant, customer, blocks=30, empty=0, empty_first=300)
    mirror = _from_block(mirror, plan_block)
    target = 10
    with (
        caplog.at_level(logging.INFO, logger="offchain.indexer.indexer"),
        mirror.indexer(
            initial_range=2, target_logs=target, max_growth=10, prefetch=prefetch
        ) as indexer,
    ):
        results = sync_to_head(indexer)
    assert any("reading" in r.getMessage() for r in caplog.records), "no answer was too large"
    assert max(r.events for r in results) <= 1.5 * target
    assert sum(r.events for r in results) == 1 + 2 * 30
    assert all(a.last_block + 1 == b.first_block for a, b in itertools.pairwise(results))
    fresh = Mirror(other_engine, mirror.rpc_url, mirror.manifest, mirror.confirmations)
    fresh.sync(prefetch=False, initial_range=1_000)
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)


def _indexed_up_to(indexer: Indexer, mirror: Mirror, block: int) -> list[SyncResult]:
    results = []
    while (state := mirror.state()) is None or state.last_block < block:
        result = indexer.sync_once()
        assert result is not None
        results.append(result)
    return results


@pytest.fixture
def window(web3: Web3, mirror: Mirror, token: Any, merchant: Any, customer: Any) -> Mirror:
    """Twenty blocks of two logs each, all in the unconfirmed window (confirmations 30)."""
    c = Contracts.of(web3, mirror.manager, mirror.registry, token.address)
    plan_block = _dense_then_sparse(c, merchant, customer, blocks=20, empty=0)
    mirror = _from_block(mirror, plan_block)
    mirror.confirmations = 30
    return mirror


def _replace_last_blocks(
    chain: Any, web3: Web3, mirror: Mirror, merchant: Any, stranger: Any, depth: int
) -> None:
    """anvil_reorg: the last `depth` blocks replaced (one of them with a new transaction)."""
    head = web3.eth.block_number
    before = {web3.eth.get_block(head - n)["hash"] for n in range(depth)}
    c = Contracts.of(web3, mirror.manager, mirror.registry, mirror.manager)
    request = c.request(merchant, c.manager, "setOperator", stranger.address, True)
    replacement = with_nonces(web3, [request], head - depth)
    chain.provider.make_request("anvil_reorg", [depth, [[replacement[0], 0]]])
    after = {web3.eth.get_block(head - n)["hash"] for n in range(depth)}
    assert web3.eth.block_number == head and not before & after


@pytest.mark.parametrize("overlap_writes", [True, False], ids=["prepared", "read"])
def test_what_was_read_ahead_of_the_cursor_is_dropped_when_those_blocks_change(
    window: Mirror,
    other_engine: Engine,
    web3: Web3,
    chain: Any,
    merchant: Any,
    stranger: Any,
    overlap_writes: bool,
) -> None:
    mirror, depth = window, 6
    head = web3.eth.block_number
    indexer = mirror.indexer(initial_range=2, target_logs=4, overlap_writes=overlap_writes)
    _indexed_up_to(indexer, mirror, head - depth)
    state = mirror.state()
    assert state is not None and state.last_block < head - depth + 2
    # The next range was read (and, overlapping writes, prepared while the last one was
    # written); the reorg replaces its blocks but not the cursor's.
    ahead = indexer._prepared if overlap_writes else indexer._pending
    assert ahead is not None and ahead.first == state.last_block + 1
    _replace_last_blocks(chain, web3, mirror, merchant, stranger, depth)

    result = indexer.sync_once()
    assert result is not None and result.reorged_from is None and result.events > 0
    _assert_canonical(mirror)  # nothing of the replaced blocks was written
    sync_to_head(indexer)
    indexer.close()
    _assert_canonical(mirror)
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.reconcile() == []


def test_a_reorg_of_the_cursor_drops_what_was_read_ahead(
    window: Mirror, other_engine: Engine, web3: Web3, chain: Any, merchant: Any, stranger: Any
) -> None:
    mirror, depth = window, 6
    head = web3.eth.block_number
    indexer = mirror.indexer(initial_range=2, target_logs=4, overlap_writes=True)
    _indexed_up_to(indexer, mirror, head - 3)
    assert indexer._prepared is not None or indexer._pending is not None
    _replace_last_blocks(chain, web3, mirror, merchant, stranger, depth)

    result = indexer.sync_once()
    assert result is not None and result.reorged_from == head - depth + 1
    assert indexer._prepared is None and indexer._pending is None
    sync_to_head(indexer)
    indexer.close()
    _assert_canonical(mirror)
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)
    assert mirror.reconcile() == []


def test_a_failed_write_drops_the_prepared_range_and_the_next_sync_resumes(
    window: Mirror, other_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = window
    indexer = mirror.indexer(initial_range=2, target_logs=4, overlap_writes=True)
    for _ in range(3):  # past the probe, and an answer read again smaller
        done = indexer.sync_once()
        assert done is not None
        committed = done.last_block
        if indexer._prepared is not None:
            break
    assert indexer._prepared is not None
    insert_raw_events = repository.insert_raw_events

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(repository, "insert_raw_events", fail)
    with pytest.raises(RuntimeError, match="went away"):
        indexer.sync_once()
    state = mirror.state()
    assert state is not None and state.last_block == committed  # nothing committed
    assert indexer._prepared is None

    monkeypatch.setattr(repository, "insert_raw_events", insert_raw_events)
    sync_to_head(indexer)
    indexer.close()
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine, finalized_header=False)


def test_close_stops_the_background_threads(window: Mirror) -> None:
    before = set(threading.enumerate())
    with Indexer(
        window.engine,
        RpcClient(window.rpc_url),
        window.config(initial_range=2, target_logs=4, overlap_writes=True),
    ) as indexer:
        assert len(sync_to_head(indexer)) >= 2
        started = {t for t in threading.enumerate() if t.name.startswith("indexer-")} - before
        expected = {"indexer-read", "indexer-write"}
        if window.engine.dialect.name == "sqlite":
            expected.add("indexer-checkpoint")  # copies the write-ahead log at the head
        assert {t.name for t in started} == expected
    assert not any(t.is_alive() for t in started)
    # A closed indexer still works (without its threads, until it starts them again).
    sync_to_head(indexer)
    indexer.close()


@pytest.mark.parametrize(
    ("checkpoint_events", "wal_limit", "checkpoints"),
    [(1, 1, "every write"), (1, 2**40, "every range"), (2**40, 2**40, "once, at the head")],
    ids=["log-limit", "every-range", "at-head"],
)
def test_sqlite_copies_the_write_ahead_log_beside_the_writes(
    window: Mirror,
    other_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    checkpoint_events: int,
    wal_limit: int,
    checkpoints: str,
) -> None:
    """SQLite: commits leave the write-ahead log to a checkpoint thread, every so many
    events and once the mirror is at the head; once the log passes the limit a write waits
    and copies the rest itself, so the log starts over. Either way nothing is lost and,
    once the indexer is closed, the log is all in the database."""
    if window.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL manages its own write-ahead log")
    monkeypatch.setattr(indexer_module, "_CHECKPOINT_EVENTS", checkpoint_events)
    monkeypatch.setattr(indexer_module, "_WAL_LIMIT_BYTES", wal_limit)
    runs: list[str] = []
    checkpoint_wal = repository.checkpoint_wal

    def counted(raw: Any) -> None:
        runs.append(threading.current_thread().name)
        checkpoint_wal(raw)

    monkeypatch.setattr(repository, "checkpoint_wal", counted)
    indexer = Indexer(
        window.engine, RpcClient(window.rpc_url), window.config(initial_range=2, target_logs=4)
    )
    with indexer:
        ranges = sync_to_head(indexer)
        assert len(ranges) >= 5
        assert "indexer-checkpoint" in {t.name for t in threading.enumerate()}
    in_background = runs.count("indexer-checkpoint")
    in_writes = len(runs) - in_background
    if checkpoints == "every write":
        assert in_writes >= len(ranges) - 1  # each write found the log over the limit
    elif checkpoints == "every range":
        assert in_writes == 0 and in_background >= 2
    else:
        assert runs == ["indexer-checkpoint"]
    with window.engine.connect() as conn:
        busy, in_log, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    assert busy == 0 and in_log == copied
    fresh = Mirror(other_engine, window.rpc_url, window.manifest, window.confirmations)
    fresh.sync()
    assert_same_mirror(window.engine, other_engine)
