"""Every SQL statement of the mirror. Functions take a Connection inside the caller's
transaction: the indexer commits rows and cursor together."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from offchain.db.models import (
    FACT_TABLES,
    PROJECTION_TABLES,
    Base,
    Block,
    IndexerState,
    ProjectionUndo,
    RawEvent,
)

_CHUNK = 500
_TABLES_BY_NAME: dict[str, type[Base]] = {t.__tablename__: t for t in PROJECTION_TABLES}


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _primary_key(model: type[Base]) -> list[str]:
    return [c.name for c in _table(model).primary_key.columns]


def _insert(conn: Connection, model: type[Base]) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(_table(model))
    if dialect == "sqlite":
        return sqlite.insert(_table(model))
    raise RuntimeError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")


# ------------------------------------------------------------------------ cursor


def get_state(conn: Connection, chain_id: int) -> IndexerState | None:
    row = conn.execute(
        select(_table(IndexerState)).where(IndexerState.chain_id == chain_id)
    ).first()
    return None if row is None else IndexerState(**row._mapping)


def save_state(
    conn: Connection, chain_id: int, last_block: int, last_block_hash: str, finalized_block: int
) -> None:
    values = {
        "chain_id": chain_id,
        "last_block": last_block,
        "last_block_hash": last_block_hash,
        "finalized_block": finalized_block,
        "updated_at": datetime.now(UTC),
    }
    stmt = _insert(conn, IndexerState).values(values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["chain_id"], set_=values))


def stored_blocks(conn: Connection, chain_id: int, above: int) -> dict[int, str]:
    """Hashes of the stored headers above block `above`."""
    rows = conn.execute(
        select(Block.number, Block.hash).where(Block.chain_id == chain_id, Block.number > above)
    )
    return {number: block_hash for number, block_hash in rows}


def save_blocks(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        stmt = _insert(conn, Block)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["chain_id", "number"],
                set_={
                    "hash": stmt.excluded.hash,
                    "parent_hash": stmt.excluded.parent_hash,
                    "timestamp": stmt.excluded.timestamp,
                },
            ),
            list(rows),
        )


# ------------------------------------------------------------------------- events


def existing_logs(conn: Connection, chain_id: int, first: int, last: int) -> set[tuple[str, int]]:
    """(block hash, log index) of the raw events already stored in a block range."""
    rows = conn.execute(
        select(RawEvent.block_hash, RawEvent.log_index).where(
            RawEvent.chain_id == chain_id, RawEvent.block_number.between(first, last)
        )
    )
    return {(block_hash, log_index) for block_hash, log_index in rows}


def insert_raw_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_insert(conn, RawEvent).on_conflict_do_nothing(), list(rows))


def insert_facts(conn: Connection, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_insert(conn, model).on_conflict_do_nothing(), list(rows))


# -------------------------------------------------------------------- projections


def load_projections(
    conn: Connection, model: type[Base], keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored rows of `model` for `keys` (missing keys are simply absent)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    table = _table(model)
    pk = _primary_key(model)
    columns = [table.c[name] for name in pk]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        for row in conn.execute(select(table).where(tuple_(*columns).in_(chunk))):
            data = dict(row._mapping)
            found[tuple(data[name] for name in pk)] = data
    return found


def upsert_projections(conn: Connection, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    pk = _primary_key(model)
    stmt = _insert(conn, model)
    others = [c.name for c in _table(model).columns if c.name not in pk]
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=pk, set_={name: stmt.excluded[name] for name in others}
        ),
        list(rows),
    )


def insert_undo(conn: Connection, chain_id: int, entries: Sequence[dict[str, Any]]) -> None:
    if entries:
        conn.execute(
            _insert(conn, ProjectionUndo),
            [
                {
                    "chain_id": chain_id,
                    "block_number": e["block_number"],
                    "table_name": e["table"].__tablename__,
                    "key": json.dumps(list(e["key"])),
                    "old_row": None if e["old_row"] is None else json.dumps(e["old_row"]),
                }
                for e in entries
            ],
        )


# ------------------------------------------------------------------------ reorgs


def rollback_from(conn: Connection, chain_id: int, first_orphaned: int) -> int:
    """Removes everything derived from blocks >= `first_orphaned`; returns raw events removed."""
    undo = conn.execute(
        select(ProjectionUndo)
        .where(ProjectionUndo.chain_id == chain_id, ProjectionUndo.block_number >= first_orphaned)
        .order_by(ProjectionUndo.id.desc())
    ).all()
    for entry in undo:
        model = _TABLES_BY_NAME[entry.table_name]
        key = json.loads(entry.key)
        if entry.old_row is None:
            pk = _primary_key(model)
            table = _table(model)
            conn.execute(
                delete(table).where(*(table.c[n] == v for n, v in zip(pk, key, strict=True)))
            )
        else:
            upsert_projections(conn, model, [json.loads(entry.old_row)])
    conn.execute(
        delete(_table(ProjectionUndo)).where(
            ProjectionUndo.chain_id == chain_id, ProjectionUndo.block_number >= first_orphaned
        )
    )
    for model in FACT_TABLES:
        table = _table(model)
        conn.execute(
            delete(table).where(
                table.c.chain_id == chain_id, table.c.block_number >= first_orphaned
            )
        )
    removed = conn.execute(
        delete(_table(RawEvent)).where(
            RawEvent.chain_id == chain_id, RawEvent.block_number >= first_orphaned
        )
    ).rowcount
    conn.execute(
        delete(_table(Block)).where(Block.chain_id == chain_id, Block.number >= first_orphaned)
    )
    return int(removed or 0)


def prune_confirmed(conn: Connection, chain_id: int, finalized_block: int) -> None:
    """Undo records and headers of blocks that can no longer be reorged are not needed."""
    conn.execute(
        delete(_table(ProjectionUndo)).where(
            ProjectionUndo.chain_id == chain_id, ProjectionUndo.block_number <= finalized_block
        )
    )
    conn.execute(
        delete(_table(Block)).where(Block.chain_id == chain_id, Block.number < finalized_block)
    )


# ------------------------------------------------------------------------ queries


def count_raw_events(conn: Connection, chain_id: int) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(_table(RawEvent)).where(RawEvent.chain_id == chain_id)
        ).scalar_one()
    )


def all_rows(conn: Connection, model: type[Base], chain_id: int) -> list[dict[str, Any]]:
    """Every row of a table for one chain, in primary-key order (for reconcile and tests)."""
    table = _table(model)
    pk = [table.c[name] for name in _primary_key(model)]
    rows = conn.execute(select(table).where(table.c.chain_id == chain_id).order_by(*pk))
    return [dict(row._mapping) for row in rows]
