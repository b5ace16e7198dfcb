"""Helpers of the invoice tests: request bodies, sending a prepared transaction from an
unlocked Anvil account, and customer sessions."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from web3 import Web3

from api.deps import SESSION_PREFIX, session_token_sha256
from offchain.db import gateway_repository
from tests.chain_fixtures import PERIOD, UNIT


def invoice_body(token: Any, customer: Any, chain: Any, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reference": "INV-2026-0001",
        "customer": str(customer.address) if customer is not None else None,
        "token": str(token.address) if hasattr(token, "address") else str(token),
        "due_date": int(chain.pending_timestamp) + PERIOD,
        "allow_partial": False,
        "line_items": [
            {
                "description": "Consulting",
                "quantity": 3,
                "unit_price": str(25 * UNIT),
                "tax_rate": "19",
            },
            {"description": "Travel", "quantity": 1, "unit_price": str(10 * UNIT)},
        ],
        "notes": "Thank you for your business.",
    }
    body.update(overrides)
    return body


# 3 x 25.00 at 19 % = 75.00 + 14.25 tax; travel 10.00 untaxed.
DEFAULT_TOTAL = 75 * UNIT + 14_250_000 + 10 * UNIT


def send(web3: Web3, tx: dict[str, Any]) -> dict[str, Any]:
    """Sends an EIP-1193 transaction object from its (unlocked) sender; the receipt."""
    fields: dict[str, Any] = {
        "from": tx["from"],
        "to": tx["to"],
        "data": tx["data"],
        "value": int(tx["value"], 16),
    }
    tx_hash = web3.eth.send_transaction(fields)  # type: ignore[arg-type]
    receipt = web3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, receipt
    return dict(receipt)


def customer_session(engine: Engine, address: str, chain_id: int) -> str:
    """A live customer session token for `address` (as Sign-In with Ethereum makes one)."""
    token = SESSION_PREFIX + secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        gateway_repository.insert_session(
            conn,
            {
                "token_sha256": session_token_sha256(token),
                "address": address.lower(),
                "chain_id": chain_id,
                "created_at": now,
                "expires_at": now + timedelta(hours=1),
            },
        )
    return token
