"""Every migration goes down and up again, keeping the mirror's rows, on each database."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from offchain.db.engine import alembic_config, make_engine

_LOG = (
    "INSERT INTO raw_events (chain_id, block_number, block_hash, block_time, tx_hash, "
    "log_index, contract, event, topics, data) VALUES (1, :number, :hash, 0, '0x', :index, "
    "'0x', 'Charged', '', '0x')"
)


def test_migrations_go_down_to_nothing_and_up_again_keeping_the_logs(database_url: str) -> None:
    engine = make_engine(database_url)
    config = alembic_config(engine)
    command.upgrade(config, "head")
    logs = [{"number": 9 - n, "hash": f"0x{n:064x}", "index": n % 2} for n in range(4)]
    with engine.begin() as conn:
        conn.execute(text(_LOG), logs)
    command.downgrade(config, "0005")  # the raw event log keyed by a surrogate id again
    with engine.begin() as conn:
        ids = conn.execute(text("SELECT id FROM raw_events")).scalars().all()
        conn.execute(text(_LOG), {"number": 10, "hash": "0x" + "ab" * 32, "index": 0})
        added = conn.execute(text("SELECT id FROM raw_events WHERE block_number = 10")).scalar()
    assert len(set(ids)) == 4 and None not in ids  # every log numbered, each once
    assert added is not None and added not in ids
    command.upgrade(config, "head")
    with engine.begin() as conn:
        stored = conn.execute(
            text("SELECT block_number, log_index FROM raw_events ORDER BY block_number")
        ).all()
    assert [tuple(row) for row in stored] == [(6, 1), (7, 0), (8, 1), (9, 0), (10, 0)]
    command.downgrade(config, "base")
    with engine.connect() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'raw_events'"
                if engine.dialect.name == "postgresql"
                else "SELECT count(*) FROM sqlite_master WHERE name = 'raw_events'"
            )
        ).scalar()
    assert left == 0
    command.upgrade(config, "head")
    engine.dispose()
