"""redundant invoice indexes

Two indexes of `invoices` that no query needs, and that every invoice the indexer writes
(issued, then paid or voided) had to update: (customer), a prefix of (customer, due_date,
invoice_id), which serves every query by customer; and (status), which no query uses
alone: every query by status names the merchant too and reads (merchant, status, due_date,
invoice_id). After the chain-ordered log keys (0006).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 11:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = [("ix_invoices_customer", ["customer"]), ("ix_invoices_status", ["status"])]


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        for name, _columns in DROPPED:
            batch_op.drop_index(name)


def downgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        for name, columns in DROPPED:
            batch_op.create_index(name, columns, unique=False)
