"""indexes of the gateway's invoice lookups

Keyset pages over (due_date, invoice_id) per merchant, per merchant and status, and per
customer, and the lookup by reference hash: each list request reads one index range.

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


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        for name, columns in INDEXES:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        for name, _columns in reversed(INDEXES):
            batch_op.drop_index(name)
