"""Work claims in the database (SQLite and PostgreSQL, no chain): a claim keeps other
keepers off a subscription until its lease runs out; a keeper whose claim was taken over
records nothing, so it sends nothing; a subscription held by an unresolved transaction is
never claimed; the retry schedule and the grace period decide what is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from offchain.db import keeper_repository as repo
from offchain.db.models import Plan, Subscription

CHAIN = 31337
MANAGER = "0x" + "11" * 20
GRACE = 1000
NOW = 10_000  # chain time


def _mirror(engine: Engine, paid_through: dict[int, int]) -> None:
    with engine.begin() as conn:
        conn.execute(
            Plan.__table__.insert().values(  # type: ignore[attr-defined]
                chain_id=CHAIN, contract=MANAGER, plan_id=1, merchant="0x" + "22" * 20,
                token="0x" + "33" * 20, price=10, period=5000, trial_period=0,
                grace_period=GRACE, unit_price=0, included_units=0, active=True,
                created_block=1,
            )
        )  # fmt: skip
        for subscription_id, due in paid_through.items():
            conn.execute(
                Subscription.__table__.insert().values(  # type: ignore[attr-defined]
                    chain_id=CHAIN, contract=MANAGER, subscription_id=subscription_id,
                    plan_id=1, subscriber="0x" + "44" * 20, max_amount_per_period=10,
                    started_at=0, paid_through=due, state="live",
                    cancel_at_period_end=False, past_due=False, in_trial=False, credit=0,
                    unbilled_units=0, created_block=1,
                )
            )  # fmt: skip


def _claim(engine: Engine, keeper: str, wall: datetime, lease: float = 60) -> list[int]:
    with engine.begin() as conn:
        repo.ensure_rows(conn, CHAIN, MANAGER, NOW, wall)
        found = repo.claim_due(
            conn, CHAIN, MANAGER, keeper, NOW, 100, wall, wall + timedelta(seconds=lease)
        )
    return [c.subscription_id for c in found]


def _attempt(n: int) -> repo.NewAttempt:
    return repo.NewAttempt("0x" + f"{n:064x}", "0x02", 2, 1)


def _record(engine: Engine, keeper: str, ids: list[int], nonce: int, wall: datetime) -> int | None:
    with engine.begin() as conn:
        return repo.record_transaction(
            conn, chain_id=CHAIN, contract=MANAGER, sender=keeper, nonce=nonce,
            kind="charge_batch", subscription_ids=ids, gas_limit=100_000,
            attempt=_attempt(nonce), keeper_id=keeper, now=wall,
        )  # fmt: skip


def test_claims_leases_and_holds(engine: Engine) -> None:
    # 1..3 due (3 only just), 4 not yet, 5 past its grace period.
    _mirror(engine, {1: NOW - 10, 2: NOW - 5, 3: NOW, 4: NOW + 1, 5: NOW - GRACE})
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    assert _claim(engine, "a", wall) == [1, 2, 3]
    assert _claim(engine, "b", wall) == []  # held by a's claim
    later = wall + timedelta(seconds=61)
    assert _claim(engine, "b", later) == [1, 2, 3]  # a's lease ran out
    # a comes back: its claims were taken, so it records (and sends) nothing.
    assert _record(engine, "a", [1, 2], 0, later) is None
    tx = _record(engine, "b", [1, 2], 0, later)
    assert tx is not None
    # 1 and 2 are held by b's transaction: nobody claims them, not even after the lease.
    much_later = later + timedelta(hours=1)
    assert _claim(engine, "a", much_later) == [3]
    with engine.begin() as conn:
        with_lapses = repo.claim_lapses(conn, CHAIN, MANAGER, "a", NOW, 100, much_later, much_later)
    assert [c.subscription_id for c in with_lapses] == [5]


def test_failed_charges_wait_for_their_retry(engine: Engine) -> None:
    _mirror(engine, {1: NOW - 100})
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    assert _claim(engine, "a", wall) == [1]
    with engine.begin() as conn:
        repo.record_failure(
            conn, CHAIN, MANAGER, 1, due_at=NOW - 100, reason="insufficient_allowance",
            retry_at=NOW + 50, now=wall,
        )  # fmt: skip
    assert _claim(engine, "a", wall) == []  # the retry point has not come
    with engine.begin() as conn:
        repo.record_failure(
            conn, CHAIN, MANAGER, 1, due_at=NOW - 100, reason="insufficient_balance",
            retry_at=NOW - 1, now=wall,
        )  # fmt: skip
        (row,) = repo.keeper_subscriptions(conn, CHAIN, MANAGER)
    assert row.failures == 2 and row.last_failure_reason == "insufficient_balance"
    assert _claim(engine, "a", wall) == [1]
