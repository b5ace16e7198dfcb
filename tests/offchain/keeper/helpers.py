"""Helpers of the keeper tests: a plan with subscribers on the test chain, time travel, and
what the chain says was charged."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from web3 import Web3

from offchain.keeper.keeper import Keeper, PassResult
from tests.chain_fixtures import GRACE, PERIOD, PRICE
from tests.offchain.indexer.activity import Contracts
from tests.offchain.indexer.helpers import Mirror, topic_of


@dataclass
class Billing:
    """A plan of the fee-less deployment and its subscriptions (all the customer's)."""

    c: Contracts
    plan: int
    ids: list[int]

    @classmethod
    def create(
        cls, mirror: Mirror, token: Any, merchant: Any, customer: Any, count: int,
        *, grace: int = GRACE, period: int = PERIOD,
    ) -> Billing:  # fmt: skip
        c = Contracts.of(mirror.web3, mirror.manager, mirror.registry, token.address)
        c.call(merchant, c.manager, "createPlan", c.token.address, PRICE, period, 0, grace)
        plan = int(c.manager.functions.planCount().call())
        c.call(customer, c.token, "approve", c.manager.address, 10**30)
        first = int(c.manager.functions.subscriptionCount().call()) + 1
        for _ in range(count):
            c.call(customer, c.manager, "subscribe", plan, PRICE)
        return cls(c, plan, list(range(first, first + count)))


def node_call(mirror: Mirror, method: str, *params: Any) -> Any:
    """A JSON-RPC call to the test node (Anvil's own methods too); its error fails the test."""
    answer = mirror.web3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in answer, answer
    return answer.get("result")


def advance(web3: Web3, seconds: int) -> None:
    """Moves the chain's clock on and mines a block at the new time."""
    web3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    web3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def chain_time(web3: Web3) -> int:
    return int(web3.eth.get_block("latest")["timestamp"])


def manager_logs(mirror: Mirror, event: str) -> list[dict[str, Any]]:
    """Every `event` log of the fee-less SubscriptionManager on the node."""
    return [
        dict(entry)
        for entry in mirror.web3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(mirror.manager),
                "topics": [topic_of("SubscriptionManager", event)],
                "fromBlock": 0,
                "toBlock": "latest",
            }
        )
    ]


def charged_periods(mirror: Mirror) -> Counter[tuple[int, int]]:
    """(subscription id, period start) -> how many Charged logs the chain holds for it."""
    counts: Counter[tuple[int, int]] = Counter()
    for entry in manager_logs(mirror, "Charged"):
        subscription_id = int.from_bytes(entry["topics"][1], "big")
        period_start = int.from_bytes(bytes(entry["data"])[:32], "big")
        counts[(subscription_id, period_start)] += 1
    return counts


def settle(keeper: Keeper, passes: int = 20) -> list[PassResult]:
    """Passes until the keeper has nothing unresolved and sends nothing more."""
    results = []
    for _ in range(passes):
        result = keeper.run_once()
        wait_mined(keeper)
        results.append(result)
        if not result.sent and result.unresolved == 0:
            return results
    raise AssertionError(f"the keeper did not settle in {passes} passes: {results[-1]}")


def wait_mined(keeper: Keeper, timeout: float = 60.0) -> None:
    """Until the node has mined every transaction the keeper sent: Anvil may answer a send
    before it seals the block, and a clock moved on in between would date the block later."""
    web3 = Web3(Web3.HTTPProvider(keeper.chain.rpc.url))
    sender = Web3.to_checksum_address(keeper.chain.sender)
    deadline = time.monotonic() + timeout
    while web3.eth.get_transaction_count(sender, "pending") != web3.eth.get_transaction_count(
        sender, "latest"
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"the keeper's transactions were not mined in {timeout} s")
        time.sleep(0.005)
