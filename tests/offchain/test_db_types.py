"""uint256 values round-trip exactly in every database, and the migrations match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, insert, select

from offchain.db.models import Base
from offchain.db.types import UINT256_MAX, Uint256

VALUES = [0, 1, 2**64, 2**128 + 7, 10**77, UINT256_MAX - 1, UINT256_MAX]


def test_uint256_round_trips_exactly_and_sorts_numerically(engine: Engine) -> None:
    metadata = MetaData()
    table = Table(
        "u256_probe", metadata, Column("id", Integer, primary_key=True), Column("v", Uint256)
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": n, "v": v} for n, v in enumerate(reversed(VALUES))])
        stored = [row.v for row in conn.execute(select(table.c.v).order_by(table.c.v))]
    assert stored == VALUES
    assert all(type(v) is int for v in stored)


@pytest.mark.parametrize("bad", [-1, UINT256_MAX + 1])
def test_uint256_refuses_what_is_not_one(engine: Engine, bad: int) -> None:
    metadata = MetaData()
    table = Table(
        "u256_bad", metadata, Column("id", Integer, primary_key=True), Column("v", Uint256)
    )
    metadata.create_all(engine)
    with pytest.raises(Exception, match="is not a uint256"), engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "v": bad}])


def test_uint256_refuses_floats(engine: Engine) -> None:
    metadata = MetaData()
    table = Table(
        "u256_float", metadata, Column("id", Integer, primary_key=True), Column("v", Uint256)
    )
    metadata.create_all(engine)
    with pytest.raises(Exception, match="take int"), engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "v": 1.5}])


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
