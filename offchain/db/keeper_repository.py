"""Every SQL statement of the keeper. Functions take a Connection inside the caller's
transaction.

Sharing the work: due subscriptions are claimed in a short transaction with
`SELECT ... FOR UPDATE SKIP LOCKED` over the keeper's own `keeper_subscriptions` rows (never
the mirror's, which the indexer updates), and the claim is written down with a lease, so
two keepers on PostgreSQL never pick the same subscription and a keeper that dies frees its
claims when the lease runs out. A claimed subscription then goes into a transaction, which
is recorded — with `transaction_id` set on the subscription in the same database
transaction — before it is broadcast; while that transaction is unresolved no keeper claims
the subscription again. SQLite has no row locks and is served by one keeper at a time (the
keeper's lock file), so the same statements run there without `FOR UPDATE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from offchain.db.joins import same_row, with_plan, with_subscription_and_plan
from offchain.db.models import (
    UNRESOLVED_TX_STATUSES,
    KeeperSubscription,
    KeeperTransaction,
    KeeperTxAttempt,
    KeeperTxStatus,
    Plan,
    Subscription,
    SubscriptionState,
    table_of,
)

_W = table_of(KeeperSubscription)
_S = table_of(Subscription)
_P = table_of(Plan)
_TX = table_of(KeeperTransaction)
_AT = table_of(KeeperTxAttempt)

# The next due time as best known: the mirror's, or a later one the keeper read from its own
# receipts before the indexer caught up (so a charged subscription is not picked again).
_due_at = case(
    (_W.c.known_paid_through > _S.c.paid_through, _W.c.known_paid_through), else_=_S.c.paid_through
)


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class Candidate:
    subscription_id: int
    due_at: int


def ensure_rows(
    conn: Connection, chain_id: int, contract: str, due_before: int, now: datetime
) -> None:
    """A `keeper_subscriptions` row for every live subscription of the mirror due before
    `due_before` (chain time) that has none yet."""
    query = (
        select(_S.c.chain_id, _S.c.contract, _S.c.subscription_id)
        .where(
            _S.c.chain_id == chain_id,
            _S.c.contract == contract,
            _S.c.state == SubscriptionState.LIVE.value,
            _S.c.paid_through <= due_before,
            ~select(_W.c.subscription_id).where(same_row(_W, _S, "subscription_id")).exists(),
        )
        .order_by(_S.c.subscription_id)
    )
    ids = [int(r.subscription_id) for r in conn.execute(query)]
    if not ids:
        return
    rows = [_new_row(chain_id, contract, i, now) for i in ids]
    conn.execute(_insert(conn, _W).on_conflict_do_nothing(), rows)


def _new_row(chain_id: int, contract: str, subscription_id: int, now: datetime) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "contract": contract,
        "subscription_id": subscription_id,
        "known_paid_through": 0,
        "transaction_id": None,
        "claimed_by": None,
        "claim_expires_at": None,
        "failures": 0,
        "failed_due_at": None,
        "last_failure_reason": None,
        "next_retry_at": None,
        "lapsed": False,
        "at_risk": False,
        "at_risk_reason": None,
        "at_risk_due_at": None,
        "at_risk_amount": None,
        "at_risk_checked_at": None,
        "updated_at": now,
    }


def _claimable(keeper_id: str, now: datetime) -> Any:
    return and_(
        _W.c.transaction_id.is_(None),
        _W.c.lapsed.is_(False),
        or_(
            _W.c.claimed_by.is_(None),
            _W.c.claimed_by == keeper_id,
            _W.c.claim_expires_at < now,
        ),
    )


def _claim(
    conn: Connection,
    chain_id: int,
    contract: str,
    keeper_id: str,
    where: Any,
    limit: int,
    now: datetime,
    lease_until: datetime,
) -> list[Candidate]:
    query = (
        select(_W.c.subscription_id, _due_at.label("due_at"))
        .select_from(with_subscription_and_plan(_W))
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _S.c.state == SubscriptionState.LIVE.value,
            _claimable(keeper_id, now),
            where,
        )
        .order_by(_due_at, _W.c.subscription_id)
        .limit(limit)
        .with_for_update(of=_W, skip_locked=True)
    )
    candidates = [Candidate(int(r.subscription_id), int(r.due_at)) for r in conn.execute(query)]
    if candidates:
        conn.execute(
            update(_W)
            .where(
                _W.c.chain_id == chain_id,
                _W.c.contract == contract,
                _W.c.subscription_id.in_([c.subscription_id for c in candidates]),
            )
            .values(claimed_by=keeper_id, claim_expires_at=lease_until, updated_at=now)
        )
    return candidates


def claim_due(
    conn: Connection,
    chain_id: int,
    contract: str,
    keeper_id: str,
    chain_now: int,
    limit: int,
    now: datetime,
    lease_until: datetime,
) -> list[Candidate]:
    """Claims up to `limit` subscriptions whose charge is due at `chain_now` and inside its
    grace period — past-due ones only when their dunning retry has come — earliest first."""
    where = and_(
        _due_at <= chain_now,
        _due_at + _P.c.grace_period > chain_now,
        or_(_S.c.cancel_at_period_end.is_(False), _S.c.unbilled_units > 0),
        or_(
            _W.c.next_retry_at.is_(None),
            _W.c.next_retry_at <= chain_now,
            _W.c.failed_due_at < _due_at,  # the failed period was paid since: a new one is due
        ),
    )
    return _claim(conn, chain_id, contract, keeper_id, where, limit, now, lease_until)


def claim_lapses(
    conn: Connection,
    chain_id: int,
    contract: str,
    keeper_id: str,
    chain_now: int,
    limit: int,
    now: datetime,
    lease_until: datetime,
) -> list[Candidate]:
    """Claims subscriptions whose grace period is over: only `finalizeLapse` is left."""
    where = and_(_due_at + _P.c.grace_period <= chain_now, _S.c.cancel_at_period_end.is_(False))
    return _claim(conn, chain_id, contract, keeper_id, where, limit, now, lease_until)


def release_claims(
    conn: Connection,
    chain_id: int,
    contract: str,
    keeper_id: str,
    ids: Iterable[int],
    known_paid_through: dict[int, int] | None = None,
    now: datetime | None = None,
) -> None:
    """Gives up claims (what turned out not to be due, or was not sent); records a later
    due time read on-chain, so the subscription waits for it."""
    ids = list(ids)
    if not ids:
        return
    base = update(_W).where(
        _W.c.chain_id == chain_id,
        _W.c.contract == contract,
        _W.c.claimed_by == keeper_id,
    )
    conn.execute(
        base.where(_W.c.subscription_id.in_(ids)).values(claimed_by=None, claim_expires_at=None)
    )
    for subscription_id, paid_through in (known_paid_through or {}).items():
        conn.execute(
            update(_W)
            .where(
                _W.c.chain_id == chain_id,
                _W.c.contract == contract,
                _W.c.subscription_id == subscription_id,
                _W.c.known_paid_through < paid_through,
            )
            .values(known_paid_through=paid_through, **({"updated_at": now} if now else {}))
        )


# ------------------------------------------------------------------ transactions


def max_nonce(conn: Connection, chain_id: int, sender: str) -> int | None:
    value = conn.execute(
        select(func.max(_TX.c.nonce)).where(_TX.c.chain_id == chain_id, _TX.c.sender == sender)
    ).scalar()
    return None if value is None else int(value)


@dataclass(frozen=True)
class NewAttempt:
    tx_hash: str
    raw_tx: str
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


def record_transaction(
    conn: Connection,
    *,
    chain_id: int,
    contract: str,
    sender: str,
    nonce: int,
    kind: str,
    subscription_ids: Sequence[int],
    gas_limit: int,
    attempt: NewAttempt,
    keeper_id: str,
    now: datetime,
) -> int | None:
    """Records a signed transaction and hands its subscriptions from the claim to it. None
    (and the caller rolls back) when a claim was lost — its lease ran out and another keeper
    took the subscription — so nothing claimed by someone else is ever sent."""
    taken = conn.execute(
        update(_W)
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _W.c.subscription_id.in_(list(subscription_ids)),
            _W.c.claimed_by == keeper_id,
            _W.c.transaction_id.is_(None),
        )
        .values(claimed_by=None, claim_expires_at=None, updated_at=now)
    ).rowcount
    if taken != len(set(subscription_ids)):
        return None
    tx_id = int(
        conn.execute(
            _TX.insert()
            .values(
                chain_id=chain_id,
                contract=contract,
                sender=sender,
                nonce=nonce,
                kind=kind,
                subscription_ids=",".join(str(i) for i in subscription_ids),
                gas_limit=gas_limit,
                status=KeeperTxStatus.PENDING.value,
                broadcast_block=None,
                created_at=now,
                updated_at=now,
            )
            .returning(_TX.c.id)
        ).scalar_one()
    )
    add_attempt(conn, tx_id, attempt, now)
    conn.execute(
        update(_W)
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _W.c.subscription_id.in_(list(subscription_ids)),
        )
        .values(transaction_id=tx_id)
    )
    return tx_id


def add_attempt(conn: Connection, tx_id: int, attempt: NewAttempt, now: datetime) -> None:
    conn.execute(
        _AT.insert().values(
            tx_hash=attempt.tx_hash,
            transaction_id=tx_id,
            raw_tx=attempt.raw_tx,
            max_fee_per_gas=attempt.max_fee_per_gas,
            max_priority_fee_per_gas=attempt.max_priority_fee_per_gas,
            created_at=now,
        )
    )


def unresolved_transactions(
    conn: Connection, chain_id: int, sender: str
) -> list[KeeperTransaction]:
    rows = conn.execute(
        select(_TX)
        .where(
            _TX.c.chain_id == chain_id,
            _TX.c.sender == sender,
            _TX.c.status.in_([s.value for s in UNRESOLVED_TX_STATUSES]),
        )
        .order_by(_TX.c.nonce)
    )
    return [KeeperTransaction(**r._mapping) for r in rows]


def senders_with_unresolved(conn: Connection, chain_id: int, but: str) -> list[str]:
    """The keys other than `but` that have transactions pending or mined, not yet final."""
    rows = conn.execute(
        select(_TX.c.sender)
        .distinct()
        .where(
            _TX.c.chain_id == chain_id,
            _TX.c.sender != but,
            _TX.c.status.in_([s.value for s in UNRESOLVED_TX_STATUSES]),
        )
        .order_by(_TX.c.sender)
    )
    return [str(sender) for sender in rows.scalars()]


def attempts_of(conn: Connection, tx_ids: Sequence[int]) -> dict[int, list[KeeperTxAttempt]]:
    """Each transaction's attempts, oldest first."""
    out: dict[int, list[KeeperTxAttempt]] = {i: [] for i in tx_ids}
    if not tx_ids:
        return out
    rows = conn.execute(
        select(_AT)
        .where(_AT.c.transaction_id.in_(list(tx_ids)))
        .order_by(_AT.c.created_at, _AT.c.tx_hash)
    )
    for row in rows:
        attempt = KeeperTxAttempt(**row._mapping)
        out[attempt.transaction_id].append(attempt)
    return out


def set_broadcast_block(conn: Connection, tx_id: int, block: int, now: datetime) -> None:
    conn.execute(update(_TX).where(_TX.c.id == tx_id).values(broadcast_block=block, updated_at=now))


def set_status(conn: Connection, tx_id: int, status: KeeperTxStatus, now: datetime) -> None:
    values: dict[str, Any] = {"status": status.value, "updated_at": now}
    if status == KeeperTxStatus.PENDING:
        values.update(mined_block=None, mined_tx_hash=None, succeeded=None, gas_used=None)
    conn.execute(update(_TX).where(_TX.c.id == tx_id).values(**values))


def release_transaction(conn: Connection, tx: KeeperTransaction, now: datetime) -> None:
    """Frees the subscriptions of a transaction that is final (confirmed) or dropped. A mined
    one holds them until it is final: should a reorg take it out, it is sent again, and its
    subscriptions must not be in a new transaction meanwhile."""
    conn.execute(
        update(_W).where(_W.c.transaction_id == tx.id).values(transaction_id=None, updated_at=now)
    )


def mark_mined(
    conn: Connection,
    tx: KeeperTransaction,
    *,
    block: int,
    tx_hash: str,
    succeeded: bool,
    gas_used: int,
    now: datetime,
) -> None:
    conn.execute(
        update(_TX)
        .where(_TX.c.id == tx.id)
        .values(
            status=KeeperTxStatus.MINED.value,
            mined_block=block,
            mined_tx_hash=tx_hash,
            succeeded=succeeded,
            gas_used=gas_used,
            updated_at=now,
        )
    )


def record_charged(
    conn: Connection, chain_id: int, contract: str, paid_through: dict[int, int], now: datetime
) -> None:
    """Charges seen in a receipt: the new due time, and the dunning state cleared."""
    for subscription_id, new_paid_through in paid_through.items():
        conn.execute(
            update(_W)
            .where(
                _W.c.chain_id == chain_id,
                _W.c.contract == contract,
                _W.c.subscription_id == subscription_id,
            )
            .values(
                known_paid_through=new_paid_through,
                failures=0,
                failed_due_at=None,
                last_failure_reason=None,
                next_retry_at=None,
                at_risk=False,
                at_risk_reason=None,
                updated_at=now,
            )
        )


def record_failure(
    conn: Connection,
    chain_id: int,
    contract: str,
    subscription_id: int,
    *,
    due_at: int,
    reason: str,
    retry_at: int,
    now: datetime,
) -> None:
    """A failed charge: counted per due period, with the next retry of the schedule."""
    same_period = _W.c.failed_due_at == due_at
    conn.execute(
        update(_W)
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _W.c.subscription_id == subscription_id,
        )
        .values(
            failures=case((same_period, _W.c.failures + 1), else_=1),
            failed_due_at=due_at,
            last_failure_reason=reason,
            next_retry_at=retry_at,
            updated_at=now,
        )
    )


def record_lapsed(
    conn: Connection, chain_id: int, contract: str, ids: Iterable[int], now: datetime
) -> None:
    ids = list(ids)
    if ids:
        conn.execute(
            update(_W)
            .where(
                _W.c.chain_id == chain_id,
                _W.c.contract == contract,
                _W.c.subscription_id.in_(ids),
            )
            .values(lapsed=True, next_retry_at=None, at_risk=False, updated_at=now)
        )


def grace_periods(
    conn: Connection, chain_id: int, contract: str, ids: Sequence[int]
) -> dict[int, int]:
    if not ids:
        return {}
    rows = conn.execute(
        select(_S.c.subscription_id, _P.c.grace_period)
        .select_from(with_plan(_S))
        .where(
            _S.c.chain_id == chain_id,
            _S.c.contract == contract,
            _S.c.subscription_id.in_(list(ids)),
        )
    )
    return {int(r.subscription_id): int(r.grace_period) for r in rows}


def transactions(
    conn: Connection, chain_id: int, sender: str | None = None
) -> list[KeeperTransaction]:
    query = select(_TX).where(_TX.c.chain_id == chain_id).order_by(_TX.c.id)
    if sender is not None:
        query = query.where(_TX.c.sender == sender)
    return [KeeperTransaction(**r._mapping) for r in conn.execute(query)]


def keeper_subscriptions(
    conn: Connection, chain_id: int, contract: str
) -> list[KeeperSubscription]:
    rows = conn.execute(
        select(_W)
        .where(_W.c.chain_id == chain_id, _W.c.contract == contract)
        .order_by(_W.c.subscription_id)
    )
    return [KeeperSubscription(**r._mapping) for r in rows]


# ----------------------------------------------------------------------- at risk


@dataclass(frozen=True)
class UpcomingRow:
    subscription_id: int
    subscriber: str
    token: str
    due_at: int


def upcoming_charges(
    conn: Connection, chain_id: int, contract: str, after: int, until: int
) -> list[UpcomingRow]:
    """Live subscriptions (not ending) whose next charge falls due in (after, until]."""
    rows = conn.execute(
        select(_W.c.subscription_id, _S.c.subscriber, _P.c.token, _due_at.label("due_at"))
        .select_from(with_subscription_and_plan(_W))
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _S.c.state == SubscriptionState.LIVE.value,
            _S.c.cancel_at_period_end.is_(False),
            _W.c.lapsed.is_(False),
            _due_at > after,
            _due_at <= until,
        )
        .order_by(_W.c.subscription_id)
    )
    return [
        UpcomingRow(int(r.subscription_id), str(r.subscriber), str(r.token), int(r.due_at))
        for r in rows
    ]


@dataclass(frozen=True)
class RiskRow:
    subscription_id: int
    due_at: int
    amount: int
    reason: str | None


def save_risks(
    conn: Connection, chain_id: int, contract: str, risks: Sequence[RiskRow], now: datetime
) -> None:
    """Sets (or clears) the at-risk flag of each assessed subscription."""
    for risk in risks:
        conn.execute(
            update(_W)
            .where(
                _W.c.chain_id == chain_id,
                _W.c.contract == contract,
                _W.c.subscription_id == risk.subscription_id,
            )
            .values(
                at_risk=risk.reason is not None,
                at_risk_reason=risk.reason,
                at_risk_due_at=risk.due_at,
                at_risk_amount=risk.amount,
                at_risk_checked_at=now,
                updated_at=now,
            )
        )


def clear_stale_risks(
    conn: Connection, chain_id: int, contract: str, before_due: int, now: datetime
) -> None:
    """Flags whose due date has passed are no longer a warning: dunning takes over."""
    conn.execute(
        update(_W)
        .where(
            _W.c.chain_id == chain_id,
            _W.c.contract == contract,
            _W.c.at_risk.is_(True),
            _W.c.at_risk_due_at <= before_due,
        )
        .values(at_risk=False, updated_at=now)
    )


def at_risk(conn: Connection, chain_id: int, contract: str) -> list[KeeperSubscription]:
    rows = conn.execute(
        select(_W)
        .where(_W.c.chain_id == chain_id, _W.c.contract == contract, _W.c.at_risk.is_(True))
        .order_by(_W.c.at_risk_due_at, _W.c.subscription_id)
    )
    return [KeeperSubscription(**r._mapping) for r in rows]
