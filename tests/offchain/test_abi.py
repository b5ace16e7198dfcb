"""The checked-in ABIs are exactly what the compiler produces."""

from __future__ import annotations

import json

import pytest

from offchain.abi import EXPORTED_CONTRACTS, load_abi
from tools.export_abi import compiled_abi


def canonical(abi: list[dict[str, object]]) -> list[str]:
    return sorted(json.dumps(entry, sort_keys=True) for entry in abi)


@pytest.mark.parametrize("name", EXPORTED_CONTRACTS)
def test_exported_abi_matches_the_compiler_output(name: str) -> None:
    assert canonical(load_abi(name)) == canonical(compiled_abi(name)), (
        f"offchain/abi/{name}.json is stale: run `make abi`"
    )


def test_every_event_the_mirror_needs_is_exported() -> None:
    events = {
        entry["name"] for entry in load_abi("SubscriptionManager") if entry["type"] == "event"
    }
    assert {
        "PlanCreated",
        "Subscribed",
        "Charged",
        "ChargeFailed",
        "SubscriptionCanceled",
    } <= events
    events = {entry["name"] for entry in load_abi("InvoiceRegistry") if entry["type"] == "event"}
    assert {"InvoiceIssued", "InvoicePaid", "InvoiceRefunded", "InvoiceSettledOffchain"} <= events


def test_unknown_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="no exported ABI"):
        load_abi("MockStablecoin")
