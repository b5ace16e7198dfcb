"""Keeper benchmark: charging ``--subscriptions`` (default 5,000) due subscriptions.

On a fresh Anvil chain of its own (30M-gas blocks, EIP-1559 base fee, a block every
``--block-time`` seconds, as on a real network), with ``--subscriptions`` subscriptions of 5
per wallet mirrored into a fresh SQLite file by the indexer, one billing period later:

- keeper: ``Keeper.run_once`` passes (in this process, its key one of Anvil's dev accounts)
  until every due subscription is charged and every keeper transaction is mined — seconds
  from the first pass, blocks from the first to the last keeper transaction included, gas
  per charge (receipts' gas used / charges);
- baseline, in the same run, one period later: one ``charge(id)`` transaction per
  subscription, signed in advance with consecutive nonces and sent as fast as the node
  takes them — the same three figures.

Figures are printed and written to ``bench/results/keeper.json``; the mirror, the chain and
the keeper's records are checked (each subscription charged exactly once per period).
Run from the project root: ``.venv/bin/python bench/keeper.py`` (a few minutes on two cores),
``--subscriptions 500`` for a quick check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_utils import keccak

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import anvil, note  # noqa: E402
from bench.indexer import calldata  # noqa: E402
from offchain.config import LOCAL_CHAIN_ID  # noqa: E402
from offchain.db import keeper_repository  # noqa: E402
from offchain.db.engine import make_engine, upgrade_schema  # noqa: E402
from offchain.indexer.indexer import Indexer, IndexerConfig  # noqa: E402
from offchain.indexer.rpc import RpcClient  # noqa: E402
from offchain.keeper.chain import MANAGER, Chain, Fees  # noqa: E402
from offchain.keeper.keeper import Keeper, KeeperConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "keeper.json"
PERIOD = 30 * 24 * 3600
GRACE = 3 * 24 * 3600
PRICE = 10_000_000
SUBS_PER_WALLET = 5
BLOCK_GAS_LIMIT = 30_000_000
# Anvil's dev account 4 (mnemonic "test test ... junk"): the keeper.
KEEPER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"


# Mainnet-sized blocks and fees; no mining until `evm_setIntervalMining`.
ANVIL_OPTIONS = (
    *("--gas-limit", str(BLOCK_GAS_LIMIT), "--auto-impersonate", "--no-mining"),
    *("--hardfork", "cancun", "--prune-history"),
)


def mine_all(rpc: RpcClient) -> None:
    """Mines blocks until the pool is empty (setup: many blocks of 30M gas)."""
    while True:
        status = rpc.call("txpool_status", [])
        if int(status["pending"], 16) == 0 and int(status["queued"], 16) == 0:
            return
        rpc.call("evm_mine", [])


def send_all(rpc: RpcClient, txs: list[dict[str, Any]]) -> None:
    """Sends with explicit nonces (identical requests would otherwise be one transaction),
    then mines them all."""
    nonces: dict[str, int] = {}
    for tx in txs:
        sender = tx["from"]
        if sender not in nonces:
            nonces[sender] = int(rpc.call("eth_getTransactionCount", [sender, "pending"]), 16)
        tx["nonce"] = hex(nonces[sender])
        # Full setup blocks raise the base fee 12.5% a block: offer far more than it reaches
        # (the measurements start from a reset base fee).
        tx["maxFeePerGas"] = hex(10**13)
        tx["maxPriorityFeePerGas"] = hex(0)
        nonces[sender] += 1
    for start in range(0, len(txs), 500):
        for answer in rpc.batch("eth_sendTransaction", [[tx] for tx in txs[start : start + 500]]):
            assert answer is not None
    mine_all(rpc)


def setup(rpc: RpcClient, subscriptions: int) -> tuple[str, str, int, list[int]]:
    """Token, manager (and a registry for the manifest), plan, funded wallets and their
    subscriptions. Returns (manager, registry, start block, subscription ids)."""
    from ape import project  # only here: the keeper stays free of Ape

    owner, merchant = rpc.call("eth_accounts", [])[:2]
    start_block = rpc.block_number() + 1
    addresses = []
    for name, args in (
        ("MockStablecoin", (["string", "string"], ["Bench USD", "BUSD"])),
        ("SubscriptionManager", (["address", "address", "uint256"], [owner, owner, 0])),
        ("InvoiceRegistry", (["address", "address", "uint256"], [owner, owner, 0])),
    ):
        bytecode = getattr(project, name).contract_type.deployment_bytecode.bytecode
        tx_hash = rpc.call(
            "eth_sendTransaction",
            [{"from": owner, "data": bytecode + encode(*args).hex(), "gas": hex(8_000_000)}],
        )
        mine_all(rpc)
        addresses.append(rpc.call("eth_getTransactionReceipt", [tx_hash])["contractAddress"])
    token, manager, registry = addresses
    create = calldata(
        "createPlan(address,uint256,uint256,uint256,uint256)", token, PRICE, PERIOD, 0, GRACE
    )
    send_all(rpc, [{"from": merchant, "to": manager, "data": create, "gas": hex(300_000)}])
    wallets = [
        "0x" + keccak(text=f"keeper bench {n}")[12:].hex()
        for n in range(math.ceil(subscriptions / SUBS_PER_WALLET))
    ]
    funding: list[dict[str, Any]] = []
    for wallet in wallets:
        rpc.call("anvil_setBalance", [wallet, hex(10**20)])
        funding.append(
            {
                "from": owner,
                "to": token,
                "data": calldata("mint(address,uint256)", wallet, 10**18),
                "gas": hex(100_000),
            }
        )
        funding.append(
            {
                "from": wallet,
                "to": token,
                "data": calldata("approve(address,uint256)", manager, 10**30),
                "gas": hex(100_000),
            }
        )
    send_all(rpc, funding)
    subscribing = [
        {
            "from": wallets[n % len(wallets)],
            "to": manager,
            "data": calldata("subscribe(uint256,uint256)", 1, PRICE),
            "gas": hex(300_000),
        }
        for n in range(subscriptions)
    ]
    send_all(rpc, subscribing)
    count = int(
        rpc.call("eth_call", [{"to": manager, "data": calldata("subscriptionCount()")}, "latest"]),
        16,
    )
    if count != subscriptions:
        raise SystemExit(f"setup made {count} subscriptions, not {subscriptions}")
    return manager, registry, start_block, list(range(1, subscriptions + 1))


def index(engine: Any, rpc_url: str, manager: str, registry: str, start_block: int) -> None:
    config = IndexerConfig(
        chain_id=LOCAL_CHAIN_ID,
        contracts=(manager.lower(), registry.lower()),
        start_block=start_block,
        confirmations=0,
    )
    with Indexer(engine, RpcClient(rpc_url), config) as indexer:
        while indexer.sync_once() is not None:
            pass


def travel(rpc: RpcClient, seconds: int) -> None:
    """The clock moved on, and the base fee back to 1 gwei (as after a quiet spell)."""
    rpc.call("evm_increaseTime", [seconds])
    rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])
    rpc.call("evm_mine", [])


def keeper_run(engine: Any, rpc_url: str, manager: str, ids: list[int]) -> dict[str, Any]:
    rpc = RpcClient(rpc_url)
    chain = Chain(rpc, LOCAL_CHAIN_ID, manager, KEEPER_KEY)
    config = KeeperConfig(chain_id=LOCAL_CHAIN_ID, manager=manager, confirmations=1)
    keeper = Keeper(engine, chain, config)
    started = time.monotonic()
    sent: list[int] = []
    for _ in range(10_000):
        result = keeper.run_once()
        sent += result.charges_sent
        if len(sent) >= len(ids) and result.unresolved == 0:
            break
        time.sleep(0.05)
    seconds = time.monotonic() - started
    with engine.connect() as conn:
        txs = keeper_repository.transactions(conn, LOCAL_CHAIN_ID)
    if sorted(sent) != ids or len(sent) != len(set(sent)):
        raise SystemExit("the keeper did not send each due subscription exactly once")
    if not all(tx.succeeded for tx in txs):
        raise SystemExit("a keeper transaction reverted")
    blocks = [int(tx.mined_block or 0) for tx in txs]
    gas = sum(int(tx.gas_used or 0) for tx in txs)
    rpc.close()
    return {
        "transactions": len(txs),
        "blocks": max(blocks) - min(blocks) + 1,
        "seconds": round(seconds, 2),
        "gas_per_charge": round(gas / len(ids), 1),
        "largest_batch": max(len(tx.subscription_ids.split(",")) for tx in txs),
    }


def baseline_run(rpc_url: str, manager: str, ids: list[int]) -> dict[str, Any]:
    """One `charge(id)` transaction per subscription, signed ahead with consecutive nonces."""
    rpc = RpcClient(rpc_url)
    chain = Chain(rpc, LOCAL_CHAIN_ID, manager, KEEPER_KEY)
    head = chain.head()
    # The baseline fills many blocks in a row; its fee must outlast the base fee's rise
    # (this measures capacity, not fees).
    fees = Fees(100 * head.base_fee + 10**9, 10**9)
    nonce = chain.nonce("pending")
    gas = int(chain.estimate_gas(MANAGER.calldata("charge", ids[0])) * 1.25)
    signed = [
        chain.sign(nonce + n, MANAGER.calldata("charge", i), gas, fees) for n, i in enumerate(ids)
    ]
    started = time.monotonic()
    for start in range(0, len(signed), 500):
        rpc.batch("eth_sendRawTransaction", [[s.raw] for s in signed[start : start + 500]])
    last = signed[-1].tx_hash
    while rpc.call("eth_getTransactionReceipt", [last]) is None:
        time.sleep(0.05)
    seconds = time.monotonic() - started
    receipts = chain.receipts([s.tx_hash for s in signed])
    if any(r is None or r["status"] != "0x1" for r in receipts):
        raise SystemExit("a baseline charge failed")
    blocks = [int(r["blockNumber"], 16) for r in receipts if r is not None]
    used = [int(r["gasUsed"], 16) for r in receipts if r is not None]
    rpc.close()
    return {
        "transactions": len(ids),
        "blocks": max(blocks) - min(blocks) + 1,
        "seconds": round(seconds, 2),
        "gas_per_charge": round(sum(used) / len(used), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=5_000)
    parser.add_argument("--block-time", type=int, default=1, help="seconds per block")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.chdir(ROOT)
    with anvil(LOCAL_CHAIN_ID, *ANVIL_OPTIONS) as url, tempfile.TemporaryDirectory() as tmp:
        rpc = RpcClient(url)
        note(f"setting up {args.subscriptions} subscriptions")
        manager, registry, start_block, ids = setup(rpc, args.subscriptions)
        engine = make_engine(f"sqlite:///{Path(tmp) / 'mirror.sqlite'}")
        upgrade_schema(engine)
        travel(rpc, PERIOD)
        index(engine, url, manager, registry, start_block)
        rpc.call("evm_setIntervalMining", [args.block_time])
        note("keeper: charging every due subscription")
        keeper = keeper_run(engine, url, manager, ids)
        note(f"keeper: {keeper}")
        rpc.call("evm_setIntervalMining", [0])
        travel(rpc, PERIOD)
        rpc.call("evm_setIntervalMining", [args.block_time])
        note("baseline: one charge transaction per subscription")
        baseline = baseline_run(url, manager, ids)
        note(f"baseline: {baseline}")
        rpc.call("evm_setIntervalMining", [0])
        index(engine, url, manager, registry, start_block)
        with engine.connect() as conn:
            charges = conn.exec_driver_sql(
                "SELECT count(*), count(DISTINCT subscription_id || '-' || period_start) FROM charges"
            ).one()
        # Subscribe + keeper period + baseline period, each once.
        if charges[0] != 3 * len(ids) or charges[1] != charges[0]:
            raise SystemExit(
                f"the mirror holds {charges[0]} charges ({charges[1]} distinct), not {3 * len(ids)}"
            )
        engine.dispose()
        rpc.close()
    results = {
        "subscriptions": args.subscriptions,
        "block_time_s": args.block_time,
        "block_gas_limit": BLOCK_GAS_LIMIT,
        "blocks": keeper["blocks"],
        "seconds": keeper["seconds"],
        "gas_per_charge": keeper["gas_per_charge"],
        "transactions": keeper["transactions"],
        "largest_batch": keeper["largest_batch"],
        "single_charge_gas": baseline["gas_per_charge"],
        "single_charge_blocks": baseline["blocks"],
        "single_charge_seconds": baseline["seconds"],
        "gas_ratio": round(keeper["gas_per_charge"] / baseline["gas_per_charge"], 3),
        "blocks_ratio": round(keeper["blocks"] / baseline["blocks"], 3),
        "seconds_ratio": round(keeper["seconds"] / baseline["seconds"], 3),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
