"""/health, /metrics and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from tests.api.conftest import bearer
from tests.offchain.indexer.helpers import Mirror


def test_health_reports_database_node_and_indexer_lag(client: TestClient, mirror: Mirror) -> None:
    before = client.get("/health").json()
    assert before["status"] == "ok" and before["database"] and before["node"]
    assert before["indexer"] is None  # nothing indexed yet
    mirror.sync()
    after = client.get("/health").json()
    assert after["indexer"]["last_block"] == mirror.web3.eth.block_number
    assert after["indexer"]["lag_blocks"] == 0
    assert after["chain_id"] == mirror.chain_id


def test_health_is_degraded_but_serving_when_the_node_is_down(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(rpc_url="http://127.0.0.1:9")  # nothing listens on the discard port
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded" and response.json()["node"] is False


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.get("/health")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert 'chainbill_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "chainbill_http_request_duration_seconds_bucket" in text


def test_openapi_document_is_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "chainbill gateway"
    assert "/health" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_a_database_that_goes_away_is_a_503_to_retry_and_service_resumes(
    client: TestClient, engine: Engine, merchant_key: str
) -> None:
    """PostgreSQL restarting or refusing connections: requests get 503 with Retry-After
    (not a 500), and the same app serves again once the database is back."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite is a file in this process: there is no server to lose")
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
    database = engine.url.database
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                {"d": database},
            )
        refused = client.get("/v1/invoices", headers=bearer(merchant_key))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert refused.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 503
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert client.get("/v1/invoices", headers=bearer(merchant_key)).status_code == 200
