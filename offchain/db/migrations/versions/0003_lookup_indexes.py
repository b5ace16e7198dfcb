"""indexes of the gateway's invoice lookups

Keyset pages over (due_date, invoice_id) per merchant, per merchant and status, and per
customer, and the lookup by reference hash: each list request reads one index range.
(merchant, due_date) goes: it is a prefix of (merchant, due_date, invoice_id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES: list[tuple[str, list[str]]] = [
    ("ix_invoices_merchant_due_id", ["merchant", "due_date", "invoice_id"]),
    ("ix_invoices_merchant_status_due_id", ["merchant", "status", "due_date", "invoice_id"]),
    ("ix_invoices_customer_due_id", ["customer", "due_date", "invoice_id"]),
    ("ix_invoices_reference_hash", ["reference_hash"]),
]


# A prefix of ix_invoices_merchant_due_id: PostgreSQL chose it for being smaller and then
# sorted every due date's rows by invoice_id; the longer index serves all its queries.
REPLACED = ("ix_invoices_merchant_due", ["merchant", "due_date"])


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        for name, columns in INDEXES:
            batch_op.create_index(name, columns, unique=False)
        batch_op.drop_index(REPLACED[0])


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(REPLACED[0], REPLACED[1], unique=False)
        for name, _columns in reversed(INDEXES):
            batch_op.drop_index(name)
