"""Small helpers the contract tests share: reading a receipt's logs, balances, time travel."""

from __future__ import annotations

from typing import Any


def logs_of(receipt: Any, contract: Any, name: str) -> list[Any]:
    """The logs named `name` that `contract` emitted in `receipt`."""
    return [
        log
        for log in receipt.events
        if log.event_name == name and log.contract_address == contract.address
    ]


def event_names(receipt: Any, contract: Any) -> list[str]:
    """The names of the logs `contract` emitted in `receipt`, in order."""
    return [log.event_name for log in receipt.events if log.contract_address == contract.address]


def only(receipt: Any, contract: Any, name: str) -> Any:
    """The one log named `name` that `contract` emitted in `receipt`."""
    logs = logs_of(receipt, contract, name)
    assert len(logs) == 1, f"expected one {name}, got {len(logs)}"
    return logs[0]


def travel(chain: Any, timestamp: int) -> None:
    """Mines a block at `timestamp`, so that views see that time."""
    chain.pending_timestamp = timestamp
    chain.mine()


def balances(token: Any, *wallets: Any) -> list[int]:
    return [int(token.balanceOf(wallet)) for wallet in wallets]
