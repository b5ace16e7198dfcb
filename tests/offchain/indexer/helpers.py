"""Helpers of the indexer tests: a mirror under test, table dumps to compare two mirrors,
expected fact rows read from the node, and a JSON-RPC proxy in front of Anvil that can
refuse large `eth_getLogs` ranges and counts what it forwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from eth_utils import keccak
from sqlalchemy import Engine, select
from web3 import Web3

from offchain.abi import load_abi
from offchain.db import repository
from offchain.db.models import Base, IndexerState, RawEvent
from offchain.indexer.indexer import Indexer, IndexerConfig, SyncResult
from offchain.indexer.rpc import RpcClient
from offchain.manifest import ContractDeployment, Manifest
from offchain.reconcile import Difference, reconcile

ZERO_ADDRESS = "0x" + "00" * 20
ZERO_HASH = "0x" + "00" * 32
CHAINBILL = Path(sys.executable).parent / "chainbill"
# Surrogate keys (their values depend on insertion history, e.g. sequences are not rolled
# back on PostgreSQL) and wall-clock columns: everything else must be equal between mirrors.
NOT_COMPARED = frozenset({"id", "updated_at"})
MAX_SYNCS = 100_000


def topic_of(contract_name: str, event: str) -> str:
    for entry in load_abi(contract_name):
        if entry["type"] == "event" and entry["name"] == event:
            types = ",".join(i["type"] for i in entry["inputs"])
            return "0x" + keccak(text=f"{event}({types})").hex()
    raise KeyError(event)


def event_names() -> dict[str, str]:
    """topic0 -> event name, over both contracts."""
    names = {}
    for contract_name in ("SubscriptionManager", "InvoiceRegistry"):
        for entry in load_abi(contract_name):
            if entry["type"] == "event":
                names[topic_of(contract_name, entry["name"])] = entry["name"]
    return names


def make_manifest(
    chain_id: int,
    manager: str,
    registry: str,
    *,
    owner: str = ZERO_ADDRESS,
    fee_bps: int = 0,
    fee_recipient: str = ZERO_ADDRESS,
    start_block: int = 0,
) -> Manifest:
    return Manifest(
        chain_id=chain_id,
        network="local",
        contracts={
            "SubscriptionManager": ContractDeployment(str(manager), start_block, ZERO_HASH, ""),
            "InvoiceRegistry": ContractDeployment(str(registry), start_block, ZERO_HASH, ""),
        },
        owner=str(owner),
        fee_bps=fee_bps,
        fee_recipient=str(fee_recipient),
    )


def sync_to_head(indexer: Indexer) -> list[SyncResult]:
    """sync_once until the indexer says it is at the head."""
    results: list[SyncResult] = []
    for _ in range(MAX_SYNCS):
        result = indexer.sync_once()
        if result is None:
            return results
        results.append(result)
    raise AssertionError(f"the indexer did not reach the head in {MAX_SYNCS} ranges")


def dump(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every mirror table (but surrogate ids and wall-clock times), sorted."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name not in NOT_COMPARED]
            rows = [dict(r._mapping) for r in conn.execute(select(*columns))]
            out[table.name] = sorted(rows, key=lambda r: repr(sorted(r.items())))
    return out


def assert_same_mirror(
    actual: Engine,
    expected: Engine,
    *,
    finalized_header: bool = True,
    finalized_may_differ: bool = False,
) -> None:
    """Every table equal, table by table so that a failure names the table.

    With `finalized_header=False` the stored header of the finalized block itself is left
    out of the comparison of `blocks`: whether the indexer still holds it depends on where
    its earlier ranges ended (it keeps headers above the finalized block, and a range's end),
    so two mirrors with different range histories may differ there and only there.

    With `finalized_may_differ=True` the finalized block of the two may differ too (it never
    moves back, so a mirror that saw a longer chain before the node went back keeps a higher
    one than a fresh index): the reorg bookkeeping (`blocks`, `projection_undo`) is then
    compared above the higher of the two only."""
    got, want = dump(actual), dump(expected)
    assert got.keys() == want.keys()
    finalized = {
        s["chain_id"]: s["finalized_block"] for s in got["indexer_state"] + want["indexer_state"]
    }
    if finalized_may_differ:
        for tables in (got, want):
            for state in tables["indexer_state"]:
                finalized[state["chain_id"]] = max(
                    finalized[state["chain_id"]], state.pop("finalized_block")
                )
            tables["projection_undo"] = [
                u for u in tables["projection_undo"] if u["block_number"] > finalized[u["chain_id"]]
            ]
    if not finalized_header or finalized_may_differ:
        for tables in (got, want):
            own = {s["chain_id"]: s.get("finalized_block") for s in tables["indexer_state"]}
            tables["blocks"] = [
                b
                for b in tables["blocks"]
                if b["number"] > (own.get(b["chain_id"]) or finalized.get(b["chain_id"], -1))
            ]
    for name in want:
        assert got[name] == want[name], f"table {name} differs"


@dataclass
class Mirror:
    """An SQL mirror of one deployment, indexed from the test chain."""

    engine: Engine
    rpc_url: str
    manifest: Manifest
    confirmations: int = 2
    _web3: Web3 | None = field(default=None, repr=False)

    @property
    def chain_id(self) -> int:
        return self.manifest.chain_id

    @property
    def web3(self) -> Web3:
        if self._web3 is None:
            self._web3 = Web3(Web3.HTTPProvider(self.rpc_url))
        return self._web3

    @property
    def manager(self) -> str:
        return self.manifest.address_of("SubscriptionManager").lower()

    @property
    def registry(self) -> str:
        return self.manifest.address_of("InvoiceRegistry").lower()

    def config(self, **overrides: Any) -> IndexerConfig:
        values: dict[str, Any] = {
            "chain_id": self.chain_id,
            "contracts": (self.manager, self.registry),
            "start_block": self.manifest.start_block,
            "confirmations": self.confirmations,
        }
        values.update(overrides)
        return IndexerConfig(**values)

    def indexer(self, rpc: RpcClient | None = None, **overrides: Any) -> Indexer:
        return Indexer(self.engine, rpc or RpcClient(self.rpc_url), self.config(**overrides))

    def sync(self, **overrides: Any) -> list[SyncResult]:
        return sync_to_head(self.indexer(**overrides))

    def with_engine(self, engine: Engine) -> Mirror:
        return Mirror(engine, self.rpc_url, self.manifest, self.confirmations)

    def rows(self, model: type[Base], **where: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = repository.all_rows(conn, model, self.chain_id)
        return [r for r in rows if all(r[k] == v for k, v in where.items())]

    def row(self, model: type[Base], **where: Any) -> dict[str, Any]:
        rows = self.rows(model, **where)
        assert len(rows) == 1, f"expected one {model.__tablename__} row for {where}, got {rows}"
        return rows[0]

    def state(self) -> IndexerState | None:
        with self.engine.connect() as conn:
            return repository.get_state(conn, self.chain_id)

    def reconcile(self) -> list[Difference]:
        block, differences = reconcile(self.engine, self.web3, self.manifest)
        state = self.state()
        assert state is not None and block == state.last_block
        return differences

    def raw_events(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(RawEvent).order_by(RawEvent.block_number, RawEvent.log_index)
            )
            return [dict(r._mapping) for r in rows]

    def node_logs(self) -> list[dict[str, Any]]:
        """Every log of the two contracts on the node's canonical chain, in order."""
        head = self.web3.eth.block_number
        logs = self.web3.eth.get_logs(
            {
                "address": [
                    Web3.to_checksum_address(self.manager),
                    Web3.to_checksum_address(self.registry),
                ],
                "fromBlock": self.manifest.start_block,
                "toBlock": head,
            }
        )
        return [dict(entry) for entry in logs]

    def fact(
        self, tx_hash: Any, contract: str, event: str, nth: int | None = None, **values: Any
    ) -> dict[str, Any]:
        """The row a fact table must hold for the `event` log of `contract` in `tx_hash` (the
        only one, or the `nth` of several)."""
        contract_name = (
            "SubscriptionManager" if contract.lower() == self.manager else "InvoiceRegistry"
        )
        topic = topic_of(contract_name, event)
        receipt = self.web3.eth.get_transaction_receipt(tx_hash)
        matching = [
            entry
            for entry in receipt["logs"]
            if entry["address"].lower() == contract.lower()
            and Web3.to_hex(entry["topics"][0]) == topic
        ]
        if nth is None:
            assert len(matching) == 1, f"{len(matching)} {event} logs in {tx_hash}"
        entry = matching[nth or 0]
        block = self.web3.eth.get_block(entry["blockNumber"])
        return {
            "chain_id": self.chain_id,
            "block_hash": Web3.to_hex(entry["blockHash"]),
            "log_index": entry["logIndex"],
            "block_number": entry["blockNumber"],
            "block_time": block["timestamp"],
            "tx_hash": Web3.to_hex(entry["transactionHash"]),
            "contract": contract.lower(),
            **values,
        }


# ------------------------------------------------------------------ the JSON-RPC proxy


@dataclass
class ProxyLog:
    """What a proxy saw: every JSON-RPC method forwarded or refused, and getLogs spans."""

    methods: list[str] = field(default_factory=list)
    get_logs_spans: list[int] = field(default_factory=list)
    refused_spans: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RpcProxy:
    """A JSON-RPC proxy to `upstream` that answers `eth_getLogs` over more than
    `max_log_range` blocks with the error big providers send, as Infura's
    "query returned more than 10000 results".

    While `log_block_limit` is set, an `eth_getLogs` reaching past that block is held
    until the limit is raised (or cleared), the way a slow provider stalls: a test bounds how
    far an indexer can get before it is killed, whatever the machine's speed."""

    def __init__(self, upstream: str, max_log_range: int | None = None) -> None:
        self.upstream = upstream
        self.max_log_range = max_log_range
        self.log = ProxyLog()
        self._limit = threading.Condition()
        self._log_block_limit: int | None = None
        self._session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = proxy.handle(body)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed while its request was held

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def handle(self, body: bytes) -> bytes:
        payload = json.loads(body)
        calls = payload if isinstance(payload, list) else [payload]
        with self.log.lock:
            self.log.methods.extend(c["method"] for c in calls)
        if isinstance(payload, dict) and payload["method"] == "eth_getLogs":
            query = payload["params"][0]
            span = int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1
            with self.log.lock:
                self.log.get_logs_spans.append(span)
            if self.max_log_range is not None and span > self.max_log_range:
                with self.log.lock:
                    self.log.refused_spans.append(span)
                error = {"code": -32005, "message": "query returned more than 10000 results"}
                return json.dumps({"jsonrpc": "2.0", "id": payload["id"], "error": error}).encode()
            self._hold_until_allowed(int(query["toBlock"], 16))
        response = self._session.post(
            self.upstream,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        return response.content

    @property
    def log_block_limit(self) -> int | None:
        return self._log_block_limit

    @log_block_limit.setter
    def log_block_limit(self, block: int | None) -> None:
        with self._limit:
            self._log_block_limit = block
            self._limit.notify_all()

    def _hold_until_allowed(self, to_block: int) -> None:
        with self._limit:
            self._limit.wait_for(
                lambda: self._log_block_limit is None or to_block <= self._log_block_limit,
                timeout=120,
            )

    def __enter__(self) -> RpcProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.log_block_limit = None
        self._server.shutdown()
        self._server.server_close()
        self._session.close()


# ------------------------------------------------------------------------ processes


def chainbill_index(
    database_url: str,
    rpc_url: str,
    manifest: Path,
    log_path: Path,
    *,
    confirmations: int = 2,
    follow: bool = False,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`chainbill index ... --quiet` in the background, its output into `log_path`."""
    command = [
        str(CHAINBILL),
        "index",
        "--database-url",
        database_url,
        "--rpc-url",
        rpc_url,
        "--manifest",
        str(manifest),
        "--confirmations",
        str(confirmations),
        "--quiet",
        "--follow" if follow else "--no-follow",
        *extra,
    ]
    with log_path.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kills the process (only this one, by its handle) however the block ends."""
    try:
        yield process
    finally:
        kill(process)


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `condition` until it holds; fails the test after `timeout` seconds."""
    if not eventually(condition, timeout):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
