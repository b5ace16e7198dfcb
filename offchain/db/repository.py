"""Every SQL statement of the mirror. Functions take a Connection inside the caller's
transaction: the indexer commits rows and cursor together.

The bulk writes of the indexer (raw events, facts, projections) bypass the ORM's per-row
parameter processing, which costs more than the database's own work at this volume:

- rows become tuples in column order, with `Uint256` values converted exactly as the
  column type converts them (zero-padded text on SQLite; on PostgreSQL the integer itself,
  whose text form NUMERIC reads exactly), and the same errors for what is not a uint256;
- SQLite gets one `executemany` of a plain `INSERT ... ON CONFLICT` statement;
- PostgreSQL gets `COPY ... FROM STDIN` for rows that must be new (raw events and facts,
  which the caller has filtered against the logs already stored), under a savepoint: should
  the database hold one of them after all, the savepoint is rolled back and the rows go
  through `INSERT ... ON CONFLICT DO NOTHING`, so the outcome is always that of the
  conflict-safe insert. Projections, which are updates, use `executemany` of an
  `INSERT ... ON CONFLICT DO UPDATE`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import Boolean, Connection, Engine, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from offchain.db.models import (
    FACT_TABLES,
    PROJECTION_TABLES,
    Base,
    Block,
    IndexerState,
    ProjectionUndo,
    RawEvent,
    table_of,
)
from offchain.db.types import UINT256_MAX, Uint256

_CHUNK = 500
# Bound parameters of one SQLite statement at most (SQLite's own limit is 32,766). The
# driver keeps the statements it compiled (128 a connection), whose size grows with their
# rows: at 10,000 (a thousand rows of ten columns) they held 40 MB more of the indexer's
# memory, filling up as ranges went by, for no measurable speed.
_SQLITE_VARIABLES = 2_000
# The SQLite page cache of the indexer's connection, in KiB (see prepare_bulk_writes).
SQLITE_CACHE_KIB = 16 * 1024
_SQLITE_DEFAULT_CACHE = -2000  # SQLite's own default (about 2 MB)
_TABLES_BY_NAME: dict[str, type[Base]] = {t.__tablename__: t for t in PROJECTION_TABLES}

# The columns of a raw event row, in the order `insert_raw_events` takes them.
RAW_EVENT_COLUMNS = (
    "chain_id",
    "block_number",
    "block_hash",
    "block_time",
    "tx_hash",
    "log_index",
    "contract",
    "event",
    "topics",
    "data",
)


def _primary_key(model: type[Base]) -> list[str]:
    return [c.name for c in table_of(model).primary_key.columns]


def _insert(conn: Connection, model: type[Base]) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table_of(model))
    if dialect == "sqlite":
        return sqlite.insert(table_of(model))
    raise RuntimeError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")


# ------------------------------------------------------------------------ cursor


def get_state(conn: Connection, chain_id: int) -> IndexerState | None:
    row = conn.execute(
        select(table_of(IndexerState)).where(IndexerState.chain_id == chain_id)
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


def insert_raw_events(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Raw events, as tuples in `RAW_EVENT_COLUMNS` order, that are not stored yet (a row
    stored already is left as it is)."""
    if rows:
        _insert_new(conn, RawEvent, RAW_EVENT_COLUMNS, rows)


def insert_facts(conn: Connection, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Fact rows of logs not stored yet (a row stored already is left as it is)."""
    if rows:
        columns = _columns(model)
        _insert_new(conn, model, columns, list(map(_row_builder(model, conn.dialect), rows)))


# ------------------------------------------------------------------- bulk writes


def _columns(model: type[Base]) -> tuple[str, ...]:
    return tuple(c.name for c in table_of(model).columns)


def _uint256_converter(dialect: Dialect) -> Callable[[Any], Any]:
    """The stored form of a `Uint256` value, as the column type gives it (same values, same
    errors): zero-padded text on SQLite, the integer itself for PostgreSQL's COPY."""
    column_type = Uint256()
    if dialect.name == "postgresql":

        def to_postgresql(value: Any) -> Any:
            if type(value) is int and 0 <= value <= UINT256_MAX:
                return value
            checked = column_type.process_bind_param(value, dialect)
            return None if checked is None else int(checked)

        return to_postgresql

    def to_sqlite(value: Any) -> Any:
        if type(value) is int and 0 <= value <= UINT256_MAX:
            return f"{value:078d}"
        return column_type.process_bind_param(value, dialect)

    return to_sqlite


_ROW_BUILDERS: dict[tuple[str, str], Callable[[dict[str, Any]], tuple[Any, ...]]] = {}


def _row_builder(
    model: type[Base], dialect: Dialect
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """dict row -> tuple in `_columns(model)` order, Uint256 values in stored form. Compiled
    once per table and database into one tuple display (the column names are the models'
    own): a uint256 in range is converted inline, anything else goes through the column
    type itself, which converts None and raises what it raises."""
    cache_key = (model.__tablename__, dialect.name)
    builder = _ROW_BUILDERS.get(cache_key)
    if builder is None:
        items = []
        stored = "v" if dialect.name == "postgresql" else "f'{v:078d}'"
        for column in table_of(model).columns:
            assert column.name.isidentifier(), column.name
            value = f"row[{column.name!r}]"
            if isinstance(column.type, Uint256):
                value = (
                    f"({stored} if type(v := {value}) is int and 0 <= v <= {UINT256_MAX} "
                    "else u256(v))"
                )
            items.append(value)
        builder = eval(
            f"lambda row: ({', '.join(items)},)",
            {"__builtins__": {}, "type": type, "int": int, "u256": _uint256_converter(dialect)},
        )
        _ROW_BUILDERS[cache_key] = builder
    return builder


def _sqlite_insert(conn: Connection, head: str, tail: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """`head VALUES (...), (...), ... tail` for rows of equal width, many rows a statement:
    SQLite then inserts a whole chunk in one call that releases the GIL, instead of
    handing it back and forth for every row (and runs its program once a chunk)."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, _SQLITE_VARIABLES // width)
    one = "(" + ", ".join("?" * width) + ")"
    start = 0
    for size in _chunk_sizes(len(rows), per):
        chunk = rows[start : start + size]
        start += size
        statement = f"{head} VALUES {', '.join([one] * size)} {tail}"
        conn.exec_driver_sql(statement, tuple(itertools.chain.from_iterable(chunk)))


def _chunk_sizes(count: int, per: int) -> Iterator[int]:
    """`count` rows as chunks of `per`, the rest as powers of two (137 = 128 + 8 + 1). The
    driver keeps every statement it compiled (128 a connection) and one of two hundred
    rows weighs about 200 KB: with any remainder a statement of its own, each range would
    add new ones until the cache was full, memory growing with the chain; this way a table
    has nine statements at most, compiled once and reused."""
    while count >= per:
        yield per
        count -= per
    size = 1 << (per.bit_length() - 1)
    while count:
        while size > count:
            size >>= 1
        yield size
        count -= size


def _copy_in(
    conn: Connection,
    cursor: Any,
    model: type[Base],
    table: str,
    columns: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
) -> None:
    """PostgreSQL: COPY rows (tuples in `columns` order) into `table` (the table of `model`
    or a staging copy of it), in the binary format: less work than text for the server and
    the client alike."""
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_postgresql_types(model, columns, conn.dialect))
        for row in rows:
            copy.write_row(row)


def _postgresql_types(model: type[Base], columns: Sequence[str], dialect: Dialect) -> list[str]:
    """The PostgreSQL type of each column, as psycopg names them ('VARCHAR(66)' ->
    'varchar', 'NUMERIC(78, 0)' -> 'numeric')."""
    table = table_of(model)
    return [table.c[name].type.compile(dialect=dialect).split("(")[0].lower() for name in columns]


def _insert_new(
    conn: Connection, model: type[Base], columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Inserts rows (tuples in `columns` order, values in stored form) that the caller knows
    to be new; one that is stored already is skipped, as ON CONFLICT DO NOTHING would."""
    table = model.__tablename__
    names = ", ".join(columns)
    if conn.dialect.name == "sqlite":
        _sqlite_insert(conn, f"INSERT INTO {table} ({names})", "ON CONFLICT DO NOTHING", rows)
        return
    if conn.dialect.name != "postgresql":
        raise RuntimeError(f"unsupported database {conn.dialect.name!r}: use SQLite or PostgreSQL")
    try:
        with conn.begin_nested():
            dbapi: Any = conn.connection.dbapi_connection
            with dbapi.cursor() as cursor:
                _copy_in(conn, cursor, model, table, columns, rows)
    except psycopg.errors.UniqueViolation:
        # Stored already after all (the savepoint undid the COPY): the conflict-safe insert.
        marks = ", ".join("%s" for _ in columns)
        conn.exec_driver_sql(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING", list(rows)
        )


# -------------------------------------------------------------------- projections


def load_projections(
    conn: Connection, model: type[Base], keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored rows of `model` for `keys` (missing keys are simply absent), with the
    values the ORM would give (ints for Uint256, bools for Boolean)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    table = table_of(model)
    pk = _primary_key(model)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    if len(pk) != 3:
        columns = [table.c[name] for name in pk]
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for row in conn.execute(select(table).where(tuple_(*columns).in_(chunk))):
                data = dict(row._mapping)
                found[tuple(data[name] for name in pk)] = data
        return found
    # (chain id, contract, id): per chain and contract, one column to match, in plain SQL
    # (the ORM's per-row result processing costs more than the query at this volume).
    names = _columns(model)
    read = _row_reader(model, conn.dialect)
    chain, contract, ident = pk
    select_sql = f"SELECT {', '.join(names)} FROM {model.__tablename__} "
    by_owner: dict[tuple[Any, Any], list[Any]] = {}
    for key in wanted:
        by_owner.setdefault((key[0], key[1]), []).append(key[2])
    for (chain_id, address), ids in by_owner.items():
        if conn.dialect.name == "postgresql":
            batches = [(f"{chain} = %s AND {contract} = %s AND {ident} = ANY(%s)", [ids])]
        else:
            batches = [
                (
                    f"{chain} = ? AND {contract} = ? AND {ident} IN ({', '.join('?' * len(part))})",
                    part,
                )
                for part in (ids[n : n + _CHUNK] for n in range(0, len(ids), _CHUNK))
            ]
        for where, values in batches:
            result = conn.exec_driver_sql(
                select_sql + "WHERE " + where, (chain_id, address, *values)
            )
            for values_row in result:
                data = read(values_row)
                found[(data[chain], data[contract], data[ident])] = data
    return found


def _row_reader(model: type[Base], dialect: Dialect) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Driver row (values in `_columns(model)` order) -> dict of the values the ORM gives:
    Uint256 through its own result conversion, Boolean as bool (SQLite stores 0/1)."""
    uint256 = Uint256()
    converters: list[tuple[str, Callable[[Any], Any]]] = []
    for column in table_of(model).columns:
        if isinstance(column.type, Uint256):
            converters.append((column.name, lambda v: uint256.process_result_value(v, dialect)))
        elif isinstance(column.type, Boolean) and dialect.name == "sqlite":
            converters.append((column.name, lambda v: None if v is None else bool(v)))
    names = _columns(model)

    def read(values: Sequence[Any]) -> dict[str, Any]:
        data = dict(zip(names, values, strict=True))
        for name, convert in converters:
            data[name] = convert(data[name])
        return data

    return read


def upsert_projections(conn: Connection, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Projection rows as they stand now (one per key): inserted, or replacing the stored
    row."""
    if not rows:
        return
    table = model.__tablename__
    pk = _primary_key(model)
    columns = _columns(model)
    names = ", ".join(columns)
    update = f"ON CONFLICT ({', '.join(pk)}) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in columns if name not in pk
    )
    tuples = list(map(_row_builder(model, conn.dialect), rows))
    if conn.dialect.name == "sqlite":
        _sqlite_insert(conn, f"INSERT INTO {table} ({names})", update, tuples)
        return
    # PostgreSQL: COPY into a session-private staging table, then one INSERT ... SELECT:
    # many times cheaper for the server than one INSERT ... ON CONFLICT per row.
    staging = f"staging_{table}"
    dbapi: Any = conn.connection.dbapi_connection
    with dbapi.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {staging}")
        _copy_in(conn, cursor, model, staging, columns, tuples)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} {update}")


def prepare_bulk_writes(conn: Connection) -> None:
    """Sets up a connection for the indexer's bulk writes. On SQLite, a page cache large
    enough for the indexes that inserts reach at random (unique keys begin with a block
    hash): the default 2 MB makes every range re-read them. It is a bound, the same whatever
    the size of the mirror, and counts in the indexer's peak memory: 16 MB backfills as fast
    as 64 MB did (a range's logs share few blocks, so it touches few leaf pages of each
    index), with 45 MB less at 100,000 events."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")


def defer_wal_checkpoints(conn: Connection) -> None:
    """SQLite: this connection's commits no longer copy the write-ahead log into the
    database file (SQLite's default, once the log passes 1,000 pages, in the committing
    call): the caller runs `checkpoint_wal` itself, at a better moment. And when it starts
    the log over, it truncates the log's file, whose size then tells how much the log
    holds (SQLite's default reuses the file as it is)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA wal_autocheckpoint = 0")
        conn.exec_driver_sql("PRAGMA journal_size_limit = 0")


def checkpoint_connection(engine: Engine) -> Any:
    """SQLite: a driver connection for `checkpoint_wal`, the caller's to close. Its page
    cache is set back to SQLite's default, freeing what it holds: the pool may hand out the
    connection the indexer writes with, whose cache is large and full, and a checkpoint
    reads through none."""
    raw = engine.raw_connection()
    cursor = raw.cursor()
    try:
        cursor.execute(f"PRAGMA cache_size = {_SQLITE_DEFAULT_CACHE}")
    finally:
        cursor.close()
    return raw


def checkpoint_wal(raw: Any) -> None:
    """SQLite: copies what the write-ahead log holds into the database file, without
    waiting for readers (what a reader still uses is copied by the next one), so that a
    writer can start the log over once all of it is copied. On `raw`, a driver connection
    outside any transaction (from `checkpoint_connection`)."""
    cursor = raw.cursor()
    try:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        cursor.close()


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
            table = table_of(model)
            conn.execute(
                delete(table).where(*(table.c[n] == v for n, v in zip(pk, key, strict=True)))
            )
        else:
            upsert_projections(conn, model, [json.loads(entry.old_row)])
    conn.execute(
        delete(table_of(ProjectionUndo)).where(
            ProjectionUndo.chain_id == chain_id, ProjectionUndo.block_number >= first_orphaned
        )
    )
    for model in FACT_TABLES:
        table = table_of(model)
        conn.execute(
            delete(table).where(
                table.c.chain_id == chain_id, table.c.block_number >= first_orphaned
            )
        )
    removed = conn.execute(
        delete(table_of(RawEvent)).where(
            RawEvent.chain_id == chain_id, RawEvent.block_number >= first_orphaned
        )
    ).rowcount
    conn.execute(
        delete(table_of(Block)).where(Block.chain_id == chain_id, Block.number >= first_orphaned)
    )
    return int(removed or 0)


def prune_confirmed(conn: Connection, chain_id: int, finalized_block: int) -> None:
    """Undo records and headers of blocks that can no longer be reorged are not needed."""
    conn.execute(
        delete(table_of(ProjectionUndo)).where(
            ProjectionUndo.chain_id == chain_id, ProjectionUndo.block_number <= finalized_block
        )
    )
    conn.execute(
        delete(table_of(Block)).where(Block.chain_id == chain_id, Block.number < finalized_block)
    )


# ------------------------------------------------------------------------ queries


def count_raw_events(conn: Connection, chain_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(table_of(RawEvent))
            .where(RawEvent.chain_id == chain_id)
        ).scalar_one()
    )


def all_rows(conn: Connection, model: type[Base], chain_id: int) -> list[dict[str, Any]]:
    """Every row of a table for one chain, in primary-key order (for reconcile and tests)."""
    table = table_of(model)
    pk = [table.c[name] for name in _primary_key(model)]
    rows = conn.execute(select(table).where(table.c.chain_id == chain_id).order_by(*pk))
    return [dict(row._mapping) for row in rows]
