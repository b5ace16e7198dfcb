"""Who is asking: API-key verifications a worker reuses, and for how long."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from offchain import apikeys
from tests.api.conftest import bearer


def _revoke(engine: Engine, key: str) -> None:
    with engine.begin() as conn:
        apikeys.revoke_key(conn, key.split("_")[1])


def test_a_revoked_key_is_refused_at_once_without_the_cache(
    make_client: Callable[..., TestClient], engine: Engine, merchant_key: str
) -> None:
    client = make_client(api_key_cache_s=0)
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    _revoke(engine, merchant_key)
    refused = client.get("/v1/invoices", headers=bearer(merchant_key))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_a_verified_key_is_reused_until_the_cache_expires(
    make_client: Callable[..., TestClient], engine: Engine, merchant_key: str
) -> None:
    client = make_client(api_key_cache_s=3600)
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    _revoke(engine, merchant_key)
    # Within the window this worker still trusts its verification (documented delay)...
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    # ...which a worker that never verified the key does not share.
    fresh = make_client(api_key_cache_s=3600)
    assert fresh.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 401
    gateway = client.app.state.gateway  # type: ignore[attr-defined]
    gateway.key_revocations_read_at = float("-inf")  # the window has passed
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 401


def test_a_revocation_makes_a_worker_verify_every_key_again(
    make_client: Callable[..., TestClient],
    engine: Engine,
    merchant_key: str,
    stranger_key: str,
) -> None:
    """Keys are trusted until a revocation is seen, whichever key it was: then every key
    is read again, and the live ones still pass."""
    client = make_client(api_key_cache_s=3600)
    gateway = client.app.state.gateway  # type: ignore[attr-defined]
    for key in (merchant_key, stranger_key):
        assert client.get("/v1/invoices", headers=bearer(key)).status_code == 200
    assert len(gateway.verified_keys) == 2
    with engine.begin() as conn:
        other = apikeys.create_key(conn, "0x" + "ab" * 20, "to revoke")
    _revoke(engine, other.key)
    gateway.key_revocations_read_at = float("-inf")  # the window has passed
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    assert len(gateway.verified_keys) == 1  # the others were forgotten, this one re-read
    assert client.get("/v1/invoices", headers=bearer(stranger_key)).status_code == 200
    _revoke(engine, stranger_key)
    # No new revocation is looked for within the window: the stranger's key still passes...
    assert client.get("/v1/invoices", headers=bearer(stranger_key)).status_code == 200
    gateway.key_revocations_read_at = float("-inf")
    # ...and once the window has passed it is refused, while the merchant's is not.
    assert client.get("/v1/invoices", headers=bearer(stranger_key)).status_code == 401
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200


def test_a_wrong_secret_with_a_cached_prefix_is_refused(
    make_client: Callable[..., TestClient], merchant_key: str
) -> None:
    client = make_client(api_key_cache_s=3600)
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    forged = merchant_key[:-4] + ("AAAA" if not merchant_key.endswith("AAAA") else "BBBB")
    assert client.get("/v1/invoices", headers=bearer(forged)).status_code == 401
