"""What the keeper asks of the node and sends to it: batched views, gas estimates, EIP-1559
fees, signed transactions, receipts. Plain JSON-RPC through the indexer's `RpcClient`
(retries, one HTTP session); calldata from the checked-in ABI, signatures with eth-account.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any

from eth_abi import decode, encode
from eth_account import Account
from eth_utils import keccak

from offchain.abi import load_abi
from offchain.indexer.rpc import RpcClient, RpcError

log = logging.getLogger(__name__)

# JSON-RPC calls in one HTTP request at most (nodes and providers cap batch sizes).
CALLS_PER_REQUEST = 500

_ERC20_ALLOWANCE = keccak(text="allowance(address,address)")[:4]
_ERC20_BALANCE_OF = keccak(text="balanceOf(address)")[:4]


class SubscriptionStatus(IntEnum):
    """`ISubscriptionManager.SubscriptionStatus`, in declaration order."""

    NONE = 0
    TRIALING = 1
    ACTIVE = 2
    PAST_DUE = 3
    CANCELED = 4
    LAPSED = 5


class StoredState(IntEnum):
    """`ISubscriptionManager.SubscriptionState`, in declaration order."""

    NONE = 0
    LIVE = 1
    CANCELED = 2
    LAPSED = 3


def _abi_types(inputs: Sequence[dict[str, Any]]) -> list[str]:
    return [i["type"] for i in inputs]


class ManagerAbi:
    """Selectors, calldata and log topics of the SubscriptionManager, from its ABI."""

    def __init__(self) -> None:
        self._functions: dict[str, tuple[bytes, list[str], list[str]]] = {}
        self.topics: dict[str, tuple[str, list[str]]] = {}  # name -> (topic0, data types)
        for entry in load_abi("SubscriptionManager"):
            if entry["type"] == "function":
                types = _abi_types(entry["inputs"])
                selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
                outputs = _abi_types(entry.get("outputs", []))
                self._functions[entry["name"]] = (selector, types, outputs)
            elif entry["type"] == "event":
                types = _abi_types(entry["inputs"])
                topic = "0x" + keccak(text=f"{entry['name']}({','.join(types)})").hex()
                data_types = [i["type"] for i in entry["inputs"] if not i["indexed"]]
                self.topics[entry["name"]] = (topic, data_types)

    def calldata(self, function: str, *args: Any) -> str:
        selector, types, _outputs = self._functions[function]
        return "0x" + (selector + encode(types, list(args))).hex()

    def decode_uint(self, function: str, result: str) -> int:
        _selector, _types, outputs = self._functions[function]
        assert outputs == ["uint256"] or outputs == ["uint8"] or outputs == ["bool"], outputs
        return int(result, 16) if result not in ("0x", "") else 0


MANAGER = ManagerAbi()


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def bumped(self, percent: Fraction) -> Fees:
        """Both fees raised by `percent` (rounded up, and by at least 1 wei): nodes refuse a
        replacement at the same nonce unless both rise by their price bump (geth 10%,
        others 12.5%)."""
        factor = 1 + percent / 100

        def up(value: int) -> int:
            return max(value + 1, math.ceil(value * factor))

        return Fees(up(self.max_fee_per_gas), up(self.max_priority_fee_per_gas))

    def at_least(self, other: Fees) -> Fees:
        return Fees(
            max(self.max_fee_per_gas, other.max_fee_per_gas),
            max(self.max_priority_fee_per_gas, other.max_priority_fee_per_gas),
        )


@dataclass(frozen=True)
class SignedTx:
    tx_hash: str
    raw: str
    fees: Fees


@dataclass(frozen=True)
class Head:
    number: int
    timestamp: int
    base_fee: int


class BroadcastOutcome(IntEnum):
    ACCEPTED = 0  # in the node's pool (or already there)
    NONCE_USED = 1  # a transaction with this nonce was mined: ours, or another
    UNDERPRICED = 2  # a replacement did not outbid what the pool holds
    REFUSED = 3  # anything else (insufficient funds, ...): logged, tried again later


class Chain:
    """The node, as the keeper uses it. `key` is the keeper's hex private key."""

    def __init__(self, rpc: RpcClient, chain_id: int, manager: str, key: str) -> None:
        self.rpc = rpc
        self.chain_id = chain_id
        self.manager = manager.lower()
        self._account = Account.from_key(key)
        self.sender = self._account.address.lower()

    # ----------------------------------------------------------------- reads

    def head(self) -> Head:
        block = self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return Head(
            int(block["number"], 16),
            int(block["timestamp"], 16),
            int(block.get("baseFeePerGas") or "0x0", 16),
        )

    def _calls(self, calls: Sequence[tuple[str, str]]) -> list[str]:
        """eth_call of (to, data) pairs at the latest block, batched."""
        results: list[str] = []
        for start in range(0, len(calls), CALLS_PER_REQUEST):
            chunk = calls[start : start + CALLS_PER_REQUEST]
            results += self.rpc.batch(
                "eth_call", [[{"to": to, "data": data}, "latest"] for to, data in chunk]
            )
        return results

    def manager_views(self, function: str, ids: Sequence[int]) -> list[int]:
        """A one-argument uint view (`nextChargeAt`, `statusOf`, `amountDue`) for each id."""
        answers = self._calls([(self.manager, MANAGER.calldata(function, i)) for i in ids])
        return [MANAGER.decode_uint(function, a) for a in answers]

    def stored_states(self, ids: Sequence[int]) -> list[StoredState]:
        answers = self._calls([(self.manager, MANAGER.calldata("getSubscription", i)) for i in ids])
        # Subscription: subscriber, paidThrough, planId, state, ... (each a 32-byte word).
        return [StoredState(int(a[2 + 64 * 3 : 2 + 64 * 4], 16)) for a in answers]

    def allowances_and_balances(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
        """(allowance to the manager, balance) of each (token, owner)."""
        calls: list[tuple[str, str]] = []
        for token, owner in pairs:
            calls.append(
                (
                    token,
                    "0x"
                    + (
                        _ERC20_ALLOWANCE + encode(["address", "address"], [owner, self.manager])
                    ).hex(),
                )
            )
            calls.append((token, "0x" + (_ERC20_BALANCE_OF + encode(["address"], [owner])).hex()))
        answers = self._calls(calls)
        return [(int(answers[2 * n], 16), int(answers[2 * n + 1], 16)) for n in range(len(pairs))]

    def estimate_gas(self, data: str) -> int:
        """Raises RpcError when the call would revert (paused contract, ...)."""
        return int(
            self.rpc.call(
                "eth_estimateGas", [{"from": self.sender, "to": self.manager, "data": data}]
            ),
            16,
        )

    def nonce(self, block: str) -> int:
        return self.nonce_of(self.sender, block)

    def nonce_of(self, address: str, block: str) -> int:
        return int(self.rpc.call("eth_getTransactionCount", [address, block]), 16)

    def suggested_fees(self, head: Head, min_tip: int, max_fee: int | None) -> Fees:
        """EIP-1559 fees: the node's tip suggestion (at least `min_tip`) over twice the
        latest base fee, which survives six full blocks of base-fee rises; capped by
        `max_fee` when the operator sets one."""
        try:
            tip = int(self.rpc.call("eth_maxPriorityFeePerGas", []), 16)
        except RpcError:
            tip = 0
        tip = max(tip, min_tip)
        fee = 2 * head.base_fee + tip
        if max_fee is not None:
            fee = min(fee, max_fee)
            tip = min(tip, fee)
        return Fees(fee, tip)

    def receipts(self, hashes: Sequence[str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for start in range(0, len(hashes), CALLS_PER_REQUEST):
            out += self.rpc.batch(
                "eth_getTransactionReceipt",
                [[h] for h in hashes[start : start + CALLS_PER_REQUEST]],
            )
        return out

    def known_to_node(self, tx_hash: str) -> bool:
        return self.rpc.call("eth_getTransactionByHash", [tx_hash]) is not None

    # ----------------------------------------------------------------- writes

    def sign(self, nonce: int, data: str, gas: int, fees: Fees) -> SignedTx:
        signed = self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": self._checksum(self.manager),
                "data": data,
                "value": 0,
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        return SignedTx(
            "0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex(), fees
        )

    def broadcast(self, raw: str) -> BroadcastOutcome:
        try:
            self.rpc.call("eth_sendRawTransaction", [raw])
        except RpcError as exc:
            message = exc.message.lower()
            if "already known" in message or "known transaction" in message:
                return BroadcastOutcome.ACCEPTED
            if "nonce too low" in message or "nonce is too low" in message:
                return BroadcastOutcome.NONCE_USED
            if "underpriced" in message or "replacement" in message:
                return BroadcastOutcome.UNDERPRICED
            log.error("the node refused a keeper transaction: %s", exc.message)
            return BroadcastOutcome.REFUSED
        return BroadcastOutcome.ACCEPTED

    @staticmethod
    def _checksum(address: str) -> str:
        from web3 import Web3

        return str(Web3.to_checksum_address(address))


@dataclass(frozen=True)
class ReceiptEvents:
    """What a mined keeper transaction did, per subscription, from its logs."""

    charged: dict[int, int]  # id -> new paidThrough
    failed: dict[int, tuple[int, int]]  # id -> (dueAt, reason)
    skipped: dict[int, int]  # id -> ChargeSkipReason
    lapsed: set[int]


def receipt_events(receipt: dict[str, Any], manager: str) -> ReceiptEvents:
    by_topic = {topic: (name, types) for name, (topic, types) in MANAGER.topics.items()}
    charged: dict[int, int] = {}
    failed: dict[int, tuple[int, int]] = {}
    skipped: dict[int, int] = {}
    lapsed: set[int] = set()
    for entry in receipt.get("logs", []):
        if entry["address"].lower() != manager or not entry["topics"]:
            continue
        known = by_topic.get(entry["topics"][0])
        if known is None:
            continue
        name, types = known
        if name not in ("Charged", "ChargeFailed", "ChargeSkipped", "SubscriptionLapsed"):
            continue
        subscription_id = int(entry["topics"][1], 16)
        values = decode(types, bytes.fromhex(entry["data"][2:]))
        if name == "Charged":
            charged[subscription_id] = int(values[1])
        elif name == "ChargeFailed":
            failed[subscription_id] = (int(values[0]), int(values[2]))
        elif name == "ChargeSkipped":
            skipped[subscription_id] = int(values[0])
        else:
            lapsed.add(subscription_id)
    return ReceiptEvents(charged, failed, skipped, lapsed)
