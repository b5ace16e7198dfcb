"""Merchant API keys: created from the CLI, shown once, stored as a SHA-256 of the secret,
scoped to one merchant address, revocable.

A key reads `cbk_<prefix>_<secret>`: the prefix finds the row, the secret (256 random bits,
so a fast hash is enough: there is nothing to brute-force) is checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from offchain.addresses import InvalidAddress, parse_address
from offchain.db import gateway_repository
from offchain.db.models import ApiKey

KEY_PREFIX = "cbk"


class ApiKeyError(ValueError):
    """A key that cannot be created or revoked as asked."""


@dataclass(frozen=True)
class CreatedKey:
    key: str  # the only time the full key exists outside the caller
    prefix: str
    merchant: str
    name: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normalize_merchant(address: str) -> str:
    try:
        return parse_address(address)
    except InvalidAddress as exc:
        raise ApiKeyError(str(exc)) from None


def create_key(conn: Connection, merchant: str, name: str) -> CreatedKey:
    merchant = normalize_merchant(merchant)
    if not name.strip() or len(name) > 100:
        raise ApiKeyError("a key needs a name of 1 to 100 characters (what it is for)")
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    gateway_repository.insert_api_key(
        conn,
        {
            "prefix": prefix,
            "secret_sha256": _sha256(key),
            "merchant": merchant,
            "name": name.strip(),
            "created_at": datetime.now(UTC),
            "revoked_at": None,
        },
    )
    return CreatedKey(key=key, prefix=prefix, merchant=merchant, name=name.strip())


def verify_key(conn: Connection, presented: str) -> ApiKey | None:
    """The live key `presented` is, or None (unknown, malformed, wrong secret, revoked)."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = gateway_repository.api_key_by_prefix(conn, parts[1])
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_sha256, _sha256(presented)):
        return None
    return row


def looks_like_key(presented: str) -> bool:
    return presented.startswith(KEY_PREFIX + "_")


def revoke_key(conn: Connection, prefix: str) -> None:
    if not gateway_repository.revoke_api_key(conn, prefix, datetime.now(UTC)):
        raise ApiKeyError(f"no live API key with prefix {prefix!r} (see `chainbill api-key list`)")


def list_keys(conn: Connection, merchant: str | None) -> list[ApiKey]:
    return gateway_repository.list_api_keys(
        conn, None if merchant is None else normalize_merchant(merchant)
    )
