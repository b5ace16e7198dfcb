"""Stateful property-based (invariant) tests of SubscriptionManager and InvoiceRegistry.

A Hypothesis `RuleBasedStateMachine` drives the real compiled contracts on the Anvil chain
that Ape starts for the tests: random sequences of plan creation, subscriptions, charges
(single and batched), cancels, plan changes, usage reports, time travel, funding gaps
(allowances revoked or cut, balances moved away, top-ups), lapses, and invoices issued,
paid (token and ETH), refunded, settled off-chain and voided.

Next to the chain the machine keeps a Python model. Before every transaction the model
predicts its outcome: either the exact list of logs (contract events and token transfers,
in order) or the exact custom error it must revert with. Every prediction is compared with
what the chain did, so an action allowed to fail must fail for the reason the model gives.
A separate auditor rebuilds the books from the events alone. After every step these
invariants are checked:

1. No period is charged twice: per subscription each `Charged.periodStart` is new and equals
   the previous regular `Charged.paidThrough` (the start for the first charge); the one
   final usage charge after a cancel has `periodStart == paidThrough`.
2. No charge above the cap: `Charged.amount` and `PlanChanged.charged` never exceed the
   subscriber's `maxAmountPerPeriod` in force (`PlanChanged` sets a new one).
3. Never charged before due: a `Charged` event's block time is at least its `periodStart`.
4. Canceled and lapsed subscriptions are never charged again, except for the single final
   usage charge, after which the subscription is Canceled.
5. Token conservation: balances of every wallet plus the contracts sum to `totalSupply`
   (which only the model's mints change); the contracts hold no tokens and no ETH.
6. Every transfer matches the books: each wallet's balance change (tokens and ETH) equals
   its billing flows from the events (merchant: amount - fee of `Charged`, `PlanChanged`,
   `InvoicePaid`, minus refunds; fee recipient: the fees; payers: minus what they paid)
   plus the transfers and mints the rules made themselves, minus gas.
7. Per invoice: `paid == sum(InvoicePaid) + sum(InvoiceSettledOffchain) - sum(InvoiceRefunded)`,
   `paid <= amount`, a void invoice has `paid == 0`, `amountDue == amount - paid`.
8. The views (`statusOf`, `paidThrough`, `nextChargeAt`, `amountDue`, `getSubscription`,
   `getPlan`, the invoice views, balances and allowances) agree with the model.

The contracts, accounts and chain are Ape's fixtures; transactions go to Ape's Anvil as
raw JSON-RPC, each at a block time the model chooses (Ape's own transaction path traces and
prints every revert, about 150 ms each, and many steps here revert on purpose). Every example
starts from the same chain snapshot. The test runs once against the deployments with the
platform fee and once against those without.

Sizes come from the environment; the defaults are CI's (about 20 s for both deployments):

    CHAINBILL_INVARIANT_EXAMPLES (default 25)  examples per deployment
    CHAINBILL_INVARIANT_STEPS    (default 30)  steps per example

A long campaign:

    CHAINBILL_INVARIANT_EXAMPLES=2000 CHAINBILL_INVARIANT_STEPS=60 PATH=.venv/bin:$PATH \\
        .venv/bin/ape test tests/contracts/test_invariants.py -s

With `-s` the test prints how often each call succeeded or failed (and with which error)
and how often each event was emitted. A failure is shrunk (up to about five minutes per
deployment) and printed as a minimal sequence of rule calls; failing examples are kept in
.cache/hypothesis/invariants and replayed first on the next run.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.chain_fixtures import FEE_BPS, FUNDS, UNIT

EXAMPLES = int(os.environ.get("CHAINBILL_INVARIANT_EXAMPLES", "25"))
STEPS = int(os.environ.get("CHAINBILL_INVARIANT_STEPS", "30"))

HOUR = 3600
DAY = 24 * HOUR
BPS = 10_000
MAX_PERIOD = 3650 * DAY
MAX_UINT40 = 2**40 - 1
MAX_UINT64 = 2**64 - 1
MAX_UINT96 = 2**96 - 1
MAX_UINT256 = 2**256 - 1
ZERO = "0x" + "00" * 20
NATIVE = "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
ETH = "eth"  # the asset key of native ETH in the books
TX_GAS = 5_000_000

MAX_PLANS = 7
MAX_SUBS = 10
MAX_INVOICES = 8
PICK = 31  # index strategies run 0..PICK: PICK means an unknown id, PREFER.. any id, below a preferred one
PREFER = 27

# SubscriptionStatus (derived), SubscriptionState (stored)
S_NONE, S_TRIALING, S_ACTIVE, S_PAST_DUE, S_CANCELED, S_LAPSED = range(6)
ST_NONE, ST_LIVE, ST_CANCELED, ST_LAPSED = range(4)
STATUS_NAMES = ("None", "Trialing", "Active", "PastDue", "Canceled", "Lapsed")
# ChargeFailureReason, ChargeSkipReason
R_ALLOWANCE, R_BALANCE, R_REJECTED = range(3)
SKIP_NOT_FOUND, SKIP_NOT_DUE, SKIP_NOT_LIVE, SKIP_GRACE_EXPIRED = range(4)
# InvoiceStatus
I_NONE, I_OPEN, I_PARTIAL, I_PAID, I_VOID = range(5)
# Subscription.flags
F_CANCEL, F_PAST_DUE, F_TRIAL, F_METERED, F_CREDIT = 1, 2, 4, 8, 16

OUTCOMES: Counter[str] = Counter()


# =====================================================================  JSON-RPC and ABI


class RpcError(Exception):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error
        data = error.get("data")
        self.data: str | None = data if isinstance(data, str) else None


class Rpc:
    """A minimal JSON-RPC client over one kept-alive HTTP connection (with batches)."""

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        assert parts.scheme == "http" and parts.hostname, f"an HTTP node is needed, not {uri}"
        self._address = (parts.hostname, parts.port or 80)
        self._path = parts.path or "/"
        self._connection = http.client.HTTPConnection(*self._address, timeout=120)

    def _post(self, payload: Any, *, retry: bool) -> Any:
        body = json.dumps(payload)
        headers = {"Content-Type": "application/json"}
        try:
            self._connection.request("POST", self._path, body, headers)
            return json.loads(self._connection.getresponse().read())
        except (http.client.HTTPException, ConnectionError):
            self._connection.close()
            self._connection = http.client.HTTPConnection(*self._address, timeout=120)
            if not retry:
                raise
            self._connection.request("POST", self._path, body, headers)
            return json.loads(self._connection.getresponse().read())

    def request(self, method: str, params: list[Any]) -> Any:
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        # Never resend a transaction: it may have gone through.
        reply = self._post(payload, retry=method != "eth_sendTransaction")
        if "error" in reply:
            raise RpcError(method, reply["error"])
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        if not calls:
            return []
        payload = [
            {"jsonrpc": "2.0", "id": index, "method": method, "params": params}
            for index, (method, params) in enumerate(calls)
        ]
        by_id = {reply["id"]: reply for reply in self._post(payload, retry=True)}
        results = []
        for index, (method, _) in enumerate(calls):
            reply = by_id[index]
            if "error" in reply:
                raise RpcError(method, reply["error"])
            results.append(reply["result"])
        return results


def _int(value: int | str) -> int:
    """A JSON-RPC quantity (hex string, or a plain number from some Anvil fields)."""
    return value if isinstance(value, int) else int(value, 16)


def _canonical(param: dict[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical(component) for component in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _norm(value: Any) -> Any:
    """Decoded values in the model's form: addresses lower case, sequences as tuples."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list | tuple):
        return tuple(_norm(item) for item in value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()[:12] + ".."
    if isinstance(value, str) and len(value) == 42:
        return value[:8] + ".."
    return repr(value)


@dataclass(frozen=True)
class AbiFunction:
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class AbiItem:
    """An event or a custom error."""

    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    indexed: tuple[bool, ...]


class Abi:
    def __init__(self, entries: Sequence[dict[str, Any]]) -> None:
        self.functions: dict[str, AbiFunction] = {}
        self.events: dict[bytes, AbiItem] = {}
        self.errors: dict[bytes, AbiItem] = {}
        for entry in entries:
            kind = entry.get("type")
            inputs = entry.get("inputs") or []
            types = tuple(_canonical(param) for param in inputs)
            names = tuple(str(param.get("name") or "") for param in inputs)
            signature = f"{entry.get('name')}({','.join(types)})"
            if kind == "function":
                name = str(entry["name"])
                assert name not in self.functions, f"overloaded function {name}"
                outputs = tuple(_canonical(param) for param in entry.get("outputs") or [])
                self.functions[name] = AbiFunction(keccak(text=signature)[:4], types, outputs)
            elif kind == "event":
                indexed = tuple(bool(param.get("indexed")) for param in inputs)
                item = AbiItem(str(entry["name"]), names, types, indexed)
                self.events[keccak(text=signature)] = item
            elif kind == "error":
                item = AbiItem(str(entry["name"]), names, types, (False,) * len(types))
                self.errors[keccak(text=signature)[:4]] = item


class Contract:
    def __init__(self, label: str, address: str, abi: Abi) -> None:
        self.label = label
        self.address = address.lower()
        self.abi = abi
        self._views: dict[tuple[str, tuple[Any, ...]], str] = {}
        self._outputs: dict[tuple[str, str], Any] = {}

    @classmethod
    def of(cls, label: str, ape_contract: Any) -> Contract:
        entries = [
            item.model_dump(mode="json", by_alias=True) for item in ape_contract.contract_type.abi
        ]
        return cls(label, str(ape_contract.address), Abi(entries))

    def calldata(self, fn: str, args: Sequence[Any]) -> str:
        function = self.abi.functions[fn]
        return "0x" + (function.selector + abi_encode(list(function.inputs), list(args))).hex()

    def view_calldata(self, fn: str, args: tuple[Any, ...]) -> str:
        """`calldata` of a view, cached: the invariants ask the same views after every step."""
        key = (fn, args)
        if key not in self._views:
            self._views[key] = self.calldata(fn, args)
        return self._views[key]

    def decode_output(self, fn: str, raw: str) -> Any:
        key = (fn, raw)
        if key not in self._outputs:
            outputs = list(self.abi.functions[fn].outputs)
            values = _norm(abi_decode(outputs, bytes.fromhex(raw[2:])))
            self._outputs[key] = values[0] if len(values) == 1 else values
        return self._outputs[key]


Args = tuple[tuple[str, Any], ...]


def _args(values: dict[str, Any]) -> Args:
    return tuple(sorted(values.items()))


@dataclass(frozen=True)
class Log:
    source: str
    name: str
    args: Args

    def __getitem__(self, key: str) -> Any:
        return dict(self.args)[key]

    def __str__(self) -> str:
        inner = ", ".join(f"{key}={_show(value)}" for key, value in self.args)
        return f"{self.source}.{self.name}({inner})"


@dataclass
class Outcome:
    ok: bool
    logs: list[Log]
    error: tuple[str, Args] | None
    timestamp: int
    gas_cost: int


def _error_str(error: tuple[str, Args] | None) -> str:
    if error is None:
        return "<none>"
    return f"{error[0]}({', '.join(f'{key}={_show(value)}' for key, value in error[1])})"


class Driver:
    """Sends transactions at chosen block times and decodes their logs and reverts."""

    def __init__(self, rpc: Rpc, contracts: Sequence[Contract]) -> None:
        self.rpc = rpc
        self.by_address = {contract.address: contract for contract in contracts}
        self.errors: dict[bytes, AbiItem] = {}
        for contract in contracts:
            self.errors.update(contract.abi.errors)

    def transact(
        self, sender: str, contract: Contract, fn: str, args: Sequence[Any], *, value: int, at: int
    ) -> Outcome:
        self.rpc.request("evm_setNextBlockTimestamp", [at])
        tx = {
            "from": sender,
            "to": contract.address,
            "data": contract.calldata(fn, args),
            "gas": hex(TX_GAS),
            "value": hex(value),
            "maxFeePerGas": hex(10**10),
            "maxPriorityFeePerGas": "0x0",
        }
        tx_hash = self.rpc.request("eth_sendTransaction", [tx])
        # Anvil answers with the hash before its automine has sealed the block.
        receipt = self.rpc.request("eth_getTransactionReceipt", [tx_hash])
        for _ in range(2000):
            if receipt is not None:
                break
            time.sleep(0.001)
            receipt = self.rpc.request("eth_getTransactionReceipt", [tx_hash])
        assert receipt is not None, f"{fn}: transaction {tx_hash} not mined"
        if "blockTimestamp" in receipt:
            timestamp = _int(receipt["blockTimestamp"])
        else:
            block = self.rpc.request("eth_getBlockByNumber", [receipt["blockNumber"], False])
            timestamp = _int(block["timestamp"])
        gas_cost = _int(receipt["gasUsed"]) * _int(receipt["effectiveGasPrice"])
        if _int(receipt["status"]) == 1:
            logs = [self._decode_log(raw) for raw in receipt["logs"]]
            return Outcome(True, logs, None, timestamp, gas_cost)
        # Replay the reverted transaction on the block it was mined in to read its error.
        call = {key: tx[key] for key in ("from", "to", "data", "gas", "value")}
        try:
            self.rpc.request("eth_call", [call, receipt["blockNumber"]])
        except RpcError as err:
            return Outcome(False, [], self._decode_error(err.data), timestamp, gas_cost)
        raise AssertionError(f"{fn} reverted on-chain but not when replayed")

    def mine(self, at: int) -> None:
        self.rpc.request("evm_setNextBlockTimestamp", [at])
        self.rpc.request("evm_mine", [])

    def _decode_log(self, raw: dict[str, Any]) -> Log:
        contract = self.by_address.get(raw["address"].lower())
        topics = [bytes.fromhex(topic[2:]) for topic in raw["topics"]]
        item = contract.abi.events.get(topics[0]) if contract and topics else None
        if contract is None or item is None:
            return Log(raw["address"].lower(), "<unknown>", (("data", raw["data"]),))
        data_types = [
            kind for kind, indexed in zip(item.types, item.indexed, strict=True) if not indexed
        ]
        data_values = iter(abi_decode(data_types, bytes.fromhex(raw["data"][2:])))
        topic_values = iter(topics[1:])
        values: dict[str, Any] = {}
        for name, kind, indexed in zip(item.names, item.types, item.indexed, strict=True):
            if indexed:
                values[name] = abi_decode([kind], next(topic_values))[0]
            else:
                values[name] = next(data_values)
        return Log(contract.label, item.name, _args({k: _norm(v) for k, v in values.items()}))

    def _decode_error(self, data: str | None) -> tuple[str, Args]:
        if not data or data == "0x":
            return ("<empty revert>", ())
        raw = bytes.fromhex(data[2:])
        selector, body = raw[:4], raw[4:]
        if selector == keccak(text="Error(string)")[:4]:
            return ("Error", (("message", abi_decode(["string"], body)[0]),))
        if selector == keccak(text="Panic(uint256)")[:4]:
            return ("Panic", (("code", abi_decode(["uint256"], body)[0]),))
        item = self.errors.get(selector)
        if item is None:
            return (f"<unknown error {data}>", ())
        values = abi_decode(list(item.types), body)
        return (item.name, _args({n: _norm(v) for n, v in zip(item.names, values, strict=True)}))


class Reader:
    """Collects view calls and balance reads, then runs them as one JSON-RPC batch."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, list[Any]]] = []
        self._decoders: list[Callable[[Any], Any]] = []

    def call(self, contract: Contract, fn: str, *args: Any) -> int:
        data = contract.view_calldata(fn, args)
        self._calls.append(("eth_call", [{"to": contract.address, "data": data}, "latest"]))
        self._decoders.append(lambda raw: contract.decode_output(fn, raw))
        return len(self._calls) - 1

    def eth_balance(self, address: str) -> int:
        self._calls.append(("eth_getBalance", [address, "latest"]))
        self._decoders.append(_int)
        return len(self._calls) - 1

    def latest_timestamp(self) -> int:
        self._calls.append(("eth_getBlockByNumber", ["latest", False]))
        self._decoders.append(lambda raw: _int(raw["timestamp"]))
        return len(self._calls) - 1

    def run(self, rpc: Rpc) -> list[Any]:
        raw = rpc.batch(self._calls)
        return [decode(value) for decode, value in zip(self._decoders, raw, strict=True)]


# ==========================================================================  the model


@dataclass
class Plan:
    merchant: str
    token: str
    price: int
    period: int
    trial: int
    grace: int
    unit_price: int
    included: int
    active: bool = True


@dataclass
class Sub:
    subscriber: str
    plan_id: int
    paid_through: int
    cap: int
    in_trial: bool
    state: int = ST_LIVE
    cancel_at_end: bool = False
    past_due: bool = False
    credit: int = 0
    usage: int = 0


@dataclass
class Invoice:
    merchant: str
    reference: bytes
    customer: str
    token: str
    amount: int
    due: int
    due_date: int
    allow_partial: bool
    voided: bool = False


@dataclass
class World:
    """What the model believes the chain holds."""

    now: int  # timestamp of the latest block (the time views see)
    plan_count: int
    sub_count: int
    plans: dict[int, Plan] = field(default_factory=dict)
    subs: dict[int, Sub] = field(default_factory=dict)
    usage_records: set[tuple[str, bytes]] = field(default_factory=set)
    invoices: dict[bytes, Invoice] = field(default_factory=dict)
    fiat_refs: set[tuple[str, bytes]] = field(default_factory=set)
    balances: dict[tuple[str, str], int] = field(default_factory=dict)  # (token, holder)
    allowances: dict[tuple[str, str, str], int] = field(
        default_factory=dict
    )  # token, owner, spender
    supply: dict[str, int] = field(default_factory=dict)
    eth: dict[str, int] = field(default_factory=dict)

    def status(self, sid: int, now: int) -> int:
        sub = self.subs.get(sid)
        if sub is None:
            return S_NONE
        if sub.state == ST_CANCELED:
            return S_CANCELED
        if sub.state == ST_LAPSED:
            return S_LAPSED
        if now < sub.paid_through:
            return S_TRIALING if sub.in_trial else S_ACTIVE
        if sub.cancel_at_end:
            return S_CANCELED
        if now >= self.grace_end(sub):
            return S_LAPSED
        return S_PAST_DUE

    def grace_end(self, sub: Sub) -> int:
        return sub.paid_through + self.plans[sub.plan_id].grace

    def metered(self, sub: Sub) -> bool:
        return self.plans[sub.plan_id].unit_price != 0

    def has_unbilled_usage(self, sub: Sub) -> bool:
        return self.metered(sub) and sub.usage != 0

    def has_next_charge(self, sub: Sub, now: int) -> bool:
        if sub.state != ST_LIVE or now >= self.grace_end(sub):
            return False
        return not sub.cancel_at_end or self.has_unbilled_usage(sub)

    def next_charge(self, sub: Sub) -> tuple[int, int, int, int, int]:
        """(amount, units, overage, credit applied, credit left) of the next charge."""
        plan = self.plans[sub.plan_id]
        amount = 0 if sub.cancel_at_end else plan.price
        units = overage = 0
        if plan.unit_price != 0:
            units = sub.usage
            overage = overage_of(units, plan)
            amount += overage
        applied = min(sub.credit, amount)
        return amount - applied, units, overage, applied, sub.credit - applied

    def flags(self, sub: Sub) -> int:
        return (
            (F_CANCEL if sub.cancel_at_end else 0)
            | (F_PAST_DUE if sub.past_due else 0)
            | (F_TRIAL if sub.in_trial else 0)
            | (F_METERED if self.metered(sub) else 0)
            | (F_CREDIT if sub.credit != 0 else 0)
        )


def overage_of(units: int, plan: Plan) -> int:
    return (units - plan.included) * plan.unit_price if units > plan.included else 0


def invoice_id_of(merchant: str, reference: bytes) -> bytes:
    return keccak(abi_encode(["address", "bytes32"], [merchant, reference]))


class Revert(Exception):
    """The model's prediction that a transaction reverts, with its exact custom error."""

    def __init__(self, name: str, **args: Any) -> None:
        super().__init__(name)
        self.error: tuple[str, Args] = (name, _args(args))


@dataclass(frozen=True)
class Env:
    rpc: Rpc
    driver: Driver
    chain: Any
    manager: Contract
    registry: Contract
    tokens: tuple[Contract, Contract]
    fee_bps: int
    fee_recipient: str  # where fees go (zero address without a fee)
    fee_wallet: str  # the fee recipient fixture's wallet (checked to receive nothing without a fee)
    owner: str  # also the sink that takes balances moved away
    merchant: str
    merchant2: str
    operator: str
    keeper: str
    payers: tuple[str, ...]  # subscribers and invoice payers
    accounts: tuple[str, ...]
    operators: frozenset[tuple[str, str, str]]  # (contract label, merchant, operator)
    settlers: frozenset[tuple[str, str]]  # (merchant, settler)
    baseline: World
    snapshot: list[str]  # the current snapshot id, replaced after every restore

    def token_label(self, token: str) -> str:
        return next(contract.label for contract in self.tokens if contract.address == token)

    def is_operator(self, contract: Contract, merchant: str, caller: str) -> bool:
        return caller == merchant or (contract.label, merchant, caller) in self.operators

    def fee_of(self, amount: int) -> int:
        return amount * self.fee_bps // BPS

    def reset_chain(self) -> None:
        self.chain.restore(self.snapshot[0])
        self.snapshot[0] = self.chain.snapshot()


class Sim:
    """Runs one transaction on a draft copy of the world: appends the logs it must emit, or
    raises `Revert` with the error it must revert with."""

    def __init__(
        self, world: World, env: Env, sender: str, to: Contract, at: int, value: int
    ) -> None:
        self.w = world
        self.env = env
        self.sender = sender
        self.at = at
        self.value = value
        self.logs: list[Log] = []
        if value:
            world.eth[sender] -= value
            world.eth[to.address] = world.eth.get(to.address, 0) + value

    def emit(self, source: Contract, name: str, **args: Any) -> None:
        self.logs.append(Log(source.label, name, _args(args)))

    # ---------------------------------------------------------------- token

    def balance(self, token: str, holder: str) -> int:
        return self.w.balances.get((token, holder), 0)

    def allowance(self, token: str, owner: str, spender: str) -> int:
        return self.w.allowances.get((token, owner, spender), 0)

    def _token(self, token: str) -> Contract:
        return next(contract for contract in self.env.tokens if contract.address == token)

    def _move(self, token: str, source: str, to: str, amount: int) -> None:
        self.w.balances[(token, source)] = self.balance(token, source) - amount
        self.w.balances[(token, to)] = self.balance(token, to) + amount
        self.emit(self._token(token), "Transfer", **{"from": source, "to": to, "value": amount})

    def approve(self, token: str, spender: str, value: int) -> None:
        self.w.allowances[(token, self.sender, spender)] = value
        self.emit(self._token(token), "Approval", owner=self.sender, spender=spender, value=value)

    def transfer(self, token: str, to: str, amount: int) -> None:
        balance = self.balance(token, self.sender)
        if balance < amount:
            raise Revert(
                "ERC20InsufficientBalance", sender=self.sender, balance=balance, needed=amount
            )
        self._move(token, self.sender, to, amount)

    def mint(self, token: str, to: str, amount: int) -> None:
        self.w.supply[token] += amount
        self.w.balances[(token, to)] = self.balance(token, to) + amount
        self.emit(self._token(token), "Transfer", **{"from": ZERO, "to": to, "value": amount})

    def _try_transfer_from(
        self, token: str, spender: str, source: str, to: str, amount: int
    ) -> bool:
        allowed = self.allowance(token, source, spender)
        if allowed < amount or self.balance(token, source) < amount:
            return False
        if allowed != MAX_UINT256:
            self.w.allowances[(token, source, spender)] = allowed - amount
        self._move(token, source, to, amount)
        return True

    def try_collect(
        self, contract: Contract, token: str, source: str, merchant: str, amount: int, fee: int
    ) -> bool:
        spender = contract.address
        if fee == 0:
            return self._try_transfer_from(token, spender, source, merchant, amount)
        if self.allowance(token, source, spender) < amount or self.balance(token, source) < amount:
            return False
        assert self._try_transfer_from(token, spender, source, self.env.fee_recipient, fee)
        assert self._try_transfer_from(token, spender, source, merchant, amount - fee)
        return True

    def collect(
        self, contract: Contract, token: str, source: str, merchant: str, amount: int, fee: int
    ) -> None:
        if not self.try_collect(contract, token, source, merchant, amount, fee):
            raise Revert(
                "PaymentFailed",
                token=token,
                amount=amount,
                allowance=self.allowance(token, source, contract.address),
                balance=self.balance(token, source),
                **{"from": source},
            )

    def send_eth(self, source: str, to: str, amount: int) -> None:
        self.w.eth[source] -= amount
        self.w.eth[to] = self.w.eth.get(to, 0) + amount

    # -------------------------------------------------------- subscriptions

    @property
    def m(self) -> Contract:
        return self.env.manager

    def create_plan(self, token: str, price: int, period: int, trial: int, grace: int) -> None:
        if price == 0:
            raise Revert("InvalidPrice", price=price, max=MAX_UINT96)
        self._create_plan(token, price, period, trial, grace, 0, 0)

    def create_metered_plan(
        self,
        token: str,
        price: int,
        period: int,
        trial: int,
        grace: int,
        unit_price: int,
        included: int,
    ) -> None:
        if unit_price == 0 or unit_price > MAX_UINT96:
            raise Revert("InvalidPrice", price=unit_price, max=MAX_UINT96)
        if included > MAX_UINT64:
            raise Revert("InvalidUsage", units=included)
        self._create_plan(token, price, period, trial, grace, unit_price, included)

    def _create_plan(
        self,
        token: str,
        price: int,
        period: int,
        trial: int,
        grace: int,
        unit_price: int,
        included: int,
    ) -> None:
        if price > MAX_UINT96:
            raise Revert("InvalidPrice", price=price, max=MAX_UINT96)
        if period < HOUR or period > MAX_PERIOD:
            raise Revert("InvalidPeriod", period=period, min=HOUR, max=MAX_PERIOD)
        if trial > MAX_PERIOD:
            raise Revert("InvalidPeriod", period=trial, min=0, max=MAX_PERIOD)
        if grace < HOUR or grace > MAX_PERIOD:
            raise Revert("InvalidPeriod", period=grace, min=HOUR, max=MAX_PERIOD)
        self.w.plan_count += 1
        pid = self.w.plan_count
        self.w.plans[pid] = Plan(
            self.sender, token, price, period, trial, grace, unit_price, included
        )
        self.emit(
            self.m,
            "PlanCreated",
            planId=pid,
            merchant=self.sender,
            token=token,
            price=price,
            period=period,
            trialPeriod=trial,
            gracePeriod=grace,
            unitPrice=unit_price,
            includedUnits=included,
        )

    def deactivate_plan(self, pid: int) -> None:
        plan = self.w.plans.get(pid)
        if plan is None:
            raise Revert("PlanNotFound", planId=pid)
        if not self.env.is_operator(self.m, plan.merchant, self.sender):
            raise Revert("NotMerchantOrOperator", merchant=plan.merchant, caller=self.sender)
        if not plan.active:
            raise Revert("PlanInactive", planId=pid)
        plan.active = False
        self.emit(self.m, "PlanDeactivated", planId=pid)

    def subscribe(self, pid: int, cap: int) -> None:
        plan = self.w.plans.get(pid)
        if plan is None:
            raise Revert("PlanNotFound", planId=pid)
        if not plan.active:
            raise Revert("PlanInactive", planId=pid)
        if cap == 0 or cap < plan.price or cap > MAX_UINT96:
            raise Revert("CapBelowPrice", maxAmountPerPeriod=cap, price=plan.price)
        self.w.sub_count += 1
        sid = self.w.sub_count
        trial = plan.trial != 0
        paid_through = self.at + (plan.trial if trial else plan.period)
        self.w.subs[sid] = Sub(self.sender, pid, paid_through, cap, in_trial=trial)
        self.emit(
            self.m,
            "Subscribed",
            subscriptionId=sid,
            planId=pid,
            subscriber=self.sender,
            maxAmountPerPeriod=cap,
            startedAt=self.at,
            paidThrough=paid_through,
        )
        if not trial:
            fee = self.env.fee_of(plan.price)
            if plan.price != 0:
                self.collect(self.m, plan.token, self.sender, plan.merchant, plan.price, fee)
            self.emit(
                self.m,
                "Charged",
                subscriptionId=sid,
                periodStart=self.at,
                paidThrough=paid_through,
                amount=plan.price,
                fee=fee,
            )

    def _check_due(self, sid: int, sub: Sub, strict: bool) -> int | None:
        """None when the charge may be made now, else the skip reason (or a Revert)."""
        due_at = sub.paid_through
        if sub.state != ST_LIVE:
            if strict:
                raise Revert(
                    "SubscriptionNotLive", subscriptionId=sid, status=self.w.status(sid, self.at)
                )
            return SKIP_NOT_LIVE
        if sub.cancel_at_end:
            if self.at < due_at:
                if strict:
                    raise Revert("CancelAlreadyScheduled", subscriptionId=sid, effectiveAt=due_at)
                return SKIP_NOT_LIVE
            if not self.w.has_unbilled_usage(sub):
                if strict:
                    raise Revert("SubscriptionNotLive", subscriptionId=sid, status=S_CANCELED)
                return SKIP_NOT_LIVE
        elif self.at < due_at:
            if strict:
                raise Revert("ChargeNotDue", subscriptionId=sid, dueAt=due_at, now_=self.at)
            return SKIP_NOT_DUE
        grace_end = self.w.grace_end(sub)
        if self.at >= grace_end:
            if strict:
                raise Revert("GracePeriodExpired", subscriptionId=sid, graceEndedAt=grace_end)
            return SKIP_GRACE_EXPIRED
        return None

    def _collect_period(self, sid: int, sub: Sub) -> None:
        plan = self.w.plans[sub.plan_id]
        amount, units, overage, applied, left = self.w.next_charge(sub)
        fee = self.env.fee_of(amount)
        if amount != 0 and not self.try_collect(
            self.m, plan.token, sub.subscriber, plan.merchant, amount, fee
        ):
            sub.past_due = True
            if self.allowance(plan.token, sub.subscriber, self.m.address) < amount:
                reason = R_ALLOWANCE
            elif self.balance(plan.token, sub.subscriber) < amount:
                reason = R_BALANCE
            else:
                reason = R_REJECTED
            self.emit(
                self.m,
                "ChargeFailed",
                subscriptionId=sid,
                dueAt=sub.paid_through,
                amount=amount,
                reason=reason,
            )
            return
        sub.usage = 0
        sub.credit = left
        if units != 0:
            self.emit(
                self.m, "UsageCharged", subscriptionId=sid, units=units, overageAmount=overage
            )
        if applied != 0:
            self.emit(
                self.m, "CreditApplied", subscriptionId=sid, amount=applied, remainingCredit=left
            )
        start = sub.paid_through
        if sub.cancel_at_end:
            sub.state = ST_CANCELED
        else:
            sub.paid_through = start + plan.period
        sub.past_due = False
        sub.in_trial = False
        self.emit(
            self.m,
            "Charged",
            subscriptionId=sid,
            periodStart=start,
            paidThrough=sub.paid_through,
            amount=amount,
            fee=fee,
        )

    def charge(self, sid: int) -> None:
        sub = self.w.subs.get(sid)
        if sub is None:
            raise Revert("SubscriptionNotFound", subscriptionId=sid)
        self._check_due(sid, sub, strict=True)
        self._collect_period(sid, sub)

    def charge_batch(self, sids: Sequence[int]) -> None:
        for sid in sids:
            sub = self.w.subs.get(sid)
            if sub is None:
                self.emit(self.m, "ChargeSkipped", subscriptionId=sid, reason=SKIP_NOT_FOUND)
                continue
            reason = self._check_due(sid, sub, strict=False)
            if reason is not None:
                self.emit(self.m, "ChargeSkipped", subscriptionId=sid, reason=reason)
            else:
                self._collect_period(sid, sub)

    def report_usage(self, sid: int, units: int, record: bytes) -> None:
        status = self.w.status(sid, self.at)
        if status == S_NONE:
            raise Revert("SubscriptionNotFound", subscriptionId=sid)
        sub = self.w.subs[sid]
        plan = self.w.plans[sub.plan_id]
        if not self.env.is_operator(self.m, plan.merchant, self.sender):
            raise Revert("NotMerchantOrOperator", merchant=plan.merchant, caller=self.sender)
        if plan.unit_price == 0:
            raise Revert("PlanNotMetered", planId=sub.plan_id)
        if status in (S_CANCELED, S_LAPSED):
            raise Revert("SubscriptionNotLive", subscriptionId=sid, status=status)
        # Usage may still be reported while a cancel at period end is pending (the final
        # charge bills it); a resent record id is refused before anything else is judged.
        if (plan.merchant, record) in self.w.usage_records:
            raise Revert("DuplicateUsageRecord", merchant=plan.merchant, usageRecordId=record)
        unbilled = sub.usage + units
        if units == 0 or unbilled > MAX_UINT64:
            raise Revert("InvalidUsage", units=units)
        amount = plan.price + overage_of(unbilled, plan)
        if amount > sub.cap:
            raise Revert(
                "UsageExceedsCap", subscriptionId=sid, amount=amount, maxAmountPerPeriod=sub.cap
            )
        self.w.usage_records.add((plan.merchant, record))
        sub.usage = unbilled
        self.emit(
            self.m,
            "UsageReported",
            subscriptionId=sid,
            usageRecordId=record,
            units=units,
            unbilledUnits=unbilled,
            billableAt=sub.paid_through,
        )

    def change_plan(self, sid: int, new_pid: int, cap: int) -> None:
        status = self.w.status(sid, self.at)
        if status == S_NONE:
            raise Revert("SubscriptionNotFound", subscriptionId=sid)
        sub = self.w.subs[sid]
        if self.sender != sub.subscriber:
            raise Revert("NotSubscriber", subscriptionId=sid, caller=self.sender)
        if sub.state != ST_LIVE:
            raise Revert("SubscriptionNotLive", subscriptionId=sid, status=status)
        if sub.cancel_at_end:
            raise Revert("CancelAlreadyScheduled", subscriptionId=sid, effectiveAt=sub.paid_through)
        if self.at >= sub.paid_through:
            raise Revert("PlanChangeWhileDue", subscriptionId=sid, dueAt=sub.paid_through)
        old_pid = sub.plan_id
        old = self.w.plans[old_pid]
        new = self.w.plans.get(new_pid)
        if new is None:
            raise Revert("PlanNotFound", planId=new_pid)
        if new_pid == old_pid or new.merchant != old.merchant or new.token != old.token:
            raise Revert("PlanChangeNotAllowed", fromPlanId=old_pid, toPlanId=new_pid)
        if not new.active:
            raise Revert("PlanInactive", planId=new_pid)
        if cap == 0 or cap < new.price or cap > MAX_UINT96:
            raise Revert("CapBelowPrice", maxAmountPerPeriod=cap, price=new.price)
        remaining = sub.paid_through - self.at
        owed = 0
        available = sub.credit
        if not sub.in_trial:
            owed = new.price * remaining // new.period
            available += old.price * remaining // old.period
        if old.unit_price != 0:
            owed += overage_of(sub.usage, old)
        charged = max(owed - available, 0)
        credit = max(available - owed, 0)
        if charged > cap:
            raise Revert("ChargeAboveCap", amount=charged, maxAmountPerPeriod=cap)
        sub.plan_id = new_pid
        sub.cap = cap
        sub.credit = credit
        sub.usage = 0
        fee = self.env.fee_of(charged)
        if charged != 0:
            self.collect(self.m, new.token, sub.subscriber, new.merchant, charged, fee)
        self.emit(
            self.m,
            "PlanChanged",
            subscriptionId=sid,
            fromPlanId=old_pid,
            toPlanId=new_pid,
            charged=charged,
            fee=fee,
            credit=credit,
            maxAmountPerPeriod=cap,
        )

    def cancel(self, sid: int, at_period_end: bool) -> None:
        status = self.w.status(sid, self.at)
        if status == S_NONE:
            raise Revert("SubscriptionNotFound", subscriptionId=sid)
        sub = self.w.subs[sid]
        merchant = self.w.plans[sub.plan_id].merchant
        if self.sender != sub.subscriber and not self.env.is_operator(
            self.m, merchant, self.sender
        ):
            raise Revert("NotSubscriberOrMerchant", subscriptionId=sid, caller=self.sender)
        if status in (S_CANCELED, S_LAPSED):
            raise Revert("SubscriptionNotLive", subscriptionId=sid, status=status)
        if sub.cancel_at_end and at_period_end:
            raise Revert("CancelAlreadyScheduled", subscriptionId=sid, effectiveAt=sub.paid_through)
        if at_period_end and self.at < sub.paid_through:
            sub.cancel_at_end = True
            effective_at = sub.paid_through
        elif self.w.has_unbilled_usage(sub):
            sub.paid_through = min(sub.paid_through, self.at)
            sub.cancel_at_end = True
            effective_at = self.at
            at_period_end = False
        else:
            sub.state = ST_CANCELED
            effective_at = self.at
            at_period_end = False
        self.emit(
            self.m,
            "SubscriptionCanceled",
            subscriptionId=sid,
            canceledBy=self.sender,
            effectiveAt=effective_at,
            atPeriodEnd=at_period_end,
        )

    def finalize_lapse(self, sid: int) -> None:
        status = self.w.status(sid, self.at)
        if status == S_NONE:
            raise Revert("SubscriptionNotFound", subscriptionId=sid)
        sub = self.w.subs[sid]
        if sub.state != ST_LIVE or status == S_CANCELED:
            raise Revert("SubscriptionNotLive", subscriptionId=sid, status=status)
        if status != S_LAPSED:
            raise Revert("GracePeriodRunning", subscriptionId=sid, lapsesAt=self.w.grace_end(sub))
        sub.state = ST_LAPSED
        self.emit(self.m, "SubscriptionLapsed", subscriptionId=sid, lapsedAt=self.w.grace_end(sub))

    # -------------------------------------------------------------- invoices

    @property
    def r(self) -> Contract:
        return self.env.registry

    def issue(
        self,
        merchant: str,
        reference: bytes,
        customer: str,
        token: str,
        amount: int,
        due_date: int,
        allow_partial: bool,
        content: bytes,
    ) -> None:
        if not self.env.is_operator(self.r, merchant, self.sender):
            raise Revert("NotMerchantOrOperator", merchant=merchant, caller=self.sender)
        if token == ZERO:
            raise Revert("InvalidToken", token=token)
        if amount == 0 or amount > MAX_UINT96:
            raise Revert("InvalidAmount", amount=amount, max=MAX_UINT96)
        if due_date < self.at:
            raise Revert("DueDateInPast", dueDate=due_date, now_=self.at)
        if due_date > MAX_UINT40:
            raise Revert("DueDateTooFar", dueDate=due_date, max=MAX_UINT40)
        iid = invoice_id_of(merchant, reference)
        if iid in self.w.invoices:
            raise Revert("InvoiceAlreadyIssued", invoiceId=iid)
        self.w.invoices[iid] = Invoice(
            merchant, reference, customer, token, amount, amount, due_date, allow_partial
        )
        self.emit(
            self.r,
            "InvoiceIssued",
            invoiceId=iid,
            merchant=merchant,
            customer=customer,
            referenceHash=reference,
            token=token,
            amount=amount,
            dueDate=due_date,
            allowPartial=allow_partial,
            contentHash=content,
        )

    def _record_payment(self, iid: bytes, invoice: Invoice | None, amount: int) -> None:
        due = invoice.due if invoice else 0
        if due == 0:
            if invoice is None:
                raise Revert("InvoiceNotFound", invoiceId=iid)
            if invoice.voided:
                raise Revert("InvoiceIsVoid", invoiceId=iid)
            raise Revert("InvoiceAlreadyPaid", invoiceId=iid)
        assert invoice is not None
        if amount == 0:
            raise Revert("InvalidAmount", amount=amount, max=due)
        if amount > due:
            raise Revert("AmountExceedsDue", invoiceId=iid, amount=amount, due=due)
        if amount < due and not invoice.allow_partial:
            raise Revert("PartialPaymentNotAllowed", invoiceId=iid, amount=amount, due=due)
        invoice.due = due - amount

    def pay(self, merchant: str, reference: bytes, amount: int) -> None:
        iid = invoice_id_of(merchant, reference)
        invoice = self.w.invoices.get(iid)
        if invoice is not None and invoice.token == NATIVE:
            raise Revert("WrongPaymentAsset", invoiceId=iid, token=NATIVE)
        self._record_payment(iid, invoice, amount)
        assert invoice is not None
        fee = self.env.fee_of(amount)
        self.collect(self.r, invoice.token, self.sender, merchant, amount, fee)
        self.emit(self.r, "InvoicePaid", invoiceId=iid, payer=self.sender, amount=amount, fee=fee)

    def pay_eth(self, merchant: str, reference: bytes) -> None:
        iid = invoice_id_of(merchant, reference)
        invoice = self.w.invoices.get(iid)
        if invoice is None:
            raise Revert("InvoiceNotFound", invoiceId=iid)
        if invoice.token != NATIVE:
            raise Revert("WrongPaymentAsset", invoiceId=iid, token=invoice.token)
        self._record_payment(iid, invoice, self.value)
        fee = self.env.fee_of(self.value)
        if fee != 0:
            self.send_eth(self.r.address, self.env.fee_recipient, fee)
        self.send_eth(self.r.address, merchant, self.value - fee)
        self.emit(
            self.r, "InvoicePaid", invoiceId=iid, payer=self.sender, amount=self.value, fee=fee
        )

    def _existing(self, iid: bytes) -> Invoice:
        invoice = self.w.invoices.get(iid)
        if invoice is None:
            raise Revert("InvoiceNotFound", invoiceId=iid)
        return invoice

    def void(self, iid: bytes) -> None:
        invoice = self._existing(iid)
        if not self.env.is_operator(self.r, invoice.merchant, self.sender):
            raise Revert("NotMerchantOrOperator", merchant=invoice.merchant, caller=self.sender)
        if invoice.voided:
            raise Revert("InvoiceIsVoid", invoiceId=iid)
        paid = invoice.amount - invoice.due
        if paid != 0:
            raise Revert("InvoiceNotVoidable", invoiceId=iid, paid=paid)
        invoice.voided = True
        invoice.due = 0
        self.emit(self.r, "InvoiceVoided", invoiceId=iid, voidedBy=self.sender)

    def refund(self, iid: bytes, recipient: str, amount: int) -> None:
        invoice = self._existing(iid)
        if self.sender != invoice.merchant:
            raise Revert("NotInvoiceMerchant", invoiceId=iid, caller=self.sender)
        if recipient == ZERO:
            raise Revert("InvalidRecipient")
        if invoice.voided:
            raise Revert("InvoiceIsVoid", invoiceId=iid)
        paid = invoice.amount - invoice.due
        if amount == 0 or amount > paid:
            raise Revert("RefundExceedsPaid", invoiceId=iid, amount=amount, paid=paid)
        invoice.due += amount
        if invoice.token == NATIVE:
            if self.value != amount:
                raise Revert("EthAmountMismatch", expected=amount, sent=self.value)
            self.send_eth(self.r.address, recipient, amount)
        else:
            if self.value != 0:
                raise Revert("WrongPaymentAsset", invoiceId=iid, token=invoice.token)
            self.collect(self.r, invoice.token, invoice.merchant, recipient, amount, 0)
        self.emit(self.r, "InvoiceRefunded", invoiceId=iid, recipient=recipient, amount=amount)

    def settle(self, iid: bytes, amount: int, fiat_reference: bytes) -> None:
        invoice = self._existing(iid)
        merchant = invoice.merchant
        if self.sender != merchant and (merchant, self.sender) not in self.env.settlers:
            raise Revert("NotSettler", merchant=merchant, caller=self.sender)
        if (merchant, fiat_reference) in self.w.fiat_refs:
            raise Revert(
                "FiatReferenceAlreadyUsed", merchant=merchant, fiatReference=fiat_reference
            )
        self.w.fiat_refs.add((merchant, fiat_reference))
        self._record_payment(iid, invoice, amount)
        self.emit(
            self.r,
            "InvoiceSettledOffchain",
            invoiceId=iid,
            settler=self.sender,
            amount=amount,
            fiatReference=fiat_reference,
        )


# ========================================================================  the auditor


@dataclass
class SubAudit:
    subscriber: str
    plan_id: int
    cap: int
    next_start: int  # where the next regular period must start
    starts: set[int] = field(default_factory=set)
    canceled_at: int | None = None  # effectiveAt of a SubscriptionCanceled
    cancel_at_end: bool = False  # whether that cancel waits for the end of the period
    lapsed: bool = False
    final_charged: bool = False
    unbilled: int = 0
    seen_status: set[int] = field(default_factory=set)  # statuses the views reported


@dataclass
class InvoiceAudit:
    merchant: str
    token: str
    amount: int
    paid: int = 0
    settled: int = 0
    refunded: int = 0
    voided: bool = False


class Auditor:
    """Rebuilds the books from the events alone and checks invariants 1-4, 6 and 7 on them."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.plans: dict[int, tuple[str, str, int, int]] = {}  # merchant, token, period, trial
        self.subs: dict[int, SubAudit] = {}
        self.invoices: dict[bytes, InvoiceAudit] = {}
        # Net movement per (asset, wallet): billing flows from the events, plus what the
        # rules moved themselves (transfers, mints), minus gas.
        self.books: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.minted: defaultdict[str, int] = defaultdict(int)

    def direct(self, asset: str, wallet: str, delta: int) -> None:
        self.books[(asset, wallet)] += delta

    def _flow(self, asset: str, payer: str, merchant: str, amount: int, fee: int) -> None:
        assert fee == self.env.fee_of(amount), (
            f"fee {fee} of {amount} is not {self.env.fee_bps} bps"
        )
        self.books[(asset, payer)] -= amount
        self.books[(asset, merchant)] += amount - fee
        self.books[(asset, self.env.fee_recipient)] += fee

    def feed(self, logs: Sequence[Log], timestamp: int) -> None:
        for log in logs:
            handler = getattr(self, f"_on_{log.name}", None)
            if log.source in (self.env.manager.label, self.env.registry.label) and handler:
                handler(log, timestamp)

    def _on_PlanCreated(self, log: Log, ts: int) -> None:
        self.plans[log["planId"]] = (
            log["merchant"],
            log["token"],
            log["period"],
            log["trialPeriod"],
        )

    def _on_Subscribed(self, log: Log, ts: int) -> None:
        _, _, period, trial = self.plans[log["planId"]]
        assert log["startedAt"] == ts
        assert log["paidThrough"] == ts + (trial or period)
        first_start = ts if trial == 0 else log["paidThrough"]
        self.subs[log["subscriptionId"]] = SubAudit(
            log["subscriber"], log["planId"], log["maxAmountPerPeriod"], first_start
        )

    def _on_Charged(self, log: Log, ts: int) -> None:
        sid = log["subscriptionId"]
        sub = self.subs[sid]
        start, end, amount = log["periodStart"], log["paidThrough"], log["amount"]
        merchant, token, period, _ = self.plans[sub.plan_id]
        where = f"subscription {sid}: {log} at {ts}"
        # 3. never charged before due
        assert ts >= start, f"charged before due: {where}"
        # 2. never above the cap in force
        assert amount <= sub.cap, f"charge above the cap {sub.cap}: {where}"
        # 1. no period charged twice
        assert start not in sub.starts, f"period charged twice: {where}"
        sub.starts.add(start)
        # 4. lapsed and canceled subscriptions are never charged again ...
        assert not sub.lapsed, f"lapsed subscription charged: {where}"
        assert S_LAPSED not in sub.seen_status, f"subscription seen Lapsed, then charged: {where}"
        if start == end:
            # ... except for the one final charge of usage left unbilled at a cancel.
            assert sub.canceled_at is not None, f"zero-length period without a cancel: {where}"
            assert not sub.final_charged, f"second final charge: {where}"
            assert start in (sub.next_start, sub.canceled_at), f"final charge off schedule: {where}"
            assert sub.unbilled > 0, f"final charge without unbilled usage: {where}"
            sub.final_charged = True
            OUTCOMES["~ final usage charge after a cancel"] += 1
        else:
            assert sub.canceled_at is None, f"regular charge after a cancel: {where}"
            assert S_CANCELED not in sub.seen_status, (
                f"subscription seen Canceled, then charged: {where}"
            )
            assert start == sub.next_start, (
                f"period off the fixed schedule ({sub.next_start}): {where}"
            )
            assert end == start + period, f"period length is not the plan's {period}: {where}"
            sub.next_start = end
        sub.unbilled = 0
        self._flow(token, sub.subscriber, merchant, amount, log["fee"])

    def _on_ChargeFailed(self, log: Log, ts: int) -> None:
        assert ts >= log["dueAt"], f"charge attempted before due: {log} at {ts}"

    def _on_UsageReported(self, log: Log, ts: int) -> None:
        sub = self.subs[log["subscriptionId"]]
        assert log["unbilledUnits"] == sub.unbilled + log["units"], f"usage sum: {log}"
        # usage is reported before the end: no cancel, or one at period end still pending
        pending = sub.canceled_at is None or (sub.cancel_at_end and ts < sub.canceled_at)
        assert pending and not sub.lapsed, f"usage after the end: {log} at {ts}"
        sub.unbilled = log["unbilledUnits"]

    def _on_UsageCharged(self, log: Log, ts: int) -> None:
        assert log["units"] == self.subs[log["subscriptionId"]].unbilled, f"usage billed: {log}"

    def _on_PlanChanged(self, log: Log, ts: int) -> None:
        sub = self.subs[log["subscriptionId"]]
        assert log["fromPlanId"] == sub.plan_id
        # 2. the immediate charge of a plan change stays within the new cap
        assert log["charged"] <= log["maxAmountPerPeriod"], f"plan change above the cap: {log}"
        assert sub.canceled_at is None and not sub.lapsed, f"plan change after the end: {log}"
        sub.plan_id = log["toPlanId"]
        sub.cap = log["maxAmountPerPeriod"]
        sub.unbilled = 0
        merchant, token, _, _ = self.plans[sub.plan_id]
        self._flow(token, sub.subscriber, merchant, log["charged"], log["fee"])

    def _on_SubscriptionCanceled(self, log: Log, ts: int) -> None:
        sub = self.subs[log["subscriptionId"]]
        assert sub.canceled_at is None or not log["atPeriodEnd"], f"canceled twice: {log}"
        assert not sub.lapsed
        if log["atPeriodEnd"]:
            assert log["effectiveAt"] == sub.next_start > ts, f"cancel at period end: {log} at {ts}"
        else:
            assert log["effectiveAt"] == ts, f"immediate cancel: {log} at {ts}"
        sub.canceled_at = log["effectiveAt"]
        sub.cancel_at_end = log["atPeriodEnd"]

    def _on_SubscriptionLapsed(self, log: Log, ts: int) -> None:
        sub = self.subs[log["subscriptionId"]]
        assert ts >= log["lapsedAt"], f"lapsed before the grace period ended: {log} at {ts}"
        assert sub.canceled_at is None and not sub.lapsed
        sub.lapsed = True

    def _on_InvoiceIssued(self, log: Log, ts: int) -> None:
        token = ETH if log["token"] == NATIVE else log["token"]
        self.invoices[log["invoiceId"]] = InvoiceAudit(log["merchant"], token, log["amount"])

    def _on_InvoicePaid(self, log: Log, ts: int) -> None:
        invoice = self.invoices[log["invoiceId"]]
        invoice.paid += log["amount"]
        self._flow(invoice.token, log["payer"], invoice.merchant, log["amount"], log["fee"])

    def _on_InvoiceSettledOffchain(self, log: Log, ts: int) -> None:
        self.invoices[log["invoiceId"]].settled += log["amount"]

    def _on_InvoiceRefunded(self, log: Log, ts: int) -> None:
        invoice = self.invoices[log["invoiceId"]]
        invoice.refunded += log["amount"]
        self.books[(invoice.token, invoice.merchant)] -= log["amount"]
        self.books[(invoice.token, log["recipient"])] += log["amount"]

    def _on_InvoiceVoided(self, log: Log, ts: int) -> None:
        invoice = self.invoices[log["invoiceId"]]
        net = invoice.paid + invoice.settled - invoice.refunded
        assert net == 0, f"invoice voided with {net} paid: {log}"
        invoice.voided = True


# =====================================================================  the state machine

PRICES = st.one_of(
    st.sampled_from([10 * UNIT, 1, 39, 40, 41, 999, UNIT, 25 * UNIT]),
    st.integers(min_value=1, max_value=100 * UNIT),
)
UNIT_PRICES = st.one_of(
    st.sampled_from([UNIT // 10, 1, 39, UNIT]), st.integers(min_value=1, max_value=5 * UNIT)
)
PERIODS = st.sampled_from([30 * DAY, HOUR, 6 * HOUR, DAY, 7 * DAY])
TRIALS = st.sampled_from([0, 0, HOUR, 2 * DAY, 14 * DAY])
GRACES = st.sampled_from([3 * DAY, HOUR, DAY, 10 * DAY])
INDEX = st.integers(min_value=0, max_value=PICK)
WALLETS = st.integers(min_value=0, max_value=3)  # index into the payers


def weighted(*choices: tuple[str, int]) -> st.SearchStrategy[str]:
    """Named modes with weights; shrinks towards the first (the ordinary case)."""
    return st.sampled_from([name for name, weight in choices for _ in range(weight)])


MERCHANTS = weighted(("merchant", 3), ("merchant2", 1))
TOKENS = weighted(("tokenA", 3), ("tokenB", 1))
CAPS = weighted(
    ("generous", 10),
    ("price_plus", 10),
    ("exact", 5),
    ("below_price", 1),
    ("zero", 1),
    ("too_large", 1),
)


class BillingMachine(RuleBasedStateMachine):
    def __init__(self, env: Env) -> None:
        super().__init__()
        env.reset_chain()
        self.env = env
        self.world = copy.deepcopy(env.baseline)
        self.audit = Auditor(env)
        self.next_at: int | None = None  # block time of the next transaction, when pinned
        self.record_ids: list[bytes] = []
        self.fiat_refs: list[bytes] = []
        self.references: list[bytes] = []
        self.counter = 0

    # ------------------------------------------------------------- plumbing

    def _fresh(self, prefix: str) -> bytes:
        self.counter += 1
        return keccak(text=f"{prefix}-{self.counter}")

    def _peek_time(self) -> int:
        return self.next_at if self.next_at is not None else self.world.now + 1

    def _tx(
        self,
        sender: str,
        contract: Contract,
        fn: str,
        args: Sequence[Any],
        predict: Callable[[Sim], None],
        *,
        value: int = 0,
    ) -> Outcome:
        at = self._peek_time()
        self.next_at = None
        draft = copy.deepcopy(self.world)
        draft.now = at
        sim = Sim(draft, self.env, sender, contract, at, value)
        expected: tuple[str, Args] | None = None
        try:
            predict(sim)
        except Revert as revert:
            expected = revert.error
        outcome = self.env.driver.transact(sender, contract, fn, args, value=value, at=at)
        call = f"{contract.label}.{fn}({', '.join(_show(arg) for arg in args)}) from {sender[:8]}.. at {at}"
        assert outcome.timestamp == at, f"{call}: mined at {outcome.timestamp}"
        if expected is None:
            assert outcome.ok, (
                f"{call}: the model expected success, the chain reverted with {_error_str(outcome.error)}"
            )
            if outcome.logs != sim.logs:
                actual = "\n    ".join(str(log) for log in outcome.logs)
                model = "\n    ".join(str(log) for log in sim.logs)
                raise AssertionError(
                    f"{call}: logs differ\n  chain:\n    {actual}\n  model:\n    {model}"
                )
            self.world = draft
            label = f"{fn}: ok"
        else:
            assert not outcome.ok, (
                f"{call}: the model expected the revert {_error_str(expected)}, the chain succeeded with "
                + "; ".join(str(log) for log in outcome.logs)
            )
            assert outcome.error == expected, (
                f"{call}: reverted with {_error_str(outcome.error)}, the model expected {_error_str(expected)}"
            )
            self.world.now = at
            label = f"{fn}: {expected[0]}"
        OUTCOMES[label] += 1
        hypothesis_event(label)
        for log in outcome.logs:
            if log.source in (self.env.manager.label, self.env.registry.label):
                OUTCOMES[f"~ event {log.name}"] += 1
        self.world.eth[sender] -= outcome.gas_cost
        self.audit.direct(ETH, sender, -outcome.gas_cost)
        self.audit.feed(outcome.logs, at)
        return outcome

    def _pick_sub(self, index: int, prefer: Callable[[int], bool] | None = None) -> int:
        """A subscription id: mostly one that `prefer` likes, `PICK` for an unknown id."""
        sids = sorted(self.world.subs)
        if index >= PICK or not sids:
            return self.world.sub_count + 1
        if prefer is not None and index < PREFER:
            preferred = [sid for sid in sids if prefer(sid)]
            if preferred:
                return preferred[index % len(preferred)]
        return sids[index % len(sids)]

    def _pick_plan(self, index: int, prefer: Callable[[Plan], bool] | None = None) -> int:
        pids = sorted(self.world.plans)
        if index >= PICK or not pids:
            return self.world.plan_count + 1
        if prefer is not None and index < PREFER:
            preferred = [pid for pid in pids if prefer(self.world.plans[pid])]
            if preferred:
                return preferred[index % len(preferred)]
        return pids[index % len(pids)]

    def _pick_invoice(self, index: int, prefer: Callable[[Invoice], bool] | None = None) -> bytes:
        merchant = self.env.merchant
        if index >= PICK or not self.references:
            return invoice_id_of(merchant, self._fresh("unknown-invoice"))
        iids = [invoice_id_of(merchant, reference) for reference in self.references]
        if prefer is not None and index < PREFER:
            preferred = [iid for iid in iids if prefer(self.world.invoices[iid])]
            if preferred:
                return preferred[index % len(preferred)]
        return iids[index % len(iids)]

    def _token(self, name: str) -> Contract:
        return self.env.tokens[1] if name == "tokenB" else self.env.tokens[0]

    def _token_of(self, address: str) -> Contract:
        return next(token for token in self.env.tokens if token.address == address)

    def _approve(self, owner: str, token: Contract, spender: Contract, value: int) -> None:
        self._tx(
            owner,
            token,
            "approve",
            (spender.address, value),
            lambda s: s.approve(token.address, spender.address, value),
        )

    def _wait_until(self, at: int) -> None:
        """Pins the next transaction to block time `at` (views see the second before); a
        moment already past is left alone."""
        if at - 1 < self.world.now:
            return
        if at - 1 > self.world.now:
            self.env.driver.mine(at - 1)
            self.world.now = at - 1
        self.next_at = at

    def _is_running(self, sid: int) -> bool:
        """Trialing, active or past due: a subscription that can still change."""
        return self.world.status(sid, self.world.now) in (S_TRIALING, S_ACTIVE, S_PAST_DUE)

    def _cap(self, mode: str, price: int, extra: int) -> int:
        return {
            "generous": 2 * price + 200 * UNIT,
            "exact": max(price, 1),
            "below_price": max(price - 1, 0),
            "zero": 0,
            "too_large": MAX_UINT96 + 1,
        }.get(mode, max(price + extra, 1))

    # ---------------------------------------------------------------- plans

    @initialize(
        price=PRICES,
        period=PERIODS,
        trial=TRIALS,
        grace=GRACES,
        base=st.one_of(st.just(0), PRICES),
        unit_price=UNIT_PRICES,
        included=st.integers(min_value=0, max_value=20),
    )
    def initial_plans(
        self,
        price: int,
        period: int,
        trial: int,
        grace: int,
        base: int,
        unit_price: int,
        included: int,
    ) -> None:
        """A flat and a metered plan of the merchant in token A, so rules start at once."""
        for kind, plan_price in (("flat", price), ("metered", base)):
            self.create_plan(
                kind,
                "merchant",
                "tokenA",
                plan_price,
                period,
                trial,
                grace,
                unit_price,
                included,
                "none",
            )

    @precondition(lambda self: len(self.world.plans) < MAX_PLANS)
    @rule(
        kind=weighted(("flat", 1), ("metered", 1)),
        merchant=MERCHANTS,
        token=TOKENS,
        price=PRICES,
        period=PERIODS,
        trial=TRIALS,
        grace=GRACES,
        unit_price=UNIT_PRICES,
        included=st.integers(0, 20),
        bad=weighted(
            ("none", 40),
            ("zero_price", 1),
            ("short_period", 1),
            ("short_grace", 1),
            ("long_trial", 1),
            ("huge_price", 1),
            ("zero_unit_price", 1),
            ("huge_included", 1),
        ),
    )
    def create_plan(
        self,
        kind: str,
        merchant: str,
        token: str,
        price: int,
        period: int,
        trial: int,
        grace: int,
        unit_price: int,
        included: int,
        bad: str,
    ) -> None:
        """Creates a flat or a metered plan (base price 0 allowed for metered plans)."""
        who = self.env.merchant2 if merchant == "merchant2" else self.env.merchant
        price, period, trial, grace, unit_price, included = {
            "zero_price": (0, period, trial, grace, unit_price, included),
            "short_period": (price, HOUR - 1, trial, grace, unit_price, included),
            "short_grace": (price, period, trial, HOUR - 1, unit_price, included),
            "long_trial": (price, period, MAX_PERIOD + 1, grace, unit_price, included),
            "huge_price": (MAX_UINT96 + 1, period, trial, grace, unit_price, included),
            "zero_unit_price": (price, period, trial, grace, 0, included),
            "huge_included": (price, period, trial, grace, unit_price, MAX_UINT64 + 1),
        }.get(bad, (price, period, trial, grace, unit_price, included))
        address = self._token(token).address
        if kind == "flat":
            flat = (address, price, period, trial, grace)
            self._tx(who, self.env.manager, "createPlan", flat, lambda s: s.create_plan(*flat))
        else:
            metered = (address, price, period, trial, grace, unit_price, included)
            self._tx(
                who,
                self.env.manager,
                "createMeteredPlan",
                metered,
                lambda s: s.create_metered_plan(*metered),
            )

    @precondition(lambda self: all(plan.active for plan in self.world.plans.values()))
    @rule(plan=INDEX, who=weighted(("merchant", 2), ("operator", 1), ("keeper", 1)))
    def deactivate_plan(self, plan: int, who: str) -> None:
        pid = self._pick_plan(plan, lambda p: p.active)
        known = self.world.plans.get(pid)
        merchant = known.merchant if known else self.env.merchant
        sender = {"merchant": merchant, "operator": self.env.operator}.get(who, self.env.keeper)
        self._tx(
            sender, self.env.manager, "deactivatePlan", (pid,), lambda s: s.deactivate_plan(pid)
        )

    # -------------------------------------------------------- subscriptions

    @precondition(lambda self: len(self.world.subs) < MAX_SUBS)
    @rule(
        wallet=WALLETS,
        plan=INDEX,
        cap=CAPS,
        extra=st.integers(0, 60 * UNIT),
        allowance=weighted(
            ("periods", 8),
            ("keep", 2),
            ("unlimited", 2),
            ("one_price", 1),
            ("below_price", 1),
            ("zero", 1),
        ),
        periods=st.integers(1, 12),
    )
    def subscribe(
        self, wallet: int, plan: int, cap: str, extra: int, allowance: str, periods: int
    ) -> None:
        who = self.env.payers[wallet]
        pid = self._pick_plan(plan, lambda p: p.active)
        known = self.world.plans.get(pid)
        price = known.price if known else UNIT
        token = self._token_of(known.token) if known else self.env.tokens[0]
        max_amount = self._cap(cap, price, extra)
        approval = {
            "periods": max(price, UNIT) * periods,
            "unlimited": MAX_UINT256,
            "one_price": price,
            "below_price": max(price - 1, 0),
            "zero": 0,
        }.get(allowance)
        if approval is not None:
            self._approve(who, token, self.env.manager, approval)
        args = (pid, max_amount)
        self._tx(who, self.env.manager, "subscribe", args, lambda s: s.subscribe(*args))

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        sub=INDEX,
        wait=weighted(
            ("to_due", 3), ("none", 2), ("into_grace", 2), ("before_due", 1), ("grace_end", 1)
        ),
        offset=st.integers(0, 10 * DAY),
        caller=weighted(("keeper", 3), ("owner", 1), ("subscriber", 1)),
    )
    def charge(self, sub: int, wait: str, offset: int, caller: str) -> None:
        """Charges one subscription, after waiting (or not) for its due time."""
        sid = self._pick_sub(
            sub, lambda sid: self.world.has_next_charge(self.world.subs[sid], self.world.now)
        )
        known = self.world.subs.get(sid)
        if known is not None and wait != "none":
            due = known.paid_through
            grace = self.world.plans[known.plan_id].grace
            self._wait_until(
                {
                    "to_due": due,
                    "into_grace": due + offset % grace,
                    "before_due": due - 1,
                    "grace_end": due + grace,
                }[wait]
            )
        sender = {"keeper": self.env.keeper, "owner": self.env.owner}.get(
            caller, known.subscriber if known else self.env.keeper
        )
        self._tx(sender, self.env.manager, "charge", (sid,), lambda s: s.charge(sid))

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        picks=st.lists(INDEX, min_size=0, max_size=6),
        wait=weighted(("none", 1), ("earliest_due", 1)),
    )
    def charge_batch(self, picks: list[int], wait: str) -> None:
        """Charges a list of ids with duplicates and unknown ids (0, 10**9, the next id)."""
        sids = []
        for index in picks:
            if index == PICK - 1:
                sids.append(0)
            elif index == PICK - 2:
                sids.append(10**9)
            else:
                sids.append(self._pick_sub(index))
        upcoming = [
            self.world.subs[sid].paid_through
            for sid in sids
            if sid in self.world.subs
            and self.world.has_next_charge(self.world.subs[sid], self.world.now)
            and self.world.subs[sid].paid_through > self.world.now
        ]
        if wait == "earliest_due" and upcoming:
            self._wait_until(min(upcoming))
        self._tx(
            self.env.keeper,
            self.env.manager,
            "chargeBatch",
            (sids,),
            lambda s: s.charge_batch(sids),
        )

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        wait=weighted(("earliest_due", 3), ("into_grace", 2), ("none", 1)),
        offset=st.integers(0, 10 * DAY),
        repeat=st.booleans(),
    )
    def keeper_run(self, wait: str, offset: int, repeat: bool) -> None:
        """What a keeper does: wait for the earliest next charge (on the dot or some way into
        its grace period), then charge every subscription in one batch (optionally twice)."""
        upcoming = [
            (sub.paid_through, self.world.plans[sub.plan_id].grace)
            for sub in self.world.subs.values()
            if self.world.has_next_charge(sub, self.world.now)
        ]
        if upcoming and wait != "none":
            due, grace = min(upcoming)
            self._wait_until(due if wait == "earliest_due" else due + offset % grace)
        sids = sorted(self.world.subs) * (2 if repeat else 1)
        self._tx(
            self.env.keeper,
            self.env.manager,
            "chargeBatch",
            (sids,),
            lambda s: s.charge_batch(sids),
        )

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        sub=INDEX,
        who=weighted(("subscriber", 3), ("merchant", 1), ("operator", 1), ("keeper", 1)),
        at_period_end=st.booleans(),
        usage_first=st.integers(0, 12),
    )
    def cancel(self, sub: int, who: str, at_period_end: bool, usage_first: int) -> None:
        """Cancels, now or at period end; with `usage_first` (1-12 units) the merchant first
        reports usage of a metered subscription, which the cancel leaves to one final charge."""
        sid = self._pick_sub(sub, self._is_running)
        known = self.world.subs.get(sid)
        if known is not None and usage_first and self.world.metered(known):
            merchant = self.world.plans[known.plan_id].merchant
            record = self._fresh("usage")
            self.record_ids.append(record)
            usage = (sid, usage_first, record)
            self._tx(
                merchant, self.env.manager, "reportUsage", usage, lambda s: s.report_usage(*usage)
            )
        subscriber = known.subscriber if known else self.env.payers[0]
        merchant = self.world.plans[known.plan_id].merchant if known else self.env.merchant
        sender = {
            "subscriber": subscriber,
            "merchant": merchant,
            "operator": self.env.operator,
        }.get(who, self.env.keeper)
        args = (sid, at_period_end)
        self._tx(sender, self.env.manager, "cancel", args, lambda s: s.cancel(*args))

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        sub=INDEX,
        plan=INDEX,
        cap=CAPS,
        extra=st.integers(0, 60 * UNIT),
        who=weighted(("subscriber", 8), ("keeper", 1)),
        allowance=weighted(("plenty", 3), ("keep", 2), ("zero", 1), ("unlimited", 1)),
    )
    def change_plan(
        self, sub: int, plan: int, cap: str, extra: int, who: str, allowance: str
    ) -> None:
        """Moves a subscription to another plan, mostly one of the same merchant and token."""
        sid = self._pick_sub(
            sub,
            lambda sid: (
                self._is_running(sid)
                and not self.world.subs[sid].cancel_at_end
                and self.world.now + 1 < self.world.subs[sid].paid_through
            ),
        )
        known = self.world.subs.get(sid)
        current = self.world.plans[known.plan_id] if known else None
        pid = self._pick_plan(
            plan,
            lambda p: (
                current is not None
                and p is not current
                and p.active
                and (p.merchant, p.token) == (current.merchant, current.token)
            ),
        )
        target = self.world.plans.get(pid)
        price = target.price if target else UNIT
        max_amount = self._cap(cap, price, extra)
        sender = known.subscriber if known and who == "subscriber" else self.env.keeper
        if known is not None and target is not None and sender == known.subscriber:
            approval = {"plenty": max(price, UNIT) * 4, "zero": 0, "unlimited": MAX_UINT256}.get(
                allowance
            )
            if approval is not None:
                self._approve(sender, self._token_of(target.token), self.env.manager, approval)
        args = (sid, pid, max_amount)
        self._tx(sender, self.env.manager, "changePlan", args, lambda s: s.change_plan(*args))

    @precondition(lambda self: bool(self.world.subs))
    @rule(
        sub=INDEX,
        units=st.integers(1, 40),
        odd=weighted(("none", 20), ("fill_cap", 6), ("zero_units", 1), ("max_units", 1)),
        record=weighted(("fresh", 6), ("last", 1), ("earlier", 1)),
        who=weighted(("merchant", 8), ("operator", 1), ("keeper", 1)),
    )
    def report_usage(self, sub: int, units: int, odd: str, record: str, who: str) -> None:
        """Reports usage, with fresh or reused record ids, mostly on metered subscriptions;
        `fill_cap` reports as many units as the subscriber's cap allows."""
        sid = self._pick_sub(
            sub,
            lambda sid: self.world.metered(self.world.subs[sid]) and self._is_running(sid),
        )
        known = self.world.subs.get(sid)
        merchant = self.world.plans[known.plan_id].merchant if known else self.env.merchant
        sender = {"merchant": merchant, "operator": self.env.operator}.get(who, self.env.keeper)
        units = {"zero_units": 0, "max_units": MAX_UINT64}.get(odd, units)
        if odd == "fill_cap" and known is not None and self.world.metered(known):
            # as many units as the cap allows: the next charge lands on the cap (or just below)
            plan = self.world.plans[known.plan_id]
            allowed = plan.included + max(known.cap - plan.price, 0) // plan.unit_price
            units = max(allowed - known.usage, 1)
        if record != "fresh" and self.record_ids:
            rid = self.record_ids[-1 if record == "last" else units % len(self.record_ids)]
        else:
            rid = self._fresh("usage")
            self.record_ids.append(rid)
        args = (sid, units, rid)
        self._tx(sender, self.env.manager, "reportUsage", args, lambda s: s.report_usage(*args))

    @precondition(lambda self: bool(self.world.subs))
    @rule(sub=INDEX, wait=weighted(("grace_end", 2), ("none", 1), ("before_grace_end", 1)))
    def finalize_lapse(self, sub: int, wait: str) -> None:
        sid = self._pick_sub(sub, lambda sid: self.world.subs[sid].state == ST_LIVE)
        known = self.world.subs.get(sid)
        if known is not None and wait != "none":
            end = self.world.grace_end(known)
            self._wait_until(end if wait == "grace_end" else end - 1)
        self._tx(
            self.env.keeper,
            self.env.manager,
            "finalizeLapse",
            (sid,),
            lambda s: s.finalize_lapse(sid),
        )

    # ----------------------------------------------------- time and funding

    @rule(
        kind=weighted(
            ("span", 2),
            ("short", 2),
            ("due", 3),
            ("due_minus_1", 1),
            ("due_plus_1", 1),
            ("grace_end_minus_1", 1),
            ("grace_end", 1),
        ),
        seconds=st.integers(0, 40 * DAY),
        sub=INDEX,
    )
    def travel(self, kind: str, seconds: int, sub: int) -> None:
        """Moves time on: by up to 40 days or up to 3 hours (views see the new time), or so
        that the next transaction lands on a subscription's due time or grace-period end, give
        or take a second (views see the second before)."""
        if kind in ("span", "short") or not self.world.subs:
            target = self.world.now + (seconds if kind == "span" else seconds % (3 * HOUR))
            self.env.driver.mine(target)
            self.world.now = target
            self.next_at = None
            return
        known = self.world.subs[sorted(self.world.subs)[sub % len(self.world.subs)]]
        due, grace_end = known.paid_through, self.world.grace_end(known)
        self._wait_until(
            {
                "due": due,
                "due_minus_1": due - 1,
                "due_plus_1": due + 1,
                "grace_end_minus_1": grace_end - 1,
                "grace_end": grace_end,
            }[kind]
        )

    @rule(
        action=weighted(("allowance", 2), ("drain", 1), ("top_up", 1)),
        wallet=WALLETS,
        token=TOKENS,
        spender=weighted(("manager", 2), ("registry", 1)),
        mode=weighted(("zero", 2), ("amount", 2), ("tenth", 1), ("large", 1), ("unlimited", 1)),
        amount=st.integers(0, 1000 * UNIT),
    )
    def funding(
        self, action: str, wallet: int, token: str, spender: str, mode: str, amount: int
    ) -> None:
        """Funding gaps and their repair: an allowance revoked, cut or raised; a payer's
        balance moved away down to `amount % 30 units`; or a top-up from the faucet."""
        who = self.env.payers[wallet]
        contract = self._token(token)
        if action == "allowance":
            value = {
                "zero": 0,
                "amount": amount // 20,
                "tenth": amount // 200,
                "large": 1000 * UNIT,
                "unlimited": MAX_UINT256,
            }[mode]
            target = self.env.registry if spender == "registry" else self.env.manager
            self._approve(who, contract, target, value)
        elif action == "drain":
            moved = self.world.balances.get((contract.address, who), 0) - amount % (30 * UNIT)
            if moved <= 0:
                return
            sink = self.env.owner
            self._tx(
                who,
                contract,
                "transfer",
                (sink, moved),
                lambda s: s.transfer(contract.address, sink, moved),
            )
            self.audit.direct(contract.address, who, -moved)
            self.audit.direct(contract.address, sink, moved)
        else:
            minted = max(amount, 1)
            self._tx(
                self.env.owner,
                contract,
                "mint",
                (who, minted),
                lambda s: s.mint(contract.address, who, minted),
            )
            self.audit.direct(contract.address, who, minted)
            self.audit.minted[contract.address] += minted

    # ------------------------------------------------------------- invoices

    @precondition(lambda self: len(self.world.invoices) < MAX_INVOICES)
    @rule(
        who=weighted(("merchant", 5), ("operator", 2), ("keeper", 1)),
        customer=st.integers(0, 4),
        asset=weighted(("tokenA", 3), ("tokenB", 1), ("eth", 2)),
        amount=st.integers(1, 200 * UNIT),
        due_in=st.integers(0, 60 * DAY),
        partial=st.booleans(),
        bad=weighted(
            ("none", 36),
            ("zero_amount", 1),
            ("huge_amount", 1),
            ("past_due_date", 1),
            ("reused_reference", 1),
            ("far_due_date", 1),
            ("zero_token", 1),
        ),
    )
    def issue(
        self,
        who: str,
        customer: int,
        asset: str,
        amount: int,
        due_in: int,
        partial: bool,
        bad: str,
    ) -> None:
        """Issues an invoice in token A, token B or ETH (customer 4: a payment link)."""
        merchant = self.env.merchant
        sender = {"merchant": merchant, "operator": self.env.operator}.get(who, self.env.keeper)
        billed = self.env.payers[customer] if customer < 4 else ZERO
        token = NATIVE if asset == "eth" else self._token(asset).address
        if token == NATIVE:
            amount *= 10**9  # up to 0.2 ETH
        at = self._peek_time()
        due_date = at + due_in
        reference = self._fresh("INV")
        if bad == "zero_amount":
            amount = 0
        elif bad == "huge_amount":
            amount = MAX_UINT96 + 1
        elif bad == "past_due_date":
            due_date = at - 1 - due_in % DAY
        elif bad == "reused_reference" and self.references:
            reference = self.references[due_in % len(self.references)]
        elif bad == "far_due_date":
            due_date = MAX_UINT40 + 1
        elif bad == "zero_token":
            token = ZERO
        args = (merchant, reference, billed, token, amount, due_date, partial, keccak(reference))
        if self._tx(sender, self.env.registry, "issue", args, lambda s: s.issue(*args)).ok:
            self.references.append(reference)

    def _amount(self, mode: str, due: int, part: int) -> int:
        return {
            "part": 1 + part % (due - 1) if due > 1 else due,
            "over_due": due + 1,
            "zero": 0,
            "one": 1,
        }.get(mode, due)

    @precondition(lambda self: bool(self.references))
    @rule(
        invoice=INDEX,
        payer=WALLETS,
        amount=weighted(
            ("due", 6), ("part", 5), ("over_due", 1), ("zero", 1), ("wrong_asset", 1), ("one", 1)
        ),
        part=st.integers(0, 10**12),
        approve=weighted(("amount", 8), ("keep", 1), ("short", 1)),
    )
    def pay(self, invoice: int, payer: int, amount: str, part: int, approve: str) -> None:
        """Pays an invoice on-chain (ETH invoices with payEth); `wrong_asset` swaps the two."""
        iid = self._pick_invoice(invoice, lambda i: i.due != 0)
        who = self.env.payers[payer]
        known = self.world.invoices.get(iid)
        reference = known.reference if known else self._fresh("unknown-invoice")
        token = known.token if known else self.env.tokens[0].address
        value = self._amount(amount, known.due if known else UNIT, part)
        use_eth = (token == NATIVE) != (amount == "wrong_asset")
        if not use_eth and token != NATIVE and approve != "keep":
            allowed = value if approve == "amount" else max(value - 1, 0)
            self._approve(who, self._token_of(token), self.env.registry, allowed)
        merchant = self.env.merchant
        if use_eth:
            eth_args = (merchant, reference)
            self._tx(
                who,
                self.env.registry,
                "payEth",
                eth_args,
                lambda s: s.pay_eth(*eth_args),
                value=value,
            )
        else:
            args = (merchant, reference, value)
            self._tx(who, self.env.registry, "pay", args, lambda s: s.pay(*args))

    @precondition(lambda self: bool(self.references))
    @rule(
        invoice=INDEX,
        amount=weighted(("paid", 5), ("part", 4), ("over_paid", 1), ("zero", 1)),
        part=st.integers(0, 10**12),
        recipient=st.integers(0, 12),
        who=weighted(("merchant", 12), ("operator", 1)),
        value=weighted(("matching", 16), ("off_by_one", 1)),
    )
    def refund(
        self, invoice: int, amount: str, part: int, recipient: int, who: str, value: str
    ) -> None:
        """Refunds part or all of what was paid (recipient 12: the zero address)."""
        iid = self._pick_invoice(invoice, lambda i: i.amount != i.due and not i.voided)
        known = self.world.invoices.get(iid)
        paid = known.amount - known.due if known and not known.voided else 0
        refund = {
            "part": 1 + part % (paid - 1) if paid > 1 else paid,
            "over_paid": paid + 1,
            "zero": 0,
        }.get(amount, paid)
        to = self.env.payers[recipient % 4] if recipient < 12 else ZERO
        sender = self.env.operator if who == "operator" else self.env.merchant
        sent = (refund if known and known.token == NATIVE else 0) + (value == "off_by_one")
        args = (iid, to, refund)
        self._tx(sender, self.env.registry, "refund", args, lambda s: s.refund(*args), value=sent)

    @precondition(lambda self: bool(self.references))
    @rule(
        invoice=INDEX,
        amount=weighted(("due", 6), ("part", 5), ("over_due", 1), ("zero", 1), ("one", 1)),
        part=st.integers(0, 10**12),
        fiat=weighted(("fresh", 5), ("last", 1), ("earlier", 1)),
        who=weighted(("merchant", 3), ("settler", 2), ("keeper", 1)),
    )
    def settle_offchain(self, invoice: int, amount: str, part: int, fiat: str, who: str) -> None:
        """Records an off-chain payment, with fresh or reused fiat references."""
        iid = self._pick_invoice(invoice, lambda i: i.due != 0)
        known = self.world.invoices.get(iid)
        value = self._amount(amount, known.due if known else UNIT, part)
        sender = {"merchant": self.env.merchant, "settler": self.env.operator}.get(
            who, self.env.keeper
        )
        if fiat != "fresh" and self.fiat_refs:
            fiat_reference = self.fiat_refs[-1 if fiat == "last" else part % len(self.fiat_refs)]
        else:
            fiat_reference = self._fresh("fiat")
            self.fiat_refs.append(fiat_reference)
        args = (iid, value, fiat_reference)
        self._tx(sender, self.env.registry, "settleOffchain", args, lambda s: s.settle(*args))

    @precondition(lambda self: bool(self.references))
    @rule(invoice=INDEX, who=weighted(("merchant", 3), ("operator", 1), ("keeper", 1)))
    def void(self, invoice: int, who: str) -> None:
        iid = self._pick_invoice(invoice, lambda i: not i.voided)
        sender = {"merchant": self.env.merchant, "operator": self.env.operator}.get(
            who, self.env.keeper
        )
        self._tx(sender, self.env.registry, "voidInvoice", (iid,), lambda s: s.void(iid))

    # ----------------------------------------------------------- invariants

    @invariant()
    def chain_agrees(self) -> None:
        env, world = self.env, self.world
        manager, registry = env.manager, env.registry
        holders = (*env.accounts, manager.address, registry.address)
        read = Reader()
        latest = read.latest_timestamp()
        supply = {token.address: read.call(token, "totalSupply") for token in env.tokens}
        balances = {
            (token.address, holder): read.call(token, "balanceOf", holder)
            for token in env.tokens
            for holder in holders
        }
        allowances = {
            (token.address, owner, spender.address): read.call(
                token, "allowance", owner, spender.address
            )
            for token in env.tokens
            for owner in (*env.payers, env.merchant)
            for spender in (manager, registry)
        }
        eth = {holder: read.eth_balance(holder) for holder in holders}
        counts = (read.call(manager, "planCount"), read.call(manager, "subscriptionCount"))
        plans = {pid: read.call(manager, "getPlan", pid) for pid in world.plans}
        subs = {
            sid: (
                read.call(manager, "statusOf", sid),
                read.call(manager, "paidThrough", sid),
                read.call(manager, "nextChargeAt", sid),
                read.call(manager, "amountDue", sid),
                read.call(manager, "getSubscription", sid),
            )
            for sid in [*world.subs, world.sub_count + 1]
        }
        invoices = {
            iid: (
                read.call(registry, "getInvoice", iid),
                read.call(registry, "amountDue", iid),
                read.call(registry, "statusOf", iid),
                read.call(registry, "isOverdue", iid),
            )
            for iid in world.invoices
        }
        got = read.run(env.rpc)
        now = world.now
        assert got[latest] == now, f"latest block at {got[latest]}, the model says {now}"

        # 5. token conservation; the contracts hold no tokens and no ETH
        for token in env.tokens:
            total = got[supply[token.address]]
            assert total == world.supply[token.address], f"{token.label}: supply {total}"
            held = sum(got[balances[(token.address, holder)]] for holder in holders)
            assert held == total, f"{token.label}: balances sum to {held}, total supply is {total}"
            for contract in (manager, registry):
                assert got[balances[(token.address, contract.address)]] == 0, (
                    f"{contract.label} holds {token.label}"
                )
        for contract in (manager, registry):
            assert got[eth[contract.address]] == 0, f"{contract.label} holds ETH"

        # 6. every balance change matches the books rebuilt from the events
        base = env.baseline
        for token in env.tokens:
            assert (
                base.supply[token.address] + self.audit.minted[token.address]
                == got[supply[token.address]]
            ), f"{token.label}: supply moved without a mint"
            for holder in holders:
                change = got[balances[(token.address, holder)]] - base.balances.get(
                    (token.address, holder), 0
                )
                booked = self.audit.books[(token.address, holder)]
                assert change == booked, (
                    f"{token.label} balance of {holder}: changed by {change}, books say {booked}"
                )
        for holder in holders:
            change = got[eth[holder]] - base.eth.get(holder, 0)
            booked = self.audit.books[(ETH, holder)]
            assert change == booked, (
                f"ETH balance of {holder}: changed by {change}, books say {booked}"
            )
        if env.fee_bps == 0:
            for asset in (*(token.address for token in env.tokens), ETH):
                booked = self.audit.books[(asset, env.fee_wallet)]
                assert booked == 0, f"no fee deployed, yet the fee wallet booked {booked} {asset}"

        # the model's ledger: balances and allowances
        for key, index in balances.items():
            assert got[index] == world.balances.get(key, 0), f"balance {key}: {got[index]}"
        for allowance_key, index in allowances.items():
            assert got[index] == world.allowances.get(allowance_key, 0), (
                f"allowance {allowance_key}: {got[index]}"
            )
        for holder, index in eth.items():
            assert got[index] == world.eth.get(holder, 0), f"ETH of {holder}: {got[index]}"

        # 8. views agree with the model
        assert (got[counts[0]], got[counts[1]]) == (world.plan_count, world.sub_count)
        for pid, index in plans.items():
            plan = world.plans[pid]
            expected_plan = (
                plan.merchant,
                plan.period,
                plan.trial,
                plan.grace,
                plan.token,
                plan.price,
                plan.unit_price,
                plan.included,
                plan.active,
            )
            assert got[index] == expected_plan, f"plan {pid}: {got[index]} != {expected_plan}"
        for sid, (status_i, paid_i, next_i, due_i, stored_i) in subs.items():
            status, paid_through, next_at, due = got[status_i], got[paid_i], got[next_i], got[due_i]
            where = f"subscription {sid} at {now}"
            sub = world.subs.get(sid)
            if sub is None:
                assert (status, paid_through, next_at, due) == (S_NONE, 0, 0, 0), where
                continue
            expected_status = world.status(sid, now)
            assert status == expected_status, (
                f"{where}: statusOf {STATUS_NAMES[status]}, the model says {STATUS_NAMES[expected_status]}"
            )
            assert paid_through == sub.paid_through, (
                f"{where}: paidThrough {paid_through} != {sub.paid_through}"
            )
            has_next = world.has_next_charge(sub, now)
            expected_next = sub.paid_through if has_next else 0
            assert next_at == expected_next, f"{where}: nextChargeAt {next_at} != {expected_next}"
            expected_due = world.next_charge(sub)[0] if has_next else 0
            assert due == expected_due, f"{where}: amountDue {due} != {expected_due}"
            stored = (
                sub.subscriber,
                sub.paid_through,
                sub.plan_id,
                sub.state,
                world.flags(sub),
                sub.cap,
                sub.credit,
                sub.usage,
            )
            assert got[stored_i] == stored, f"{where}: stored {got[stored_i]} != model {stored}"
            audit = self.audit.subs[sid]
            audit.seen_status.add(status)
            # 4. after the final usage charge the subscription is canceled for good
            if audit.final_charged:
                assert status == S_CANCELED and sub.state == ST_CANCELED, (
                    f"{where}: final charge, not canceled"
                )
            if audit.lapsed:
                assert status == S_LAPSED, f"{where}: lapsed, statusOf {STATUS_NAMES[status]}"
            # 2. the next charge stays within the cap
            assert expected_due <= sub.cap, (
                f"{where}: next charge {expected_due} above the cap {sub.cap}"
            )

        # 7. invoices: paid = payments + settlements - refunds <= amount; void pays nothing
        for iid, (invoice_i, due_i, status_i, overdue_i) in invoices.items():
            (merchant, customer, token, amount, paid, due_date, partial, voided) = got[invoice_i]
            known = world.invoices[iid]
            audit_invoice = self.audit.invoices[iid]
            where = f"invoice 0x{iid.hex()[:10]}"
            net = audit_invoice.paid + audit_invoice.settled - audit_invoice.refunded
            assert (merchant, customer, token, amount, due_date, partial, voided) == (
                known.merchant,
                known.customer,
                known.token,
                known.amount,
                known.due_date,
                known.allow_partial,
                known.voided,
            ), f"{where}: stored fields"
            assert voided == audit_invoice.voided
            assert amount == audit_invoice.amount
            if voided:
                assert paid == 0 and net == 0, f"{where}: void with paid {paid} (events {net})"
                assert got[due_i] == 0, f"{where}: void with amountDue {got[due_i]}"
                assert got[status_i] == I_VOID
            else:
                assert paid == net, f"{where}: paid {paid}, events say {net}"
                assert 0 <= paid <= amount, f"{where}: paid {paid} of {amount}"
                assert got[due_i] == amount - paid, (
                    f"{where}: amountDue {got[due_i]} != {amount} - {paid}"
                )
                expected = I_OPEN if paid == 0 else I_PAID if paid == amount else I_PARTIAL
                assert got[status_i] == expected, f"{where}: status {got[status_i]} != {expected}"
            assert paid == known.amount - known.due if not voided else known.due == 0
            assert got[overdue_i] == (known.due != 0 and now > known.due_date), (
                f"{where}: isOverdue"
            )


# ============================================================================  the test


def _settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=False,
        database=DirectoryBasedExampleDatabase(
            str(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis" / "invariants")
        ),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
        print_blob=True,
    )


def _baseline(env_parts: dict[str, Any], rpc: Rpc) -> World:
    manager: Contract = env_parts["manager"]
    registry: Contract = env_parts["registry"]
    tokens: tuple[Contract, Contract] = env_parts["tokens"]
    accounts: tuple[str, ...] = env_parts["accounts"]
    holders = (*accounts, manager.address, registry.address)
    read = Reader()
    latest = read.latest_timestamp()
    counts = (read.call(manager, "planCount"), read.call(manager, "subscriptionCount"))
    supply = {token.address: read.call(token, "totalSupply") for token in tokens}
    balances = {
        (token.address, holder): read.call(token, "balanceOf", holder)
        for token in tokens
        for holder in holders
    }
    allowances = {
        (token.address, owner, spender.address): read.call(
            token, "allowance", owner, spender.address
        )
        for token in tokens
        for owner in accounts
        for spender in (manager, registry)
    }
    eth = {holder: read.eth_balance(holder) for holder in holders}
    got = read.run(rpc)
    return World(
        now=got[latest],
        plan_count=got[counts[0]],
        sub_count=got[counts[1]],
        balances={key: got[index] for key, index in balances.items()},
        allowances={key: got[index] for key, index in allowances.items()},
        supply={key: got[index] for key, index in supply.items()},
        eth={key: got[index] for key, index in eth.items()},
    )


@pytest.mark.parametrize("with_fee", [True, False], ids=["fee", "no-fee"])
def test_billing_invariants(
    with_fee: bool,
    chain: Any,
    project: Any,
    accounts: Any,
    token: Any,
    subscriptions: Any,
    subscriptions_with_fee: Any,
    invoices: Any,
    invoices_with_fee: Any,
    owner: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    keeper: Any,
    fee_recipient: Any,
    operator: Any,
    payer: Any,
) -> None:
    # All four deployments are requested as fixtures (not with `request.getfixturevalue`): a
    # session fixture first built inside a test would be reverted with the test's snapshot
    # while pytest keeps it cached for the tests that follow.
    ape_manager = subscriptions_with_fee if with_fee else subscriptions
    ape_registry = invoices_with_fee if with_fee else invoices
    merchant2, extra_payer = accounts[8], accounts[9]

    # Setup, once per test: a second token, funds, operator, settler, merchant allowances.
    second = owner.deploy(project.MockStablecoin, "Second USD", "SUSD")
    for wallet in (merchant, merchant2, customer, stranger, payer, extra_payer):
        second.mint(wallet, FUNDS, sender=owner)
    for wallet in (merchant2, extra_payer):
        token.mint(wallet, FUNDS, sender=owner)
    ape_manager.setOperator(operator, True, sender=merchant)
    ape_registry.setOperator(operator, True, sender=merchant)
    ape_registry.setSettler(operator, True, sender=merchant)
    token.approve(ape_registry, 10**30, sender=merchant)
    second.approve(ape_registry, MAX_UINT256, sender=merchant)

    manager = Contract.of("manager", ape_manager)
    registry = Contract.of("registry", ape_registry)
    tokens = (Contract.of("tokenA", token), Contract.of("tokenB", second))
    rpc = Rpc(chain.provider.uri)
    address = {
        name: str(account.address).lower()
        for name, account in {
            "owner": owner,
            "merchant": merchant,
            "customer": customer,
            "stranger": stranger,
            "keeper": keeper,
            "fee_recipient": fee_recipient,
            "operator": operator,
            "payer": payer,
            "merchant2": merchant2,
            "extra_payer": extra_payer,
        }.items()
    }
    everyone = tuple(str(account.address).lower() for account in accounts)
    fee_bps, recipient = (
        int(ape_manager.platformFee()[0]),
        str(ape_manager.platformFee()[1]).lower(),
    )
    assert (fee_bps, recipient) == (
        int(ape_registry.platformFee()[0]),
        str(ape_registry.platformFee()[1]).lower(),
    )
    assert fee_bps == (FEE_BPS if with_fee else 0)
    assert recipient == (address["fee_recipient"] if with_fee else ZERO)
    parts: dict[str, Any] = {
        "manager": manager,
        "registry": registry,
        "tokens": tokens,
        "accounts": everyone,
    }
    baseline = _baseline(parts, rpc)
    env = Env(
        rpc=rpc,
        driver=Driver(rpc, [manager, registry, *tokens]),
        chain=chain,
        manager=manager,
        registry=registry,
        tokens=tokens,
        fee_bps=fee_bps,
        fee_recipient=recipient,
        fee_wallet=address["fee_recipient"],
        owner=address["owner"],
        merchant=address["merchant"],
        merchant2=address["merchant2"],
        operator=address["operator"],
        keeper=address["keeper"],
        payers=(address["customer"], address["stranger"], address["payer"], address["extra_payer"]),
        accounts=everyone,
        operators=frozenset(
            {
                ("manager", address["merchant"], address["operator"]),
                ("registry", address["merchant"], address["operator"]),
            }
        ),
        settlers=frozenset({(address["merchant"], address["operator"])}),
        baseline=baseline,
        snapshot=[chain.snapshot()],
    )
    OUTCOMES.clear()
    # Hypothesis documents a zero-argument factory here; its stub only names the class.
    run_state_machine_as_test(cast(Any, lambda: BillingMachine(env)), settings=_settings())
    print(f"\n{'fee' if with_fee else 'no-fee'}: {EXAMPLES} examples x {STEPS} steps; outcomes:")
    for label, count in sorted(OUTCOMES.items()):
        print(f"  {count:6d}  {label}")
