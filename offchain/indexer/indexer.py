"""The indexer loop: backfill with adaptive `eth_getLogs` ranges, then follow the head.

One `sync_once` indexes one range of blocks in one database transaction: the raw events,
the facts, the projection changes (with undo records for blocks that may still be
reorged), the headers of the unconfirmed window, and the cursor. A crash at any moment
leaves the database at the end of the last committed range; a replayed range changes
nothing (logs already stored are skipped).

Ranges are sized by density: the first one is a small probe, and each next one is sized
from the last answer to hold about `target_logs` logs, so that memory stays flat whatever
the chain.

During a backfill three ranges are in flight: while range N is written (in a writing
thread, the database doing its part), range N+1, already read, is checked and turned into
rows (with the projections as N leaves them), and range N+2 is read from the node (in a
reading thread with an RpcClient of its own). What was read or prepared ahead is used only
if the cursor is then exactly where it was expected (block, hash, finalized block), the
node's head has not gone back, and, for blocks that were still unconfirmed when they were
read, the node still has the range's last block; otherwise it is dropped and read again.
`sync_once` returns once its own range is committed. `Indexer.close()` (or a `with` block)
stops the threads.

Reorgs are found by hash: before a range is indexed, the stored hash of the last indexed
block is compared with the node's; when it changed, the stored headers of the unconfirmed
window are walked back to the last block both agree on, everything derived from later
blocks is rolled back, and indexing resumes from there.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from offchain.db import repository
from offchain.db.models import FACT_TABLES, Base
from offchain.indexer.decoder import DecodedLog, EventDecoder
from offchain.indexer.projector import Batch, ProjectionKey, apply, projection_keys
from offchain.indexer.rpc import RangeTooLarge, RpcClient, TooManyLogs

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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
    target_logs: int = 20_000
    max_growth: int = 10
    # Read the next ranges ahead, and prepare one while the last is written (see above);
    # False: one range at a time, in the calling thread.
    prefetch: bool = True
    # Whether to prepare a range while the last one is written. None: on PostgreSQL, whose
    # server does its part of a write in its own process; not on SQLite, which does it in
    # this one and needs the GIL around every chunk (overlapping it with Python work costs
    # more than it saves there: 10% slower and 50 MB more, measured with the 1 ms switch
    # interval too). Reading ahead is not affected.
    overlap_writes: bool | None = None
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


# The interpreter's switch interval while ranges are processed, in seconds (Python's own
# is 5 ms). Three threads share the GIL then: the writer (on PostgreSQL) hands it back
# around every send to the server, and each time has to wait for the preparing or reading
# thread to be made to let go of it, up to a whole interval; at 1 ms a PostgreSQL backfill
# is about a third faster (bench/indexer.py), SQLite's is unchanged.
_SWITCH_INTERVAL_S = 0.001


class _RangeWork:
    """The process set up for the indexer while a range is read or written, shared by the
    threads of every indexer of the process; put back as it was as soon as no range is
    being processed (what someone else changed meanwhile is left as they set it):

    - the cyclic garbage collector paused: a range makes tens of thousands of objects that
      live until it is committed, which drives the collector into full collections of the
      whole heap over and over, for nothing (what a range makes is freed by reference
      counting); it runs again, on whatever cycles there are, afterwards;
    - the switch interval shortened to `_SWITCH_INTERVAL_S` (never lengthened)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume_gc = False
        self._interval: float | None = None  # the interval to put back, if shortened

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._resume_gc = gc.isenabled()
                gc.disable()
                before = sys.getswitchinterval()
                self._interval = None
                if before > _SWITCH_INTERVAL_S:
                    sys.setswitchinterval(_SWITCH_INTERVAL_S)
                    self._interval = before
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    if self._resume_gc:
                        gc.enable()
                    # sys.setswitchinterval keeps a microsecond's resolution at best.
                    ours = abs(sys.getswitchinterval() - _SWITCH_INTERVAL_S) < 1e-6
                    if self._interval is not None and ours:
                        sys.setswitchinterval(self._interval)


_range_work = _RangeWork()


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
    limit: int,
) -> _Fetched:
    """Logs of blocks first..end and the headers their range needs: every block of the
    unconfirmed window (to find a fork point later), the range end (the cursor), and blocks
    whose logs do not carry their block's time. Touches nothing shared: it runs in the
    reading thread too."""
    with _range_work():
        return _read_range(
            rpc, decoder, contracts, confirmations, first, end, head, finalized, limit
        )


def _read_range(
    rpc: RpcClient,
    decoder: EventDecoder,
    contracts: list[str],
    confirmations: int,
    first: int,
    end: int,
    head: int,
    finalized: int,
    limit: int,
) -> _Fetched:
    try:
        # A range of one block is taken whatever it holds: it cannot be split.
        raw_logs = rpc.get_logs(contracts, [], first, end, max_logs=limit if end > first else None)
    except TooManyLogs as exc:
        raise _Oversized(exc.logs) from None
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


@dataclass
class _Prepared:
    """A range read, checked and turned into rows, ready to be written right after the
    cursor `after` (last block, its hash, finalized block)."""

    first: int
    end: int
    head: int
    after: tuple[int, str, int]
    end_hash: str
    finalized: int
    raw_rows: list[tuple[Any, ...]]
    facts: dict[type[Base], list[dict[str, Any]]]
    projections: dict[type[Base], dict[ProjectionKey, dict[str, Any]]]
    undo: list[dict[str, Any]]
    blocks: list[dict[str, Any]]

    @property
    def events(self) -> int:
        return len(self.raw_rows)


class _Oversized(Exception):
    """An answer holding more than `_OVERSIZED` times `target_logs` logs (not read to the
    end, not decoded)."""

    def __init__(self, logs: int) -> None:
        super().__init__(f"{logs} logs")
        self.logs = logs


# SQLite: the write-ahead log is started over once it holds this much (see _await_checkpoint).
_WAL_LIMIT_BYTES = 256 * 2**20
# SQLite: a checkpoint is started once this many events were committed since the last one
# began (about 80 MB of log), and whenever the mirror has caught up with the head.
_CHECKPOINT_EVENTS = 60_000

# An answer holding more logs than this many times `target_logs` is read again, smaller:
# a batch is never much larger than the target, so memory stays flat.
_OVERSIZED = 1.5

_REORGED = object()  # _check: the range does not follow the cursor's block


class _Worker:
    """One background (daemon) thread running the jobs handed to it, one at a time."""

    def __init__(self, name: str, on_exit: Callable[[], None] | None = None) -> None:
        self._on_exit = on_exit
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        self._jobs.put((job, future))
        return future

    def _work(self) -> None:
        try:
            while (item := self._jobs.get()) is not None:
                job, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job())
                    except BaseException as exc:
                        future.set_exception(exc)
                del item, job, future
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def close(self, timeout: float) -> None:
        """Stops the thread once its current job (if any) is over, waiting that long at most
        (a daemon thread: a node that does not answer cannot hold the process)."""
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
        self._reader: _Worker | None = None  # reads ranges ahead
        self._reader_rpc = rpc  # the reading thread's own client (a clone), once it runs
        self._writer: _Worker | None = None  # writes a range while the next is prepared
        # SQLite in a file: the write-ahead log is copied to the database in this thread.
        self._checkpoints = engine.dialect.name == "sqlite" and engine.url.database not in (
            None,
            "",
            ":memory:",
        )
        self._checkpointer: _Worker | None = None
        self._checkpoint: Future[None] | None = None
        # Checked out of the pool for the indexer's life: otherwise, while a checkpoint
        # held the pool's warmest connection, a write would take another, and in time
        # every pooled connection would grow the writer's page cache.
        self._checkpoint_connection: Any = None
        self._unchecked_events = 0  # committed since the last checkpoint began
        self._unchecked_commits = 0
        self._closers: list[weakref.finalize[Any, Any]] = []
        self._pending: _Pending | None = None  # the next range, being read
        self._prepared: _Prepared | None = None  # the next range, read and turned into rows
        chain_id = rpc.chain_id()
        if chain_id != config.chain_id:
            raise ValueError(
                f"the node at {rpc.url} serves chain {chain_id}, the manifest chain {config.chain_id}"
            )

    # --------------------------------------------------------------- lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Stops the background threads (the RpcClient given to the indexer stays open: it
        is the caller's). The indexer may still be used afterwards: they start again."""
        self._pending = self._prepared = None
        for closer in self._closers:
            closer.detach()
        self._closers = []
        if self._checkpoint is not None:
            self._checkpoint.result()
            self._checkpoint = None
        for worker in (self._reader, self._writer, self._checkpointer):
            if worker is not None:
                worker.close(timeout)
        self._reader = self._writer = self._checkpointer = None
        if self._checkpoint_connection is not None:
            self._checkpoint_connection.close()
            self._checkpoint_connection = None

    def _worker(self, name: str, on_exit: Callable[[], None] | None = None) -> _Worker:
        worker = _Worker(name, on_exit)
        # An indexer dropped without close() stops its threads too.
        self._closers.append(weakref.finalize(self, worker.close, 0.0))
        return worker

    def __enter__(self) -> Indexer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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

    def _resize(self, fetched: _Fetched) -> None:
        """Sizes the next range from the density of the last answer so that it holds about
        `target_logs` logs: memory stays flat however dense the chain is. The density is the
        higher of the whole answer's and its last quarter's (the blocks nearest the next
        range: a stretch that turns dense at the end of a range does not make the next one
        too long). It shrinks at once; it grows at most `max_growth` times, and only after
        a range that was not cut short by the head."""
        config = self._config
        if self._ceiling is not None:
            self._ceiling_ranges -= 1
            if self._ceiling_ranges <= 0:
                self._ceiling = None
        span = fetched.end - fetched.first + 1
        tail = max(1, span // 4)
        tail_logs = 0
        for item in reversed(fetched.logs):
            if item.block_number <= fetched.end - tail:
                break
            tail_logs += 1
        density = max(len(fetched.logs) / span, tail_logs / tail)
        size = max(1, int(config.target_logs / density)) if density else span * config.target_logs
        if size > self._range:
            size = (
                min(size, self._range * config.max_growth) if span >= self._range else self._range
            )
        size = min(size, config.max_range, self._ceiling or size)
        self._range = max(1, size)

    def _oversize_limit(self) -> int:
        return int(_OVERSIZED * self._config.target_logs)

    def _oversized(self, span: int, error: _Oversized) -> None:
        """An answer far above `target_logs` (the chain turned much denser than the last
        range said): it is not used; the range is sized from it and read again."""
        self._range = max(1, min(span - 1, span * self._config.target_logs // error.logs))
        log.info("%d logs in %d blocks; reading %d blocks instead", error.logs, span, self._range)

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
                    self._oversize_limit(),
                )
            except RangeTooLarge as exc:
                self._refused(end - first + 1, exc)
            except _Oversized as exc:
                self._oversized(end - first + 1, exc)

    def _prefetch(self, first: int, head: int, finalized: int, after_hash: str) -> None:
        """Starts fetching the range after the one being written."""
        if self._reader is None:
            self._reader_rpc = self._rpc.clone()  # used by the reading thread only
            self._reader = self._worker("indexer-read", self._reader_rpc.close)
        rpc = self._reader_rpc
        end = min(head, first + self._range - 1)
        decoder, contracts, confirmations = (
            self._decoder,
            self._contracts,
            self._config.confirmations,
        )
        limit = self._oversize_limit()
        future = self._reader.submit(
            lambda: _fetch(
                rpc, decoder, contracts, confirmations, first, end, head, finalized, limit
            )
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
            fetched = pending.future.result()
        except RangeTooLarge as exc:
            self._refused(pending.end - pending.first + 1, exc)
            return None
        except _Oversized as exc:
            self._oversized(pending.end - pending.first + 1, exc)
            return None
        except Exception:
            log.debug(
                "prefetching %d..%d failed; reading it again", first, pending.end, exc_info=True
            )
            return None
        if not self._still_canonical(
            fetched.end, fetched.headers[fetched.end]["hash"], pending.head
        ):
            log.debug("dropping the prefetched range %d..%d: it changed", first, pending.end)
            return None
        return fetched

    # -------------------------------------------------------------------- sync

    def sync_once(self) -> SyncResult | None:
        """Indexes the next range (committed when this returns); None when the mirror is at
        the head."""
        with _range_work():
            return self._sync_once()

    def _sync_once(self) -> SyncResult | None:
        last, last_hash, finalized = self.cursor()
        head = self._rpc.block_number()
        if head < last:
            # The node is behind us (restarted, or a reorg to a shorter chain).
            self._pending = self._prepared = None
            return self._handle_reorg(last, head)
        if last > finalized or head == last:
            node_hash = self._rpc.headers([last])[0]["hash"] if last >= 0 else last_hash
            if node_hash != last_hash:
                self._pending = self._prepared = None
                return self._handle_reorg(last, head)
        if head == last:
            self._pending = self._prepared = None
            if self._unchecked_commits:
                self._checkpoint_in_background()  # caught up: a quiet moment
            return None
        cursor = (last, last_hash, finalized)
        prepared = self._take_prepared(cursor, head)
        if prepared is None:
            first = last + 1
            fetched = self._take_prefetch(first, last_hash, head)
            if fetched is None:
                fetched = self._fetch_now(first, head, finalized)
            self._resize(fetched)
            checked = self._check(fetched, cursor)
            if checked is None:
                # The logs and headers came from different forks: a reorg is under way.
                return SyncResult(first, last, 0, head)
            if checked is _REORGED:
                return self._handle_reorg(last, head)
            assert isinstance(checked, dict)
            new_finalized = self._finalized_after(fetched, finalized)
            self._read_ahead(fetched, new_finalized, head)
            if not self._overlapping(fetched.end, head):
                # One transaction reads what the range needs and writes it.
                self._await_checkpoint()
                with self._engine.begin() as conn:
                    prepared = self._prepare(conn, fetched, checked, cursor, new_finalized, {})
                    del fetched  # its logs are rows now: not held while they are written
                    self._write_rows(conn, prepared)
                self._committed(prepared)
                return SyncResult(prepared.first, prepared.end, prepared.events, head)
            with self._engine.connect() as reader:
                prepared = self._prepare(reader, fetched, checked, cursor, new_finalized, {})
            del fetched  # as above, while the next range is read and prepared too
        self._write_and_prepare_next(prepared, head)
        return SyncResult(prepared.first, prepared.end, prepared.events, head)

    def _finalized_after(self, fetched: _Fetched, finalized: int) -> int:
        # What is final is judged by the head the range was read against, not a later one.
        return max(finalized, fetched.head - self._config.confirmations)

    def _check(
        self, fetched: _Fetched, cursor: tuple[int, str, int]
    ) -> dict[int, int] | object | None:
        """The block times of a range read right after `cursor`, once its logs and headers
        are known to agree; `_REORGED` when its first block does not follow the cursor's
        block; None when logs and headers came from different forks."""
        last, last_hash, _ = cursor
        first, end, headers = fetched.first, fetched.end, fetched.headers
        if first in headers and headers[first]["parentHash"] != last_hash and last >= 0:
            return _REORGED
        if fetched.removed:
            log.info(
                "a log of blocks %d..%d was removed while it was being read; retrying", first, end
            )
            return None
        block_times = {n: int(h["timestamp"], 16) for n, h in headers.items()}
        for item in fetched.logs:
            number = item.block_number
            if number not in block_times:
                # No header was needed: the log carries its block's time.
                assert item.block_time is not None
                block_times[number] = item.block_time
            elif number in headers and item.block_hash != headers[number]["hash"]:
                log.info("block %d changed while it was being read; retrying", number)
                return None
        return block_times

    def _read_ahead(self, fetched: _Fetched, new_finalized: int, head: int) -> None:
        if self._config.prefetch and fetched.end < head:
            end_hash = fetched.headers[fetched.end]["hash"]
            self._prefetch(fetched.end + 1, head, new_finalized, end_hash)

    def _take_prepared(self, cursor: tuple[int, str, int], head: int) -> _Prepared | None:
        """The range prepared while the last one was written, if it follows exactly this
        cursor, the node has not gone back since, and the blocks it read while they were
        unconfirmed are still the node's; None otherwise (it is dropped)."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return None
        if (
            prepared.after != cursor
            or head < prepared.head
            or head < prepared.end
            or not self._still_canonical(prepared.end, prepared.end_hash, prepared.head)
        ):
            log.debug("dropping the prepared range %d..%d", prepared.first, prepared.end)
            self._pending = None  # read after it: as stale
            return None
        return prepared

    def _still_canonical(self, end: int, end_hash: str, read_at_head: int) -> bool:
        """Whether a range read when the head was `read_at_head` still holds: when it reached
        into the unconfirmed window then, the node must still have its last block (whose
        hash vouches for every block before it)."""
        if end <= read_at_head - self._config.confirmations:
            return True
        return bool(self._rpc.headers([end])[0]["hash"] == end_hash)

    def _prepare(
        self,
        reader: Connection,
        fetched: _Fetched,
        block_times: dict[int, int],
        cursor: tuple[int, str, int],
        finalized: int,
        overlay: dict[type[Base], dict[ProjectionKey, dict[str, Any]]],
    ) -> _Prepared:
        """The rows a checked range writes. Projection rows come from `overlay` (the rows as
        the range before leaves them, while that one is being written) or from `reader`."""
        chain_id = self._config.chain_id
        first, end, logs, headers = fetched.first, fetched.end, fetched.logs, fetched.headers
        seen = repository.existing_logs(reader, chain_id, first, end)
        fresh = [d for d in logs if (d.block_hash, d.log_index) not in seen] if seen else logs
        batch = Batch(chain_id=chain_id, finalized_block=finalized, block_times=block_times)
        wanted: dict[type[Base], dict[ProjectionKey, None]] = {}
        for item in fresh:
            for table, key in projection_keys(chain_id, item):
                wanted.setdefault(table, {})[key] = None
        for table, keys in wanted.items():
            known = overlay.get(table, {})
            loaded: dict[ProjectionKey, dict[str, Any] | None] = dict(keys)
            loaded.update(
                repository.load_projections(reader, table, [k for k in keys if k not in known])
            )
            loaded.update((k, known[k]) for k in keys if k in known)
            batch.loaded[table] = loaded
        apply(batch, fresh)
        raw_rows = [
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
        ]
        blocks = [
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
        ]
        return _Prepared(
            first=first,
            end=end,
            head=fetched.head,
            after=cursor,
            end_hash=headers[end]["hash"],
            finalized=finalized,
            raw_rows=raw_rows,
            facts=batch.facts,
            projections=batch.projections,
            undo=batch.undo,
            blocks=blocks,
        )

    def _write(self, prepared: _Prepared) -> None:
        """One transaction: the range's rows and the cursor after it."""
        self._await_checkpoint()
        with self._engine.begin() as conn:
            self._write_rows(conn, prepared)
        self._committed(prepared)

    def _committed(self, prepared: _Prepared) -> None:
        self._unchecked_events += prepared.events
        self._unchecked_commits += 1
        if self._unchecked_events >= _CHECKPOINT_EVENTS or self._wal_full():
            # Past the limit the next write waits until the log is all copied, to start it
            # over: copied now, while the next range is prepared, it finds nothing left.
            self._checkpoint_in_background()

    def _checkpoint_in_background(self) -> None:
        """SQLite (a file): the write-ahead log is copied into the database file in a thread
        of its own while the next ranges are prepared and written, instead of in a commit
        (SQLite's default, which holds up the indexer for about as long as preparing a range
        takes); every `_CHECKPOINT_EVENTS` events rather than after every range, which
        copies the pages that every range rewrites (the upper levels of each index, the
        projections) once instead of once a range, and when the mirror has caught up. See
        `_await_checkpoint` for how the log stays bounded."""
        if not self._checkpoints or (self._checkpoint and not self._checkpoint.done()):
            return  # the next commit asks again
        self._unchecked_events = self._unchecked_commits = 0
        if self._checkpointer is None:
            self._checkpointer = self._worker("indexer-checkpoint")
        self._checkpoint = self._checkpointer.submit(self._checkpoint_now)

    def _await_checkpoint(self) -> None:
        """Before a write. While checkpoints run beside the writes, SQLite cannot start the
        log over (a frame is always left to copy), so it grows; once it holds
        `_WAL_LIMIT_BYTES` this write waits for the running checkpoint, if any, and copies
        the rest itself, and so starts the log over (and truncates its file: see
        `repository.defer_wal_checkpoints`): it never holds much more than that."""
        if not self._wal_full():
            return
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            checkpoint.result()
        self._checkpoint_now()
        self._unchecked_events = self._unchecked_commits = 0

    def _checkpoint_now(self) -> None:
        """A checkpoint, on the indexer's own connection for them. A failure is logged, not
        raised: nothing is lost (the log keeps what was not copied, the next checkpoint
        copies it, and readers read it from the log meanwhile)."""
        try:
            if self._checkpoint_connection is None:
                self._checkpoint_connection = repository.checkpoint_connection(self._engine)
            repository.checkpoint_wal(self._checkpoint_connection)
        except Exception:
            log.warning("checkpointing the SQLite write-ahead log failed", exc_info=True)

    def _wal_full(self) -> bool:
        """SQLite (a file): whether the write-ahead log holds `_WAL_LIMIT_BYTES` (its file's
        size is the log's: it is truncated when the log starts over)."""
        if not self._checkpoints:
            return False
        try:
            return os.path.getsize(f"{self._engine.url.database}-wal") >= _WAL_LIMIT_BYTES
        except FileNotFoundError:
            return False

    def _write_rows(self, conn: Connection, prepared: _Prepared) -> None:
        chain_id = self._config.chain_id
        repository.prepare_bulk_writes(conn)
        if self._checkpoints:
            repository.defer_wal_checkpoints(conn)
        repository.insert_raw_events(conn, prepared.raw_rows)
        for table in FACT_TABLES:
            repository.insert_facts(conn, table, prepared.facts.get(table, []))
        for table, rows in prepared.projections.items():
            repository.upsert_projections(conn, table, list(rows.values()))
        repository.insert_undo(conn, chain_id, prepared.undo)
        repository.save_blocks(conn, prepared.blocks)
        repository.save_state(conn, chain_id, prepared.end, prepared.end_hash, prepared.finalized)
        repository.prune_confirmed(conn, chain_id, prepared.finalized)

    def _overlapping(self, end: int, head: int) -> bool:
        """Whether the range ending at `end` is written while the next one is prepared."""
        overlap = self._config.overlap_writes
        if overlap is None:
            overlap = self._engine.dialect.name == "postgresql"
        return bool(overlap and self._config.prefetch and self._pending is not None and end < head)

    def _write_and_prepare_next(self, prepared: _Prepared, head: int) -> None:
        """Writes `prepared`; meanwhile, if the next range has been read, checks it and turns
        it into rows (`self._prepared`), with the projections as `prepared` leaves them. The
        database does its part of the write while Python does its part of the next range."""
        if not self._overlapping(prepared.end, head):
            self._write(prepared)
            return
        if self._writer is None:
            self._writer = self._worker("indexer-write")
        written = self._writer.submit(lambda: self._write(prepared))
        try:
            self._prepare_next(prepared, head)
        except Exception:
            # Anything wrong with the next range is found again, and reported, when it is
            # read again by the next sync_once.
            log.debug("preparing the range after %d failed", prepared.end, exc_info=True)
            self._pending = self._prepared = None
        finally:
            try:
                written.result()
            except BaseException:
                self._pending = self._prepared = None
                raise

    def _prepare_next(self, prepared: _Prepared, head: int) -> None:
        cursor = (prepared.end, prepared.end_hash, prepared.finalized)
        first = prepared.end + 1
        fetched = self._take_prefetch(first, prepared.end_hash, head)
        if fetched is None:
            return
        self._resize(fetched)
        checked = self._check(fetched, cursor)
        if not isinstance(checked, dict):
            return  # the next sync_once reads it again and finds out what changed
        new_finalized = self._finalized_after(fetched, prepared.finalized)
        self._read_ahead(fetched, new_finalized, head)
        with self._engine.connect() as reader:
            self._prepared = self._prepare(
                reader, fetched, checked, cursor, new_finalized, prepared.projections
            )

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
