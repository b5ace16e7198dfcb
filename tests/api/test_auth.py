"""Sign-In with Ethereum (EIP-4361): the happy path and every check that can refuse."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI
from fastapi.testclient import TestClient
from siwe import SiweMessage
from sqlalchemy import Engine, select, update

from api.deps import AnyPrincipal
from offchain.db.models import CustomerSession, SiweNonce
from tests.api.conftest import bearer


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def siwe_text(address: str, nonce: str, **fields: Any) -> str:
    values: dict[str, Any] = {
        "domain": "testserver",
        "address": Account.from_key(bytes(32)).address if address == "" else address,
        "statement": "Sign in to chainbill",
        "uri": "http://testserver",
        "version": "1",
        "chain_id": 31337,
        "nonce": nonce,
        "issued_at": iso(datetime.now(UTC)),
    }
    values.update(fields)
    return SiweMessage(**values).prepare_message()


def sign(text: str, private_key: str) -> str:
    signed = Account.sign_message(encode_defunct(text=text), private_key=private_key)
    return "0x" + bytes(signed.signature).hex()


def install_whoami(app: FastAPI) -> None:
    """A route that says who the gateway thinks the caller is."""

    @app.get("/test/whoami")
    def whoami(principal: AnyPrincipal) -> dict[str, str]:
        return {"kind": principal.kind.value, "address": principal.address}


@pytest.fixture
def sign_in(client: TestClient, customer: Any) -> Callable[..., Any]:
    """Asks for a nonce, signs a message as `account` (default: the customer) and posts it;
    keyword arguments change the message's fields."""

    def do(account: Any = None, signer: Any = None, **fields: Any) -> Any:
        account = account or customer
        nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
        fields.setdefault("nonce", nonce)
        text = siwe_text(account.address, **fields)
        signature = sign(text, (signer or account).private_key)
        return client.post("/v1/auth/siwe/verify", json={"message": text, "signature": signature})

    return do


def test_nonce_says_what_the_message_must_contain(
    client: TestClient, engine: Engine, chain: Any
) -> None:
    response = client.post("/v1/auth/siwe/nonce")
    assert response.status_code == 201
    body = response.json()
    assert len(body["nonce"]) == 32 and body["nonce"].isalnum()
    assert body["domain"] == "testserver" and body["chain_id"] == chain.chain_id
    assert body["expires_at"] > datetime.now(UTC).timestamp()
    with engine.connect() as conn:
        stored = conn.execute(select(SiweNonce.nonce, SiweNonce.used_at)).all()
    assert [tuple(row) for row in stored] == [(body["nonce"], None)]


def test_sign_in_gives_a_customer_session_stored_hashed(
    client: TestClient, sign_in: Callable[..., Any], customer: Any, engine: Engine
) -> None:
    install_whoami(client.app)  # type: ignore[arg-type]
    response = sign_in()
    assert response.status_code == 200, response.text
    session = response.json()
    assert session["token"].startswith("cbs_")
    assert session["address"] == customer.address.lower()
    assert session["expires_at"] > datetime.now(UTC).timestamp() + 3600
    with engine.connect() as conn:
        rows = conn.execute(select(CustomerSession.__table__)).all()
    assert len(rows) == 1
    assert rows[0].token_sha256 == hashlib.sha256(session["token"].encode()).hexdigest()
    assert session["token"] not in repr(tuple(rows[0]))

    whoami = client.get("/test/whoami", headers=bearer(session["token"]))
    assert whoami.json() == {"kind": "customer", "address": customer.address.lower()}


def test_session_ends_at_the_message_expiry_when_that_is_sooner(
    sign_in: Callable[..., Any],
) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    session = sign_in(expiration_time=iso(soon)).json()
    assert session["expires_at"] == int(soon.replace(microsecond=0).timestamp())


def test_expired_session_and_logged_out_session_are_refused(
    client: TestClient, sign_in: Callable[..., Any], engine: Engine
) -> None:
    install_whoami(client.app)  # type: ignore[arg-type]
    expiring = sign_in().json()["token"]
    leaving = sign_in().json()["token"]
    with engine.begin() as conn:
        conn.execute(
            update(CustomerSession)
            .where(CustomerSession.token_sha256 == hashlib.sha256(expiring.encode()).hexdigest())
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    refused = client.get("/test/whoami", headers=bearer(expiring))
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]

    assert client.get("/test/whoami", headers=bearer(leaving)).status_code == 200
    assert client.post("/v1/auth/logout", headers=bearer(leaving)).status_code == 204
    assert client.get("/test/whoami", headers=bearer(leaving)).status_code == 401
    assert client.post("/v1/auth/logout", headers=bearer(leaving)).status_code == 401


def test_logout_needs_a_customer_session(client: TestClient, merchant_key: str) -> None:
    assert client.post("/v1/auth/logout").status_code == 401
    assert client.post("/v1/auth/logout", headers=bearer(merchant_key)).status_code == 403


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"domain": "evil.example"}, "domain 'evil.example'"),
        ({"domain": "testserver:8443"}, "domain 'testserver:8443'"),
        ({"scheme": "https"}, "scheme"),
        ({"chain_id": 1}, "chain 1"),
        ({"expiration_time": iso(datetime.now(UTC) - timedelta(seconds=1))}, "expired at"),
        ({"not_before": iso(datetime.now(UTC) + timedelta(hours=1))}, "not valid before"),
        ({"nonce": "abcdef0123456789"}, "not issued by this gateway"),
    ],
    ids=["domain", "port", "scheme", "chain", "expired", "not-before", "unknown-nonce"],
)
def test_sign_in_is_refused_naming_the_failed_check(
    sign_in: Callable[..., Any], fields: dict[str, Any], complaint: str, engine: Engine
) -> None:
    response = sign_in(**fields)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"
    assert complaint in response.json()["error"]["message"]
    with engine.connect() as conn:
        assert conn.execute(select(CustomerSession.token_sha256)).all() == []


def test_signature_of_another_wallet_is_refused_and_keeps_the_nonce(
    client: TestClient, customer: Any, stranger: Any
) -> None:
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce)
    forged = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, stranger.private_key)},
    )
    assert forged.status_code == 401
    assert "signature does not match" in forged.json()["error"]["message"]
    # The forgery did not burn the customer's nonce.
    genuine = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, customer.private_key)},
    )
    assert genuine.status_code == 200


def test_nonce_is_single_use(client: TestClient, customer: Any) -> None:
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce)
    body = {"message": text, "signature": sign(text, customer.private_key)}
    assert client.post("/v1/auth/siwe/verify", json=body).status_code == 200
    replay = client.post("/v1/auth/siwe/verify", json=body)
    assert replay.status_code == 401
    assert "already used" in replay.json()["error"]["message"]


def test_expired_nonce_is_refused(make_client: Callable[..., TestClient], customer: Any) -> None:
    client = make_client(nonce_ttl_s=0)
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce)
    response = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, customer.private_key)},
    )
    assert response.status_code == 401
    assert "nonce" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"message": "hello", "signature": "0x" + "11" * 65}, "not an EIP-4361"),
        ({"message": "", "signature": "0x" + "11" * 65}, "message"),
        ({"message": "x", "signature": "not hex"}, "signature"),
        ({"message": "x", "signature": "0x123"}, "signature"),
        ({"signature": "0x" + "11" * 65}, "message"),
        ({"message": "x" * 5000, "signature": "0x" + "11" * 65}, "message"),
    ],
    ids=["prose", "empty", "signature-not-hex", "signature-odd-length", "missing", "huge"],
)
def test_malformed_sign_in_is_invalid_input(
    client: TestClient, body: dict[str, Any], complaint: str
) -> None:
    response = client.post("/v1/auth/siwe/verify", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert complaint in response.json()["error"]["message"]


def test_message_not_in_canonical_form_is_invalid_input(client: TestClient, customer: Any) -> None:
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce).replace("\n", "\r\n")
    response = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, customer.private_key)},
    )
    assert response.status_code == 422


def test_lowercase_address_in_the_message_is_invalid_input(
    client: TestClient, customer: Any
) -> None:
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(customer.address, nonce).replace(customer.address, customer.address.lower())
    response = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, customer.private_key)},
    )
    assert response.status_code == 422
    assert "EIP-55" in response.json()["error"]["message"]


def test_contract_wallet_signs_in_through_eip_1271(
    client: TestClient, project: Any, owner: Any, customer: Any, stranger: Any
) -> None:
    wallet = owner.deploy(project.MockSmartWallet, customer.address)
    nonce = client.post("/v1/auth/siwe/nonce").json()["nonce"]
    text = siwe_text(wallet.address, nonce)
    forged = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, stranger.private_key)},
    )
    assert forged.status_code == 401
    response = client.post(
        "/v1/auth/siwe/verify",
        json={"message": text, "signature": sign(text, customer.private_key)},
    )
    assert response.status_code == 200, response.text
    assert response.json()["address"] == wallet.address.lower()
