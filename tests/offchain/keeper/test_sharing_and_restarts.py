"""Several keepers and hard kills on Anvil.

- Two keepers at once on PostgreSQL (each with its own key) share the due subscriptions
  through `FOR UPDATE SKIP LOCKED` claims: each is put in exactly one transaction.
- `chainbill keeper` killed with SIGKILL in the middle of its batches — while the node holds
  its broadcast, so the transaction is recorded and maybe sent — and restarted: every due
  subscription is charged once, and no transaction ever carries a subscription already sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offchain.db import keeper_repository as repo
from offchain.db.engine import make_engine
from offchain.db.models import KeeperTxStatus
from offchain.keeper.keeper import Keeper
from tests.chain_fixtures import PERIOD
from tests.offchain.indexer.helpers import Mirror, RpcProxy, kill, running, wait_until
from tests.offchain.keeper.helpers import Billing, advance, charged_periods, manager_logs

SUBSCRIPTIONS = 200
# `chainbill` of this tree (the installed console script may point at another checkout).
_RUN_CLI = "from api.cli import app; app()"


def _transactions(mirror: Mirror) -> list[Any]:
    with mirror.engine.connect() as conn:
        return repo.transactions(conn, mirror.chain_id)


def test_two_keepers_on_postgresql_charge_each_subscription_once(
    mirror: Mirror,
    database_url: str,
    make_keeper: Callable[..., Keeper],
    second_keeper_key: str,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several keepers share the work on PostgreSQL; SQLite has one")
    billing = Billing.create(mirror, token, merchant, customer, SUBSCRIPTIONS)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    second_engine = make_engine(database_url)
    # Small claims and batches: many rounds of claiming against each other.
    keepers = [
        make_keeper(max_batch=7, claim_limit=21),
        make_keeper(key=second_keeper_key, engine=second_engine, max_batch=7, claim_limit=21),
    ]
    sent: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(n: int) -> None:
        try:
            start.wait()
            idle = 0
            while idle < 3:
                result = keepers[n].run_once()
                sent[n] += result.charges_sent
                idle = idle + 1 if not result.sent and result.unresolved == 0 else 0
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    second_engine.dispose()
    assert not errors, errors
    assert sent[0] and sent[1], "both keepers took a share"
    assert not set(sent[0]) & set(sent[1])
    assert sorted(sent[0] + sent[1]) == billing.ids
    assert manager_logs(mirror, "ChargeSkipped") == []
    periods = charged_periods(mirror)
    assert all(n == 1 for n in periods.values())
    assert len(periods) == 2 * SUBSCRIPTIONS
    senders = {tx.sender for tx in _transactions(mirror)}
    assert len(senders) == 2


class _HoldingProxy(RpcProxy):
    """Forwards everything but holds the `hold_from`-th eth_sendRawTransaction (and every
    later one) without answering: the keeper is then killed with that transaction recorded,
    forwarded to the node (`forward_held`) or not."""

    def __init__(self, upstream: str, hold_from: int, forward_held: bool) -> None:
        super().__init__(upstream)
        self.hold_from = hold_from
        self.forward_held = forward_held
        self.raw_sent = 0
        self.held = threading.Event()
        self._release = threading.Event()

    def handle(self, body: bytes) -> bytes:
        payload = json.loads(body)
        if isinstance(payload, dict) and payload["method"] == "eth_sendRawTransaction":
            with self.log.lock:
                self.raw_sent += 1
                hold = self.raw_sent >= self.hold_from
            if hold:
                if self.forward_held:
                    super().handle(body)
                self.held.set()
                self._release.wait(timeout=120)
                return b'{"jsonrpc":"2.0","id":0,"error":{"code":-32000,"message":"held"}}'
        return super().handle(body)

    def __enter__(self) -> _HoldingProxy:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        super().__exit__(*exc)


def _keeper_process(
    database_url: str, rpc_url: str, manifest: Path, key: str, log_path: Path, *extra: str
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-c", _RUN_CLI, "keeper", "--database-url", database_url,
        "--rpc-url", rpc_url, "--manifest", str(manifest), "--confirmations", "1",
        "--min-tip-gwei", "0.000000001", "--max-batch", "10", "--poll-interval", "0.1", *extra,
    ]  # fmt: skip
    with log_path.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "CHAINBILL_KEEPER_KEY": key},
            cwd=Path(__file__).resolve().parents[3],
        )


@pytest.mark.parametrize("forward_held", [False, True], ids=["unsent", "sent"])
def test_keeper_killed_mid_batch_and_restarted_charges_once(
    forward_held: bool,
    mirror: Mirror,
    database_url: str,
    keeper_key: str,
    tmp_path: Path,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    billing = Billing.create(mirror, token, merchant, customer, 60)
    advance(mirror.web3, PERIOD)
    mirror.sync()
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    output = tmp_path / "keeper.log"
    with _HoldingProxy(mirror.rpc_url, hold_from=3, forward_held=forward_held) as proxy:
        process = _keeper_process(database_url, proxy.url, manifest, keeper_key, output)
        with running(process):
            wait_until(
                lambda: proxy.held.is_set() or process.poll() is not None,
                120,
                "the keeper's third broadcast",
            )
            assert process.poll() is None, output.read_text()[-3000:]
            kill(process)
    recorded = _transactions(mirror)
    assert len(recorded) == 3, output.read_text()[-3000:]
    assert charged_periods(mirror).total() == 60 + 20 + (10 if forward_held else 0)

    # Restarted (straight to the node), a pass at a time until all is resolved.
    for _ in range(10):
        again = _keeper_process(
            database_url, mirror.rpc_url, manifest, keeper_key, output, "--once"
        )
        with running(again):
            assert again.wait(timeout=120) == 0, output.read_text()[-3000:]
        if all(tx.status == KeeperTxStatus.CONFIRMED for tx in _transactions(mirror)) and (
            charged_periods(mirror).total() == 2 * 60
        ):
            break
    periods = charged_periods(mirror)
    assert all(n == 1 for n in periods.values())
    assert periods.total() == 2 * 60
    assert manager_logs(mirror, "ChargeSkipped") == []
    ids = [int(i) for tx in _transactions(mirror) for i in tx.subscription_ids.split(",")]
    assert sorted(ids) == billing.ids, "a subscription went into two transactions"
    assert len({(tx.sender, tx.nonce) for tx in _transactions(mirror)}) == 6


def test_the_keeper_names_the_missing_key(
    tmp_path: Path, mirror: Mirror, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the command line does not depend on the database")
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    env = {k: v for k, v in os.environ.items() if k != "CHAINBILL_KEEPER_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, "keeper", "--once", "--database-url", database_url,
         "--manifest", str(manifest)],
        capture_output=True, env=env, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    assert done.returncode == 2
    assert "CHAINBILL_KEEPER_KEY" in done.stderr.decode()


def test_sigterm_stops_the_keeper_cleanly(
    tmp_path: Path, mirror: Mirror, database_url: str, keeper_key: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("signal handling does not depend on the database")
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    output = tmp_path / "keeper.log"
    process = _keeper_process(database_url, mirror.rpc_url, manifest, keeper_key, output)
    with running(process):
        wait_until(lambda: "keeper 0x" in output.read_text(), 60, "the keeper's start")
        process.terminate()
        assert process.wait(timeout=60) == 0, output.read_text()
    assert "received SIGTERM" in output.read_text()
