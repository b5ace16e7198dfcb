"""Alembic environment: the engine comes from `offchain.db.engine.alembic_config`, or from
DATABASE_URL when Alembic's own command line is used."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, Engine

from offchain.db.engine import DEFAULT_DATABASE_URL, make_engine
from offchain.db.models import Base

config = context.config
target_metadata = Base.metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        # Inside upgrade_schema's transaction (and, on PostgreSQL, its migration lock).
        _migrate(connection)
        return
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):
        engine = make_engine(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    with engine.begin() as connection:
        _migrate(connection)


run_migrations_online()
