"""keeper tables

The keeper's transactions (one per sender and nonce) with every signed attempt, recorded
before broadcast, and its per-subscription state: work claims, dunning, at-risk flags.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import offchain.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keeper_transactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("sender", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subscription_ids", sa.Text(), nullable=False),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("broadcast_block", sa.BigInteger(), nullable=True),
        sa.Column("mined_block", sa.BigInteger(), nullable=True),
        sa.Column("mined_tx_hash", sa.String(length=66), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keeper_transactions")),
        sa.UniqueConstraint(
            "chain_id", "sender", "nonce", name=op.f("uq_keeper_transactions_chain_id")
        ),
    )
    with op.batch_alter_table("keeper_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_keeper_transactions_status"), ["status"], unique=False)

    op.create_table(
        "keeper_tx_attempts",
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("raw_tx", sa.Text(), nullable=False),
        sa.Column("max_fee_per_gas", offchain.db.types.Uint256(length=78), nullable=False),
        sa.Column("max_priority_fee_per_gas", offchain.db.types.Uint256(length=78), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tx_hash", name=op.f("pk_keeper_tx_attempts")),
    )
    with op.batch_alter_table("keeper_tx_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_keeper_tx_attempts_transaction_id"), ["transaction_id"], unique=False
        )

    op.create_table(
        "keeper_subscriptions",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("subscription_id", sa.BigInteger(), nullable=False),
        sa.Column("known_paid_through", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("failed_due_at", sa.BigInteger(), nullable=True),
        sa.Column("last_failure_reason", sa.String(length=32), nullable=True),
        sa.Column("next_retry_at", sa.BigInteger(), nullable=True),
        sa.Column("lapsed", sa.Boolean(), nullable=False),
        sa.Column("at_risk", sa.Boolean(), nullable=False),
        sa.Column("at_risk_reason", sa.String(length=32), nullable=True),
        sa.Column("at_risk_due_at", sa.BigInteger(), nullable=True),
        sa.Column("at_risk_amount", offchain.db.types.Uint256(length=78), nullable=True),
        sa.Column("at_risk_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "chain_id", "contract", "subscription_id", name=op.f("pk_keeper_subscriptions")
        ),
    )
    with op.batch_alter_table("keeper_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_keeper_subscriptions_transaction_id"), ["transaction_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_keeper_subscriptions_at_risk"), ["at_risk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("keeper_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keeper_subscriptions_at_risk"))
        batch_op.drop_index(batch_op.f("ix_keeper_subscriptions_transaction_id"))
    op.drop_table("keeper_subscriptions")
    with op.batch_alter_table("keeper_tx_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keeper_tx_attempts_transaction_id"))
    op.drop_table("keeper_tx_attempts")
    with op.batch_alter_table("keeper_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_keeper_transactions_status"))
    op.drop_table("keeper_transactions")
