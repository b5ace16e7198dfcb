"""Fixtures of the keeper tests: the indexer's (node URL, mirrors), the keeper's key, and
a factory of keepers over the mirror of the fee-less deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from offchain.indexer.rpc import RpcClient
from offchain.keeper.chain import Chain
from offchain.keeper.keeper import Keeper, KeeperConfig
from tests.offchain.indexer.conftest import (  # noqa: F401
    mirror,
    other_database_url,
    other_engine,
    rpc_url,
    web3,
)
from tests.offchain.indexer.helpers import Mirror


@pytest.fixture
def keeper_key(keeper: Any) -> str:
    """The private key of the `keeper` test account (Anvil's dev mnemonic)."""
    return str(keeper.private_key)


@pytest.fixture
def second_keeper_key(accounts: Any) -> str:
    return str(accounts[8].private_key)


@pytest.fixture
def make_keeper(mirror: Mirror, keeper_key: str) -> Iterator[Callable[..., Keeper]]:  # noqa: F811
    """Keeper(config overrides, key=..., sender_idle=...) over `mirror`; each with an RPC
    session of its own."""
    clients: list[RpcClient] = []

    def make(
        key: str | None = None, engine: Any = None, sender_idle: Any = None, **overrides: Any
    ) -> Keeper:
        rpc = RpcClient(mirror.rpc_url)
        clients.append(rpc)
        values: dict[str, Any] = {
            "chain_id": mirror.chain_id,
            "manager": mirror.manager,
            "confirmations": 1,
            "min_priority_fee": 1,
        }
        values.update(overrides)
        chain = Chain(rpc, mirror.chain_id, mirror.manager, key or keeper_key)
        return Keeper(
            engine or mirror.engine, chain, KeeperConfig(**values), sender_idle=sender_idle
        )

    yield make
    for client in clients:
        client.close()
