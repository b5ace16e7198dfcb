"""The repository's bulk paths (plain executemany on SQLite; COPY, and a staging table for
upserts, on PostgreSQL) store exactly what the ORM stores, refuse what it refuses, keep the
conflict-safe semantics of the inserts, and read back what the ORM reads."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text

from offchain.db import repository
from offchain.db.models import (
    FACT_TABLES,
    Base,
    Charge,
    ChargeFailure,
    ChargeFailureReason,
    Invoice,
    InvoiceStatus,
    Plan,
    RawEvent,
    Subscription,
    SubscriptionCancellation,
    SubscriptionState,
)
from offchain.db.types import UINT256_MAX

CHAIN, OTHER_CHAIN = 31337, 31338
CONTRACT = "0x" + "ab" * 20
AMOUNTS = [0, 1, 2**63, 2**64 + 1, 10**77, UINT256_MAX - 1, UINT256_MAX]


def _hash(n: int) -> str:
    return f"0x{n:064x}"


def _fact(model: type[Base], n: int, chain_id: int = CHAIN) -> dict[str, Any]:
    """A fact row of `model` with every column set, uint256 columns at extreme values."""
    row: dict[str, Any] = {}
    for column in model.__table__.columns:
        name = column.name
        kind = type(column.type).__name__
        if name == "chain_id":
            row[name] = chain_id
        elif name == "log_index":
            row[name] = n
        elif kind == "Uint256":
            row[name] = AMOUNTS[(n + len(row)) % len(AMOUNTS)]
        elif kind == "Boolean":
            row[name] = n % 2 == 0
        elif kind in ("BigInteger", "Integer"):
            row[name] = 1_700_000_000 + n
        elif name == "reason":
            row[name] = list(ChargeFailureReason)[n % 3]
        else:
            row[name] = _hash(n)[: column.type.length]  # type: ignore[attr-defined]
    return row


def _rows(engine: Engine, model: type[Base], chain_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = repository.all_rows(conn, model, chain_id)
    for row in rows:
        row.pop("chain_id")
    return rows


@pytest.mark.parametrize("model", FACT_TABLES, ids=lambda m: m.__tablename__)
def test_bulk_facts_are_stored_as_the_orm_stores_them(engine: Engine, model: type[Base]) -> None:
    with engine.begin() as conn:
        repository.insert_facts(conn, model, [_fact(model, n) for n in range(12)])
        conn.execute(insert(model), [_fact(model, n, OTHER_CHAIN) for n in range(12)])
    bulk, orm = _rows(engine, model, CHAIN), _rows(engine, model, OTHER_CHAIN)
    assert bulk == orm and len(bulk) == 12
    # The stored form itself, not only what it reads back as.
    columns = ", ".join(c.name for c in model.__table__.columns if c.name != "chain_id")
    query = text(f"SELECT {columns} FROM {model.__tablename__} WHERE chain_id = :c")
    with engine.connect() as conn:
        stored = {
            chain: sorted(tuple(map(repr, row)) for row in conn.execute(query, {"c": chain}))
            for chain in (CHAIN, OTHER_CHAIN)
        }
    assert stored[CHAIN] == stored[OTHER_CHAIN]


def test_uint256_max_is_stored_exactly(engine: Engine) -> None:
    row = {**_fact(Charge, 1), "amount": UINT256_MAX, "fee": 2**256 - 2}
    with engine.begin() as conn:
        repository.insert_facts(conn, Charge, [row])
    with engine.connect() as conn:
        amount, fee = conn.execute(text("SELECT amount, fee FROM charges")).one()
        as_text = conn.execute(text("SELECT CAST(amount AS TEXT) FROM charges")).scalar_one()
    assert (int(amount), int(fee)) == (UINT256_MAX, 2**256 - 2)
    expected = str(UINT256_MAX)
    assert as_text == (expected if engine.dialect.name == "postgresql" else expected.zfill(78))
    assert _rows(engine, Charge, CHAIN)[0]["amount"] == UINT256_MAX


@pytest.mark.parametrize("bad", [-1, UINT256_MAX + 1, 1.5, True])
def test_bulk_facts_refuse_what_is_not_a_uint256(engine: Engine, bad: Any) -> None:
    row = {**_fact(Charge, 1), "amount": bad}
    with pytest.raises((TypeError, ValueError)), engine.begin() as conn:
        repository.insert_facts(conn, Charge, [row])
    assert _rows(engine, Charge, CHAIN) == []


def test_rows_stored_already_are_skipped_not_duplicated(engine: Engine) -> None:
    """The fast path assumes new rows; when one is stored already (on PostgreSQL the COPY
    fails and its savepoint is rolled back) the outcome is that of ON CONFLICT DO NOTHING."""
    first = [_fact(SubscriptionCancellation, n) for n in range(3)]
    with engine.begin() as conn:
        repository.insert_facts(conn, SubscriptionCancellation, first)
    again = [{**first[1], "effective_at": 1}, _fact(SubscriptionCancellation, 7)]
    with engine.begin() as conn:
        repository.insert_facts(conn, SubscriptionCancellation, again)
        repository.save_state(conn, CHAIN, 5, _hash(5), 3)  # the transaction goes on
    rows = _rows(engine, SubscriptionCancellation, CHAIN)
    assert [r["log_index"] for r in rows] == [0, 1, 2, 7]
    assert rows[1]["effective_at"] == first[1]["effective_at"]  # left as it was

    raw = [
        (CHAIN, 9, _hash(9), 100, _hash(90), n, CONTRACT, "Charged", _hash(1), "0x")
        for n in range(3)
    ]
    with engine.begin() as conn:
        repository.insert_raw_events(conn, raw[:2])
    with engine.begin() as conn:
        repository.insert_raw_events(conn, raw)
    with engine.connect() as conn:
        assert repository.count_raw_events(conn, CHAIN) == 3
        assert repository.existing_logs(conn, CHAIN, 9, 9) == {(_hash(9), n) for n in range(3)}
        stored = conn.execute(select(RawEvent).order_by(RawEvent.log_index)).all()
    assert [tuple(getattr(r, c) for c in repository.RAW_EVENT_COLUMNS) for r in stored] == raw


def _subscription(n: int, **changes: Any) -> dict[str, Any]:
    return {
        "chain_id": CHAIN,
        "contract": CONTRACT,
        "subscription_id": n,
        "plan_id": 1,
        "subscriber": "0x" + "cd" * 20,
        "max_amount_per_period": UINT256_MAX,
        "started_at": 1,
        "paid_through": 2,
        "state": SubscriptionState.LIVE,
        "cancel_at_period_end": False,
        "past_due": n % 2 == 1,
        "in_trial": True,
        "credit": 2**200,
        "unbilled_units": 0,
        "created_block": 3,
        **changes,
    }


def test_upserts_insert_then_replace_and_load_back_as_the_orm_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        repository.upsert_projections(conn, Subscription, [_subscription(n) for n in range(600)])
    changed = [
        _subscription(n, state=SubscriptionState.CANCELED, credit=n, cancel_at_period_end=True)
        for n in range(0, 600, 2)
    ]
    with engine.begin() as conn:
        repository.upsert_projections(conn, Subscription, changed)
        repository.upsert_projections(conn, Subscription, [_subscription(600)])
    with engine.connect() as conn:
        orm = {
            (r["chain_id"], r["contract"], r["subscription_id"]): r
            for r in repository.all_rows(conn, Subscription, CHAIN)
        }
        keys = [(CHAIN, CONTRACT, n) for n in range(0, 700, 3)] + [(OTHER_CHAIN, CONTRACT, 3)]
        loaded = repository.load_projections(conn, Subscription, keys)
    assert len(orm) == 601
    assert loaded == {k: v for k, v in orm.items() if k in keys}
    assert len(loaded) == len(range(0, 601, 3))
    row = loaded[(CHAIN, CONTRACT, 0)]
    assert (row["state"], row["credit"], row["cancel_at_period_end"]) == ("canceled", 0, True)
    assert row["max_amount_per_period"] == UINT256_MAX
    assert all(type(v) is bool for r in loaded.values() for v in (r["past_due"], r["in_trial"]))
    assert loaded[(CHAIN, CONTRACT, 3)] == _subscription(3)


def test_projections_keyed_by_text_ids_load_back(engine: Engine) -> None:
    invoices = [
        {
            "chain_id": CHAIN,
            "contract": CONTRACT,
            "invoice_id": _hash(n),
            "merchant": "0x" + "01" * 20,
            "customer": "0x" + "02" * 20,
            "reference_hash": _hash(n + 1),
            "token": "0x" + "03" * 20,
            "amount": UINT256_MAX - n,
            "due_date": 10,
            "allow_partial": n % 2 == 0,
            "content_hash": _hash(0),
            "paid": 0,
            "status": InvoiceStatus.OPEN,
            "issued_block": 1,
            "issued_at": 2,
        }
        for n in range(5)
    ]
    plans = [
        {
            "chain_id": CHAIN,
            "contract": CONTRACT,
            "plan_id": 1,
            "merchant": "0x" + "01" * 20,
            "token": "0x" + "03" * 20,
            "price": 10**6,
            "period": 30,
            "trial_period": 0,
            "grace_period": 3,
            "unit_price": 0,
            "included_units": UINT256_MAX,
            "active": True,
            "created_block": 1,
        }
    ]
    with engine.begin() as conn:
        repository.upsert_projections(conn, Invoice, invoices)
        repository.upsert_projections(conn, Plan, plans)
        loaded = repository.load_projections(
            conn, Invoice, [(CHAIN, CONTRACT, _hash(n)) for n in (0, 3, 9)]
        )
        plan = repository.load_projections(conn, Plan, [(CHAIN, CONTRACT, 1)])
    assert loaded == {(CHAIN, CONTRACT, _hash(n)): invoices[n] for n in (0, 3)}
    assert plan == {(CHAIN, CONTRACT, 1): plans[0]}


def test_charge_failure_reasons_are_stored_as_their_values(engine: Engine) -> None:
    rows = [_fact(ChargeFailure, n) for n in range(3)]
    with engine.begin() as conn:
        repository.insert_facts(conn, ChargeFailure, rows)
        stored = conn.execute(text("SELECT reason FROM charge_failures ORDER BY log_index"))
        assert [r for (r,) in stored] == [reason.value for reason in ChargeFailureReason]


@pytest.mark.parametrize("count", [0, 1, 737, 1000, 2737, 20_011])
def test_sqlite_bulk_inserts_reuse_a_few_statement_sizes(count: int) -> None:
    """Rows go in chunks of the largest size, the rest in powers of two: every row once,
    and whatever the count only a dozen distinct statements (SQLite's statement cache, and
    so memory, stays flat as the chain grows)."""
    sizes = list(repository._chunk_sizes(count, 909))
    assert sum(sizes) == count and all(0 < size <= 909 for size in sizes)
    assert set(sizes) <= {909} | {2**k for k in range(10)}
