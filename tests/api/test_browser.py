"""A real browser pays an invoice from its hosted page: Debian's Chromium, headless, driven
by Playwright; the gateway served by uvicorn on loopback; the wallet an EIP-1193 provider
injected into the page that forwards JSON-RPC to Anvil (whose accounts are unlocked, so
eth_sendTransaction and eth_signTypedData_v4 sign there). SQLite only, to keep CI short."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from api.main import create_app
from api.settings import GatewaySettings
from tests.api.conftest import bearer
from tests.api.invoice_helpers import DEFAULT_TOTAL, invoice_body, send
from tests.offchain.indexer.helpers import Mirror

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 120_000  # an upper bound for a slow CI machine, not a measurement

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is not installed at /usr/bin/chromium: tools/setup.sh installs "
    "it when run as root (apt-get install chromium)",
)

# The wallet: every request goes to Python (page.expose_function), which answers the
# account requests itself and forwards the rest to Anvil. Going through Python avoids CORS
# between the page's origin and Anvil's.
PROVIDER_SCRIPT = """
(() => {
  const listeners = {};
  window.ethereum = {
    isChainbillTestWallet: true,
    async request({ method, params }) {
      const reply = JSON.parse(await window.__walletRpc(JSON.stringify({ method, params: params || [] })));
      if (reply.error) {
        const error = new Error(reply.error.message);
        error.code = reply.error.code;
        throw error;
      }
      return reply.result;
    },
    on(event, handler) { (listeners[event] = listeners[event] || []).push(handler); },
    removeListener(event, handler) {
      listeners[event] = (listeners[event] || []).filter((h) => h !== handler);
    },
  };
})();
"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the SQLite + PostgreSQL parametrization)."""
    return f"sqlite:///{tmp_path / 'mirror.sqlite'}"


@dataclass
class Wallet:
    """The injected wallet's JSON-RPC, answered for `account` and forwarded to Anvil."""

    rpc_url: str
    account: str
    refuse_typed_data: bool = False
    calls: list[str] = field(default_factory=list)

    def __call__(self, payload: str) -> str:
        request = json.loads(payload)
        method = request["method"]
        self.calls.append(method)
        if method in ("eth_requestAccounts", "eth_accounts"):
            return json.dumps({"result": [self.account]})
        if method == "eth_signTypedData_v4" and self.refuse_typed_data:
            return json.dumps({"error": {"code": 4001, "message": "User rejected the request."}})
        response = httpx.post(
            self.rpc_url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": request["params"]},
            timeout=30,
        )
        return response.text


@pytest.fixture
def live_server(engine: Engine, settings: GatewaySettings) -> Iterator[Callable[[], str]]:
    """The gateway served by uvicorn in a thread on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings.with_overrides(public_url=url), engine)
    # lifespan off: the app would dispose the engine the test's indexer shares.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield lambda: url
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.mark.parametrize("path", ["permit", "approve"])
def test_customer_pays_from_the_page_in_chromium(
    path: str,
    live_server: Callable[[], str],
    merchant_key: str,
    mirror: Mirror,
    rpc_url: str,
    token: Any,
    customer: Any,
    chain: Any,
) -> None:
    from playwright.sync_api import sync_playwright

    base = live_server()
    reference = f"BROWSER-{path}"
    created = httpx.post(
        f"{base}/v1/invoices",
        json=invoice_body(token, customer, chain, reference=reference),
        headers=bearer(merchant_key),
        timeout=30,
    )
    assert created.status_code == 201, created.text
    invoice = created.json()
    assert invoice["public_url"].startswith(base + "/pay/")
    send(mirror.web3, invoice["transaction"])
    mirror.sync()

    wallet = Wallet(rpc_url, customer.address, refuse_typed_data=path == "approve")
    balance_before = token.balanceOf(customer)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.expose_function("__walletRpc", wallet)
            page.add_init_script(PROVIDER_SCRIPT)
            page.goto(invoice["public_url"] + "?lang=en")
            assert page.get_attribute("#status", "data-status") == "open"
            assert reference in page.inner_text("h1")

            page.click("#pay-button")
            page.wait_for_selector('#pay-status[data-state="indexing"]', timeout=WAIT_MS)
            sent = wallet.calls.count("eth_sendTransaction")
            if path == "permit":
                assert "eth_signTypedData_v4" in wallet.calls and sent == 1
            else:
                assert sent == 2  # approve, then pay
            assert token.balanceOf(customer) == balance_before - DEFAULT_TOTAL

            # The page waits for the indexer, then reloads showing the invoice paid.
            mirror.sync()
            page.wait_for_selector('#status[data-status="paid"]', timeout=WAIT_MS)
            assert page.inner_text("#status") == "Paid"
            assert customer.address.lower() in page.inner_text("#payments")
            assert page.query_selector("#pay-button") is None
            assert errors == []
        finally:
            browser.close()


def test_the_pay_button_names_the_partial_amount_typed(
    live_server: Callable[[], str],
    merchant_key: str,
    mirror: Mirror,
    token: Any,
    customer: Any,
    chain: Any,
) -> None:
    from playwright.sync_api import sync_playwright

    base = live_server()
    body = invoice_body(token, customer, chain, reference="BROWSER-PARTIAL", allow_partial=True)
    created = httpx.post(f"{base}/v1/invoices", json=body, headers=bearer(merchant_key), timeout=30)
    assert created.status_code == 201, created.text
    invoice = created.json()
    send(mirror.web3, invoice["transaction"])
    mirror.sync()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(invoice["public_url"] + "?lang=de")
            assert page.inner_text("#pay-button") == "Bezahlen 99,25 TUSD"
            page.fill("#pay-amount", "1234.5")  # more than is due: the label keeps the due amount
            assert page.inner_text("#pay-button") == "Bezahlen 99,25 TUSD"
            page.fill("#pay-amount", "12.5")
            assert page.inner_text("#pay-button") == "Bezahlen 12,50 TUSD"
            page.fill("#pay-amount", "0.000001")
            assert page.inner_text("#pay-button") == "Bezahlen 0,000001 TUSD"
            page.fill("#pay-amount", "zwölf")
            assert page.inner_text("#pay-button") == "Bezahlen 99,25 TUSD"
        finally:
            browser.close()
