"""log keys in chain order

The primary key of the raw event log and of every fact table becomes (chain id, block
number, log index, block hash) instead of (chain id, block hash, log index) (a unique
constraint beside a surrogate id, for the raw event log, whose id goes): unique per log all
the same (a block hash fixes its block number), but in the order the indexer writes, so
that a range is appended at the end of each key's B-tree instead of landing on pages all
over it (block hashes are random). The separate indexes on the block number are dropped:
the keys now lead with it and serve the queries by block range. After the webhooks (0005).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 10:52:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACT_TABLES = (
    "charges",
    "charge_failures",
    "usage_reports",
    "usage_charges",
    "credit_applications",
    "plan_changes",
    "subscription_cancellations",
    "subscription_lapses",
    "invoice_payments",
    "invoice_refunds",
    "invoice_settlements",
)
CHAIN_ORDER = ["chain_id", "block_number", "log_index", "block_hash"]
HASH_ORDER = ["chain_id", "block_hash", "log_index"]


def upgrade() -> None:
    with op.batch_alter_table("raw_events", schema=None) as batch_op:
        batch_op.drop_index("ix_raw_events_chain_block")
        batch_op.drop_constraint("uq_raw_events_log", type_="unique")
        batch_op.drop_constraint("pk_raw_events", type_="primary")
        batch_op.drop_column("id")
        batch_op.create_primary_key("pk_raw_events", CHAIN_ORDER)
    for table in FACT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_block_number")
            batch_op.drop_constraint(f"pk_{table}", type_="primary")
            batch_op.create_primary_key(f"pk_{table}", CHAIN_ORDER)


def downgrade() -> None:
    for table in FACT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"pk_{table}", type_="primary")
            batch_op.create_primary_key(f"pk_{table}", HASH_ORDER)
            batch_op.create_index(f"ix_{table}_block_number", ["block_number"], unique=False)
    # The surrogate id comes back, numbered anew.
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    identity = [sa.Identity()] if op.get_context().dialect.name == "postgresql" else []
    with op.batch_alter_table("raw_events", schema=None) as batch_op:
        batch_op.drop_constraint("pk_raw_events", type_="primary")
        batch_op.add_column(sa.Column("id", id_type, *identity, nullable=not identity))
    if not identity:  # SQLite
        op.execute("UPDATE raw_events SET id = rowid")
    with op.batch_alter_table("raw_events", schema=None) as batch_op:
        batch_op.alter_column("id", existing_type=id_type, nullable=False)
        batch_op.create_primary_key("pk_raw_events", ["id"])
        batch_op.create_unique_constraint("uq_raw_events_log", HASH_ORDER)
        batch_op.create_index(
            "ix_raw_events_chain_block", ["chain_id", "block_number"], unique=False
        )
