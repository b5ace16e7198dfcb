"""The webhook routes of the gateway: endpoints registered, listed, changed, deleted and
their secret rotated by their merchant only; the delivery log listed and a failed delivery
replayed; every refusal (bad URL, unknown type, unknown id, another merchant's) with its
status. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDeliveryStatus
from offchain.webhooks import endpoints
from offchain.webhooks.outbox import ProduceResult, add_event
from offchain.webhooks.signing import SignatureError, signature_header, verify
from tests.api.conftest import bearer
from tests.api.invoice_helpers import customer_session

URL = "https://erp.example.com/hooks/chainbill"


def register(client: TestClient, key: str, **body: Any) -> Any:
    response = client.post("/v1/webhook-endpoints", headers=bearer(key), json={"url": URL, **body})
    assert response.status_code == 201, response.text
    return response.json()


def queue_event(engine: Engine, merchant: str, n: int = 1) -> list[str]:
    """Events for `merchant` straight into the outbox (the producer's own insert), fanned
    out to its endpoints; their delivery ids, newest first."""
    with engine.begin() as conn:
        live = repo.live_endpoints(conn)
        for i in range(n):
            add_event(
                conn,
                live,
                dedupe_key=f"test:{merchant}:{i}",
                merchant=merchant,
                event_type="invoice.paid",
                final=True,
                data={"amount": str(10**30 + i)},
                source=None,
                now=datetime.now(UTC),
                result=ProduceResult(),
            )
        return [d.public_id for d in repo.list_deliveries(conn, merchant, limit=1000)]


def test_register_shows_the_secret_once_and_lists_without_it(
    client: TestClient, merchant_key: str, mirror: Any
) -> None:
    created = register(
        client, merchant_key, description="ERP", event_types=["invoice.paid", "charge.failed"]
    )
    assert created["id"].startswith("we_") and created["secret"].startswith("whsec_")
    assert created["enabled"] is True and created["include_unconfirmed"] is False
    assert created["event_types"] == ["charge.failed", "invoice.paid"]
    listing = client.get("/v1/webhook-endpoints", headers=bearer(merchant_key))
    assert listing.status_code == 200
    assert [e["id"] for e in listing.json()["items"]] == [created["id"]]
    assert created["secret"] not in listing.text
    one = client.get(f"/v1/webhook-endpoints/{created['id']}", headers=bearer(merchant_key))
    assert one.status_code == 200 and created["secret"] not in one.text
    assert one.json()["url"] == URL


def test_bad_input_is_refused(client: TestClient, merchant_key: str, mirror: Any) -> None:
    for body in (
        {"url": "ftp://example.com/x"},
        {"url": "not a url"},
        {"url": "https://"},
        {"url": "https://user:pw@example.com/"},
        {"url": "https://example.com:99999/"},
        {"url": URL, "event_types": ["invoice.exploded"]},
        {"url": URL, "event_types": []},
        {"url": URL, "surprise": 1},
    ):
        response = client.post("/v1/webhook-endpoints", headers=bearer(merchant_key), json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_input"
    assert client.get("/v1/webhook-endpoints", headers=bearer(merchant_key)).json()["items"] == []


def test_another_merchants_endpoint_is_not_found_and_customers_are_refused(
    client: TestClient,
    engine: Engine,
    merchant_key: str,
    stranger_key: str,
    customer: Any,
    chain: Any,
    mirror: Any,
) -> None:
    mine = register(client, merchant_key)
    theirs = bearer(stranger_key)
    base = f"/v1/webhook-endpoints/{mine['id']}"
    for method, path, body in (
        ("GET", base, None),
        ("PATCH", base, {"enabled": False}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate-secret", {}),
    ):
        response = client.request(method, path, headers=theirs, json=body)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get("/v1/webhook-endpoints", headers=theirs).json()["items"] == []
    unknown = "/v1/webhook-endpoints/we_" + "0" * 24
    assert client.get(unknown, headers=bearer(merchant_key)).status_code == 404
    assert client.get("/v1/webhook-endpoints/nope", headers=bearer(merchant_key)).status_code == 422
    session = customer_session(engine, customer.address, chain.chain_id)
    assert client.get("/v1/webhook-endpoints", headers=bearer(session)).status_code == 403
    assert client.get(base, headers=bearer(merchant_key)).json()["enabled"] is True


def test_rotation_signs_with_both_secrets_until_the_old_one_expires(
    client: TestClient, engine: Engine, merchant_key: str, mirror: Any
) -> None:
    created = register(client, merchant_key)
    rotated = client.post(
        f"/v1/webhook-endpoints/{created['id']}/rotate-secret",
        headers=bearer(merchant_key),
        json={"grace_s": 3600},
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"]
    expires = rotated.json()["previous_secret_expires_at"]
    with engine.connect() as conn:
        endpoint = repo.endpoint_by_public_id(conn, created["id"])
    assert endpoint is not None
    now = datetime.now(UTC)
    assert abs(expires - (now.timestamp() + 3600)) < 60
    body = b'{"id":"evt_1"}'
    header = signature_header(endpoints.signing_secrets(endpoint, now), int(now.timestamp()), body)
    assert header.count("v1=") == 2
    verify(header, body, new_secret)  # a receiver with either secret accepts it
    verify(header, body, created["secret"])
    later = now + timedelta(seconds=3601)
    assert endpoints.signing_secrets(endpoint, later) == [new_secret]
    late = signature_header(
        endpoints.signing_secrets(endpoint, later), int(later.timestamp()), body
    )
    try:
        verify(late, body, created["secret"], now=later.timestamp())
        raise AssertionError("the old secret verified after its expiry")
    except SignatureError:
        pass
    # Without a grace period the old secret stops at once.
    again = client.post(
        f"/v1/webhook-endpoints/{created['id']}/rotate-secret",
        headers=bearer(merchant_key),
        json={"grace_s": 0},
    )
    assert again.status_code == 200 and again.json()["previous_secret_expires_at"] is None
    refused = client.post(
        f"/v1/webhook-endpoints/{created['id']}/rotate-secret",
        headers=bearer(merchant_key),
        json={"grace_s": -1},
    )
    assert refused.status_code == 422


def test_update_and_delete(client: TestClient, merchant_key: str, mirror: Any) -> None:
    created = register(client, merchant_key)
    path = f"/v1/webhook-endpoints/{created['id']}"
    changed = client.patch(
        path,
        headers=bearer(merchant_key),
        json={"enabled": False, "include_unconfirmed": True, "url": URL + "/v2"},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["include_unconfirmed"] is True
    assert changed.json()["url"] == URL + "/v2"
    bad = client.patch(path, headers=bearer(merchant_key), json={"url": "gopher://x"})
    assert bad.status_code == 422
    assert client.delete(path, headers=bearer(merchant_key)).status_code == 204
    assert client.get(path, headers=bearer(merchant_key)).status_code == 404
    assert client.delete(path, headers=bearer(merchant_key)).status_code == 404


def test_deliveries_are_listed_paged_and_replayed_by_their_merchant_only(
    client: TestClient,
    engine: Engine,
    merchant: Any,
    merchant_key: str,
    stranger_key: str,
    mirror: Any,
) -> None:
    created = register(client, merchant_key)
    ids = queue_event(engine, merchant.address.lower(), n=3)
    first = client.get("/v1/webhook-deliveries?limit=2", headers=bearer(merchant_key))
    assert first.status_code == 200, first.text
    page = first.json()
    assert [d["id"] for d in page["items"]] == ids[:2] and page["next_cursor"]
    rest = client.get(
        f"/v1/webhook-deliveries?limit=2&cursor={page['next_cursor']}",
        headers=bearer(merchant_key),
    ).json()
    assert [d["id"] for d in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    item = page["items"][0]
    assert item["status"] == "pending" and item["endpoint_id"] == created["id"]
    assert item["attempt_log"] == []
    bad_cursor = client.get("/v1/webhook-deliveries?cursor=abc", headers=bearer(merchant_key))
    assert bad_cursor.status_code == 422

    one = client.get(f"/v1/webhook-deliveries/{ids[0]}", headers=bearer(merchant_key))
    assert one.status_code == 200
    assert one.json()["event"]["data"]["amount"] == str(10**30 + 2)  # exact, as a string

    # Only a failed delivery is replayed.
    replay = f"/v1/webhook-deliveries/{ids[0]}/replay"
    assert client.post(replay, headers=bearer(merchant_key)).status_code == 409
    with engine.begin() as conn:
        delivery = repo.delivery_by_public_id(conn, ids[0])
        assert delivery is not None
        repo.update_delivery(
            conn,
            delivery.id,
            {"status": WebhookDeliveryStatus.FAILED, "attempts": 10, "next_attempt_at": None},
        )
    assert client.post(replay, headers=bearer(stranger_key)).status_code == 404
    replayed = client.post(replay, headers=bearer(merchant_key))
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "pending" and replayed.json()["attempts"] == 0

    # Merchant B sees none of it.
    theirs = client.get("/v1/webhook-deliveries", headers=bearer(stranger_key))
    assert theirs.json()["items"] == []
    assert (
        client.get(f"/v1/webhook-deliveries/{ids[1]}", headers=bearer(stranger_key)).status_code
        == 404
    )
    unknown = client.post(
        "/v1/webhook-deliveries/whd_" + "0" * 24 + "/replay", headers=bearer(merchant_key)
    )
    assert unknown.status_code == 404
    filtered = client.get(
        "/v1/webhook-deliveries?status=failed&endpoint_id=we_" + "1" * 24,
        headers=bearer(merchant_key),
    )
    assert filtered.status_code == 404  # not one of yours


def test_deleting_an_endpoint_cancels_its_pending_deliveries(
    client: TestClient, engine: Engine, merchant: Any, merchant_key: str, mirror: Any
) -> None:
    created = register(client, merchant_key)
    [delivery_id] = queue_event(engine, merchant.address.lower())
    path = f"/v1/webhook-endpoints/{created['id']}"
    assert client.delete(path, headers=bearer(merchant_key)).status_code == 204
    view = client.get(f"/v1/webhook-deliveries/{delivery_id}", headers=bearer(merchant_key))
    assert view.json()["status"] == "canceled"


def test_the_cli_registers_rotates_lists_and_replays(
    engine: Engine, merchant: Any, mirror: Any, make_client: Callable[..., TestClient]
) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    url = engine.url.render_as_string(hide_password=False)

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["webhooks", *args, "--database-url", url])

    added = run("add", "--merchant", merchant.address, "--url", URL, "--event-type", "invoice.paid")
    assert added.exit_code == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "shown only now" in added.stderr
    listing = run("list")
    assert listing.exit_code == 0 and secret not in listing.stdout
    endpoint_id = listing.stdout.split("\t")[0]
    assert endpoint_id.startswith("we_") and "invoice.paid" in listing.stdout
    rotated = run("rotate", endpoint_id, "--grace", "60")
    assert rotated.exit_code == 0 and rotated.stdout.strip() not in ("", secret)

    [delivery_id] = queue_event(engine, merchant.address.lower())
    log = run("deliveries", "--merchant", merchant.address)
    assert log.exit_code == 0 and delivery_id in log.stdout and "pending" in log.stdout
    not_failed = run("replay", delivery_id)
    assert not_failed.exit_code == 2 and "only a failed delivery" in not_failed.stderr
    for args, complaint in (
        (["add", "--merchant", "0x12", "--url", URL], "not an Ethereum address"),
        (["add", "--merchant", merchant.address, "--url", "mailto:x"], "URL"),
        (["rotate", "we_nope"], "no webhook endpoint"),
        (["replay", "whd_nope"], "no webhook delivery"),
        (["rotate", endpoint_id, "--grace", "-5"], "grace"),
    ):
        result = run(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert complaint in result.stderr, (args, result.stderr)
    assert run("disable", endpoint_id).exit_code == 0
    assert "disabled" in run("list").stdout
    assert run("delete", endpoint_id).exit_code == 0
    assert run("list").stdout.strip() == ""
