"""Decoding of chainbill's logs, driven by the checked-in ABIs.

Every chainbill event has only static parameters (integers, addresses, booleans, bytes32),
so each one is a fixed 32-byte word: decoding slices hex instead of going through a generic
ABI decoder, which is what lets the indexer keep pace with `eth_getLogs`. For each event the
ABI is turned once into one small function that builds the arguments' dict in a single
expression (no per-word calls), and a log is decoded into one slotted record that carries
everything the raw event log, the facts and the projections need: the block number and log
index are parsed from hex once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from offchain.abi import load_abi

# The event name recorded in the raw event log for a log no ABI of chainbill describes.
UNKNOWN_EVENT = "?"


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


# How each static type is read from a 64-digit hex word held in `w` (no 0x).
_WORD_EXPRESSIONS: dict[Callable[[str], Any], str] = {
    _uint: "int({w}, 16)",
    _address: "'0x' + {w}[24:]",
    _bytes32: "'0x' + {w}",
    _bool: "int({w}, 16) != 0",
}


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

    def args_reader(self) -> Callable[[list[str], str], dict[str, Any]]:
        """A function (topics, 0x-data) -> the arguments' dict, built from the ABI as one
        dict display: `{"subscriptionId": int(topics[1][2:], 16), "amount": ...}`. The names
        and types come from the checked-in ABI and are checked before they are compiled."""
        items = []
        for n, (name, decode) in enumerate(self.indexed):
            items.append((name, decode, f"topics[{n + 1}][2:]"))
        for n, (name, decode) in enumerate(self.data):
            items.append((name, decode, f"data[{2 + 64 * n}:{2 + 64 * (n + 1)}]"))
        parts = []
        for name, decode, word in items:
            if not name.isidentifier():
                raise ValueError(f"{self.signature}: parameter name {name!r} is not an identifier")
            parts.append(f"{name!r}: " + _WORD_EXPRESSIONS[decode].format(w=word))
        reader: Callable[[list[str], str], dict[str, Any]] = eval(
            f"lambda topics, data: {{{', '.join(parts)}}}", {"__builtins__": {"int": int}}
        )
        return reader


@dataclass(slots=True)
class DecodedLog:
    """One log, decoded. `event` is `UNKNOWN_EVENT` (and `args` empty) for a log of an event
    chainbill does not know; `block_time` is the log's own `blockTimestamp` when the node
    sends one (None otherwise: the block's header then gives it)."""

    contract: str
    event: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    topics: list[str]
    data: str
    block_time: int | None = None


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


# topic0 -> (event name, arguments reader, number of topics, length of the 0x-data)
_Reader = tuple[str, Callable[[list[str], str], dict[str, Any]], int, int, EventSpec]


class EventDecoder:
    """Decodes raw JSON-RPC logs of the SubscriptionManager and InvoiceRegistry. Stateless
    once built: one decoder may serve several threads."""

    def __init__(self) -> None:
        self._by_topic: dict[str, EventSpec] = {}
        for name in ("SubscriptionManager", "InvoiceRegistry"):
            self._by_topic.update(_specs(name))
        self._readers: dict[str, _Reader] = {
            topic0: (
                spec.name,
                spec.args_reader(),
                len(spec.indexed) + 1,
                2 + 64 * len(spec.data),
                spec,
            )
            for topic0, spec in self._by_topic.items()
        }

    @property
    def topics(self) -> list[str]:
        return sorted(self._by_topic)

    def decode(self, log: dict[str, Any]) -> DecodedLog | None:
        """The decoded log, or None for a log of an event chainbill does not know."""
        decoded = self.decode_all([log])[0]
        return None if decoded.event == UNKNOWN_EVENT else decoded

    def decode_all(self, logs: Iterable[dict[str, Any]]) -> list[DecodedLog]:
        """Every log decoded, in order; logs of events chainbill does not know come back with
        `UNKNOWN_EVENT` (the raw event log keeps them too)."""
        readers = self._readers
        out: list[DecodedLog] = []
        append = out.append
        for log in logs:
            topics: list[str] = log["topics"]
            data: str = log["data"]
            reader = readers.get(topics[0]) if topics else None
            if reader is None:
                event, args = UNKNOWN_EVENT, {}
            else:
                event, read, topic_count, data_length, spec = reader
                if len(topics) != topic_count or len(data) != data_length:
                    raise DecodeError(
                        f"{spec.signature} log {log['transactionHash']}#{log['logIndex']} has "
                        f"{len(topics) - 1} indexed and {(len(data) - 2) // 64} data words"
                    )
                args = read(topics, data)
            timestamp = log.get("blockTimestamp")
            append(
                DecodedLog(
                    log["address"].lower(),
                    event,
                    args,
                    int(log["blockNumber"], 16),
                    log["blockHash"],
                    log["transactionHash"],
                    int(log["logIndex"], 16),
                    topics,
                    data,
                    None if timestamp is None else int(timestamp, 16),
                )
            )
        return out
