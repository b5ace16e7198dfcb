"""Indexer benchmark: chainbill's events from a local Anvil chain into SQLite and PostgreSQL.

Generates at least ``--events`` (default 100,000) chainbill events on a fresh Anvil chain:
subscription charges in ``chargeBatch`` transactions (with metered usage reports and their
usage charges, and charges that fail for want of allowance), and invoices issued and then
paid in full, paid in two installments, settled off-chain or voided. Transactions go
straight to Anvil over JSON-RPC from its unlocked / impersonated accounts, many per block.
Then, in the same run:

- raw: the very ``eth_getLogs`` ranges the indexer requested, fetched with the project's
  lean ``RpcClient`` and neither decoded nor stored: events/s, the baseline;
- end to end: the indexer backfilling the whole chain into an empty SQLite file and an
  empty PostgreSQL database, each in a subprocess of its own (peak RSS read from
  ``/proc``), from start to cursor at the head: events/s and the ratio to raw
  (target: at least 0.4);
- the 1x point in ``--rounds`` rounds (default 3), each a backfill into each database and
  a raw fetch, interleaved so that a slower stretch of the (shared) machine weighs on all
  alike; each figure is the median of its rounds;
- the same at 4x the events (``--events-large``, default 400,000: the chain is extended),
  for peak memory, which should stay flat (target: at most 1.25x the peak at 1x);
- live: with the indexer following the head in a thread (poll interval 0.05 s), the lag
  from a block being mined to its row being visible in the database (p50, p99).

Figures are printed and written to ``bench/results/indexer.json``; the exit status is 1
when a target is missed. The mirrors are checked against the chain after each backfill
(every event stored, one fact or projection row per event).

Run from the project root: ``.venv/bin/python bench/indexer.py`` (about 6 minutes on two
idle cores, most of it Anvil mining the 400,000 events), or ``--events 20000`` for a quick
check (under a minute) that everything runs: at that size fixed costs weigh on the ratios,
and its verdicts are not the targets'. ``--profile DIR`` runs each backfill under cProfile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_utils import keccak
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/indexer.py` from anywhere

from bench.common import anvil, note, percentile  # noqa: E402
from offchain.abi import load_abi  # noqa: E402
from offchain.config import LOCAL_CHAIN_ID, default_confirmations  # noqa: E402
from offchain.db.engine import make_engine, normalize_url, upgrade_schema  # noqa: E402
from offchain.indexer.indexer import Indexer, IndexerConfig, SyncResult, count_events  # noqa: E402
from offchain.indexer.rpc import RpcClient  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "indexer.json"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_RATIO = 0.4
# Peak RSS at 4x the events may exceed the one at 1x by this much and still count as flat.
FLAT_MEMORY_TOLERANCE = 1.25

# The workload (6-decimal stablecoin amounts; times in seconds).
PERIOD = 3600  # the shortest period the contract accepts: many billing rounds, little time
GRACE = 365 * 24 * 3600  # a failed charge is retried every round and never lapses here
PRICE = 10_000_000
METERED_PRICE = 5_000_000
UNIT_PRICE = 10_000
INCLUDED_UNITS = 100
USAGE_UNITS = 150  # per report, one a period: 50 units of overage each time
METERED_CAP = 100_000_000
INVOICE_AMOUNT = 25_000_000
FEE_BPS = 100
FUNDS = 10**18
ALLOWANCE = 10**30  # finite, so every charge updates it like a real subscriber's
SUBS_PER_WALLET = 5
METERED_EVERY = 5  # one subscription in five is on the metered plan
INVOICES_PER_SUBSCRIPTION = 0.1  # invoices issued per subscription and billing round
CHARGE_BATCH = 50
ROUNDS = 50  # the subscriptions are sized so that --events takes about this many rounds
# chainbill events per subscription and round: a charge, 1/5 a usage report and a usage
# charge, 0.1 invoice of about 2.1 events.
EVENTS_PER_SUBSCRIPTION_ROUND = 1 + 2 / METERED_EVERY + INVOICES_PER_SUBSCRIPTION * 2.1

GAS = {
    "deploy": 6_000_000,
    "mint": 100_000,
    "approve": 80_000,
    "plan": 250_000,
    "approval": 80_000,
    "subscribe": 250_000,
    "report": 150_000,
    "issue": 250_000,
    "pay": 150_000,
    "settle": 150_000,
    "void": 80_000,
}


# ----------------------------------------------------------------------------- helpers


def calldata(signature: str, *args: Any) -> str:
    """ABI-encoded call of `signature` (static and dynamic arrays of plain types only)."""
    types = signature[signature.index("(") + 1 : -1]
    arguments = encode(types.split(",") if types else [], list(args))
    return "0x" + (keccak(text=signature)[:4] + arguments).hex()


def event_names() -> dict[str, str]:
    """topic0 -> event name, for chainbill's two contracts."""
    names: dict[str, str] = {}
    for contract in ("SubscriptionManager", "InvoiceRegistry"):
        for entry in load_abi(contract):
            if entry["type"] == "event":
                signature = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
                names["0x" + keccak(text=signature).hex()] = entry["name"]
    return names


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------- Anvil


# No automine (we pack blocks), free gas, any sender. Anvil 1.7 rebuilds the whole state
# trie for every block it mines, so a block costs more as the state grows: no historical
# states (nothing here reads old state; blocks, receipts and logs are all kept), and Cancun,
# the contracts' EVM version, whose blocks do not fill the EIP-2935 block-hash history
# contract.
ANVIL_OPTIONS = (
    *("--gas-limit", "2000000000"),
    *("--block-base-fee-per-gas", "0", "--gas-price", "0", "--disable-min-priority-fee"),
    *("--auto-impersonate", "--no-mining", "--order", "fifo"),
    "--prune-history",
    *("--hardfork", "cancun"),
)


# ---------------------------------------------------------------------------- workload


@dataclass
class Deployment:
    token: str
    manager: str
    registry: str
    start_block: int


@dataclass
class Workload:
    """Builds the chain: transactions queued in order, a block mined every
    `events_per_block` chainbill events, followed by `empty_blocks` empty ones."""

    rpc: RpcClient
    events_per_block: int
    empty_blocks: int
    expected: Counter[str] = field(default_factory=Counter)
    nonces: dict[str, int] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    pending_events: int = 0
    event_blocks: int = 0
    rounds: int = 0
    invoices: int = 0
    transactions: int = 0
    subscriptions: list[tuple[int, bool, bool]] = field(default_factory=list)  # id, metered, fails
    wallets: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    deployment: Deployment | None = None
    deploy_events: int = 0  # logs of the contracts' constructors (OwnershipTransferred)
    first_due: int = 0

    # -------------------------------------------------------------- transactions

    def send(
        self, sender: str, to: str | None, data: str, gas: int, events: dict[str, int] | None = None
    ) -> None:
        nonce = self.nonces.get(sender)
        if nonce is None:
            nonce = int(self.rpc.call("eth_getTransactionCount", [sender, "pending"]), 16)
        self.nonces[sender] = nonce + 1
        tx = {"from": sender, "data": data, "gas": hex(gas), "gasPrice": "0x0", "nonce": hex(nonce)}
        if to is not None:
            tx["to"] = to
        self.pending.append(tx)
        self.transactions += 1
        if events:
            self.expected.update(events)
            self.pending_events += sum(events.values())
        if self.pending_events >= self.events_per_block or len(self.pending) >= 2_000:
            self.mine()

    def mine(self) -> None:
        """Sends the queued transactions and mines them into one block (then the gap)."""
        if not self.pending:
            return
        for start in range(0, len(self.pending), 500):
            self.rpc.batch(
                "eth_sendTransaction", [[tx] for tx in self.pending[start : start + 500]]
            )
        self.rpc.call("evm_mine", [])
        if self.pending_events:
            self.event_blocks += 1
            if self.empty_blocks:
                self.rpc.call("anvil_mine", [hex(self.empty_blocks)])
        self.pending = []
        self.pending_events = 0

    def latest(self) -> dict[str, Any]:
        block: dict[str, Any] = self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return block

    # -------------------------------------------------------------------- setup

    def deploy(self) -> Deployment:
        from ape import project  # only here: the workers stay free of Ape

        self.accounts = list(self.rpc.call("eth_accounts", []))
        owner, _merchant, fee_recipient = self.accounts[:3]
        start_block = int(self.latest()["number"], 16) + 1
        addresses = []
        for name, args in (
            ("MockStablecoin", (["string", "string"], ["Bench USD", "BUSD"])),
            (
                "SubscriptionManager",
                (["address", "address", "uint256"], [owner, fee_recipient, FEE_BPS]),
            ),
            (
                "InvoiceRegistry",
                (["address", "address", "uint256"], [owner, fee_recipient, FEE_BPS]),
            ),
        ):
            bytecode = getattr(project, name).contract_type.deployment_bytecode.bytecode
            tx_hash = self.rpc.call(
                "eth_sendTransaction",
                [
                    {
                        "from": owner,
                        "data": bytecode + encode(*args).hex(),
                        "gas": hex(GAS["deploy"]),
                        "gasPrice": "0x0",
                    }
                ],
            )
            self.rpc.call("evm_mine", [])
            receipt = self.rpc.call("eth_getTransactionReceipt", [tx_hash])
            if receipt["status"] != "0x1":
                raise SystemExit(f"deploying {name} failed")
            addresses.append(receipt["contractAddress"])
        token, manager, registry = addresses
        self.deployment = Deployment(token, manager, registry, start_block)
        head = int(self.latest()["number"], 16)
        self.deploy_events = len(
            self.rpc.get_logs(
                [self.deployment.manager, self.deployment.registry], [], start_block, head
            )
        )
        return self.deployment

    @property
    def events(self) -> int:
        """chainbill events sent so far (the chain's count is checked after each point)."""
        return self.deploy_events + sum(self.expected.values())

    def setup(self, subscriptions: int) -> None:
        """Plans, approvals, funded wallets and their subscriptions (first period charged)."""
        d = self.deployment
        assert d is not None
        owner, merchant, _fee, keeper = self.accounts[:4]
        self.send(
            merchant,
            d.manager,
            calldata(
                "createPlan(address,uint256,uint256,uint256,uint256)",
                d.token,
                PRICE,
                PERIOD,
                0,
                GRACE,
            ),
            GAS["plan"],
            {"PlanCreated": 1},
        )
        self.send(
            merchant,
            d.manager,
            calldata(
                "createMeteredPlan(address,uint256,uint256,uint256,uint256,uint256,uint256)",
                *(d.token, METERED_PRICE, PERIOD, 0, GRACE, UNIT_PRICE, INCLUDED_UNITS),
            ),
            GAS["plan"],
            {"PlanCreated": 1},
        )
        self.send(
            merchant,
            d.manager,
            calldata("setOperator(address,bool)", keeper, True),
            GAS["approval"],
            {"OperatorSet": 1},
        )
        self.send(
            merchant,
            d.registry,
            calldata("setSettler(address,bool)", keeper, True),
            GAS["approval"],
            {"SettlerSet": 1},
        )
        self.mine()

        wallet_count = math.ceil(subscriptions / SUBS_PER_WALLET)
        self.wallets = [
            "0x" + keccak(text=f"bench wallet {n}")[12:].hex() for n in range(wallet_count)
        ]
        failing = {n for n in range(wallet_count) if n % 100 == 99} or {wallet_count - 1}
        for n, wallet in enumerate(self.wallets):
            self.send(owner, d.token, calldata("mint(address,uint256)", wallet, FUNDS), GAS["mint"])
            # A failing wallet's allowance covers the first charge of each of its
            # subscriptions, and nothing after.
            owned = sum(1 for s in range(subscriptions) if s % wallet_count == n)
            allowance = owned * PRICE if n in failing else ALLOWANCE
            self.send(
                wallet,
                d.token,
                calldata("approve(address,uint256)", d.manager, allowance),
                GAS["approve"],
            )
            self.send(
                wallet,
                d.token,
                calldata("approve(address,uint256)", d.registry, ALLOWANCE),
                GAS["approve"],
            )
        self.mine()

        for sub_id in range(1, subscriptions + 1):
            n = (sub_id - 1) % wallet_count
            fails = n in failing
            metered = sub_id % METERED_EVERY == 0 and not fails
            self.send(
                self.wallets[n],
                d.manager,
                calldata(
                    "subscribe(uint256,uint256)",
                    2 if metered else 1,
                    METERED_CAP if metered else PRICE,
                ),
                GAS["subscribe"],
                {"Subscribed": 1, "Charged": 1},
            )
            self.subscriptions.append((sub_id, metered, fails))
        self.mine()
        self.first_due = int(self.latest()["timestamp"], 16) + PERIOD

    # ------------------------------------------------------------------- rounds

    def billing_round(self) -> None:
        """One period: usage reports, then the charges of every subscription in batches,
        with invoices interleaved."""
        d = self.deployment
        assert d is not None
        _owner, merchant, _fee, keeper = self.accounts[:4]
        self.rounds += 1
        now = int(self.latest()["timestamp"], 16)
        start = max(now + 1, self.first_due + (self.rounds - 1) * PERIOD)
        self.rpc.call("evm_setNextBlockTimestamp", [start])
        for sub_id, metered, _fails in self.subscriptions:
            if metered:
                record = keccak(text=f"usage {sub_id} {self.rounds}")
                self.send(
                    keeper,
                    d.manager,
                    calldata("reportUsage(uint256,uint256,bytes32)", sub_id, USAGE_UNITS, record),
                    GAS["report"],
                    {"UsageReported": 1},
                )
        invoices = max(1, round(len(self.subscriptions) * INVOICES_PER_SUBSCRIPTION))
        batches = [
            self.subscriptions[i : i + CHARGE_BATCH]
            for i in range(0, len(self.subscriptions), CHARGE_BATCH)
        ]
        per_batch = math.ceil(invoices / len(batches))
        due_date = start + 30 * 24 * 3600
        for batch in batches:
            events = Counter[str]()
            for _sub_id, metered, fails in batch:
                events["ChargeFailed" if fails else "Charged"] += 1
                events["UsageCharged"] += metered
            self.send(
                keeper,
                d.manager,
                calldata("chargeBatch(uint256[])", [sub_id for sub_id, _, _ in batch]),
                60_000 + 100_000 * len(batch),
                dict(events),
            )
            for _ in range(min(per_batch, invoices)):
                invoices -= 1
                self.invoice(merchant, keeper, due_date)
        self.mine()
        status = self.rpc.call("txpool_status", [])
        if int(status["pending"], 16) or int(status["queued"], 16):
            raise SystemExit(f"transactions left unmined: {status}")

    def invoice(self, merchant: str, settler: str, due_date: int) -> None:
        d = self.deployment
        assert d is not None
        self.invoices += 1
        n = self.invoices
        kind = n % 20  # 0: voided, 1: settled off-chain, 2-3: two installments, else paid
        customer = self.wallets[n % len(self.wallets)]
        reference = keccak(text=f"INV-{n:08d}")
        invoice_id = keccak(encode(["address", "bytes32"], [merchant, reference]))
        self.send(
            merchant,
            d.registry,
            calldata(
                "issue(address,bytes32,address,address,uint256,uint256,bool,bytes32)",
                *(merchant, reference, customer, d.token, INVOICE_AMOUNT, due_date),
                kind in (2, 3),
                keccak(text=f"line items of invoice {n}"),
            ),
            GAS["issue"],
            {"InvoiceIssued": 1},
        )
        pay = "pay(address,bytes32,uint256)"
        if kind == 0:
            self.send(
                merchant,
                d.registry,
                calldata("voidInvoice(bytes32)", invoice_id),
                GAS["void"],
                {"InvoiceVoided": 1},
            )
        elif kind == 1:
            self.send(
                settler,
                d.registry,
                calldata(
                    "settleOffchain(bytes32,uint256,bytes32)",
                    invoice_id,
                    INVOICE_AMOUNT,
                    keccak(text=f"fiat {n}"),
                ),
                GAS["settle"],
                {"InvoiceSettledOffchain": 1},
            )
        elif kind in (2, 3):
            first = INVOICE_AMOUNT * 2 // 5
            for amount in (first, INVOICE_AMOUNT - first):
                self.send(
                    customer,
                    d.registry,
                    calldata(pay, merchant, reference, amount),
                    GAS["pay"],
                    {"InvoicePaid": 1},
                )
        else:
            self.send(
                customer,
                d.registry,
                calldata(pay, merchant, reference, INVOICE_AMOUNT),
                GAS["pay"],
                {"InvoicePaid": 1},
            )

    def live_invoice(self, merchant: str, due_date: int) -> dict[str, Any]:
        """An invoice issue transaction (not queued) for the live measurement, with its id."""
        d = self.deployment
        assert d is not None
        self.invoices += 1
        self.expected["InvoiceIssued"] += 1
        reference = keccak(text=f"LIVE-{self.invoices:08d}")
        data = calldata(
            "issue(address,bytes32,address,address,uint256,uint256,bool,bytes32)",
            *(merchant, reference, self.wallets[0], d.token, INVOICE_AMOUNT, due_date),
            False,
            keccak(text=f"live invoice {self.invoices}"),
        )
        return {
            "tx": {"from": merchant, "to": d.registry, "data": data, "gas": hex(GAS["issue"])},
            "invoice_id": "0x"
            + keccak(encode(["address", "bytes32"], [merchant, reference])).hex(),
        }

    def extend_to(self, events: int) -> None:
        """Billing rounds until the chain holds at least `events` chainbill events."""
        while self.events < events:
            self.billing_round()


# ----------------------------------------------------------------------------- workers
#
# Each measurement runs in a fresh interpreter (`--worker SPEC`) that imports only what an
# indexer process imports: its peak RSS is the indexer's, and no heap of the parent (Ape's)
# slows its garbage collector down.


def worker_backfill(spec: dict[str, Any]) -> dict[str, Any]:
    engine = make_engine(spec["database_url"])
    started = time.perf_counter()
    upgrade_schema(engine)
    schema_s = time.perf_counter() - started
    rss_before = current_rss_mb()
    rpc = RpcClient(spec["rpc_url"], timeout=600)
    config = IndexerConfig(
        chain_id=spec["chain_id"],
        contracts=tuple(spec["contracts"]),
        start_block=spec["start_block"],
        confirmations=spec["confirmations"],
    )
    ranges: list[tuple[int, int, int, float]] = []

    def progress(result: SyncResult) -> None:
        # The peak RSS so far once each range is committed: where the peak was reached.
        ranges.append(
            (result.first_block, result.last_block, result.events, round(peak_rss_mb(), 1))
        )

    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    indexer = Indexer(engine, rpc, config)
    indexer.run(threading.Event(), on_progress=progress, follow=False)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0
    if profiler is not None:
        profiler.dump_stats(spec["profile"])
    last_block, _, _ = indexer.cursor()
    with engine.connect() as conn:
        rows = {
            table: int(conn.execute(text(f"select count(*) from {table}")).scalar_one())
            for table in spec["tables"]
        }
    events = count_events(engine, spec["chain_id"])
    engine.dispose()
    rpc.close()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "schema_s": schema_s,
        "events": events,
        "last_block": last_block,
        "ranges": ranges,
        "rows": rows,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_raw(spec: dict[str, Any]) -> dict[str, Any]:
    rpc = RpcClient(spec["rpc_url"], timeout=600)
    contracts = spec["contracts"]
    runs = []
    events = 0
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        events = 0
        for first, last in spec["ranges"]:
            events += len(rpc.get_logs(contracts, [], first, last))
        runs.append(time.perf_counter() - started)
    # Not timed: what the chain holds, by event.
    topics: Counter[str] = Counter()
    for first, last in spec["ranges"]:
        topics.update(log["topics"][0] for log in rpc.get_logs(contracts, [], first, last))
    rpc.close()
    return {"events": events, "runs_s": runs, "topics": dict(topics), "peak_rss_mb": peak_rss_mb()}


def worker_live(spec: dict[str, Any]) -> dict[str, Any]:
    engine = make_engine(spec["database_url"])
    config = IndexerConfig(
        chain_id=spec["chain_id"],
        contracts=tuple(spec["contracts"]),
        start_block=spec["start_block"],
        confirmations=spec["confirmations"],
        poll_interval=spec["poll_interval"],
    )
    indexer = Indexer(engine, RpcClient(spec["rpc_url"], timeout=600), config)
    indexer.run(threading.Event(), follow=False)  # catch up first
    stop = threading.Event()
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            indexer.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=follow, name="indexer", daemon=True)
    thread.start()
    sender = RpcClient(spec["rpc_url"], timeout=60)
    reader = make_engine(spec["database_url"])
    query = text("select 1 from invoices where chain_id = :chain and invoice_id = :invoice")
    rng = random.Random(7)
    lags: list[float] = []
    for item in spec["blocks"]:
        time.sleep(rng.uniform(0.05, 0.25))  # out of step with the indexer's polls
        sender.call("eth_sendTransaction", [{**item["tx"], "gasPrice": "0x0"}])
        sender.call("evm_mine", [])
        mined = time.perf_counter()
        while True:
            with reader.connect() as conn:
                row = conn.execute(
                    query, {"chain": spec["chain_id"], "invoice": item["invoice_id"]}
                ).first()
            if row is not None:
                break
            if failures:
                raise RuntimeError("the indexer thread failed") from failures[0]
            if time.perf_counter() - mined > 30:
                raise RuntimeError(f"invoice {item['invoice_id']} not visible after 30 s")
            time.sleep(0.001)
        lags.append((time.perf_counter() - mined) * 1000)
    stop.set()
    thread.join(30)
    reader.dispose()
    engine.dispose()
    sender.close()
    return {"lags_ms": lags, "peak_rss_mb": peak_rss_mb()}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "backfill": worker_backfill,
    "raw": worker_raw,
    "live": worker_live,
}
RESULT_MARK = "BENCH-RESULT "


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs a worker in a subprocess of its own and returns what it reports."""
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        cwd=ROOT,
        input=json.dumps({"kind": kind, **spec}),
        capture_output=True,
        text=True,
        check=False,
    )
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line.removeprefix(RESULT_MARK))
            return result
    raise SystemExit(
        f"{kind} worker failed (exit {process.returncode}):\n{process.stdout[-3000:]}\n"
        f"{process.stderr[-6000:]}"
    )


# -------------------------------------------------------------------------- databases


def postgres_admin_url(skip: bool) -> tuple[str | None, str]:
    """The admin URL of a PostgreSQL server that answers, or None and why not."""
    if skip:
        return None, "skipped (--skip-postgres)"
    url = os.environ.get("BENCH_POSTGRES_URL") or LOCAL_POSTGRES
    try:
        probe = create_engine(normalize_url(url), connect_args={"connect_timeout": 3})
        with probe.connect() as conn:
            conn.execute(text("select 1"))
        probe.dispose()
    except Exception as exc:
        return None, f"skipped: no PostgreSQL server answers at {url} ({type(exc).__name__})"
    return url, url


@contextmanager
def fresh_database(kind: str, admin_url: str | None, workdir: Path) -> Iterator[str]:
    """An empty database (dropped, or its file deleted, afterwards)."""
    if kind == "sqlite":
        path = workdir / f"mirror-{uuid.uuid4().hex[:8]}.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    assert admin_url is not None
    name = f"chainbill_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ------------------------------------------------------------------------------ bench

# Mirror tables checked against the chain after each backfill: table -> events it holds.
ROW_CHECKS: dict[str, tuple[str, ...]] = {
    "charges": ("Charged",),
    "charge_failures": ("ChargeFailed",),
    "usage_reports": ("UsageReported",),
    "usage_charges": ("UsageCharged",),
    "invoice_payments": ("InvoicePaid",),
    "invoice_settlements": ("InvoiceSettledOffchain",),
    "invoices": ("InvoiceIssued",),
    "subscriptions": ("Subscribed",),
    "plans": ("PlanCreated",),
}


@dataclass
class Bench:
    args: argparse.Namespace
    rpc_url: str
    workload: Workload
    postgres: str | None
    workdir: Path
    names: dict[str, str] = field(default_factory=event_names)
    timings: dict[str, float] = field(default_factory=dict)
    loads: dict[str, list[float]] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        note(f"{name} ...")
        started = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - started, 2)
        self.loads[name] = load()
        note(f"{name}: {self.timings[name]:.1f} s (load {self.loads[name][0]})")

    @property
    def d(self) -> Deployment:
        assert self.workload.deployment is not None
        return self.workload.deployment

    def base_spec(self) -> dict[str, Any]:
        return {
            "rpc_url": self.rpc_url,
            "chain_id": LOCAL_CHAIN_ID,
            "contracts": [self.d.manager, self.d.registry],
            "start_block": self.d.start_block,
            "confirmations": default_confirmations(LOCAL_CHAIN_ID),
        }

    def head(self) -> int:
        return int(self.workload.rpc.call("eth_blockNumber", []), 16)

    def backfill(self, database: str, label: str, url: str) -> dict[str, Any]:
        spec = {**self.base_spec(), "database_url": url, "tables": list(ROW_CHECKS)}
        if self.args.profile:
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            spec["profile"] = str(Path(self.args.profile) / f"backfill-{database}-{label}.pstats")
        with self.phase(f"backfill {database} {label}"):
            result = run_worker("backfill", spec)
        result["events_per_s"] = result["events"] / result["seconds"]
        note(
            f"  {result['events']:,} events in {result['seconds']:.2f} s = "
            f"{result['events_per_s']:,.0f}/s, {len(result['ranges'])} ranges, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
        )
        return result

    def raw(self, label: str, ranges: list[tuple[int, int]], repeats: int) -> dict[str, Any]:
        spec = {**self.base_spec(), "ranges": ranges, "repeats": repeats}
        with self.phase(f"raw getLogs {label}"):
            result = run_worker("raw", spec)
        result["by_event"] = {
            self.names.get(topic, topic): n for topic, n in sorted(result.pop("topics").items())
        }
        return result

    def settle_raw(self, result: dict[str, Any]) -> None:
        """The baseline's figure: the median of its runs."""
        result["seconds"] = statistics.median(result["runs_s"])
        result["events_per_s"] = result["events"] / result["seconds"]
        note(
            f"  raw: {result['events']:,} events in {result['seconds']:.2f} s (median of "
            f"{len(result['runs_s'])}) = {result['events_per_s']:,.0f}/s"
        )

    def live(self, database: str, url: str) -> dict[str, Any]:
        merchant = self.workload.accounts[1]
        due = int(self.workload.latest()["timestamp"], 16) + 30 * 24 * 3600
        blocks = [self.workload.live_invoice(merchant, due) for _ in range(self.args.live_blocks)]
        self.workload.nonces.pop(merchant, None)  # the worker sends these without nonces
        spec = {
            **self.base_spec(),
            "database_url": url,
            "blocks": blocks,
            "poll_interval": self.args.poll_interval,
        }
        with self.phase(f"live {database}"):
            result = run_worker("live", spec)
        lags = result["lags_ms"]
        result["p50_ms"] = statistics.median(lags)
        result["p99_ms"] = percentile(lags, 0.99)
        result["max_ms"] = max(lags)
        note(f"  lag p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
        return result

    def check(self, raw: dict[str, Any], backfill: dict[str, Any], database: str) -> None:
        """The mirror holds every event, and each fact/projection table its rows."""
        problems = []
        if backfill["events"] != raw["events"]:
            problems.append(f"raw_events {backfill['events']:,} != chain {raw['events']:,}")
        for table, events in ROW_CHECKS.items():
            want = sum(raw["by_event"].get(name, 0) for name in events)
            if backfill["rows"][table] != want:
                problems.append(f"{table} {backfill['rows'][table]:,} rows != {want:,} events")
        if problems:
            raise SystemExit(f"the {database} mirror is wrong: " + "; ".join(problems))

    def point(self, label: str, live: bool, rounds: int) -> dict[str, Any]:
        """Raw fetch and both backfills of the chain as it stands (plus live lag). In
        `rounds` rounds, each a backfill into each database (a fresh one every time) and
        a raw fetch, so that a stretch of a slower machine (two shared cores) weighs on all
        of them alike; each figure is the median of its rounds (for a backfill, the run of
        median time, with its own memory)."""
        figures: dict[str, Any] = {"head": self.head()}
        databases = ["sqlite", *(["postgresql"] if self.postgres else [])]
        runs: dict[str, list[tuple[dict[str, Any], str]]] = {db: [] for db in databases}
        raws: list[dict[str, Any]] = []
        with ExitStack() as stack:
            for _ in range(rounds):
                for database in databases:
                    url = stack.enter_context(fresh_database(database, self.postgres, self.workdir))
                    runs[database].append((self.backfill(database, label, url), url))
                    if database == databases[0]:
                        # The baseline: exactly the ranges the indexer first asked for,
                        # fetched once a round (three times when there is one round).
                        first_run = runs[database][0][0]
                        ranges = [(first, last) for first, last, *_ in first_run["ranges"]]
                        raws.append(self.raw(label, ranges, 1 if rounds > 1 else 3))
            figures["raw"] = {**raws[0], "runs_s": [s for raw in raws for s in raw["runs_s"]]}
            self.settle_raw(figures["raw"])
            urls = {}
            for database in databases:
                ordered = sorted(runs[database], key=lambda run: run[0]["seconds"])
                result, urls[database] = ordered[len(ordered) // 2]
                for other, _ in runs[database]:
                    self.check(figures["raw"], other, database)
                result["runs_s"] = [run["seconds"] for run, _ in runs[database]]
                figures[database] = result
                note(
                    f"  {database} {label}: median of {len(ordered)} runs "
                    f"{result['seconds']:.2f} s = {result['events_per_s']:,.0f}/s"
                )
            if live:  # last: it mines blocks
                for database, url in urls.items():
                    figures[database]["live"] = self.live(database, url)
        return figures


def verify_workload(expected: Counter[str], raw: dict[str, Any]) -> None:
    """Every transaction did what it was sent for (a revert would leave an event short)."""
    short = {
        name: (want, raw["by_event"].get(name, 0))
        for name, want in expected.items()
        if raw["by_event"].get(name, 0) < want
    }
    if short:
        raise SystemExit(
            f"events missing on the chain (reverted transactions?): {short}; "
            f"on the chain: {raw['by_event']}"
        )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    postgres, postgres_note = postgres_admin_url(args.skip_postgres)
    note(f"PostgreSQL: {postgres_note}")
    load_start = load()
    workdir = Path(tempfile.mkdtemp(prefix="chainbill-bench-"))
    try:
        with anvil(LOCAL_CHAIN_ID, *ANVIL_OPTIONS) as url:
            rpc = RpcClient(url, timeout=600)
            workload = Workload(rpc, args.events_per_block, args.empty_blocks)
            bench = Bench(args, url, workload, postgres, workdir)
            subscriptions = max(50, round(args.events / (ROUNDS * EVENTS_PER_SUBSCRIPTION_ROUND)))
            with bench.phase("generate small"):
                workload.deploy()
                workload.setup(subscriptions)
                workload.extend_to(args.events)
            generated = {
                "small": {
                    "seconds": bench.timings["generate small"],
                    "transactions": workload.transactions,
                    "rounds": workload.rounds,
                }
            }
            sent = Counter(workload.expected)
            small = bench.point("small", live=args.live_blocks > 0, rounds=args.rounds)
            verify_workload(sent, small["raw"])
            large = None
            if not args.skip_400k:
                with bench.phase("generate large"):
                    workload.extend_to(args.events_large)
                generated["large"] = {
                    "seconds": bench.timings["generate large"],
                    "transactions": workload.transactions,
                    "rounds": workload.rounds,
                }
                large = bench.point("large", live=False, rounds=1)
                verify_workload(workload.expected, large["raw"])
            rpc.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summarize(args, workload, bench, small, large, generated, postgres_note, load_start)


def summarize(
    args: argparse.Namespace,
    workload: Workload,
    bench: Bench,
    small: dict[str, Any],
    large: dict[str, Any] | None,
    generated: dict[str, Any],
    postgres_note: str,
    load_start: list[float],
) -> dict[str, Any]:
    def rate(point: dict[str, Any] | None, database: str) -> float | None:
        if point is None or database not in point:
            return None
        return round(float(point[database]["events_per_s"]), 1)

    def ratio(point: dict[str, Any] | None, database: str) -> float | None:
        value = rate(point, database)
        if value is None or point is None:
            return None
        return round(value / float(point["raw"]["events_per_s"]), 4)

    def peak(point: dict[str, Any] | None) -> float | None:
        if point is None:
            return None
        values = [point[db]["peak_rss_mb"] for db in ("sqlite", "postgresql") if db in point]
        return round(max(values), 1)

    def live(database: str, key: str) -> float | None:
        figures = small.get(database, {}).get("live")
        return None if figures is None else round(float(figures[key]), 1)

    def strip(point: dict[str, Any] | None) -> dict[str, Any] | None:
        """The point's figures, without the long per-range and per-lag lists."""
        if point is None:
            return None
        out: dict[str, Any] = {"head": point["head"], "raw": {**point["raw"]}}
        for db in ("sqlite", "postgresql"):
            if db in point:
                entry = {k: v for k, v in point[db].items() if k != "live"}
                # [first block, last block, events, peak RSS so far in MB once committed]
                entry["ranges"] = point[db]["ranges"]
                entry["largest_range_events"] = max(r[2] for r in point[db]["ranges"])
                if "live" in point[db]:
                    entry["live"] = {k: v for k, v in point[db]["live"].items() if k != "lags_ms"}
                out[db] = entry
        return out

    results: dict[str, Any] = {
        "events": small["raw"]["events"],
        "raw_events_per_s": round(small["raw"]["events_per_s"], 1),
        "sqlite_events_per_s": rate(small, "sqlite"),
        "postgres_events_per_s": rate(small, "postgresql"),
        "sqlite_ratio": ratio(small, "sqlite"),
        "postgres_ratio": ratio(small, "postgresql"),
        "peak_rss_mb_100k": peak(small),
        "peak_rss_mb_400k": peak(large),
        "live_lag_ms_p50": live("sqlite", "p50_ms"),
        "live_lag_ms_p99": live("sqlite", "p99_ms"),
        "postgres_live_lag_ms_p50": live("postgresql", "p50_ms"),
        "postgres_live_lag_ms_p99": live("postgresql", "p99_ms"),
        "events_large": None if large is None else large["raw"]["events"],
        "raw_events_per_s_large": None if large is None else round(large["raw"]["events_per_s"], 1),
        "sqlite_events_per_s_large": rate(large, "sqlite"),
        "postgres_events_per_s_large": rate(large, "postgresql"),
        "sqlite_ratio_large": ratio(large, "sqlite"),
        "postgres_ratio_large": ratio(large, "postgresql"),
        "target_ratio": TARGET_RATIO,
        "flat_memory_tolerance": FLAT_MEMORY_TOLERANCE,
        "postgres": postgres_note,
        "chain": {
            "blocks": (large or small)["head"] - bench.d.start_block + 1,
            "head_small": small["head"],
            "head_large": None if large is None else large["head"],
            "events_per_block": args.events_per_block,
            "empty_blocks_between": args.empty_blocks,
            "event_blocks": workload.event_blocks,
            "subscriptions": len(workload.subscriptions),
            "wallets": len(workload.wallets),
            "billing_rounds": workload.rounds,
            "invoices": workload.invoices,
            "by_event": (large or small)["raw"]["by_event"],
        },
        "generation": generated,
        "confirmations": default_confirmations(LOCAL_CHAIN_ID),
        "live_blocks": args.live_blocks,
        "poll_interval_s": args.poll_interval,
        "small": strip(small),
        "large": strip(large),
        "timings_s": bench.timings,
        "load_average": {"start": load_start, **bench.loads},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    return results


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for db in ("sqlite", "postgres"):
        if results[f"{db}_ratio"] is not None:
            out[f"{db}_ratio"] = results[f"{db}_ratio"] >= TARGET_RATIO
    if results["peak_rss_mb_400k"] is not None:
        out["flat_memory"] = (
            results["peak_rss_mb_400k"] <= results["peak_rss_mb_100k"] * FLAT_MEMORY_TOLERANCE
        )
    return out


def report(results: dict[str, Any]) -> bool:
    chain = results["chain"]
    print(
        f"\nIndexer on Anvil: {results['events']:,} chainbill events"
        + (f" (then {results['events_large']:,})" if results["events_large"] else "")
        + f", {chain['events_per_block']} a block with {chain['empty_blocks_between']} empty "
        f"blocks between ({chain['blocks']:,} blocks); {chain['subscriptions']:,} subscriptions, "
        f"{chain['billing_rounds']} billing rounds, {chain['invoices']:,} invoices"
    )
    print(
        f"load average at start {results['load_average']['start']}; PostgreSQL: {results['postgres']}\n"
    )
    print(
        f"{'measure':<30}{'events':>10}{'seconds':>9}{'events/s':>11}{'ratio':>8}  {'target':<16}{'peak RSS':>9}"
    )
    met = verdicts(results)
    for label, point in (("", results["small"]), (" (large)", results["large"])):
        if point is None:
            continue
        raw = point["raw"]
        print(
            f"{'raw eth_getLogs' + label:<30}{raw['events']:>10,}{raw['seconds']:>9.2f}"
            f"{raw['events_per_s']:>11,.0f}{1:>8.3f}  {'':<16}{raw['peak_rss_mb']:>6.0f} MB"
        )
        for db, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            if db not in point:
                continue
            entry = point[db]
            ratio = entry["events_per_s"] / raw["events_per_s"]
            verdict = f">={TARGET_RATIO} {'met' if ratio >= TARGET_RATIO else 'MISSED'}"
            if label:
                verdict = "(informative)"
            print(
                f"{f'{name} backfill' + label:<30}{entry['events']:>10,}{entry['seconds']:>9.2f}"
                f"{entry['events_per_s']:>11,.0f}{ratio:>8.3f}  {verdict:<16}"
                f"{entry['peak_rss_mb']:>6.0f} MB"
            )
    if results["peak_rss_mb_400k"] is not None:
        growth = results["peak_rss_mb_400k"] / results["peak_rss_mb_100k"]
        print(
            f"\npeak RSS of a backfill: {results['peak_rss_mb_100k']:.0f} MB at "
            f"{results['events']:,} events, {results['peak_rss_mb_400k']:.0f} MB at "
            f"{results['events_large']:,} ({growth:.2f}x; flat within "
            f"{FLAT_MEMORY_TOLERANCE}x: {'met' if met['flat_memory'] else 'MISSED'})"
        )
    for db, name in (("", "SQLite"), ("postgres_", "PostgreSQL")):
        p50 = results[f"{db}live_lag_ms_p50"]
        if p50 is not None:
            print(
                f"live lag ({name}, mined -> row visible, poll {results['poll_interval_s']} s): "
                f"p50 {p50:.1f} ms, p99 {results[f'{db}live_lag_ms_p99']:.1f} ms "
                f"over {results['live_blocks']} blocks"
            )
    print("\ntimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timings_s"].items()))
    all_met = all(met.values())
    print("\nall targets met" if all_met else "\nSOME TARGETS MISSED")
    return all_met


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="chainbill events (at least)")
    parser.add_argument(
        "--events-large",
        type=int,
        default=None,
        help="events of the second (memory) point; default 4x --events",
    )
    parser.add_argument("--skip-400k", action="store_true", help="no second, larger point")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--events-per-block",
        type=int,
        default=100,
        help="a block is mined once its transactions emit this many chainbill events "
        "(a chargeBatch emits 50 or more); fewer make generation slower (see ANVIL_OPTIONS)",
    )
    parser.add_argument(
        "--empty-blocks",
        type=int,
        default=0,
        help="empty blocks after each block with events (slow: Anvil's cost of a block grows "
        "with the chain)",
    )
    parser.add_argument("--live-blocks", type=int, default=50, help="0: no live measurement")
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the 1x point (backfills and a raw fetch each; medians reported)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile each backfill into DIR/*.pstats (figures then not written)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(sys.stdin.read())
        result = WORKERS[spec.pop("kind")](spec)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    if args.events_large is None:
        args.events_large = 4 * args.events
    # SIGTERM (`timeout`, CI) unwinds like Ctrl-C: Anvil is stopped, databases are dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = measure(args)
    met = report(results)
    if args.profile:
        print(f"profiles in {args.profile}; figures not written (taken under a profiler)")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        shown = args.output.resolve()
        print(
            f"figures written to {shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown}"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
