"""Fixtures of the webhook tests: the mirror of the fee-less deployment (as the indexer
tests have it) and a receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from offchain.webhooks.endpoints import ALLOW_PRIVATE_ENV
from tests.offchain.indexer.helpers import Mirror, make_manifest
from tests.offchain.webhooks.receiver import Receiver


@pytest.fixture(autouse=True)
def local_webhook_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' webhook receivers listen on loopback, which a gateway refuses by default
    (tests/offchain/webhooks/test_delivery.py tests the refusal with this unset)."""
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")


@pytest.fixture
def rpc_url(chain: Any) -> str:
    return str(chain.provider.uri)


@pytest.fixture
def mirror(engine: Engine, rpc_url: str, chain: Any, subscriptions: Any, invoices: Any) -> Mirror:
    manifest = make_manifest(chain.chain_id, subscriptions.address, invoices.address)
    return Mirror(engine, rpc_url, manifest)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
