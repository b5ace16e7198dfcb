"""Databases for the off-chain tests: SQLite always, PostgreSQL where TEST_DATABASE_URL
points to one or the local server (127.0.0.1:5432, database `test`) answers. Every test
gets an empty database of its own, migrated to the latest schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from offchain.db.engine import make_engine, normalize_url, upgrade_schema

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_admin_url() -> str | None:
    url = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    try:
        probe = create_engine(normalize_url(url), connect_args={"connect_timeout": 2})
        with probe.connect() as conn:
            conn.execute(text("select 1"))
        probe.dispose()
    except Exception:
        return None
    return url


POSTGRES_ADMIN_URL = _postgres_admin_url()
DATABASES = ["sqlite", *(["postgresql"] if POSTGRES_ADMIN_URL else [])]


def _fresh_postgres_database(admin_url: str) -> tuple[str, str]:
    name = f"chainbill_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base = normalize_url(admin_url).rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_postgres_database(admin_url: str, name: str) -> None:
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL, on each supported database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mirror.sqlite'}"
        return
    assert POSTGRES_ADMIN_URL is not None
    name, url = _fresh_postgres_database(POSTGRES_ADMIN_URL)
    try:
        yield url
    finally:
        _drop_postgres_database(POSTGRES_ADMIN_URL, name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated, empty database."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()
