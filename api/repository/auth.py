"""Reads of the sign-in tables beyond what `offchain.db.gateway_repository` offers."""

from __future__ import annotations

from sqlalchemy import Connection, select

from offchain.db.models import SiweNonce


def nonce(conn: Connection, value: str) -> SiweNonce | None:
    """The nonce `value` as issued (used or not), or None if it was never issued (or was
    purged after it expired)."""
    row = conn.execute(select(SiweNonce.__table__).where(SiweNonce.nonce == value)).first()
    return None if row is None else SiweNonce(**row._mapping)
