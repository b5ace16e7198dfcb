"""Fixtures of the gateway tests: the real contracts on Anvil, a mirror of them in SQLite
and PostgreSQL (indexed by the real indexer), and the app served through httpx's ASGI
transport (`TestClient`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.main import create_app
from api.settings import GatewaySettings
from offchain import apikeys
from offchain.webhooks.endpoints import ALLOW_PRIVATE_ENV
from tests.chain_fixtures import *  # noqa: F403
from tests.db_fixtures import *  # noqa: F403
from tests.offchain.indexer.helpers import Mirror, make_manifest


@pytest.fixture(autouse=True)
def local_webhook_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' webhook receivers listen on loopback, which a gateway refuses by default
    (tests/offchain/webhooks/test_delivery.py tests the refusal with this unset)."""
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")


@pytest.fixture
def rpc_url(chain: Any) -> str:
    """The URL of the Anvil that Ape started for the session."""
    return str(chain.provider.uri)


@pytest.fixture
def mirror(engine: Engine, rpc_url: str, chain: Any, subscriptions: Any, invoices: Any) -> Mirror:
    """The mirror of the fee-less deployment; `mirror.sync()` indexes up to the head."""
    manifest = make_manifest(chain.chain_id, subscriptions.address, invoices.address)
    return Mirror(engine, rpc_url, manifest)


@pytest.fixture
def settings(mirror: Mirror, rpc_url: str, tmp_path: Path) -> GatewaySettings:
    manifest_path = tmp_path / "manifest.json"
    mirror.manifest.write(manifest_path)
    return GatewaySettings(
        database_url="(engine given)",
        rpc_url=rpc_url,
        manifest_path=manifest_path,
        public_url="http://testserver",
        secret_key="test-secret",
        rate_limit_per_s=0,  # rate limits have tests of their own
        block_time_cache_s=0,  # tests travel in time and look at once
        api_key_cache_s=0,  # tests revoke keys and try them at once
    )


@pytest.fixture
def make_client(engine: Engine, settings: GatewaySettings) -> Iterator[Callable[..., TestClient]]:
    """A client of an app built with `settings` changed by the keyword arguments."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(settings.with_overrides(**overrides), engine))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def merchant_key(engine: Engine, merchant: Any) -> str:
    """A live API key of `merchant`."""
    with engine.begin() as conn:
        return apikeys.create_key(conn, merchant.address, "tests").key


@pytest.fixture
def stranger_key(engine: Engine, stranger: Any) -> str:
    """A live API key of another merchant (`stranger`)."""
    with engine.begin() as conn:
        return apikeys.create_key(conn, stranger.address, "tests").key


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
