"""SQLite engines: a new mirror gets the page size chosen for it and the write-ahead log;
a database that exists keeps the pages it has, and its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from offchain.db.engine import SQLITE_PAGE_BYTES, make_engine, upgrade_schema


def _pragma(engine_url: str, name: str) -> object:
    engine = make_engine(engine_url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
    finally:
        engine.dispose()


def test_a_new_database_gets_the_chosen_page_size_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mirror.sqlite'}"
    engine = make_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    assert SQLITE_PAGE_BYTES != 4096  # SQLite's own default: the setting must show
    with sqlite3.connect(tmp_path / "mirror.sqlite") as raw:
        assert raw.execute("PRAGMA page_size").fetchone() == (SQLITE_PAGE_BYTES,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_existing_database_keeps_its_pages_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA page_size = 4096")
        raw.execute("CREATE TABLE kept (n INTEGER)")
        raw.execute("INSERT INTO kept VALUES (7)")
    url = f"sqlite:///{path}"
    assert _pragma(url, "page_size") == 4096
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 7
    engine.dispose()
