"""sealed webhook secrets

Room for a webhook signing secret sealed under CHAINBILL_WEBHOOK_SECRETS_KEY (a Fernet
token with its prefix: about 170 characters; a clear secret is 49).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [("secret", False), ("previous_secret", True)]


def _resize(old: int, new: int) -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        for name, nullable in COLUMNS:
            batch_op.alter_column(
                name,
                existing_type=sa.String(length=old),
                type_=sa.String(length=new),
                existing_nullable=nullable,
            )


def upgrade() -> None:
    _resize(100, 255)


def downgrade() -> None:
    _resize(255, 100)
