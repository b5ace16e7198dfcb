"""The hosted invoice page: access by link token, languages, escaping, the content check,
the prepared payment transactions (approve + pay, pay, permit + payWithPermit, payEth) and
their refusals, the status the page polls, and the PDF."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from fastapi.testclient import TestClient
from pypdf import PdfReader

from api.services import i18n
from tests.api.conftest import bearer
from tests.api.invoice_helpers import DEFAULT_TOTAL, customer_session, invoice_body, send
from tests.chain_fixtures import NATIVE_TOKEN, UNIT
from tests.offchain.indexer.helpers import Mirror

API_DIR = i18n.LOCALES_DIR.parent


def _issue(
    client: TestClient, key: str, mirror: Mirror, body: dict[str, Any], *, mine: bool = True
) -> dict[str, Any]:
    response = client.post("/v1/invoices", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    if mine:
        send(mirror.web3, created["transaction"])
        mirror.sync()
    created["path"] = created["public_url"].removeprefix("http://testserver")
    return created


@pytest.fixture
def issued(
    client: TestClient, merchant_key: str, mirror: Mirror, token: Any, customer: Any, chain: Any
) -> dict[str, Any]:
    """An ERC-20 invoice created through the gateway, mined and indexed."""
    return _issue(client, merchant_key, mirror, invoice_body(token, customer, chain))


def test_page_shows_the_invoice(client: TestClient, issued: dict[str, Any]) -> None:
    response = client.get(issued["path"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    html = response.text
    assert 'data-status="open"' in html and "INV-2026-0001" in html
    assert "99.25 TUSD" in html  # total, amount due
    assert "Consulting" in html and "19%" in html and "14.25 TUSD" in html
    assert 'data-state="match"' in html
    assert 'id="pay-button"' in html and "/static/pay.js" in html
    assert 'id="overdue"' not in html
    config = json.loads(html.split('id="pay-config">')[1].split("</script>")[0])
    assert config["due"] == str(DEFAULT_TOTAL) and config["decimals"] == 6
    assert config["transactions_url"] == issued["path"] + "/transactions"


def test_wrong_or_malformed_token_is_not_found(
    client: TestClient,
    issued: dict[str, Any],
    merchant_key: str,
    mirror: Mirror,
    token: Any,
    customer: Any,
    chain: Any,
) -> None:
    base, link_token = issued["path"].rsplit("/", 1)
    wrong = ("0" if link_token[0] != "0" else "1") + link_token[1:]
    other = _issue(
        client, merchant_key, mirror, invoice_body(token, customer, chain, reference="OTHER")
    )
    for bad in (wrong, "short", "é" * 32, "z" * 32, other["path"].rsplit("/", 1)[1]):
        for suffix in ("", "/status", ".pdf"):
            response = client.get(f"{base}/{bad}{suffix}")
            assert response.status_code == 404, (bad, suffix)
    assert client.get(issued["path"].upper().replace("/PAY/0X", "/pay/0x")).status_code == 200
    unknown = "/pay/0x" + "ab" * 32 + "/" + link_token
    assert client.get(unknown).status_code == 404
    assert client.get("/pay/0x1234/" + link_token).status_code == 422


def test_page_languages(client: TestClient, issued: dict[str, Any]) -> None:
    german = client.get(issued["path"] + "?lang=de")
    assert german.headers["Content-Language"] == "de"
    assert "Offener Betrag" in german.text and "99,25 TUSD" in german.text
    assert (
        "Offen" in german.text and "19\u00a0%" in german.text and '<html lang="de">' in german.text
    )
    french = client.get(issued["path"], headers={"Accept-Language": "fr-CH, de;q=0.5"})
    assert french.headers["Content-Language"] == "fr"
    assert "Montant dû" in french.text and "99,25\u00a0TUSD" not in french.text
    assert "99,25 TUSD" in french.text and "Ouverte" in french.text
    # ?lang= wins over the header; an unknown language falls back on English.
    assert (
        client.get(issued["path"] + "?lang=de", headers={"Accept-Language": "fr"}).headers[
            "Content-Language"
        ]
        == "de"
    )
    english = client.get(issued["path"] + "?lang=pt", headers={"Accept-Language": "xx"})
    assert english.headers["Content-Language"] == "en" and "Amount due" in english.text


def test_dates_are_localized(client: TestClient, issued: dict[str, Any]) -> None:
    html_de = client.get(issued["path"] + "?lang=de").text
    html_en = client.get(issued["path"] + "?lang=en").text
    date_de = html_de.split('id="due-date">')[1].split("<")[0]
    date_en = html_en.split('id="due-date">')[1].split("<")[0]
    assert date_de != date_en and date_de.endswith("UTC") and "." in date_de.split(",")[0]


def test_every_message_is_translated() -> None:
    """Every message the page, the PDF and pay.js show has a German and a French text."""
    extracted = {
        str(message)
        for _f, _l, message, _c, _x in extract_from_dir(
            str(API_DIR),
            method_map=[("services/**.py", "python"), ("templates/**.html", "jinja2")],
        )
    }
    assert len(extracted) > 40
    for locale in ("de", "fr"):
        catalog = i18n.catalog(locale)
        assert catalog is not None
        untranslated = [
            m for m in extracted if (found := catalog.get(m)) is None or not found.string
        ]
        assert untranslated == [], locale


def test_injection_is_rendered_escaped(
    client: TestClient, merchant_key: str, mirror: Mirror, token: Any, customer: Any, chain: Any
) -> None:
    nasty = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    body = invoice_body(
        token,
        customer,
        chain,
        reference=nasty,
        notes=nasty,
        line_items=[{"description": nasty, "quantity": 1, "unit_price": "5"}],
    )
    created = _issue(client, merchant_key, mirror, body)
    html = client.get(created["path"]).text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    config = html.split('id="pay-config">')[1].split("</script>")[0]
    assert "<" not in config  # the JSON island cannot close its script element


def test_pending_and_content_states(
    client: TestClient,
    merchant_key: str,
    mirror: Mirror,
    token: Any,
    customer: Any,
    chain: Any,
    engine: Any,
) -> None:
    created = _issue(client, merchant_key, mirror, invoice_body(token, customer, chain), mine=False)
    html = client.get(created["path"]).text
    assert 'id="pending"' in html and 'data-state="pending"' in html
    assert 'id="pay-button"' not in html
    status = client.get(created["path"] + "/status").json()
    assert status["pending"] is True and status["status"] == "open"
    refused = client.post(created["path"] + "/transactions", json={"payer": customer.address})
    assert refused.status_code == 409
    send(mirror.web3, created["transaction"])
    mirror.sync()
    assert client.get(created["path"] + "/status").json()["pending"] is False


def test_approve_and_pay_then_paid(
    client: TestClient, issued: dict[str, Any], mirror: Mirror, customer: Any, token: Any
) -> None:
    url = issued["path"] + "/transactions"
    prepared = client.post(url, json={"payer": customer.address}).json()
    assert prepared["amount"] == str(DEFAULT_TOTAL)
    approve, pay = prepared["transactions"]
    assert approve["to"].lower() == token.address.lower()
    assert pay["to"].lower() == mirror.registry and approve["from"] == customer.address
    assert prepared["permit"]["typed_data"]["primaryType"] == "Permit"
    for tx in prepared["transactions"]:
        send(mirror.web3, tx)
    mirror.sync()
    status = client.get(issued["path"] + "/status").json()
    assert status["status"] == "paid" and status["due"] == "0"
    html = client.get(issued["path"]).text
    assert 'data-status="paid"' in html and 'id="paid-note"' in html
    assert customer.address.lower() in html  # listed among the payments
    assert client.post(url, json={"payer": customer.address}).status_code == 409


def test_enough_allowance_means_pay_alone(
    client: TestClient,
    issued: dict[str, Any],
    mirror: Mirror,
    payer: Any,
    token: Any,
    invoices: Any,
) -> None:
    token.approve(invoices, DEFAULT_TOTAL, sender=payer)
    prepared = client.post(issued["path"] + "/transactions", json={"payer": payer.address}).json()
    assert len(prepared["transactions"]) == 1 and prepared["permit"] is None
    send(mirror.web3, prepared["transactions"][0])
    mirror.sync()
    assert client.get(issued["path"] + "/status").json()["status"] == "paid"


def test_permit_then_pay_with_permit(
    client: TestClient, issued: dict[str, Any], mirror: Mirror, customer: Any, stranger: Any
) -> None:
    url = issued["path"] + "/transactions"
    offer = client.post(url, json={"payer": customer.address}).json()["permit"]

    def sign(account: Any) -> str:
        typed = offer["typed_data"]
        if account is not customer:
            typed = {**typed, "message": {**typed["message"], "owner": account.address}}
        signature = mirror.web3.provider.make_request(
            "eth_signTypedData_v4",  # type: ignore[arg-type]
            [account.address, json.dumps(typed)],
        )["result"]
        return str(signature)

    forged = client.post(
        url,
        json={
            "payer": customer.address,
            "permit": {"signature": sign(stranger), "deadline": offer["deadline"]},
        },
    )
    assert forged.status_code == 422 and "not signed by the payer" in forged.text
    late = client.post(
        url,
        json={"payer": customer.address, "permit": {"signature": sign(customer), "deadline": 5}},
    )
    assert late.status_code == 422

    prepared = client.post(
        url,
        json={
            "payer": customer.address,
            "permit": {"signature": sign(customer), "deadline": offer["deadline"]},
        },
    ).json()
    assert len(prepared["transactions"]) == 1
    send(mirror.web3, prepared["transactions"][0])
    mirror.sync()
    assert client.get(issued["path"] + "/status").json()["status"] == "paid"


def test_eth_invoice_is_paid_with_pay_eth(
    client: TestClient, merchant_key: str, mirror: Mirror, chain: Any, payer: Any
) -> None:
    body = invoice_body(
        NATIVE_TOKEN,
        None,
        chain,
        reference="ETH-PAGE",
        line_items=[{"description": "x", "quantity": 2, "unit_price": str(10**17)}],
    )
    created = _issue(client, merchant_key, mirror, body)
    html = client.get(created["path"]).text
    assert "0.20 ETH" in html and "Anyone with this link" in html
    prepared = client.post(created["path"] + "/transactions", json={"payer": payer.address}).json()
    (tx,) = prepared["transactions"]
    assert int(tx["value"], 16) == 2 * 10**17 and prepared["permit"] is None
    send(mirror.web3, tx)
    mirror.sync()
    assert client.get(created["path"] + "/status").json()["status"] == "paid"


def test_payment_requests_are_checked(
    client: TestClient,
    merchant_key: str,
    mirror: Mirror,
    token: Any,
    customer: Any,
    chain: Any,
    invoices: Any,
    merchant: Any,
    stranger: Any,
) -> None:
    whole = _issue(client, merchant_key, mirror, invoice_body(token, customer, chain))
    url = whole["path"] + "/transactions"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"payer": "0x123"}, 422, "payer"),
        ({"payer": customer.address, "amount": str(DEFAULT_TOTAL + 1)}, 422, "exceeds"),
        ({"payer": customer.address, "amount": "1"}, 422, "no partial"),
        ({"payer": customer.address, "amount": "0"}, 422, "positive"),
        ({"payer": customer.address, "amount": "-1"}, 422, "amount"),
        ({"payer": customer.address, "amount": 1.5}, 422, "amount"),
        ({"payer": customer.address, "amount": "9" * 79}, 422, "amount"),
        ({"payer": customer.address, "extra": 1}, 422, "extra"),
        ({"payer": stranger.address}, 200, ""),
        ({"payer": "0x" + "12" * 20}, 422, "balance"),
    ]
    for body, expected, needle in cases:
        response = client.post(url, json=body)
        assert response.status_code == expected, (body, response.text)
        assert needle in response.text

    partial = _issue(
        client,
        merchant_key,
        mirror,
        invoice_body(token, customer, chain, reference="PART", allow_partial=True),
    )
    response = client.post(
        partial["path"] + "/transactions", json={"payer": customer.address, "amount": str(UNIT)}
    )
    assert response.status_code == 200 and response.json()["amount"] == str(UNIT)
    assert 'id="pay-amount"' in client.get(partial["path"]).text

    void = _issue(
        client, merchant_key, mirror, invoice_body(token, customer, chain, reference="VOID")
    )
    invoices.voidInvoice(void["invoice_id"], sender=merchant)
    mirror.sync()
    response = client.post(void["path"] + "/transactions", json={"payer": customer.address})
    assert response.status_code == 409 and "void" in response.text
    assert 'data-status="void"' in client.get(void["path"]).text


def test_overdue_is_shown(
    client: TestClient, issued: dict[str, Any], mirror: Mirror, chain: Any, merchant_key: str
) -> None:
    view = client.get("/v1/invoices/" + issued["invoice_id"], headers=bearer(merchant_key)).json()
    chain.pending_timestamp = view["due_date"] + 60
    chain.mine()
    mirror.sync()
    html = client.get(issued["path"] + "?lang=fr").text
    assert 'id="overdue"' in html and "En retard" in html
    assert client.get(issued["path"] + "/status").json()["overdue"] is True


def _pdf_text(body: bytes) -> str:
    reader = PdfReader(io.BytesIO(body))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_pdf_rendition(
    client: TestClient,
    issued: dict[str, Any],
    merchant_key: str,
    stranger_key: str,
    engine: Any,
    customer: Any,
    chain: Any,
) -> None:
    response = client.get(issued["path"] + ".pdf")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    text = _pdf_text(response.content)
    for expected in ("Invoice INV-2026-0001", "Consulting", "Travel", "19%", "14.25 TUSD"):
        assert expected in text, expected
    assert "99.25 TUSD" in text and "Subtotal" in text and "Open" in text
    assert "matches the hash recorded on-chain" in text
    german = _pdf_text(client.get(issued["path"] + ".pdf?lang=de").content)
    assert "Rechnung INV-2026-0001" in german and "99,25 TUSD" in german
    assert "Zwischensumme" in german

    api_url = f"/v1/invoices/{issued['invoice_id']}/pdf"
    assert client.get(api_url, headers=bearer(merchant_key)).status_code == 200
    session = customer_session(engine, customer.address, chain.chain_id)
    assert "Consulting" in _pdf_text(client.get(api_url, headers=bearer(session)).content)
    french = client.get(api_url, headers={**bearer(session), "Accept-Language": "fr-CH, de;q=0.5"})
    assert "Facture INV-2026-0001" in _pdf_text(french.content)
    chosen = client.get(api_url + "?lang=de", headers={**bearer(session), "Accept-Language": "fr"})
    assert "Rechnung INV-2026-0001" in _pdf_text(chosen.content)  # ?lang= wins over the header
    assert client.get(api_url, headers=bearer(stranger_key)).status_code == 404
    assert client.get(api_url).status_code == 401


def test_pdf_of_many_unicode_lines(
    client: TestClient, merchant_key: str, mirror: Mirror, token: Any, customer: Any, chain: Any
) -> None:
    lines = [
        {
            "description": f"Posten {n} - Größe ✓ 東京 " + "lang " * 30,
            "quantity": n,
            "unit_price": "7",
        }
        for n in range(1, 61)
    ]
    created = _issue(
        client,
        merchant_key,
        mirror,
        invoice_body(token, customer, chain, reference="MANY", line_items=lines),
        mine=False,
    )
    body = client.get(created["path"] + ".pdf").content
    reader = PdfReader(io.BytesIO(body))
    assert len(reader.pages) > 1
    assert "Posten 60" in _pdf_text(body)


def test_pay_script_and_style_are_served(client: TestClient) -> None:
    script = client.get("/static/pay.js")
    assert script.status_code == 200 and "eth_requestAccounts" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/pay.css").status_code == 200


def test_endpoints_are_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/invoices"]
    for path in (
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/pdf",
        "/pay/{invoice_id}/{token}",
        "/pay/{invoice_id}/{token}.pdf",
        "/pay/{invoice_id}/{token}/status",
        "/pay/{invoice_id}/{token}/transactions",
    ):
        assert path in paths, path
    post = paths["/v1/invoices"]["post"]
    assert {"201", "401", "403", "409", "422"} <= set(post["responses"])
