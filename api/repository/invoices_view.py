"""Mirror reads behind the invoice views: one invoice, its payments, settlements and refunds,
and the time of the newest indexed block."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, select

from offchain.db.models import (
    Base,
    Block,
    Invoice,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def invoice(conn: Connection, chain_id: int, contract: str, invoice_id: str) -> Invoice | None:
    row = conn.execute(
        select(_table(Invoice)).where(
            Invoice.chain_id == chain_id,
            Invoice.contract == contract,
            Invoice.invoice_id == invoice_id,
        )
    ).first()
    return None if row is None else Invoice(**row._mapping)


def _facts(
    conn: Connection, model: Any, chain_id: int, contract: str, invoice_id: str
) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(_table(model))
        .where(
            model.invoice_id == invoice_id,
            model.chain_id == chain_id,
            model.contract == contract,
        )
        .order_by(model.block_number, model.log_index)
    )
    return [dict(row._mapping) for row in rows]


def payments(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> list[dict[str, Any]]:
    return _facts(conn, InvoicePayment, chain_id, contract, invoice_id)


def settlements(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> list[dict[str, Any]]:
    return _facts(conn, InvoiceSettlement, chain_id, contract, invoice_id)


def refunds(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> list[dict[str, Any]]:
    return _facts(conn, InvoiceRefund, chain_id, contract, invoice_id)


def latest_block_time(conn: Connection, chain_id: int) -> int | None:
    """The timestamp of the newest block header the indexer keeps (its head), if any."""
    return conn.execute(
        select(Block.timestamp)
        .where(Block.chain_id == chain_id)
        .order_by(Block.number.desc())
        .limit(1)
    ).scalar()
