"""Gateway benchmark: invoice lookups and lists over 1,000,000 invoices, SQLite and PostgreSQL.

For each database, in the same run:

- a fresh database (an SQLite file; a PostgreSQL database of its own) migrated to the
  latest schema and bulk-loaded with ``--invoices`` (default 1,000,000) synthetic but valid
  invoices of ~1,000 merchants and ~50,000 customers, in every status, with due dates over
  two years, plus the ``invoice_payments`` rows of the paid and partially paid ones
  (``executemany`` on SQLite, ``COPY`` on PostgreSQL); one API key per merchant;
- the gateway served by uvicorn in a subprocess (``--workers``, default 2, one per core; rate limits
  off), against a fresh local Anvil with the token and both contracts deployed (the
  gateway reads token metadata from the chain, once per token);
- load from a separate process on loopback, over keep-alive HTTP/1.1 connections
  (asyncio, raw sockets): open loop at a fixed rate (``--rate``, default 500 req/s) for the
  baseline ``GET /ping`` (no database, no auth), the lookup ``GET /v1/invoices/{id}``
  (random existing invoices, each with its merchant's key) and the list
  ``GET /v1/invoices?limit=50`` (``--list-rate``, default 200 req/s; random merchants);
  latency runs from each request's *scheduled* send time, so a stalled server is charged
  for the requests it held up (no coordinated omission). Then closed loop (``--connections``
  busy connections) for the baseline and the lookup: the most requests/s the server
  sustains, and their ratio.

Figures are printed and written to ``bench/results/api.json``; the exit status is 1 when a
target is missed (lookup p99 at most 25 ms at 500 req/s on each database, no errors).

Run from the project root: ``make bench-api`` (or ``.venv/bin/python bench/api.py``: about
10 minutes on two cores, most of it loading the databases), or ``--quick`` (50,000
invoices, shorter runs) for a check in under 3 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/api.py` from anywhere

from bench.common import anvil, free_port, note, percentile  # noqa: E402
from offchain import apikeys  # noqa: E402
from offchain.db.engine import make_engine, normalize_url, upgrade_schema  # noqa: E402
from offchain.db.models import Invoice, InvoicePayment  # noqa: E402
from offchain.indexer.rpc import RpcClient  # noqa: E402
from offchain.manifest import ContractDeployment, Manifest  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "api.json"
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_P99_MS = 25.0
DATABASES = ("sqlite", "postgresql")
CHAIN_ID = 31337
ZERO_HASH = "0x" + "00" * 32
STATUS_WEIGHTS = {"open": 40, "partially_paid": 15, "paid": 35, "void": 10}
UINT_DIGITS = 78
REQUEST_TIMEOUT_S = 30.0


def hex_of(seed: str, length: int) -> str:
    return "0x" + hashlib.sha256(seed.encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------- Anvil


@dataclass(frozen=True)
class Deployment:
    token: str
    manager: str
    registry: str
    owner: str


def deploy(url: str) -> Deployment:
    """The token and both contracts, from Anvil's first unlocked account."""
    from ape import project  # only here: the rest of the benchmark stays free of Ape

    rpc = RpcClient(url, retries=0)
    owner = rpc.call("eth_accounts", [])[0]
    addresses = []
    for name, args in (
        ("MockStablecoin", (["string", "string"], ["Bench USD", "BUSD"])),
        ("SubscriptionManager", (["address", "address", "uint256"], [owner, owner, 0])),
        ("InvoiceRegistry", (["address", "address", "uint256"], [owner, owner, 0])),
    ):
        bytecode = getattr(project, name).contract_type.deployment_bytecode.bytecode
        tx_hash = rpc.call(
            "eth_sendTransaction",
            [{"from": owner, "data": bytecode + encode(*args).hex(), "gas": hex(10_000_000)}],
        )
        receipt = None
        for _ in range(100):  # automine: the receipt follows at once, or nearly
            receipt = rpc.call("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                break
            time.sleep(0.05)
        if receipt is None or receipt["status"] != "0x1":
            raise SystemExit(f"deploying {name} failed")
        addresses.append(str(receipt["contractAddress"]).lower())
    rpc.close()
    token, manager, registry = addresses
    return Deployment(token, manager, registry, owner.lower())


def write_manifest(deployment: Deployment, path: Path) -> None:
    Manifest(
        chain_id=CHAIN_ID,
        network="local",
        contracts={
            "SubscriptionManager": ContractDeployment(deployment.manager, 0, ZERO_HASH, ""),
            "InvoiceRegistry": ContractDeployment(deployment.registry, 0, ZERO_HASH, ""),
        },
        owner=deployment.owner,
        fee_bps=0,
        fee_recipient=deployment.owner,
    ).write(path)


# ------------------------------------------------------------------------ the data set


@dataclass
class DataSet:
    invoices: int
    payments: int
    lookups: list[tuple[str, str]]  # (invoice id, its merchant's API key), a sample
    merchant_keys: list[str]
    load_seconds: float


def invoice_rows(
    count: int, merchants: int, registry: str, token: str, seed: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Invoices (and the payment of each paid or partially paid one), deterministic in
    `seed`; amounts and paid as Python ints (the caller renders them per database)."""
    rng = random.Random(seed)
    bits = rng.getrandbits
    merchant_addresses = [hex_of(f"merchant {i}", 40) for i in range(merchants)]
    customer_addresses = [hex_of(f"customer {i}", 40) for i in range(max(1, count // 20))]
    statuses = [s for s, weight in STATUS_WEIGHTS.items() for _ in range(weight)]
    start = 1_700_000_000
    for i in range(count):
        invoice_id = f"0x{bits(256):064x}"
        status = statuses[bits(16) % len(statuses)]
        amount = (1 + bits(17) % 100_000) * 10**4  # up to 1,000 units of a 6-decimal token
        paid = {"open": 0, "void": 0, "paid": amount, "partially_paid": amount // 3}[status]
        issued_at = start + i * 60
        customer = customer_addresses[bits(32) % len(customer_addresses)]
        invoice = {
            "chain_id": CHAIN_ID,
            "contract": registry,
            "invoice_id": invoice_id,
            "merchant": merchant_addresses[bits(32) % merchants],
            "customer": customer,
            "reference_hash": f"0x{bits(256):064x}",
            "token": token,
            "amount": amount,
            "due_date": issued_at + (bits(8) % 60) * 86_400,
            "allow_partial": status == "partially_paid" or bits(3) == 0,
            "content_hash": f"0x{bits(256):064x}",
            "paid": paid,
            "status": status,
            "issued_block": 1 + i,
            "issued_at": issued_at,
        }
        payment = None
        if paid:
            payment = {
                "chain_id": CHAIN_ID,
                "block_hash": f"0x{bits(256):064x}",
                "log_index": 0,
                "block_number": 2 + i,
                "block_time": issued_at + 3600,
                "tx_hash": f"0x{bits(256):064x}",
                "contract": registry,
                "invoice_id": invoice_id,
                "payer": customer,
                "amount": paid,
                "fee": 0,
            }
        yield invoice, payment


def sampled(
    rows: Iterator[tuple[dict[str, Any], dict[str, Any] | None]],
    every: int,
    into: list[tuple[str, str]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Passes the rows on, keeping (invoice id, merchant) of every `every`-th for lookups."""
    for i, row in enumerate(rows):
        if i % every == 0:
            into.append((row[0]["invoice_id"], row[0]["merchant"]))
        yield row


def _uint_sqlite(value: int) -> str:
    return f"{value:0{UINT_DIGITS}d}"


INVOICE_COLUMNS = [c.name for c in Invoice.__table__.columns]
PAYMENT_COLUMNS = [c.name for c in InvoicePayment.__table__.columns]


def load_sqlite(
    engine: Engine, rows: Iterator[tuple[dict[str, Any], dict[str, Any] | None]]
) -> int:
    """executemany in batches, on the raw connection: the Uint256 columns get their stored
    form (zero-padded text) directly."""
    payments = 0
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # A bulk load of a throwaway file: no fsync, a cache big enough for the whole tree.
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-1000000")
        invoice_sql = (
            f"INSERT INTO invoices ({', '.join(INVOICE_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in INVOICE_COLUMNS)})"
        )
        payment_sql = (
            f"INSERT INTO invoice_payments ({', '.join(PAYMENT_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in PAYMENT_COLUMNS)})"
        )
        batch: list[tuple[Any, ...]] = []
        payment_batch: list[tuple[Any, ...]] = []

        def flush() -> None:
            cursor.executemany(invoice_sql, batch)
            cursor.executemany(payment_sql, payment_batch)
            batch.clear()
            payment_batch.clear()

        for invoice, payment in rows:
            invoice["amount"] = _uint_sqlite(invoice["amount"])
            invoice["paid"] = _uint_sqlite(invoice["paid"])
            batch.append(tuple(invoice[c] for c in INVOICE_COLUMNS))
            if payment is not None:
                payment["amount"] = _uint_sqlite(payment["amount"])
                payment["fee"] = _uint_sqlite(payment["fee"])
                payment_batch.append(tuple(payment[c] for c in PAYMENT_COLUMNS))
                payments += 1
            if len(batch) >= 20_000:
                flush()
        flush()
        raw.commit()
    finally:
        raw.close()
    return payments


def _copy_value(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def load_postgres(
    engine: Engine, rows: Iterator[tuple[dict[str, Any], dict[str, Any] | None]]
) -> int:
    """COPY ... FROM STDIN in text format, both tables in one pass over the rows."""
    payments = 0
    invoice_buffer = io.StringIO()
    payment_buffer = io.StringIO()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()

        def flush() -> None:
            for table, columns, buffer in (
                ("invoices", INVOICE_COLUMNS, invoice_buffer),
                ("invoice_payments", PAYMENT_COLUMNS, payment_buffer),
            ):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    copy.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()

        for count, (invoice, payment) in enumerate(rows, start=1):
            invoice_buffer.write("\t".join(_copy_value(invoice[c]) for c in INVOICE_COLUMNS))
            invoice_buffer.write("\n")
            if payment is not None:
                payment_buffer.write("\t".join(_copy_value(payment[c]) for c in PAYMENT_COLUMNS))
                payment_buffer.write("\n")
                payments += 1
            if count % 50_000 == 0:
                flush()
        flush()
        raw.commit()
    finally:
        raw.close()
    return payments


def build_dataset(
    engine: Engine, args: argparse.Namespace, deployment: Deployment, seed: int
) -> DataSet:
    started = time.perf_counter()
    samples: list[tuple[str, str]] = []
    rows = sampled(
        invoice_rows(args.invoices, args.merchants, deployment.registry, deployment.token, seed),
        max(1, args.invoices // 20_000),
        samples,
    )
    with without_secondary_indexes(engine, ["invoices", "invoice_payments"]):
        if engine.dialect.name == "postgresql":
            payments = load_postgres(engine, rows)
        else:
            payments = load_sqlite(engine, rows)
    load_seconds = time.perf_counter() - started
    merchants = [hex_of(f"merchant {i}", 40) for i in range(args.merchants)]
    keys: dict[str, str] = {}
    with engine.begin() as conn:
        for merchant in merchants:
            keys[merchant] = apikeys.create_key(conn, merchant, "bench").key
    with engine.connect() as conn:
        stored = conn.execute(text("select count(*) from invoices")).scalar_one()
    if stored != args.invoices:
        raise SystemExit(f"loaded {stored} invoices, expected {args.invoices}")
    lookups = [(invoice_id, keys[merchant]) for invoice_id, merchant in samples]
    return DataSet(args.invoices, payments, lookups, list(keys.values()), load_seconds)


@contextmanager
def without_secondary_indexes(engine: Engine, tables: list[str]) -> Iterator[None]:
    """Drops the tables' secondary indexes for the bulk load and builds them again after
    (each index built once over sorted data instead of updated at random per row)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.execute(
                text(
                    "select indexname, indexdef from pg_indexes where tablename = any(:tables) "
                    "and indexname not in (select conname from pg_constraint)"
                ),
                {"tables": tables},
            ).all()
        else:
            found = conn.execute(
                text(
                    "select name, sql from sqlite_master where type = 'index' and sql is not null "
                    f"and tbl_name in ({', '.join(repr(t) for t in tables)})"
                )
            ).all()
        for name, _definition in found:
            conn.execute(text(f'DROP INDEX "{name}"'))
    yield
    started = time.perf_counter()
    with engine.begin() as conn:
        for _name, definition in found:
            conn.execute(text(definition))
        if engine.dialect.name != "postgresql":
            for table in tables:  # planner statistics, as a long-running database would have
                conn.execute(text(f"ANALYZE {table}"))
    if engine.dialect.name == "postgresql":
        # As a database in service would be: vacuumed (visibility map and hint bits set,
        # so autovacuum and first reads don't rewrite pages during the measurement) and
        # analyzed. VACUUM runs outside a transaction.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in tables:
                conn.execute(text(f"ANALYZE {table}"))
            # ...and its dirty pages written out now, not by a checkpoint in mid-measurement.
            conn.execute(text("CHECKPOINT"))
    note(
        f"{len(found)} secondary indexes rebuilt, tables analyzed in "
        f"{time.perf_counter() - started:.1f} s"
    )


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.sqlite'}"
        return
    admin_url = os.environ.get("BENCH_POSTGRES_URL", LOCAL_POSTGRES)
    name = f"chainbill_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_available() -> bool:
    try:
        probe = create_engine(
            normalize_url(os.environ.get("BENCH_POSTGRES_URL", LOCAL_POSTGRES)),
            connect_args={"connect_timeout": 2},
        )
        with probe.connect() as conn:
            conn.execute(text("select 1"))
        probe.dispose()
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------- the server


@contextmanager
def gateway(database_url: str, rpc_url: str, manifest: Path, workers: int) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RPC_URL": rpc_url,
        "CHAINBILL_MANIFEST": str(manifest),
        "CHAINBILL_RATE_LIMIT_PER_S": "0",
        "CHAINBILL_SECRET_KEY": "bench",
        "CHAINBILL_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    command = [
        sys.executable,
        *("-m", "uvicorn", "--factory", "api.main:app_from_env"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        *("--log-level", "warning", "--no-access-log"),
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            for _ in range(600):
                if process.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"the gateway exited: {log.read().decode()[-3000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n")
                        if sock.recv(64).startswith(b"HTTP/1.1 200"):
                            break
                except OSError:
                    time.sleep(0.1)
            else:
                raise SystemExit("the gateway did not answer /ping")
            yield port
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.seek(0)
            tail = log.read().decode(errors="replace").strip()
            if "Traceback" in tail:
                note("gateway stderr (tail):\n" + tail[-3000:])


# -------------------------------------------------------------------------- the load


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        self.writer.write(raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status


def http_get(path: str, key: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: bench"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_loop(
    port: int, requests: list[bytes], rate: float, connections: int
) -> dict[str, Any]:
    """Sends requests[i] at start + i / rate whatever the server does; a request waiting
    for a free connection is charged that wait."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors: dict[int, int] = {}
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        conn = Connection(port)
        while True:
            job = await queue.get()
            if job is None:
                return
            scheduled, raw = job
            try:
                status = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                status = 599
                conn = Connection(port)
            latencies.append(loop.time() - scheduled)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = loop.time() + 0.05
    for i, raw in enumerate(requests):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, raw))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = loop.time() - start
    return summary(latencies, errors, elapsed, offered=rate)


async def closed_loop(
    port: int, requests: list[bytes], seconds: float, connections: int
) -> dict[str, Any]:
    """`connections` connections each sending its next request as soon as the last returns."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker(offset: int) -> None:
        conn = Connection(port)
        i = offset
        while loop.time() < deadline:
            sent = loop.time()
            try:
                status = await conn.request(requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                status = 599
                conn = Connection(port)
            latencies.append(loop.time() - sent)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
            i += connections

    start = loop.time()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    return summary(latencies, errors, loop.time() - start, offered=None)


def summary(
    latencies: list[float], errors: dict[int, int], elapsed: float, offered: float | None
) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "offered_rps": offered,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "errors": {str(k): v for k, v in sorted(errors.items())},
    }


def load_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in its own process (`--load`): every phase against one server."""
    rng = random.Random(7)
    port = int(spec["port"])
    lookups = [tuple(x) for x in spec["lookups"]]
    keys = list(spec["merchant_keys"])

    def lookup_requests(n: int) -> list[bytes]:
        return [
            http_get(f"/v1/invoices/{invoice_id}", key)
            for invoice_id, key in (rng.choice(lookups) for _ in range(n))
        ]

    def list_requests(n: int) -> list[bytes]:
        return [http_get("/v1/invoices?limit=50", rng.choice(keys)) for _ in range(n)]

    def ping_requests(n: int) -> list[bytes]:
        return [http_get("/ping", None)] * n

    rate, list_rate, seconds = spec["rate"], spec["list_rate"], spec["seconds"]
    connections, closed_seconds = spec["connections"], spec["closed_seconds"]
    out: dict[str, Any] = {}

    async def run() -> None:
        # Warm-up: connections, the token metadata cache, the database's pages.
        await open_loop(port, lookup_requests(int(rate * 2)), rate, connections)
        if spec["list"]:
            await open_loop(port, list_requests(int(list_rate * 1)), list_rate, connections)
        out["baseline"] = await open_loop(
            port, ping_requests(int(rate * seconds)), rate, connections
        )
        progress("baseline", out["baseline"])
        out["lookup"] = await open_loop(
            port, lookup_requests(int(rate * seconds)), rate, connections
        )
        progress("lookup", out["lookup"])
        out["list"] = (
            await open_loop(port, list_requests(int(list_rate * seconds)), list_rate, connections)
            if spec["list"]
            else None
        )
        progress("list", out["list"])
        out["baseline_max"] = await closed_loop(
            port, ping_requests(1000), closed_seconds, spec["closed_connections"]
        )
        progress("baseline_max", out["baseline_max"])
        out["lookup_max"] = await closed_loop(
            port, lookup_requests(20_000), closed_seconds, spec["closed_connections"]
        )
        progress("lookup_max", out["lookup_max"])

    asyncio.run(run())
    return out


def progress(name: str, phase: dict[str, Any] | None) -> None:
    if phase is not None:
        print(
            f"  {name}: p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, "
            f"{phase['rps']} req/s, errors {phase['errors'] or 'none'}",
            file=sys.stderr,
            flush=True,
        )


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """The load generator in a process of its own, so it does not share the server's GIL."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--load"],
        input=json.dumps(spec),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit("the load generator failed (its error is above)")
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


# ------------------------------------------------------------------------- the run


def check_endpoints(port: int, dataset: DataSet) -> bool:
    """The endpoints answer 200 with the invoice asked for (and 404 to another merchant)
    before any timing. False when the server has no list endpoint (its phase is skipped)."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        invoice_id, key = dataset.lookups[0]
        response = client.get(
            f"/v1/invoices/{invoice_id}", headers={"Authorization": f"Bearer {key}"}
        )
        if response.status_code != 200 or invoice_id not in response.text:
            raise SystemExit(f"lookup answered {response.status_code}: {response.text[:500]}")
        _, other_key = next(x for x in dataset.lookups if x[1] != key)
        response = client.get(
            f"/v1/invoices/{invoice_id}", headers={"Authorization": f"Bearer {other_key}"}
        )
        if response.status_code != 404:
            raise SystemExit(f"another merchant's lookup answered {response.status_code}")
        if "get" not in client.get("/openapi.json").json()["paths"].get("/v1/invoices", {}):
            note("no GET /v1/invoices on this server: the list phase is skipped")
            return False
        response = client.get("/v1/invoices?limit=50", headers={"Authorization": f"Bearer {key}"})
        if response.status_code != 200:
            raise SystemExit(f"list answered {response.status_code}: {response.text[:500]}")
        return True


def measure_database(
    kind: str, args: argparse.Namespace, deployment: Deployment, rpc_url: str, workdir: Path
) -> dict[str, Any]:
    with database(kind, workdir) as url:
        engine = make_engine(url)
        upgrade_schema(engine)
        note(f"{kind}: loading {args.invoices:,} invoices")
        dataset = build_dataset(engine, args, deployment, seed=args.seed)
        engine.dispose()
        note(
            f"{kind}: {dataset.invoices:,} invoices and {dataset.payments:,} payments loaded in "
            f"{dataset.load_seconds:.1f} s"
        )
        with gateway(url, rpc_url, workdir / "manifest.json", args.workers) as port:
            has_list = check_endpoints(port, dataset)
            note(f"{kind}: load from a separate process ({args.seconds} s per open-loop phase)")
            load = run_load(
                {
                    "port": port,
                    "lookups": dataset.lookups,
                    "merchant_keys": dataset.merchant_keys,
                    "rate": args.rate,
                    "list_rate": args.list_rate,
                    "list": has_list,
                    "seconds": args.seconds,
                    "connections": args.connections,
                    "closed_connections": args.closed_connections,
                    "closed_seconds": args.closed_seconds,
                }
            )
    baseline, lookup = load["baseline"], load["lookup"]
    listing = load["list"] or {"p50_ms": None, "p99_ms": None}
    return {
        "invoices": dataset.invoices,
        "invoice_payments": dataset.payments,
        "load_seconds": round(dataset.load_seconds, 1),
        "lookup_p50_ms": lookup["p50_ms"],
        "lookup_p99_ms": lookup["p99_ms"],
        "lookup_rps": load["lookup_max"]["rps"],
        "list_p50_ms": listing["p50_ms"],
        "list_p99_ms": listing["p99_ms"],
        "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        "baseline_rps": load["baseline_max"]["rps"],
        "lookup_ratio_to_baseline": round(
            load["lookup_max"]["rps"] / load["baseline_max"]["rps"], 3
        ),
        "lookup_p99_ratio_to_baseline": round(lookup["p99_ms"] / baseline["p99_ms"], 2),
        "phases": load,
    }


def report(results: dict[str, Any]) -> bool:
    print(
        f"\nGateway on loopback: {results['workers']} uvicorn worker(s), rate limits off; "
        f"open loop at {results['rate']} req/s (list {results['list_rate']} req/s) for "
        f"{results['seconds']} s per phase, latency from the scheduled send time; closed loop "
        f"with {results['closed_connections']} connections for {results['closed_seconds']} s"
    )
    print(
        f"load average at start {results['load_average']}, at the end "
        f"{results['load_average_end']} (2 cores: above ~2 other work competed)\n"
    )
    header = (
        f"{'database':<12}{'phase':<22}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}{'ratio':>8}  errors"
    )
    print(header)
    met = True
    for db in DATABASES:
        if db not in results:
            continue
        entry = results[db]
        phases = entry["phases"]
        base = phases["baseline_max"]["rps"]
        for label, key in (
            ("baseline /ping", "baseline"),
            ("lookup", "lookup"),
            ("list limit=50", "list"),
            ("baseline max", "baseline_max"),
            ("lookup max", "lookup_max"),
        ):
            phase = phases[key]
            if phase is None:
                print(f"{db:<12}{label:<22}  (no such endpoint on this server)")
                continue
            ratio = f"{phase['rps'] / base:>8.3f}" if key.endswith("_max") else f"{'':>8}"
            print(
                f"{db:<12}{label:<22}{phase['p50_ms']:>9.2f}{phase['p99_ms']:>9.2f}"
                f"{phase['rps']:>10,.0f}{ratio}  {phase['errors'] or ''}"
            )
        ok = (
            entry["lookup_p99_ms"] <= TARGET_P99_MS
            and phases["list"] is not None
            and not any(phases[k]["errors"] for k in ("baseline", "lookup", "list"))
        )
        met = met and ok
        print(
            f"{db:<12}lookup p99 {entry['lookup_p99_ms']:.2f} ms at {results['rate']} req/s over "
            f"{entry['invoices']:,} invoices (target <= {TARGET_P99_MS} ms, no errors): "
            f"{'met' if ok else 'MISSED'}; lookup/baseline max throughput "
            f"{entry['lookup_ratio_to_baseline']:.3f}\n"
        )
    print("all targets met" if met else "SOME TARGETS MISSED")
    return met


def measure(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [] if args.skip_sqlite else ["sqlite"]
    if not args.skip_postgres:
        if postgres_available():
            kinds.append("postgresql")
        else:
            raise SystemExit(
                "PostgreSQL does not answer at BENCH_POSTGRES_URL (default "
                f"{LOCAL_POSTGRES}); --skip-postgres to run SQLite only"
            )
    results: dict[str, Any] = {
        "workers": args.workers,
        "rate": args.rate,
        "list_rate": args.list_rate,
        "seconds": args.seconds,
        "closed_connections": args.closed_connections,
        "closed_seconds": args.closed_seconds,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        rpc_url = stack.enter_context(anvil(CHAIN_ID))
        deployment = deploy(rpc_url)
        write_manifest(deployment, workdir / "manifest.json")
        for kind in kinds:
            results[kind] = measure_database(kind, args, deployment, rpc_url, workdir)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 invoices, shorter phases")
    parser.add_argument("--merchants", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop req/s (lookup)")
    parser.add_argument("--list-rate", type=float, default=200.0, help="open-loop req/s (list)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per open-loop phase")
    parser.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    parser.add_argument("--closed-connections", type=int, default=16)
    parser.add_argument("--closed-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load_worker(json.loads(sys.stdin.read()))), flush=True)
        return 0
    if args.quick:
        args.invoices = min(args.invoices, 50_000)
        args.seconds = min(args.seconds, 8.0)
        args.closed_seconds = min(args.closed_seconds, 5.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = measure(args)
    # Other work on the machine shows here: the figures are only as quiet as the machine.
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    met = report(results)
    results["targets_met"] = met
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.output}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
