"""The indexer loop: backfill with adaptive `eth_getLogs` ranges, then follow the head.

One `sync_once` indexes one range of blocks in one database transaction: the raw events,
the facts, the projection changes (with undo records for blocks that may still be
reorged), the headers of the unconfirmed window, and the cursor. A crash at any moment
leaves the database at the end of the last committed range; a replayed range changes
nothing (logs already stored are skipped).

Reorgs are found by hash: before a range is indexed, the stored hash of the last indexed
block is compared with the node's; when it changed, the stored headers of the unconfirmed
window are walked back to the last block both agree on, everything derived from later
blocks is rolled back, and indexing resumes from there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from offchain.db import repository
from offchain.db.models import FACT_TABLES
from offchain.indexer.decoder import DecodedLog, EventDecoder
from offchain.indexer.projector import Batch, apply, projection_keys
from offchain.indexer.rpc import RangeTooLarge, RpcClient

log = logging.getLogger(__name__)


class LeadershipLost(RuntimeError):
    """This process no longer holds the chain's indexer lock."""


class ReorgTooDeep(RuntimeError):
    """The chain changed below the confirmation depth: the mirror cannot roll back that far."""


@dataclass(frozen=True)
class IndexerConfig:
    chain_id: int
    contracts: tuple[str, ...]
    start_block: int
    confirmations: int = 12
    initial_range: int = 2_000
    max_range: int = 200_000
    target_logs: int = 10_000
    poll_interval: float = 1.0


@dataclass
class SyncResult:
    first_block: int
    last_block: int
    events: int
    head: int
    reorged_from: int | None = None


class Indexer:
    def __init__(
        self,
        engine: Engine,
        rpc: RpcClient,
        config: IndexerConfig,
        decoder: EventDecoder | None = None,
    ) -> None:
        self._engine = engine
        self._rpc = rpc
        self._config = config
        self._decoder = decoder or EventDecoder()
        self._contracts = [c.lower() for c in config.contracts]
        self._range = config.initial_range
        chain_id = rpc.chain_id()
        if chain_id != config.chain_id:
            raise ValueError(
                f"the node at {rpc.url} serves chain {chain_id}, the manifest chain {config.chain_id}"
            )

    # ------------------------------------------------------------------ cursor

    def cursor(self) -> tuple[int, str, int]:
        """(last indexed block, its hash, finalized block) — the state before the deployment
        when nothing was indexed yet."""
        with self._engine.connect() as conn:
            state = repository.get_state(conn, self._config.chain_id)
        if state is not None:
            return state.last_block, state.last_block_hash, state.finalized_block
        before = self._config.start_block - 1
        header = self._rpc.headers([before])[0] if before >= 0 else {"hash": "0x" + "00" * 32}
        return before, header["hash"], before

    # -------------------------------------------------------------------- sync

    def sync_once(self) -> SyncResult | None:
        """Indexes the next range; None when the mirror is at the head."""
        last, last_hash, finalized = self.cursor()
        head = self._rpc.block_number()
        if head < last:
            # The node is behind us (restarted, or a reorg to a shorter chain).
            return self._handle_reorg(last, head)
        if last > finalized or head == last:
            node_hash = self._rpc.headers([last])[0]["hash"] if last >= 0 else last_hash
            if node_hash != last_hash:
                return self._handle_reorg(last, head)
        if head == last:
            return None
        first = last + 1
        new_finalized = max(finalized, head - self._config.confirmations)
        while True:
            end = min(head, first + self._range - 1)
            try:
                raw_logs = self._rpc.get_logs(self._contracts, [], first, end)
            except RangeTooLarge:
                if self._range == 1:
                    raise
                self._range = max(1, self._range // 2)
                log.info("getLogs range too large; trying %d blocks", self._range)
                continue
            break
        # Ranges grow while they come back light and shrink when they come back heavy, so a
        # batch holds about `target_logs` logs whatever the chain's density: memory stays flat.
        if len(raw_logs) > self._config.target_logs:
            self._range = max(1, self._range // 2)
        elif end - first + 1 == self._range and len(raw_logs) < self._config.target_logs // 2:
            self._range = min(self._config.max_range, self._range * 2)

        # Headers: every block of the unconfirmed window (to find a fork point later), the
        # range end (the cursor), and blocks whose logs do not carry their block's time.
        wanted = {end} | {
            int(entry["blockNumber"], 16) for entry in raw_logs if "blockTimestamp" not in entry
        }
        wanted |= set(range(max(first, new_finalized), end + 1))
        headers = dict(zip(sorted(wanted), self._rpc.headers(sorted(wanted)), strict=True))
        if (
            first - 1 == last
            and first in headers
            and headers[first]["parentHash"] != last_hash
            and last >= 0
        ):
            return self._handle_reorg(last, head)
        decoded: list[DecodedLog] = []
        block_times = {n: int(h["timestamp"], 16) for n, h in headers.items()}
        for entry in raw_logs:
            number = int(entry["blockNumber"], 16)
            header = headers.get(number)
            if entry.get("removed") or (
                header is not None and entry["blockHash"] != header["hash"]
            ):
                # The logs and headers came from different forks: a reorg is under way.
                log.info("block %d changed while it was being read; retrying", number)
                return SyncResult(first, last, 0, head)
            if header is None:
                block_times[number] = int(entry["blockTimestamp"], 16)
            item = self._decoder.decode(entry)
            if item is not None:
                decoded.append(item)

        with self._engine.begin() as conn:
            events = self._write(
                conn, decoded, raw_logs, headers, block_times, first, end, new_finalized
            )
            repository.save_state(
                conn, self._config.chain_id, end, headers[end]["hash"], new_finalized
            )
            repository.prune_confirmed(conn, self._config.chain_id, new_finalized)
        return SyncResult(first, end, events, head)

    def _write(
        self,
        conn: Connection,
        decoded: list[DecodedLog],
        raw_logs: list[dict[str, Any]],
        headers: dict[int, dict[str, Any]],
        block_times: dict[int, int],
        first: int,
        end: int,
        finalized: int,
    ) -> int:
        chain_id = self._config.chain_id
        seen = repository.existing_logs(conn, chain_id, first, end)
        fresh = [d for d in decoded if (d.block_hash, d.log_index) not in seen]
        batch = Batch(chain_id=chain_id, finalized_block=finalized, block_times=block_times)
        wanted: dict[Any, list[tuple[Any, ...]]] = {}
        for item in fresh:
            for table, key in projection_keys(chain_id, item):
                wanted.setdefault(table, []).append(key)
        for table, keys in wanted.items():
            batch.loaded[table] = dict.fromkeys(keys)
            batch.loaded[table].update(repository.load_projections(conn, table, keys))
        apply(batch, fresh)

        names = {(d.block_hash, d.log_index): d.event for d in decoded}
        raw_rows = []
        for entry in raw_logs:
            number = int(entry["blockNumber"], 16)
            log_key = (entry["blockHash"], int(entry["logIndex"], 16))
            if log_key in seen:
                continue
            raw_rows.append(
                {
                    "chain_id": chain_id,
                    "block_number": number,
                    "block_hash": log_key[0],
                    "block_time": block_times[number],
                    "tx_hash": entry["transactionHash"],
                    "log_index": log_key[1],
                    "contract": entry["address"].lower(),
                    "event": names.get(log_key, "?"),
                    "topics": ",".join(entry["topics"]),
                    "data": entry["data"],
                }
            )
        repository.insert_raw_events(conn, raw_rows)
        for table in FACT_TABLES:
            repository.insert_facts(conn, table, batch.facts.get(table, []))
        for table, rows in batch.projections.items():
            repository.upsert_projections(conn, table, list(rows.values()))
        repository.insert_undo(conn, chain_id, batch.undo)
        repository.save_blocks(
            conn,
            [
                {
                    "chain_id": chain_id,
                    "number": n,
                    "hash": h["hash"],
                    "parent_hash": h["parentHash"],
                    "timestamp": int(h["timestamp"], 16),
                }
                # The finalized block's own header too: it is the deepest possible fork point.
                for n, h in headers.items()
                if n >= finalized or n == end
            ],
        )
        return len(raw_rows)

    # ------------------------------------------------------------------- reorgs

    def _handle_reorg(self, last: int, head: int) -> SyncResult:
        chain_id = self._config.chain_id
        with self._engine.connect() as conn:
            state = repository.get_state(conn, chain_id)
            finalized = state.finalized_block if state else self._config.start_block - 1
            stored = repository.stored_blocks(conn, chain_id, finalized - 1)
        candidates = sorted((n for n in stored if n <= min(last, head)), reverse=True)
        node = (
            dict(zip(candidates, self._rpc.headers(candidates), strict=True)) if candidates else {}
        )
        ancestor = next((n for n in candidates if node[n]["hash"] == stored[n]), None)
        if ancestor is None:
            raise ReorgTooDeep(
                f"chain {chain_id} changed at or below block {finalized}, which the mirror "
                f"treats as final (confirmations={self._config.confirmations}); rebuild the "
                "mirror or raise the confirmation depth"
            )
        with self._engine.begin() as conn:
            removed = repository.rollback_from(conn, chain_id, ancestor + 1)
            repository.save_state(
                conn, chain_id, ancestor, stored[ancestor], min(finalized, ancestor)
            )
        log.warning("reorg: rolled back blocks %d..%d (%d events)", ancestor + 1, last, removed)
        return SyncResult(ancestor + 1, ancestor, 0, head, reorged_from=ancestor + 1)

    # --------------------------------------------------------------------- loop

    def run(
        self,
        stop: threading.Event,
        on_progress: Callable[[SyncResult], None] | None = None,
        follow: bool = True,
        still_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        """Backfills, then (with `follow`) follows the head until `stop` is set. Before each
        range `still_leader` must confirm that this process still holds the chain's lock."""
        while not stop.is_set():
            if not still_leader():
                raise LeadershipLost(
                    f"lost the indexer lock of chain {self._config.chain_id}: another instance may "
                    "be writing the mirror; stopping"
                )
            result = self.sync_once()
            if result is not None and on_progress is not None:
                on_progress(result)
            if result is None:
                if not follow:
                    return
                stop.wait(self._config.poll_interval)


def count_events(engine: Engine, chain_id: int) -> int:
    with engine.connect() as conn:
        return repository.count_raw_events(conn, chain_id)
