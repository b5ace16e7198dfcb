"""Decoding of chainbill's logs, driven by the checked-in ABIs.

Every chainbill event has only static parameters (integers, addresses, booleans, bytes32),
so each one is a fixed 32-byte word: decoding slices hex instead of going through a generic
ABI decoder, which is what lets the indexer keep pace with `eth_getLogs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from offchain.abi import load_abi


class DecodeError(ValueError):
    """A log that does not match the event its first topic names."""


def _uint(word: str) -> int:
    return int(word, 16)


def _address(word: str) -> str:
    return "0x" + word[24:]


def _bytes32(word: str) -> str:
    return "0x" + word


def _bool(word: str) -> bool:
    return int(word, 16) != 0


def _decoder_for(abi_type: str) -> Callable[[str], Any]:
    if abi_type.startswith(("uint", "int")):
        if abi_type.startswith("int"):
            raise ValueError("signed integers are not used by chainbill's events")
        return _uint
    if abi_type == "address":
        return _address
    if abi_type == "bytes32":
        return _bytes32
    if abi_type == "bool":
        return _bool
    raise ValueError(
        f"event parameter type {abi_type!r} is not static; the fast decoder cannot read it"
    )


@dataclass(frozen=True)
class EventSpec:
    name: str
    signature: str
    topic0: str
    indexed: tuple[tuple[str, Callable[[str], Any]], ...]
    data: tuple[tuple[str, Callable[[str], Any]], ...]


@dataclass(frozen=True)
class DecodedLog:
    contract: str
    event: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    topics: list[str]
    data: str


def _specs(contract_name: str) -> dict[str, EventSpec]:
    specs = {}
    for entry in load_abi(contract_name):
        if entry["type"] != "event":
            continue
        types = ",".join(i["type"] for i in entry["inputs"])
        signature = f"{entry['name']}({types})"
        topic0 = "0x" + keccak(text=signature).hex()
        specs[topic0] = EventSpec(
            name=entry["name"],
            signature=signature,
            topic0=topic0,
            indexed=tuple(
                (i["name"], _decoder_for(i["type"])) for i in entry["inputs"] if i["indexed"]
            ),
            data=tuple(
                (i["name"], _decoder_for(i["type"])) for i in entry["inputs"] if not i["indexed"]
            ),
        )
    return specs


class EventDecoder:
    """Decodes raw JSON-RPC logs of the SubscriptionManager and InvoiceRegistry."""

    def __init__(self) -> None:
        self._by_topic: dict[str, EventSpec] = {}
        for name in ("SubscriptionManager", "InvoiceRegistry"):
            self._by_topic.update(_specs(name))

    @property
    def topics(self) -> list[str]:
        return sorted(self._by_topic)

    def decode(self, log: dict[str, Any]) -> DecodedLog | None:
        """The decoded log, or None for a log of an event chainbill does not know."""
        topics: list[str] = log["topics"]
        if not topics:
            return None
        spec = self._by_topic.get(topics[0])
        if spec is None:
            return None
        data: str = log["data"]
        body = data[2:]
        if len(topics) != len(spec.indexed) + 1 or len(body) != 64 * len(spec.data):
            raise DecodeError(
                f"{spec.signature} log {log['transactionHash']}#{log['logIndex']} has "
                f"{len(topics) - 1} indexed and {len(body) // 64} data words"
            )
        args: dict[str, Any] = {}
        for (name, decode), topic in zip(spec.indexed, topics[1:], strict=True):
            args[name] = decode(topic[2:])
        for n, (name, decode) in enumerate(spec.data):
            args[name] = decode(body[64 * n : 64 * (n + 1)])
        return DecodedLog(
            contract=log["address"].lower(),
            event=spec.name,
            args=args,
            block_number=int(log["blockNumber"], 16),
            block_hash=log["blockHash"],
            tx_hash=log["transactionHash"],
            log_index=int(log["logIndex"], 16),
            topics=topics,
            data=data,
        )
