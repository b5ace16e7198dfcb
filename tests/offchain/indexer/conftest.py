"""Fixtures of the indexer tests: the node's URL, mirrors of the fixture deployments, and a
second empty database (same kind as the first) to index the canonical chain into afresh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from web3 import Web3

from offchain.db.engine import make_engine, upgrade_schema
from tests.chain_fixtures import FEE_BPS
from tests.db_fixtures import (
    POSTGRES_ADMIN_URL,
    _drop_postgres_database,
    _fresh_postgres_database,
)
from tests.offchain.indexer.helpers import Mirror, make_manifest


@pytest.fixture
def rpc_url(chain: Any) -> str:
    """The URL of the Anvil that Ape started for the session."""
    return str(chain.provider.uri)


@pytest.fixture
def web3(rpc_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url))


@pytest.fixture
def mirror(engine: Engine, rpc_url: str, chain: Any, subscriptions: Any, invoices: Any) -> Mirror:
    """A mirror of the fee-less deployment (`subscriptions`, `invoices`)."""
    manifest = make_manifest(chain.chain_id, subscriptions.address, invoices.address)
    return Mirror(engine, rpc_url, manifest)


@pytest.fixture
def fee_mirror(
    engine: Engine,
    rpc_url: str,
    chain: Any,
    owner: Any,
    fee_recipient: Any,
    subscriptions_with_fee: Any,
    invoices_with_fee: Any,
) -> Mirror:
    """A mirror of the deployment that takes a platform fee."""
    manifest = make_manifest(
        chain.chain_id,
        subscriptions_with_fee.address,
        invoices_with_fee.address,
        owner=owner.address,
        fee_bps=FEE_BPS,
        fee_recipient=fee_recipient.address,
    )
    return Mirror(engine, rpc_url, manifest)


@pytest.fixture
def other_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.sqlite'}"
        return
    assert POSTGRES_ADMIN_URL is not None
    name, url = _fresh_postgres_database(POSTGRES_ADMIN_URL)
    try:
        yield url
    finally:
        _drop_postgres_database(POSTGRES_ADMIN_URL, name)


@pytest.fixture
def other_engine(other_database_url: str) -> Iterator[Engine]:
    engine = make_engine(other_database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()
