"""Engines for the mirror, and its schema (Alembic migrations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_DATABASE_URL = "sqlite:///chainbill.sqlite"
SQLITE_PAGE_BYTES = 8192  # the page size of a new SQLite mirror (see make_engine)


def normalize_url(url: str) -> str:
    """PostgreSQL URLs use psycopg 3 (``postgresql://`` alone would ask for psycopg2)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def make_engine(url: str = DEFAULT_DATABASE_URL, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # Last in, first out: the connection just returned, whose page cache and compiled
        # statements are warm, serves the next checkout, instead of every pooled connection
        # in turn each growing a cache of its own (the indexer's writer sets 16 MB).
        if make_url(url).database not in (None, "", ":memory:"):  # a pool of connections
            kwargs.setdefault("pool_use_lifo", True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling issues no BEGIN before DDL, so a schema
            # migration killed half-way would stay half-done: take over BEGIN ourselves.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # A new database gets pages of 8 KiB instead of 4: the mirror's rows are wide
            # (hashes and 78-digit amounts as text), and its indexes fit twice as many a
            # page, so a backfill writes fewer pages (about a tenth faster end to end; see
            # bench/indexer.py). It must come before the switch to WAL; on a database that
            # exists already it changes nothing (its pages stay as they are).
            cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_BYTES}")
            # WAL lets the API read while the indexer writes; NORMAL is durable at every
            # WAL checkpoint and loses no committed transaction on a process crash.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    if url.startswith("postgresql"):
        # Pre-ping (a round trip per checkout) lets long-lived services ride out a server
        # restart; the gateway turns it off and answers a dropped connection with a 503.
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise ValueError(f"unsupported DATABASE_URL {url!r}: use sqlite:///path or postgresql://...")


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


_MIGRATION_LOCK = 0x636861696E62696C  # "chainbil": serializes migrations across processes


def upgrade_schema(engine: Engine) -> None:
    """Brings the database to the latest migration (creating it if empty), in one
    transaction; on PostgreSQL, processes starting together migrate one after the other."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
