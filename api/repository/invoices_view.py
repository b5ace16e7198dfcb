"""Mirror reads behind the invoice views: one invoice with its stored document, its
payments, settlements and refunds, and the time of the newest indexed block.

A lookup is the gateway's hottest path (SPEC §9 measures it), so its statements are built
once, with bound parameters: building a SQLAlchemy statement costs more than SQLite takes
to run it. The invoice, its document and its money movements of all three kinds come in one
statement (on PostgreSQL, one round trip)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    cast,
    literal,
    null,
    select,
    true,
    union_all,
)

from offchain.db.joins import same_row
from offchain.db.models import (
    Base,
    Block,
    Invoice,
    InvoiceDocument,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
    table_of,
)
from offchain.db.types import Uint256

_INVOICES = table_of(Invoice)
_DOCUMENTS = table_of(InvoiceDocument)
_DOC = "doc_"


def _by_key(table: Table) -> Any:
    return and_(
        table.c.chain_id == bindparam("chain_id"),
        table.c.contract == bindparam("contract"),
        table.c.invoice_id == bindparam("invoice_id"),
    )


# An invoice and its stored document, if any.
_INVOICE_AND_DOCUMENT = _INVOICES.outerjoin(
    _DOCUMENTS, same_row(_DOCUMENTS, _INVOICES, "invoice_id")
)
_INVOICE_WITH_DOCUMENT = (
    select(_INVOICES, *(c.label(_DOC + c.name) for c in _DOCUMENTS.c))
    .select_from(_INVOICE_AND_DOCUMENT)
    .where(_by_key(_INVOICES))
)
_DOCUMENT = select(_DOCUMENTS).where(_by_key(_DOCUMENTS))


def invoice_and_document(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> tuple[Invoice | None, InvoiceDocument | None]:
    """The mirrored invoice and the stored document, either possibly missing (a document
    waits for its transaction to be indexed; an invoice issued by script has none)."""
    key = {"chain_id": chain_id, "contract": contract, "invoice_id": invoice_id}
    row = conn.execute(_INVOICE_WITH_DOCUMENT, key).first()
    if row is None:
        document = conn.execute(_DOCUMENT, key).first()
        return None, None if document is None else InvoiceDocument(**document._mapping)
    values = row._mapping
    invoice = Invoice(**{c.name: values[c.name] for c in _INVOICES.c})
    if values[_DOC + "invoice_id"] is None:
        return invoice, None
    return invoice, InvoiceDocument(**{c.name: values[_DOC + c.name] for c in _DOCUMENTS.c})


def invoice(conn: Connection, chain_id: int, contract: str, invoice_id: str) -> Invoice | None:
    return invoice_and_document(conn, chain_id, contract, invoice_id)[0]


# Payments, settlements and refunds in one statement: (kind, party, amount, fee, fiat
# reference) plus where each came from, in chain order.
_KINDS = (
    ("payment", InvoicePayment, "payer"),
    ("settlement", InvoiceSettlement, "settler"),
    ("refund", InvoiceRefund, "recipient"),
)


def _facts_of(kind: str, model: type[Base], party: str) -> Select[Any]:
    table = table_of(model)
    return select(
        literal(kind, String).label("kind"),
        table.c[party].label("party"),
        table.c.amount,
        (table.c.fee if "fee" in table.c else cast(null(), Uint256)).label("fee"),
        (table.c.fiat_reference if "fiat_reference" in table.c else cast(null(), String)).label(
            "fiat_reference"
        ),
        table.c.tx_hash,
        table.c.block_number,
        table.c.block_time,
        cast(table.c.log_index, Integer).label("log_index"),
    ).where(_by_key(table))


_FACTS = union_all(*(_facts_of(kind, model, party) for kind, model, party in _KINDS))
_PARTY_COLUMN = {kind: party for kind, _, party in _KINDS}


def _movement(values: Any, prefix: str = "") -> dict[str, Any]:
    """One money movement as the views use it, from a row of `_FACTS` (its columns named
    with `prefix`)."""
    kind = values[prefix + "kind"]
    entry: dict[str, Any] = {
        _PARTY_COLUMN[kind]: values[prefix + "party"],
        "amount": values[prefix + "amount"],
        "tx_hash": values[prefix + "tx_hash"],
        "block_number": values[prefix + "block_number"],
        "block_time": values[prefix + "block_time"],
        "log_index": values[prefix + "log_index"],
    }
    if kind == "payment":
        entry["fee"] = values[prefix + "fee"]
    elif kind == "settlement":
        entry["fiat_reference"] = values[prefix + "fiat_reference"]
    return entry


# The whole view in one statement (on PostgreSQL one round trip instead of two): the
# invoice and its document, joined to each of its money movements (a row of NULLs where
# it has none), in chain order.
_MOVEMENTS = _FACTS.subquery("movements")
_MV = "mv_"
_VIEW = (
    select(
        _INVOICES,
        *(c.label(_DOC + c.name) for c in _DOCUMENTS.c),
        *(c.label(_MV + c.name) for c in _MOVEMENTS.c),
    )
    .select_from(_INVOICE_AND_DOCUMENT.outerjoin(_MOVEMENTS, true()))
    .where(_by_key(_INVOICES))
    .order_by(_MOVEMENTS.c.block_number, _MOVEMENTS.c.log_index)
)


def invoice_view(
    conn: Connection, chain_id: int, contract: str, invoice_id: str
) -> tuple[Invoice | None, InvoiceDocument | None, dict[str, list[dict[str, Any]]]]:
    """The mirrored invoice, the stored document (either possibly missing: a document
    waits for its transaction to be indexed, an invoice issued by script has none) and
    {"payment": [...], "settlement": [...], "refund": [...]}, each in chain order: one
    statement while the invoice is mirrored (a document alone takes a second one)."""
    key = {"chain_id": chain_id, "contract": contract, "invoice_id": invoice_id}
    rows = conn.execute(_VIEW, key).all()
    movements: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _, _ in _KINDS}
    if not rows:
        document = conn.execute(_DOCUMENT, key).first()
        return None, None if document is None else InvoiceDocument(**document._mapping), movements
    values = rows[0]._mapping
    invoice = Invoice(**{c.name: values[c.name] for c in _INVOICES.c})
    document_row = None
    if values[_DOC + "invoice_id"] is not None:
        document_row = InvoiceDocument(**{c.name: values[_DOC + c.name] for c in _DOCUMENTS.c})
    for row in rows:
        kind = row._mapping[_MV + "kind"]
        if kind is not None:
            movements[kind].append(_movement(row._mapping, _MV))
    return invoice, document_row, movements


_LATEST_BLOCK_TIME = (
    select(Block.timestamp)
    .where(Block.chain_id == bindparam("chain_id"))
    .order_by(Block.number.desc())
    .limit(1)
)


def latest_block_time(conn: Connection, chain_id: int) -> int | None:
    """The timestamp of the newest block header the indexer keeps (its head), if any."""
    value = conn.execute(_LATEST_BLOCK_TIME, {"chain_id": chain_id}).scalar()
    return None if value is None else int(value)
