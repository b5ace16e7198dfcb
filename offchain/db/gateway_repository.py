"""Every SQL statement on the tables the gateway owns (API keys, sign-in nonces and
sessions, idempotency records, invoice documents, secrets). Functions take a Connection
inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from offchain.db.models import (
    ApiKey,
    Base,
    CustomerSession,
    GatewaySecret,
    IdempotencyRecord,
    InvoiceDocument,
    SiweNonce,
    table_of,
)


def _insert_new(conn: Connection, model: type[Base], values: dict[str, Any]) -> bool:
    """Inserts a row; False (and nothing written) when its primary or unique key exists."""
    try:
        with conn.begin_nested():
            conn.execute(table_of(model).insert().values(values))
    except IntegrityError:
        return False
    return True


# ---------------------------------------------------------------------- API keys


def insert_api_key(conn: Connection, values: dict[str, Any]) -> int:
    result = conn.execute(table_of(ApiKey).insert().values(values).returning(ApiKey.id))
    return int(result.scalar_one())


# Built once: every authenticated request runs it.
_API_KEY_BY_PREFIX = select(table_of(ApiKey)).where(
    table_of(ApiKey).c.prefix == bindparam("prefix")
)


def api_key_by_prefix(conn: Connection, prefix: str) -> ApiKey | None:
    row = conn.execute(_API_KEY_BY_PREFIX, {"prefix": prefix}).first()
    return None if row is None else ApiKey(**row._mapping)


def list_api_keys(conn: Connection, merchant: str | None) -> list[ApiKey]:
    query = select(table_of(ApiKey)).order_by(ApiKey.id)
    if merchant is not None:
        query = query.where(ApiKey.merchant == merchant)
    return [ApiKey(**row._mapping) for row in conn.execute(query)]


def revoke_api_key(conn: Connection, prefix: str, at: datetime) -> bool:
    """Revokes a live key; False when no live key has that prefix."""
    result = conn.execute(
        update(table_of(ApiKey))
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=at)
    )
    return bool(result.rowcount)


def api_key_revocations(conn: Connection) -> tuple[int, datetime | None]:
    """How many keys were ever revoked, and the latest revocation: it changes with every
    revocation (a revoked key stays revoked), so a worker that remembers it knows at the
    cost of one small read whether any key it trusts may have been revoked since."""
    row = conn.execute(
        select(func.count(), func.max(ApiKey.revoked_at)).where(ApiKey.revoked_at.is_not(None))
    ).one()
    return int(row[0]), row[1]


# ------------------------------------------------------------ Sign-In with Ethereum


def insert_nonce(conn: Connection, nonce: str, created_at: datetime, expires_at: datetime) -> None:
    conn.execute(
        table_of(SiweNonce)
        .insert()
        .values(nonce=nonce, created_at=created_at, expires_at=expires_at, used_at=None)
    )


def consume_nonce(conn: Connection, nonce: str, now: datetime) -> bool:
    """Marks an issued, unused, unexpired nonce used; False otherwise. One statement, so two
    sign-ins racing with the same nonce cannot both succeed."""
    result = conn.execute(
        update(table_of(SiweNonce))
        .where(SiweNonce.nonce == nonce, SiweNonce.used_at.is_(None), SiweNonce.expires_at > now)
        .values(used_at=now)
    )
    return bool(result.rowcount)


def delete_expired_nonces(conn: Connection, now: datetime) -> None:
    conn.execute(delete(table_of(SiweNonce)).where(SiweNonce.expires_at <= now))


def insert_session(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(table_of(CustomerSession).insert().values(values))


def live_session(conn: Connection, token_sha256: str, now: datetime) -> CustomerSession | None:
    row = conn.execute(
        select(table_of(CustomerSession)).where(
            CustomerSession.token_sha256 == token_sha256, CustomerSession.expires_at > now
        )
    ).first()
    return None if row is None else CustomerSession(**row._mapping)


def delete_session(conn: Connection, token_sha256: str) -> None:
    conn.execute(
        delete(table_of(CustomerSession)).where(CustomerSession.token_sha256 == token_sha256)
    )


# ------------------------------------------------------------------- idempotency


def claim_idempotency_key(
    conn: Connection, scope: str, key: str, fingerprint: str, now: datetime
) -> bool:
    """Records a request as running under (scope, key); False when the key is taken."""
    return _insert_new(
        conn,
        IdempotencyRecord,
        {
            "scope": scope,
            "key": key,
            "fingerprint": fingerprint,
            "status_code": None,
            "response_headers": None,
            "response_body": None,
            "created_at": now,
        },
    )


def idempotency_record(conn: Connection, scope: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        select(table_of(IdempotencyRecord)).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
        )
    ).first()
    return None if row is None else IdempotencyRecord(**row._mapping)


def complete_idempotency_key(
    conn: Connection, scope: str, key: str, status_code: int, headers: str, body: bytes
) -> None:
    conn.execute(
        update(table_of(IdempotencyRecord))
        .where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
        .values(status_code=status_code, response_headers=headers, response_body=body)
    )


def release_idempotency_key(conn: Connection, scope: str, key: str) -> None:
    conn.execute(
        delete(table_of(IdempotencyRecord)).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
        )
    )


def delete_idempotency_records_before(conn: Connection, before: datetime) -> int:
    result = conn.execute(
        delete(table_of(IdempotencyRecord)).where(IdempotencyRecord.created_at < before)
    )
    return int(result.rowcount or 0)


# ------------------------------------------------------------------ invoice documents


def insert_invoice_document(conn: Connection, values: dict[str, Any]) -> bool:
    """Stores a new invoice's content; False when that invoice already has a document."""
    return _insert_new(conn, InvoiceDocument, values)


def invoice_document(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> InvoiceDocument | None:
    row = conn.execute(
        select(table_of(InvoiceDocument)).where(
            InvoiceDocument.chain_id == chain_id,
            InvoiceDocument.contract == contract,
            InvoiceDocument.invoice_id == invoice_id,
        )
    ).first()
    return None if row is None else InvoiceDocument(**row._mapping)


def delete_invoice_document(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> bool:
    """Forgets an invoice's stored content; False when there was none."""
    result = conn.execute(
        delete(table_of(InvoiceDocument)).where(
            InvoiceDocument.chain_id == chain_id,
            InvoiceDocument.contract == contract,
            InvoiceDocument.invoice_id == invoice_id,
        )
    )
    return bool(result.rowcount)


def set_invoice_transaction(
    conn: Connection, chain_id: int, contract: str, invoice_id: str, transaction_hash: str
) -> None:
    conn.execute(
        update(table_of(InvoiceDocument))
        .where(
            InvoiceDocument.chain_id == chain_id,
            InvoiceDocument.contract == contract,
            InvoiceDocument.invoice_id == invoice_id,
        )
        .values(transaction_hash=transaction_hash)
    )


# ------------------------------------------------------------------------ secrets


def get_or_create_secret(conn: Connection, name: str, candidate: str, now: datetime) -> str:
    """The stored secret `name`; `candidate` becomes it when none exists (first worker
    wins, the others read the winner's)."""
    _insert_new(conn, GatewaySecret, {"name": name, "value": candidate, "created_at": now})
    return str(
        conn.execute(select(GatewaySecret.value).where(GatewaySecret.name == name)).scalar_one()
    )
