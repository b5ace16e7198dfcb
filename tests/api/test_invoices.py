"""POST /v1/invoices and GET /v1/invoices/{id}: creation in both modes, exact totals, the
canonical content hash checked against the chain, every refusal, and who may see what."""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from eth_utils import keccak
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from api.services.content import MAX_AMOUNT, tax_of
from offchain.db.models import InvoiceDocument
from tests.api.conftest import bearer
from tests.api.invoice_helpers import (
    DEFAULT_TOTAL,
    customer_session,
    invoice_body,
    send,
)
from tests.chain_fixtures import NATIVE_TOKEN, PERIOD, UNIT, reference
from tests.offchain.indexer.helpers import Mirror


def create(client: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/invoices", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def test_create_returns_the_unsigned_issue_and_the_id_before_mining(
    client: TestClient,
    merchant_key: str,
    mirror: Mirror,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    chain: Any,
) -> None:
    body = invoice_body(token, customer, chain)
    created = create(client, merchant_key, body)

    ref_hash = "0x" + reference("INV-2026-0001").hex()
    assert created["reference_hash"] == ref_hash
    on_chain_id = "0x" + bytes(invoices.invoiceIdOf(merchant, reference("INV-2026-0001"))).hex()
    assert created["invoice_id"] == on_chain_id
    assert created["amount"] == str(DEFAULT_TOTAL)
    assert created["tax"] == "14250000" and created["currency"] == "TUSD"
    assert created["decimals"] == 6 and created["transaction_hash"] is None
    tx = created["transaction"]
    assert tx["from"] == merchant.address and tx["to"].lower() == invoices.address.lower()
    assert tx["value"] == "0x0" and int(tx["chainId"], 16) == chain.chain_id
    assert created["public_url"].startswith(f"http://testserver/pay/{on_chain_id}/")

    pending = client.get(f"/v1/invoices/{on_chain_id}", headers=bearer(merchant_key)).json()
    assert pending["pending"] is True and pending["status"] == "open"
    assert pending["content_matches"] is None and pending["payments"] == []
    assert pending["document"]["reference"] == "INV-2026-0001"

    send(mirror.web3, tx)
    mirror.sync()
    view = client.get(f"/v1/invoices/{on_chain_id}", headers=bearer(merchant_key)).json()
    assert view["pending"] is False and view["content_matches"] is True
    assert view["amount"] == str(DEFAULT_TOTAL) and view["due"] == str(DEFAULT_TOTAL)
    assert view["customer"] == customer.address.lower()
    assert view["issued_block"] == mirror.web3.eth.block_number
    # The hash the contract logged is keccak-256 of the stored canonical content.
    content = view["document"]["content"]
    assert view["content_hash"] == "0x" + keccak(content.encode()).hex() == created["content_hash"]
    on_chain = invoices.getInvoice(on_chain_id)
    assert on_chain.amount == DEFAULT_TOTAL and on_chain.dueDate == body["due_date"]
    lines = view["document"]["line_items"]
    assert [line["tax"] for line in lines] == ["14250000", "0"]
    assert [line["total"] for line in lines] == ["89250000", "10000000"]


def test_content_is_canonical_json(
    client: TestClient, merchant_key: str, token: Any, customer: Any, chain: Any
) -> None:
    body = invoice_body(
        token,
        customer,
        chain,
        reference="Rechnung Nr. 7 - Müller",
        notes="Zahlbar ohne Abzug ✓",
        line_items=[
            {"description": "Beratung", "quantity": 2, "unit_price": "5", "tax_rate": "7.250"}
        ],
    )
    created = create(client, merchant_key, body)
    content = client.get(
        f"/v1/invoices/{created['invoice_id']}", headers=bearer(merchant_key)
    ).json()["document"]["content"]
    parsed = json.loads(content)
    assert content == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "Müller" in content and "✓" in content  # UTF-8, not \u escapes
    assert parsed["line_items"][0]["tax_rate"] == "7.25"  # one spelling per rate
    assert parsed["amount"] == "11" and parsed["tax"] == "1"  # 10 * 7.25 % = 0.725 -> 1
    assert all(isinstance(parsed[k], str) for k in ("amount", "subtotal", "tax"))
    assert created["content_hash"] == "0x" + keccak(content.encode("utf-8")).hex()


def test_operator_sends_the_issue_when_configured_and_approved(
    make_client: Callable[..., TestClient],
    merchant_key: str,
    mirror: Mirror,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    operator: Any,
    chain: Any,
) -> None:
    client = make_client(operator_key=operator.private_key)
    body = invoice_body(token, customer, chain, reference="OP-1")
    refused = client.post("/v1/invoices", json=body, headers=bearer(merchant_key))
    assert refused.status_code == 403
    assert "setOperator" in refused.json()["error"]["message"]

    invoices.setOperator(operator, True, sender=merchant)
    created = create(client, merchant_key, body)  # the refused attempt left nothing behind
    assert created["transaction"] is None
    receipt = mirror.web3.eth.wait_for_transaction_receipt(created["transaction_hash"])
    assert receipt["status"] == 1 and receipt["from"] == operator.address
    mirror.sync()
    view = client.get(f"/v1/invoices/{created['invoice_id']}", headers=bearer(merchant_key)).json()
    assert view["pending"] is False and view["merchant"] == merchant.address.lower()
    assert view["document"]["transaction_hash"] == created["transaction_hash"]
    assert view["content_matches"] is True


def _expected_tax(subtotal: int, rate: str) -> int:
    exact = Fraction(subtotal) * Fraction(rate) / 100
    floor = exact.numerator // exact.denominator
    return floor + (1 if exact - floor >= Fraction(1, 2) else 0)


@pytest.mark.parametrize(
    ("subtotal", "rate"),
    [
        (1, "50"),  # 0.5 rounds up
        (1, "49.999999"),
        (3, "16.666667"),
        (1000, "7.25"),
        (2**90 + 12345, "19"),
        (10**28 + 7, "0.000001"),
        (2**255, "100"),
        (0, "19"),
    ],
)
def test_tax_is_exact_half_up(subtotal: int, rate: str) -> None:
    assert tax_of(subtotal, rate) == _expected_tax(subtotal, rate)


def test_huge_totals_are_exact_and_capped_at_uint96(
    client: TestClient, merchant_key: str, token: Any, customer: Any, chain: Any
) -> None:
    # 2**96 - 1 is divisible by 3: three units at a third of the limit hit it exactly.
    assert MAX_AMOUNT % 3 == 0
    at_limit = invoice_body(
        token,
        customer,
        chain,
        reference="BIG-1",
        line_items=[{"description": "a", "quantity": 3, "unit_price": str(MAX_AMOUNT // 3)}],
    )
    assert create(client, merchant_key, at_limit)["amount"] == str(MAX_AMOUNT)

    price = 2**88 + 3
    taxed = invoice_body(
        token,
        customer,
        chain,
        reference="BIG-2",
        line_items=[
            {"description": "x", "quantity": 7, "unit_price": str(price), "tax_rate": "12.5"}
        ],
    )
    expected = 7 * price + _expected_tax(7 * price, "12.5")
    assert create(client, merchant_key, taxed)["amount"] == str(expected)

    over = invoice_body(
        token,
        customer,
        chain,
        reference="BIG-3",
        line_items=[{"description": "a", "quantity": 1, "unit_price": str(MAX_AMOUNT + 1)}],
    )
    response = client.post("/v1/invoices", json=over, headers=bearer(merchant_key))
    assert response.status_code == 422
    assert "2**96 - 1" in response.json()["error"]["message"]
    assert response.json()["error"]["max_amount"] == str(MAX_AMOUNT)


def test_eth_invoices_and_payment_links(
    client: TestClient, merchant_key: str, mirror: Mirror, chain: Any, customer: Any
) -> None:
    body = invoice_body(
        NATIVE_TOKEN,
        None,
        chain,
        reference="ETH-1",
        currency="ETH",
        line_items=[{"description": "gas", "quantity": 1, "unit_price": str(10**18)}],
    )
    created = create(client, merchant_key, body)
    assert created["currency"] == "ETH" and created["decimals"] == 18
    send(mirror.web3, created["transaction"])
    mirror.sync()
    view = client.get(f"/v1/invoices/{created['invoice_id']}", headers=bearer(merchant_key)).json()
    assert view["customer"] is None and view["token"] == NATIVE_TOKEN.lower()
    assert view["content_matches"] is True


def _bad(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, **changes}

    return apply


def _bad_line(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "line_items": [{**body["line_items"][0], **changes}]}

    return apply


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_bad(customer="0x1234"), "customer"),
        (_bad(customer="0x" + "zz" * 20), "customer"),
        (_bad(token="not-an-address"), "token"),
        (_bad(token="0x" + "00" * 20), "zero address"),
        (_bad(token="0x" + "ab" * 20), "unknown token"),
        (_bad(reference=""), "reference"),
        (_bad(reference="x" * 129), "reference"),
        (_bad(reference=" padded"), "spaces"),
        (_bad(reference="tab\there"), "control"),
        (_bad(due_date=1), "not in the future"),
        (_bad(due_date=-5), "due_date"),
        (_bad(due_date=2**40), "due_date"),
        (_bad(due_date=1.5e12), "due_date"),
        (_bad(currency="USDC"), "symbol"),
        (_bad(line_items=[]), "line_items"),
        (_bad(extra="field"), "extra"),
        (_bad_line(unit_price="-1"), "unit_price"),
        (_bad_line(unit_price=1.5), "unit_price"),
        (_bad_line(unit_price=100), "unit_price"),
        (_bad_line(unit_price="1e6"), "unit_price"),
        (_bad_line(unit_price="9" * 79), "unit_price"),
        (_bad_line(quantity=0), "quantity"),
        (_bad_line(quantity=-2), "quantity"),
        (_bad_line(quantity=2.5), "quantity"),
        (_bad_line(quantity="2"), "quantity"),
        (_bad_line(tax_rate="101"), "tax_rate"),
        (_bad_line(tax_rate="-1"), "tax_rate"),
        (_bad_line(tax_rate="7.1234567"), "tax_rate"),
        (_bad_line(tax_rate=7.25), "tax_rate"),
        (_bad_line(description=""), "description"),
        (_bad_line(unit_price="0", tax_rate="0"), "total is 0"),
    ],
)
def test_bad_input_is_refused_with_a_clear_422(
    client: TestClient,
    merchant_key: str,
    token: Any,
    customer: Any,
    chain: Any,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    needle: str,
) -> None:
    body = change(invoice_body(token, customer, chain))
    body["line_items"] = body.get("line_items", [])[:1] or body.get("line_items", [])
    response = client.post("/v1/invoices", json=body, headers=bearer(merchant_key))
    assert response.status_code == 422, response.text
    assert needle in response.text


def test_a_contract_that_is_not_a_token_is_refused(
    client: TestClient, merchant_key: str, invoices: Any, customer: Any, chain: Any
) -> None:
    body = invoice_body(invoices.address, customer, chain)
    response = client.post("/v1/invoices", json=body, headers=bearer(merchant_key))
    assert response.status_code == 422
    assert "not an ERC-20" in response.json()["error"]["message"]


def test_a_reference_works_once_per_merchant(
    client: TestClient,
    merchant_key: str,
    stranger_key: str,
    token: Any,
    customer: Any,
    chain: Any,
    mirror: Mirror,
    issue: Callable[..., bytes],
) -> None:
    body = invoice_body(token, customer, chain, reference="DUP-1")
    first = create(client, merchant_key, body)
    again = client.post("/v1/invoices", json=body, headers=bearer(merchant_key))
    assert again.status_code == 409 and "DUP-1" in again.json()["error"]["message"]
    # Another merchant may use the same business number: a different invoice id.
    other = create(client, stranger_key, body)
    assert other["reference_hash"] == first["reference_hash"]
    assert other["invoice_id"] != first["invoice_id"]

    issue(number="CHAIN-1")  # issued on-chain directly, not through the gateway
    mirror.sync()
    direct = client.post(
        "/v1/invoices",
        json=invoice_body(token, customer, chain, reference="CHAIN-1"),
        headers=bearer(merchant_key),
    )
    assert direct.status_code == 409


def test_a_never_issued_invoice_can_be_withdrawn_and_its_reference_used_again(
    client: TestClient,
    engine: Engine,
    merchant_key: str,
    stranger_key: str,
    token: Any,
    customer: Any,
    chain: Any,
    mirror: Mirror,
) -> None:
    body = invoice_body(token, customer, chain, reference="WITHDRAW-1")
    created = create(client, merchant_key, body)
    url = f"/v1/invoices/{created['invoice_id']}"
    # Another merchant and a customer may not withdraw it.
    assert client.delete(url, headers=bearer(stranger_key)).status_code == 404
    session = customer_session(engine, customer.address, chain.chain_id)
    assert client.delete(url, headers=bearer(session)).status_code == 403
    assert client.delete(url).status_code == 401
    assert client.get(url, headers=bearer(merchant_key)).json()["pending"] is True

    assert client.delete(url, headers=bearer(merchant_key)).status_code == 204
    assert client.get(url, headers=bearer(merchant_key)).status_code == 404
    assert client.delete(url, headers=bearer(merchant_key)).status_code == 404  # once only
    # The reference is free again: new content, the same invoice id.
    again = create(client, merchant_key, {**body, "notes": "second try"})
    assert again["invoice_id"] == created["invoice_id"]
    assert again["content_hash"] != created["content_hash"]

    # Once its transaction is mined the invoice stays, indexed or not yet.
    send(mirror.web3, again["transaction"])
    refused = client.delete(url, headers=bearer(merchant_key))
    assert refused.status_code == 409 and "void" in refused.json()["error"]["message"]
    mirror.sync()
    assert client.delete(url, headers=bearer(merchant_key)).status_code == 409
    view = client.get(url, headers=bearer(merchant_key)).json()
    assert view["content_matches"] is True and view["document"]["notes"] == "second try"
    assert (
        client.delete(f"/v1/invoices/0x{'ab' * 32}", headers=bearer(merchant_key)).status_code
        == 404
    )


def test_creation_needs_a_merchant_key(
    client: TestClient, engine: Engine, token: Any, customer: Any, chain: Any
) -> None:
    body = invoice_body(token, customer, chain)
    assert client.post("/v1/invoices", json=body).status_code == 401
    assert (
        client.post("/v1/invoices", json=body, headers=bearer("cbk_nope_nope")).status_code == 401
    )
    session = customer_session(engine, customer.address, chain.chain_id)
    assert client.post("/v1/invoices", json=body, headers=bearer(session)).status_code == 403


def test_idempotency_key_replays_the_creation(
    client: TestClient, merchant_key: str, token: Any, customer: Any, chain: Any
) -> None:
    body = invoice_body(token, customer, chain, reference="IDEM-1")
    headers = {**bearer(merchant_key), "Idempotency-Key": "create-idem-1"}
    first = client.post("/v1/invoices", json=body, headers=headers)
    second = client.post("/v1/invoices", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.json() == second.json()


def test_who_may_see_an_invoice(
    client: TestClient,
    engine: Engine,
    merchant_key: str,
    stranger_key: str,
    token: Any,
    customer: Any,
    stranger: Any,
    payer: Any,
    merchant: Any,
    invoices: Any,
    chain: Any,
    mirror: Mirror,
) -> None:
    created = create(client, merchant_key, invoice_body(token, customer, chain))
    send(mirror.web3, created["transaction"])
    mirror.sync()
    url = f"/v1/invoices/{created['invoice_id']}"
    customer_token = customer_session(engine, customer.address, chain.chain_id)
    stranger_token = customer_session(engine, stranger.address, chain.chain_id)

    assert client.get(url, headers=bearer(merchant_key)).status_code == 200
    assert client.get(url, headers=bearer(customer_token)).status_code == 200
    assert client.get(url, headers=bearer(stranger_key)).status_code == 404
    assert client.get(url, headers=bearer(stranger_token)).status_code == 404
    assert client.get(url).status_code == 401
    upper = "/v1/invoices/0x" + created["invoice_id"][2:].upper()
    assert client.get(upper, headers=bearer(merchant_key)).status_code == 200
    unknown = "/v1/invoices/0x" + "ab" * 32
    assert client.get(unknown, headers=bearer(merchant_key)).status_code == 404
    for malformed in ("0x1234", "0x" + "zz" * 32, "1" * 66, "0x" + "ab" * 33):
        response = client.get(f"/v1/invoices/{malformed}", headers=bearer(merchant_key))
        assert response.status_code == 422, malformed

    # Whoever pays on the customer's behalf may see it too.
    payer_token = customer_session(engine, payer.address, chain.chain_id)
    assert client.get(url, headers=bearer(payer_token)).status_code == 404
    token.approve(invoices, DEFAULT_TOTAL, sender=payer)
    invoices.pay(merchant, reference("INV-2026-0001"), DEFAULT_TOTAL, sender=payer)
    mirror.sync()
    seen = client.get(url, headers=bearer(payer_token))
    assert seen.status_code == 200
    assert seen.json()["status"] == "paid"
    assert seen.json()["payments"][0]["payer"] == payer.address.lower()


def test_view_lists_payments_refunds_and_overdue(
    client: TestClient,
    merchant_key: str,
    token: Any,
    customer: Any,
    merchant: Any,
    invoices: Any,
    chain: Any,
    mirror: Mirror,
) -> None:
    body = invoice_body(token, customer, chain, reference="PART-1", allow_partial=True)
    created = create(client, merchant_key, body)
    send(mirror.web3, created["transaction"])
    ref = reference("PART-1")
    token.approve(invoices, DEFAULT_TOTAL, sender=customer)
    invoices.pay(merchant, ref, 40 * UNIT, sender=customer)
    token.approve(invoices, 5 * UNIT, sender=merchant)
    invoices.refund(created["invoice_id"], customer, 5 * UNIT, sender=merchant)
    mirror.sync()
    url = f"/v1/invoices/{created['invoice_id']}"
    view = client.get(url, headers=bearer(merchant_key)).json()
    assert view["status"] == "partially_paid" and view["overdue"] is False
    assert view["paid"] == str(35 * UNIT) and view["due"] == str(DEFAULT_TOTAL - 35 * UNIT)
    assert [p["amount"] for p in view["payments"]] == [str(40 * UNIT)]
    assert view["refunds"][0]["amount"] == str(5 * UNIT)
    assert view["refunds"][0]["recipient"] == customer.address.lower()
    assert view["settlements"] == []

    chain.pending_timestamp = body["due_date"] + 3600
    chain.mine()
    mirror.sync()
    assert client.get(url, headers=bearer(merchant_key)).json()["overdue"] is True


def test_an_invoice_issued_on_chain_directly_has_no_document(
    client: TestClient,
    merchant_key: str,
    mirror: Mirror,
    issue: Callable[..., bytes],
    invoices: Any,
    merchant: Any,
) -> None:
    ref = issue(number="DIRECT-1", due_in=PERIOD)
    mirror.sync()
    invoice_id = "0x" + bytes(invoices.invoiceIdOf(merchant, ref)).hex()
    view = client.get(f"/v1/invoices/{invoice_id}", headers=bearer(merchant_key)).json()
    assert view["document"] is None and view["reference"] is None
    assert view["content_matches"] is None and view["pending"] is False
    assert view["currency"] == "TUSD" and view["decimals"] == 6


def test_edited_content_no_longer_matches_the_chain(
    client: TestClient,
    engine: Engine,
    merchant_key: str,
    token: Any,
    customer: Any,
    chain: Any,
    mirror: Mirror,
) -> None:
    created = create(client, merchant_key, invoice_body(token, customer, chain))
    send(mirror.web3, created["transaction"])
    mirror.sync()
    url = f"/v1/invoices/{created['invoice_id']}"
    content = client.get(url, headers=bearer(merchant_key)).json()["document"]["content"]
    with engine.begin() as conn:
        conn.execute(
            update(InvoiceDocument)
            .where(InvoiceDocument.invoice_id == created["invoice_id"])
            .values(content=content.replace('"quantity":"3"', '"quantity":"2"'))
        )
    assert client.get(url, headers=bearer(merchant_key)).json()["content_matches"] is False


def test_injection_looking_input_is_stored_verbatim(
    client: TestClient, merchant_key: str, token: Any, customer: Any, chain: Any
) -> None:
    nasty = "'; DROP TABLE invoices; -- <script>alert(1)</script>"
    body = invoice_body(
        token,
        customer,
        chain,
        reference=nasty,
        notes=nasty,
        line_items=[{"description": nasty, "quantity": 1, "unit_price": "5"}],
    )
    created = create(client, merchant_key, body)
    view = client.get(f"/v1/invoices/{created['invoice_id']}", headers=bearer(merchant_key)).json()
    assert view["reference"] == nasty and view["document"]["notes"] == nasty
    assert view["document"]["line_items"][0]["description"] == nasty


def test_views_are_served_from_the_mirror_when_the_node_is_down(
    client: TestClient,
    make_client: Callable[..., TestClient],
    merchant_key: str,
    mirror: Mirror,
    token: Any,
    customer: Any,
    chain: Any,
    issue: Callable[..., bytes],
    invoices: Any,
    merchant: Any,
) -> None:
    created = create(client, merchant_key, invoice_body(token, customer, chain))
    send(mirror.web3, created["transaction"])
    direct = "0x" + bytes(invoices.invoiceIdOf(merchant, issue(number="DIRECT-2"))).hex()
    mirror.sync()
    offline = make_client(rpc_url="http://127.0.0.1:9")  # nothing listens on the discard port
    view = offline.get(f"/v1/invoices/{created['invoice_id']}", headers=bearer(merchant_key))
    assert view.status_code == 200 and view.json()["currency"] == "TUSD"  # from the document
    bare = offline.get(f"/v1/invoices/{direct}", headers=bearer(merchant_key))
    assert bare.status_code == 200 and bare.json()["currency"] is None
    assert offline.get(created["public_url"].removeprefix("http://testserver")).status_code == 200
    refused = offline.post(
        "/v1/invoices",
        json=invoice_body(token, customer, chain, reference="OFFLINE"),
        headers=bearer(merchant_key),
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "chain_unavailable"
