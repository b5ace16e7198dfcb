"""What every request goes through: `Idempotency-Key` on POSTs, rate limits, metrics."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from api.errors import ChainUnavailable
from api.middleware import client_scope
from offchain.db import gateway_repository
from offchain.db.models import IdempotencyRecord, SiweNonce
from tests.api.conftest import bearer


def nonce_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(SiweNonce)).scalar_one())


def idempotent(key: str, token: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key, **(bearer(token) if token else {})}


# ------------------------------------------------------------------------ idempotency


def test_retry_with_the_same_key_replays_the_response_and_does_the_work_once(
    client: TestClient, engine: Engine
) -> None:
    first = client.post("/v1/auth/siwe/nonce", headers=idempotent("order-1"))
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    retry = client.post("/v1/auth/siwe/nonce", headers=idempotent("order-1"))
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert nonce_rows(engine) == 1
    # Another key is another request.
    other = client.post("/v1/auth/siwe/nonce", headers=idempotent("order-2"))
    assert other.json()["nonce"] != first.json()["nonce"]
    assert nonce_rows(engine) == 2
    # Without a key, every POST does the work.
    client.post("/v1/auth/siwe/nonce")
    assert nonce_rows(engine) == 3


def test_same_key_with_another_request_is_refused(client: TestClient, engine: Engine) -> None:
    assert client.post("/v1/auth/siwe/nonce", headers=idempotent("k")).status_code == 201
    reused = client.post("/v1/auth/siwe/nonce", headers=idempotent("k"), json={"other": 1})
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    elsewhere = client.post(
        "/v1/auth/siwe/verify", headers=idempotent("k"), json={"message": "x", "signature": "0x00"}
    )
    assert elsewhere.status_code == 422
    assert elsewhere.json()["error"]["code"] == "idempotency_key_reused"
    assert nonce_rows(engine) == 1


def test_keys_are_per_client(
    client: TestClient, engine: Engine, merchant_key: str, stranger_key: str
) -> None:
    mine = client.post("/v1/auth/siwe/nonce", headers=idempotent("shared", merchant_key))
    theirs = client.post("/v1/auth/siwe/nonce", headers=idempotent("shared", stranger_key))
    anonymous = client.post("/v1/auth/siwe/nonce", headers=idempotent("shared"))
    assert {r.status_code for r in (mine, theirs, anonymous)} == {201}
    assert "idempotent-replayed" not in {**theirs.headers, **anonymous.headers}
    assert len({r.json()["nonce"] for r in (mine, theirs, anonymous)}) == 3
    assert nonce_rows(engine) == 3


def test_a_request_still_running_makes_the_retry_409(
    client: TestClient, engine: Engine, merchant_key: str
) -> None:
    # The first request's claim, as the middleware leaves it while the request runs.
    who = client_scope({"headers": [(b"authorization", f"Bearer {merchant_key}".encode())]})
    fingerprint = hashlib.sha256(b"\x00".join([b"POST", b"/v1/auth/siwe/nonce", b"", b""]))
    with engine.begin() as conn:
        assert gateway_repository.claim_idempotency_key(
            conn, who, "busy", fingerprint.hexdigest(), datetime.now(UTC)
        )
    response = client.post("/v1/auth/siwe/nonce", headers=idempotent("busy", merchant_key))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert nonce_rows(engine) == 0


def install_flaky(app: FastAPI, failures: list[BaseException]) -> list[int]:
    """POST /test/flaky: raises the next of `failures`, then succeeds; returns the calls."""
    calls: list[int] = []

    @app.post("/test/flaky")
    def flaky() -> dict[str, int]:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return {"call": len(calls)}

    return calls


def test_server_errors_are_not_kept_so_the_retry_runs_again(client: TestClient) -> None:
    calls = install_flaky(
        client.app,  # type: ignore[arg-type]
        [ChainUnavailable("the node is away"), RuntimeError("a bug")],
    )
    unguarded = TestClient(client.app, raise_server_exceptions=False)
    assert unguarded.post("/test/flaky", headers=idempotent("f")).status_code == 503
    assert unguarded.post("/test/flaky", headers=idempotent("f")).status_code == 500
    done = unguarded.post("/test/flaky", headers=idempotent("f"))
    assert done.status_code == 200 and done.json() == {"call": 3}
    replay = unguarded.post("/test/flaky", headers=idempotent("f"))
    assert replay.json() == {"call": 3} and replay.headers["idempotent-replayed"] == "true"
    assert len(calls) == 3


def test_client_errors_are_kept(client: TestClient, engine: Engine) -> None:
    body = {"message": "not siwe", "signature": "0x00"}
    first = client.post("/v1/auth/siwe/verify", headers=idempotent("bad"), json=body)
    assert first.status_code == 422
    again = client.post("/v1/auth/siwe/verify", headers=idempotent("bad"), json=body)
    assert again.status_code == 422 and again.headers["idempotent-replayed"] == "true"
    with engine.connect() as conn:
        assert conn.execute(select(IdempotencyRecord.status_code)).scalars().all() == [422]


def test_idempotency_key_must_be_short_and_is_ignored_on_get(client: TestClient) -> None:
    response = client.post("/v1/auth/siwe/nonce", headers=idempotent("x" * 256))
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["message"]
    for _ in range(2):
        ping = client.get("/ping", headers=idempotent("g"))
        assert ping.status_code == 200 and "idempotent-replayed" not in ping.headers


# ------------------------------------------------------------------------ rate limits


def test_rate_limit_refuses_with_retry_after_per_client(
    make_client: Callable[..., TestClient], merchant_key: str, stranger_key: str
) -> None:
    client = make_client(rate_limit_per_s=1, rate_limit_burst=2)
    statuses = [client.get("/ping", headers=bearer(merchant_key)).status_code for _ in range(6)]
    assert statuses[:2] == [200, 200] and 429 in statuses
    refused = client.get("/ping", headers=bearer(merchant_key))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"
    # Another client has a bucket of its own; anonymous callers are limited by address.
    assert client.get("/ping", headers=bearer(stranger_key)).status_code == 200
    anonymous = [client.get("/ping").status_code for _ in range(6)]
    assert anonymous[0] == 200 and 429 in anonymous
    # /health and /metrics are never limited (probes and scrapers).
    for _ in range(5):
        assert client.get("/health", headers=bearer(merchant_key)).status_code == 200
        assert client.get("/metrics", headers=bearer(merchant_key)).status_code == 200
    text = client.get("/metrics").text
    limited = statuses.count(429) + 1 + anonymous.count(429)
    assert f"chainbill_http_rate_limited_total {float(limited)}" in text


def test_rate_limit_zero_means_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(rate_limit_per_s=0, rate_limit_burst=1)
    assert {client.get("/ping").status_code for _ in range(10)} == {200}


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_replays_and_errors(client: TestClient, merchant_key: Any) -> None:
    client.post("/v1/auth/siwe/nonce", headers=idempotent("m"))
    client.post("/v1/auth/siwe/nonce", headers=idempotent("m"))
    client.post("/v1/auth/logout")
    client.get("/ping")
    text = client.get("/metrics").text
    assert (
        'chainbill_http_requests_total{method="POST",route="/v1/auth/siwe/nonce",status="201"} 2.0'
        in text
    )
    assert (
        'chainbill_http_requests_total{method="POST",route="/v1/auth/logout",status="401"} 1.0'
        in text
    )
    assert 'chainbill_http_requests_total{method="GET",route="/ping",status="200"} 1.0' in text
    assert "chainbill_idempotent_replays_total 1.0" in text
    assert 'chainbill_http_request_duration_seconds_count{method="GET",route="/ping"} 1.0' in text


def test_a_session_token_is_never_kept_for_replays(
    client: TestClient, engine: Engine, customer: Any
) -> None:
    from tests.api.test_auth import sign, siwe_text

    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce)
    body = {"message": text, "signature": sign(text, customer.private_key)}
    first = client.post("/v1/auth/siwe/verify", headers=idempotent("login"), json=body)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    with engine.connect() as conn:
        kept = conn.execute(select(IdempotencyRecord.response_body)).scalars().all()
    assert not any(first.json()["token"].encode() in (b or b"") for b in kept)
    # The retry runs again: the nonce is spent, so it cannot mint a second session.
    retry = client.post("/v1/auth/siwe/verify", headers=idempotent("login"), json=body)
    assert retry.status_code == 401 and "already used" in retry.json()["error"]["message"]
