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

import gc
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
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
    # The first range is a probe: its answer tells the chain's density, and every range after
    # it is sized to hold about `target_logs` logs (growing at most `max_growth` times from
    # one range to the next, and never past `max_range` blocks).
    initial_range: int = 10
    max_range: int = 200_000
    target_logs: int = 10_000
    max_growth: int = 10
    # While a range is decoded and written, the next one is fetched in a background thread.
    prefetch: bool = True
    poll_interval: float = 1.0


@dataclass
class SyncResult:
    first_block: int
    last_block: int
    events: int
    head: int
    reorged_from: int | None = None


# After the node refuses a span, spans that long are not asked for again for this many
# ranges (providers' limits are mostly in blocks); then growth may probe past it again.
_CEILING_RANGES = 16


class _GcPause:
    """The cyclic garbage collector paused while a range is read or written. A range makes
    tens of thousands of objects that live until it is committed, which drives the collector
    into full collections of the whole heap over and over, for nothing: what a range makes
    is freed by reference counting. The collector runs again, on whatever cycles there are,
    as soon as no range is being processed; the pause is shared by the threads of every
    indexer of the process (and leaves a collector disabled by someone else disabled)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._resume:
                    gc.enable()


_gc_paused = _GcPause()


@dataclass
class _Fetched:
    """One range as read from the node: its logs, decoded, and the headers its checks and
    the unconfirmed window need."""

    first: int
    end: int
    head: int  # the head the range was chosen against: what is final is judged by it
    logs: list[DecodedLog]
    removed: bool  # the node flagged a log as removed: a reorg is under way
    headers: dict[int, dict[str, Any]]


def _fetch(
    rpc: RpcClient,
    decoder: EventDecoder,
    contracts: list[str],
    confirmations: int,
    first: int,
    end: int,
    head: int,
    finalized: int,
) -> _Fetched:
    """Logs of blocks first..end and the headers their range needs: every block of the
    unconfirmed window (to find a fork point later), the range end (the cursor), and blocks
    whose logs do not carry their block's time. Touches nothing shared: it runs in the
    prefetch thread too."""
    with _gc_paused():
        return _read_range(rpc, decoder, contracts, confirmations, first, end, head, finalized)


def _read_range(
    rpc: RpcClient,
    decoder: EventDecoder,
    contracts: list[str],
    confirmations: int,
    first: int,
    end: int,
    head: int,
    finalized: int,
) -> _Fetched:
    raw_logs = rpc.get_logs(contracts, [], first, end)
    logs = decoder.decode_all(raw_logs)
    removed = any(entry.get("removed") for entry in raw_logs)
    del raw_logs
    new_finalized = max(finalized, head - confirmations)
    wanted = {end} | {item.block_number for item in logs if item.block_time is None}
    wanted |= set(range(max(first, new_finalized), end + 1))
    numbers = sorted(wanted)
    headers = dict(zip(numbers, rpc.headers(numbers), strict=True))
    return _Fetched(first, end, head, logs, removed, headers)


@dataclass
class _Pending:
    """A prefetch under way, valid only if the cursor is then at `first - 1` with hash
    `after_hash` (the range before it was committed as read)."""

    first: int
    end: int
    head: int
    after_hash: str
    future: Future[_Fetched]


class _Prefetcher:
    """One background thread running the fetches handed to it, one at a time, through an
    RpcClient of its own (a requests.Session is not thread-safe)."""

    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[RpcClient], _Fetched], Future[_Fetched]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="indexer-prefetch", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[RpcClient], _Fetched]) -> Future[_Fetched]:
        future: Future[_Fetched] = Future()
        self._jobs.put((job, future))
        return future

    def _work(self) -> None:
        try:
            while (item := self._jobs.get()) is not None:
                job, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(job(self._rpc))
                except BaseException as exc:
                    future.set_exception(exc)
                del item, job, future
        finally:
            self._rpc.close()

    def close(self, timeout: float) -> None:
        """Stops the thread once its current fetch (if any) is over, waiting that long at
        most (it is a daemon thread: a node that does not answer cannot hold the process)."""
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


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
        self._range = max(1, config.initial_range)
        self._ceiling: int | None = None  # the longest span not refused lately
        self._ceiling_ranges = 0
        self._prefetcher: _Prefetcher | None = None
        self._pending: _Pending | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        chain_id = rpc.chain_id()
        if chain_id != config.chain_id:
            raise ValueError(
                f"the node at {rpc.url} serves chain {chain_id}, the manifest chain {config.chain_id}"
            )

    # --------------------------------------------------------------- lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Stops the prefetch thread (the RpcClient given to the indexer stays open: it is
        the caller's). The indexer may still be used afterwards, without prefetching."""
        self._pending = None
        if self._closer is not None:
            self._closer.detach()
            self._closer = None
        if self._prefetcher is not None:
            self._prefetcher.close(timeout)
            self._prefetcher = None

    def __enter__(self) -> Indexer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def range_size(self) -> int:
        """The span, in blocks, of the next `eth_getLogs` range."""
        return self._range

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

    # ------------------------------------------------------------------ ranges

    def _resize(self, span: int, logs: int) -> None:
        """Sizes the next range from the density of the last answer so that it holds about
        `target_logs` logs: memory stays flat however dense the chain is. It shrinks at once;
        it grows at most `max_growth` times, and only after a range that was not cut short
        by the head."""
        config = self._config
        if self._ceiling is not None:
            self._ceiling_ranges -= 1
            if self._ceiling_ranges <= 0:
                self._ceiling = None
        size = max(1, span * config.target_logs // max(logs, 1))
        if size > self._range:
            size = (
                min(size, self._range * config.max_growth) if span >= self._range else self._range
            )
        size = min(size, config.max_range, self._ceiling or size)
        self._range = max(1, size)

    def _refused(self, span: int, error: RangeTooLarge) -> None:
        """The node refused a span: halve the range, and do not ask for that span again soon."""
        if self._range == 1:
            raise error
        self._range = max(1, self._range // 2)
        self._ceiling = max(1, span - 1)
        self._ceiling_ranges = _CEILING_RANGES
        log.info("getLogs range too large; trying %d blocks", self._range)

    def _fetch_now(self, first: int, head: int, finalized: int) -> _Fetched:
        while True:
            end = min(head, first + self._range - 1)
            try:
                return _fetch(
                    self._rpc,
                    self._decoder,
                    self._contracts,
                    self._config.confirmations,
                    first,
                    end,
                    head,
                    finalized,
                )
            except RangeTooLarge as exc:
                self._refused(end - first + 1, exc)

    def _prefetch(self, first: int, head: int, finalized: int, after_hash: str) -> None:
        """Starts fetching the range after the one being written."""
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(self._rpc.clone())
            # An indexer dropped without close() stops its thread too.
            self._closer = weakref.finalize(self, self._prefetcher.close, 0.0)
        end = min(head, first + self._range - 1)
        decoder, contracts, confirmations = (
            self._decoder,
            self._contracts,
            self._config.confirmations,
        )
        future = self._prefetcher.submit(
            lambda rpc: _fetch(rpc, decoder, contracts, confirmations, first, end, head, finalized)
        )
        self._pending = _Pending(first, end, head, after_hash, future)

    def _take_prefetch(self, first: int, last_hash: str, head: int) -> _Fetched | None:
        """The prefetched range starting at `first`, if one was started from exactly this
        cursor and the node has not gone back since; None otherwise (it is dropped)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if (
            pending.first != first
            or pending.after_hash != last_hash
            or head < pending.head
            or head < pending.end
        ):
            log.debug("dropping the prefetched range %d..%d", pending.first, pending.end)
            pending.future.cancel()
            return None
        try:
            return pending.future.result()
        except RangeTooLarge as exc:
            self._refused(pending.end - pending.first + 1, exc)
        except Exception:
            log.debug(
                "prefetching %d..%d failed; reading it again", first, pending.end, exc_info=True
            )
        return None

    # -------------------------------------------------------------------- sync

    def sync_once(self) -> SyncResult | None:
        """Indexes the next range; None when the mirror is at the head."""
        with _gc_paused():
            return self._sync_once()

    def _sync_once(self) -> SyncResult | None:
        last, last_hash, finalized = self.cursor()
        head = self._rpc.block_number()
        if head < last:
            # The node is behind us (restarted, or a reorg to a shorter chain).
            self._pending = None
            return self._handle_reorg(last, head)
        if last > finalized or head == last:
            node_hash = self._rpc.headers([last])[0]["hash"] if last >= 0 else last_hash
            if node_hash != last_hash:
                self._pending = None
                return self._handle_reorg(last, head)
        if head == last:
            self._pending = None
            return None
        first = last + 1
        fetched = self._take_prefetch(first, last_hash, head)
        if fetched is None:
            fetched = self._fetch_now(first, head, finalized)
        end, headers = fetched.end, fetched.headers
        self._resize(end - first + 1, len(fetched.logs))
        # What is final is judged by the head the range was read against, not a later one.
        new_finalized = max(finalized, fetched.head - self._config.confirmations)
        if first in headers and headers[first]["parentHash"] != last_hash and last >= 0:
            return self._handle_reorg(last, head)
        block_times = {n: int(h["timestamp"], 16) for n, h in headers.items()}
        if fetched.removed:
            log.info(
                "a log of blocks %d..%d was removed while it was being read; retrying", first, end
            )
            return SyncResult(first, last, 0, head)
        for item in fetched.logs:
            number = item.block_number
            if number not in block_times:
                # No header was needed: the log carries its block's time.
                assert item.block_time is not None
                block_times[number] = item.block_time
            elif number in headers and item.block_hash != headers[number]["hash"]:
                # The logs and headers came from different forks: a reorg is under way.
                log.info("block %d changed while it was being read; retrying", number)
                return SyncResult(first, last, 0, head)

        if self._config.prefetch and end < head:
            self._prefetch(end + 1, head, new_finalized, headers[end]["hash"])
        with self._engine.begin() as conn:
            repository.prepare_bulk_writes(conn)
            events = self._write(
                conn, fetched.logs, headers, block_times, first, end, new_finalized
            )
            repository.save_state(
                conn, self._config.chain_id, end, headers[end]["hash"], new_finalized
            )
            repository.prune_confirmed(conn, self._config.chain_id, new_finalized)
        return SyncResult(first, end, events, head)

    def _write(
        self,
        conn: Connection,
        logs: list[DecodedLog],
        headers: dict[int, dict[str, Any]],
        block_times: dict[int, int],
        first: int,
        end: int,
        finalized: int,
    ) -> int:
        chain_id = self._config.chain_id
        seen = repository.existing_logs(conn, chain_id, first, end)
        fresh = [d for d in logs if (d.block_hash, d.log_index) not in seen] if seen else logs
        batch = Batch(chain_id=chain_id, finalized_block=finalized, block_times=block_times)
        wanted: dict[Any, list[tuple[Any, ...]]] = {}
        for item in fresh:
            for table, key in projection_keys(chain_id, item):
                wanted.setdefault(table, []).append(key)
        for table, keys in wanted.items():
            batch.loaded[table] = dict.fromkeys(keys)
            batch.loaded[table].update(repository.load_projections(conn, table, keys))
        apply(batch, fresh)

        repository.insert_raw_events(
            conn,
            [
                (
                    chain_id,
                    d.block_number,
                    d.block_hash,
                    block_times[d.block_number],
                    d.tx_hash,
                    d.log_index,
                    d.contract,
                    d.event,
                    ",".join(d.topics),
                    d.data,
                )
                for d in fresh
            ],
        )
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
        return len(fresh)

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
