"""The keeper: charges due subscriptions in gas-bounded `chargeBatch` transactions, retries
failed ones on the dunning schedule, finalizes lapses, and flags charges at risk.

One pass (`run_once`):

1. Reconcile the keeper's unresolved transactions with the node: a receipt for any of a
   transaction's attempts records what its logs say (charged, failed, lapsed), and its
   subscriptions are freed once it is `confirmations` deep; a nonce taken by another transaction drops it; a transaction seen for the
   first time since start, or unknown to the node, is broadcast again from its recorded raw
   bytes (same hash: it can only be mined once); one left out of blocks for
   `replace_after_blocks` is replaced at the same nonce with fees raised by
   `fee_bump_percent`; a mined one becomes final `confirmations` blocks deep. The
   transactions of a retired key (its keeper not running: see locks.py) are settled the
   same way, except that one which cannot be mined is given up rather than replaced.
2. Finalize lapses (grace period over) with `finalizeLapse`, after `getSubscription` and
   `statusOf` confirm them on-chain.
3. Claim due subscriptions from the mirror, confirm each is due with `nextChargeAt`
   (batched), and send them in `chargeBatch` transactions sized by `eth_estimateGas` under
   `max_gas_per_tx`, with EIP-1559 fees.
4. Every `at_risk_interval` seconds, flag the charges of the next `at_risk_days` days that
   the subscriber's allowance or balance will not cover.

Never twice: a transaction is recorded — signed raw bytes, hash, nonce, subscription ids —
and holds its subscriptions in the database before it is broadcast; a subscription held by
an unresolved transaction is never put in another one. A restart therefore finds everything
that may be on the wire and only ever re-broadcasts or replaces it at the same nonce.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import Engine

from offchain.db import keeper_repository as repo
from offchain.db.models import ChargeFailureReason, KeeperTransaction, KeeperTxKind, KeeperTxStatus
from offchain.indexer.rpc import RpcError
from offchain.keeper.chain import (
    MANAGER,
    BroadcastOutcome,
    Chain,
    Fees,
    Head,
    StoredState,
    SubscriptionStatus,
    receipt_events,
)
from offchain.keeper.dunning import DEFAULT_RETRY_SCHEDULE, Upcoming, assess, next_retry_at
from offchain.keeper.locks import SenderIdle

log = logging.getLogger(__name__)

_FAILURE_REASONS = list(ChargeFailureReason)
DAY = 24 * 3600


@dataclass(frozen=True)
class KeeperConfig:
    chain_id: int
    manager: str
    confirmations: int = 2
    max_gas_per_tx: int = 10_000_000  # gas limit of one transaction at most
    max_batch: int = 500  # subscriptions in one chargeBatch at most
    max_in_flight: int = 16  # unresolved transactions at once
    replace_after_blocks: int = 3  # blocks without inclusion before a fee-bumped replacement
    fee_bump_percent: Fraction = Fraction(25, 2)  # 12.5%: accepted by geth and its kin
    min_priority_fee: int = 10**9  # wei
    max_fee_per_gas: int | None = None  # wei; None: no cap
    gas_margin_percent: int = 25  # over the estimate: state moves between estimate and block
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    at_risk_days: float = 3.0
    at_risk_interval: float = 300.0  # seconds between at-risk scans
    claim_lease: float = 120.0  # seconds a claim holds before another keeper may take it
    claim_limit: int = 5_000  # subscriptions claimed per pass at most


@dataclass
class PassResult:
    """What one pass did."""

    charge_transactions: int = 0
    charges_sent: list[int] = field(default_factory=list)  # subscription ids
    lapse_transactions: int = 0
    mined: int = 0
    confirmed: int = 0
    dropped: int = 0
    rebroadcast: int = 0
    replaced: int = 0
    at_risk: int | None = None  # None: no scan this pass
    unresolved: int = 0  # keeper transactions still pending or mined after the pass

    @property
    def sent(self) -> int:
        return self.charge_transactions + self.lapse_transactions + self.replaced


class _ClaimLost(Exception):
    """A claimed subscription was taken by another keeper (lease ran out): do not send."""


class Keeper:
    def __init__(
        self,
        engine: Engine,
        chain: Chain,
        config: KeeperConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sender_idle: SenderIdle | None = None,
    ) -> None:
        """`sender_idle` (see locks.py): given, the keeper also settles the transactions of
        keys whose keeper is not running; without it, only its own."""
        self.engine = engine
        self.chain = chain
        self.config = config
        self.contract = config.manager.lower()
        self.keeper_id = (
            chain.sender
        )  # one process per key (the CLI's lock): claims survive restarts
        self._clock = clock
        self._sender_idle = sender_idle
        self._broadcast_here: set[int] = set()  # transactions (re)broadcast by this process
        self._next_nonce: int | None = None
        self._last_risk_scan: float | None = None

    # ------------------------------------------------------------------- loop

    def run(
        self,
        stop: threading.Event,
        poll_interval: float = 2.0,
        on_pass: Callable[[PassResult], None] | None = None,
    ) -> None:
        while not stop.is_set():
            result = self.run_once(stop)
            if on_pass is not None:
                on_pass(result)
            stop.wait(poll_interval)

    def run_once(self, stop: threading.Event | None = None) -> PassResult:
        stop = stop or threading.Event()
        result = PassResult()
        head = self.chain.head()
        self.reconcile(head, result)
        if self._sender_idle is not None and not stop.is_set():
            self.settle_orphans(head, result)
        self._next_nonce = None  # re-read: the node and the records are the truth
        if not stop.is_set():
            self.send_lapses(head, result, stop)
        if not stop.is_set():
            self.send_charges(head, result, stop)
        if not stop.is_set() and self._risk_scan_due():
            result.at_risk = self.check_at_risk(head)
        with self.engine.connect() as conn:
            result.unresolved = len(
                repo.unresolved_transactions(conn, self.config.chain_id, self.chain.sender)
            )
        return result

    # -------------------------------------------------------------- reconcile

    def reconcile(self, head: Head, result: PassResult) -> None:
        with self.engine.connect() as conn:
            txs = repo.unresolved_transactions(conn, self.config.chain_id, self.chain.sender)
        self._settle(txs, self.chain.sender, head, result, own=True)

    def settle_orphans(self, head: Head, result: PassResult) -> None:
        """The unresolved transactions of keys whose keeper is not running (a retired key):
        their receipts are read and recorded as for our own, a nonce taken drops them, and
        a pending one is broadcast again from its recorded bytes; one still not mined after
        `replace_after_blocks` cannot be replaced without its key, and is given up."""
        with self.engine.connect() as conn:
            senders = repo.senders_with_unresolved(conn, self.config.chain_id, self.chain.sender)
        assert self._sender_idle is not None
        for sender in senders:
            with self._sender_idle(sender) as idle:
                if not idle:
                    continue  # its keeper runs: they are its to settle
                with self.engine.connect() as conn:
                    txs = repo.unresolved_transactions(conn, self.config.chain_id, sender)
                self._settle(txs, sender, head, result, own=False)

    def _settle(
        self,
        txs: Sequence[KeeperTransaction],
        sender: str,
        head: Head,
        result: PassResult,
        *,
        own: bool,
    ) -> None:
        """Brings `sender`'s unresolved transactions up to date with the node (`own`: the
        key is this keeper's, and it can sign replacements)."""
        if not txs:
            return
        with self.engine.connect() as conn:
            attempts = repo.attempts_of(conn, [tx.id for tx in txs])
        # The nonce first: a transaction mined after this read still shows its receipt below,
        # so "nonce used and no receipt of ours" always means another transaction took it.
        used_nonces = self.chain.nonce_of(sender, "latest")
        hashes = sorted({a.tx_hash for tx in txs for a in attempts[tx.id]})
        receipts = dict(zip(hashes, self.chain.receipts(hashes), strict=True))
        for tx in txs:
            if tx.status == KeeperTxStatus.MINED:
                self._follow_mined(tx, receipts.get(tx.mined_tx_hash or ""), head, result)
                continue
            mined = next(
                (receipts[a.tx_hash] for a in attempts[tx.id] if receipts[a.tx_hash] is not None),
                None,
            )
            if mined is not None:
                self._resolve_mined(tx, mined, head, result)
            elif used_nonces > tx.nonce:
                log.warning(
                    "keeper transaction %d (nonce %d) can never be mined: another transaction "
                    "of %s used its nonce; its subscriptions are free again",
                    tx.id, tx.nonce, sender,
                )  # fmt: skip
                self._drop(tx, result)
            else:
                self._nudge(tx, attempts[tx.id][-1], head, result, own=own)

    def _drop(self, tx: KeeperTransaction, result: PassResult) -> None:
        with self.engine.begin() as conn:
            repo.set_status(conn, tx.id, KeeperTxStatus.DROPPED, self._clock())
            repo.release_transaction(conn, tx, self._clock())
        result.dropped += 1

    def _follow_mined(
        self, tx: KeeperTransaction, receipt: dict[str, Any] | None, head: Head, result: PassResult
    ) -> None:
        now = self._clock()
        if receipt is None:
            # Reorged out before it was final: pending again, and broadcast again.
            log.warning("keeper transaction %d left the chain (reorg); sending it again", tx.id)
            with self.engine.begin() as conn:
                repo.set_status(conn, tx.id, KeeperTxStatus.PENDING, now)
            self._broadcast_here.discard(tx.id)
            return
        if head.number - int(receipt["blockNumber"], 16) + 1 >= self.config.confirmations:
            with self.engine.begin() as conn:
                repo.set_status(conn, tx.id, KeeperTxStatus.CONFIRMED, now)
                repo.release_transaction(conn, tx, now)
            result.confirmed += 1

    def _resolve_mined(
        self, tx: KeeperTransaction, receipt: dict[str, Any], head: Head, result: PassResult
    ) -> None:
        now = self._clock()
        block = int(receipt["blockNumber"], 16)
        succeeded = receipt.get("status") == "0x1"
        events = receipt_events(receipt, self.contract)
        if not succeeded:
            log.error(
                "keeper transaction %d (%s) reverted; its subscriptions are free again",
                tx.id, receipt["transactionHash"],
            )  # fmt: skip
        failed_at = int(self.chain.rpc.headers([block])[0]["timestamp"], 16) if events.failed else 0
        with self.engine.begin() as conn:
            graces = repo.grace_periods(
                conn, self.config.chain_id, self.contract, list(events.failed)
            )
            repo.mark_mined(
                conn,
                tx,
                block=block,
                tx_hash=str(receipt["transactionHash"]),
                succeeded=succeeded,
                gas_used=int(receipt["gasUsed"], 16),
                now=now,
            )
            repo.record_charged(conn, self.config.chain_id, self.contract, events.charged, now)
            for subscription_id, (due_at, reason) in events.failed.items():
                repo.record_failure(
                    conn,
                    self.config.chain_id,
                    self.contract,
                    subscription_id,
                    due_at=due_at,
                    reason=_FAILURE_REASONS[reason].value,
                    retry_at=next_retry_at(
                        due_at,
                        graces.get(subscription_id, 0),
                        failed_at,
                        self.config.retry_schedule,
                    ),
                    now=now,
                )
            repo.record_lapsed(conn, self.config.chain_id, self.contract, events.lapsed, now)
            if head.number - block + 1 >= self.config.confirmations:
                repo.set_status(conn, tx.id, KeeperTxStatus.CONFIRMED, now)
                repo.release_transaction(conn, tx, now)
                result.confirmed += 1
        result.mined += 1

    def _nudge(
        self, tx: KeeperTransaction, latest: Any, head: Head, result: PassResult, *, own: bool
    ) -> None:
        """A transaction neither mined nor overtaken, `latest` its last attempt."""
        sent_here = tx.id in self._broadcast_here
        stuck = (
            sent_here
            and tx.broadcast_block is not None
            and head.number - tx.broadcast_block >= self.config.replace_after_blocks
        )
        if stuck and own:
            # Left out of blocks (or out of the node's pool: nodes evict transactions that
            # offer less than the base fee) for long enough: outbid it at the same nonce.
            fees = Fees(latest.max_fee_per_gas, latest.max_priority_fee_per_gas)
            self._replace(tx, fees, head, result)
        elif stuck:
            # Another key's cannot be outbid without that key. Giving its subscriptions back
            # is safe: should it be mined after all, the contract charges no period twice.
            log.warning(
                "keeper transaction %d of %s (whose keeper is not running) is not mined "
                "%d blocks after it was sent again and cannot be replaced without that key; "
                "its subscriptions are free again",
                tx.id, tx.sender, head.number - (tx.broadcast_block or head.number),
            )  # fmt: skip
            self._drop(tx, result)
        elif not sent_here or not self.chain.known_to_node(latest.tx_hash):
            # Recorded by an earlier life of its keeper (maybe never sent), or lost by the
            # node: the very same bytes again. Ours keeps the block it was first sent in, so
            # that it is replaced on time; another key's counts from when this keeper first
            # sends it.
            keep_block = tx.broadcast_block is not None if own else sent_here
            self._broadcast(tx.id, latest.raw_tx, head, keep_block=keep_block)
            result.rebroadcast += 1

    def _replace(self, tx: KeeperTransaction, old: Fees, head: Head, result: PassResult) -> None:
        market = self.chain.suggested_fees(head, self.config.min_priority_fee, None)
        fees = old.bumped(self.config.fee_bump_percent).at_least(market)
        cap = self.config.max_fee_per_gas
        if cap is not None and fees.max_fee_per_gas > cap:
            log.warning(
                "keeper transaction %d is stuck at nonce %d and a replacement would exceed "
                "the fee cap of %d wei (raise --max-fee-gwei)", tx.id, tx.nonce, cap,
            )  # fmt: skip
            return
        signed = self.chain.sign(tx.nonce, _calldata(tx), tx.gas_limit, fees)
        with self.engine.begin() as conn:
            repo.add_attempt(conn, tx.id, _attempt(signed), self._clock())
        log.info(
            "replacing stuck keeper transaction %d at nonce %d: max fee %d -> %d wei",
            tx.id, tx.nonce, old.max_fee_per_gas, fees.max_fee_per_gas,
        )  # fmt: skip
        self._broadcast(tx.id, signed.raw, head)
        result.replaced += 1

    def _broadcast(self, tx_id: int, raw: str, head: Head, keep_block: bool = False) -> None:
        outcome = self.chain.broadcast(raw)
        self._broadcast_here.add(tx_id)
        if outcome == BroadcastOutcome.NONCE_USED:
            self._next_nonce = None
        # The stuck count runs from the first broadcast of an attempt: sending the same
        # bytes again does not restart it.
        if not keep_block:
            with self.engine.begin() as conn:
                repo.set_broadcast_block(conn, tx_id, head.number, self._clock())

    # ----------------------------------------------------------------- sending

    def _capacity(self) -> int:
        with self.engine.connect() as conn:
            unresolved = repo.unresolved_transactions(conn, self.config.chain_id, self.chain.sender)
        return self.config.max_in_flight - sum(
            1 for tx in unresolved if tx.status == KeeperTxStatus.PENDING
        )

    def _claim(self, head: Head, lapses: bool, limit: int) -> list[repo.Candidate]:
        now = self._clock()
        lease_until = now + timedelta(seconds=self.config.claim_lease)
        claim = repo.claim_lapses if lapses else repo.claim_due
        with self.engine.begin() as conn:
            repo.ensure_rows(
                conn,
                self.config.chain_id,
                self.contract,
                head.timestamp + int(self.config.at_risk_days * DAY),
                now,
            )
            return claim(
                conn, self.config.chain_id, self.contract, self.keeper_id, head.timestamp,
                limit, now, lease_until,
            )  # fmt: skip

    def _release(self, ids: Sequence[int], known: dict[int, int] | None = None) -> None:
        with self.engine.begin() as conn:
            repo.release_claims(
                conn, self.config.chain_id, self.contract, self.keeper_id, ids, known, self._clock()
            )

    def send_lapses(self, head: Head, result: PassResult, stop: threading.Event) -> None:
        capacity = self._capacity()
        if capacity <= 0:
            return
        candidates = self._claim(head, lapses=True, limit=capacity)
        if not candidates:
            return
        ids = [c.subscription_id for c in candidates]
        states = self.chain.stored_states(ids)
        statuses = self.chain.manager_views("statusOf", ids)
        lapsable = [
            i
            for i, state, status in zip(ids, states, statuses, strict=True)
            if state == StoredState.LIVE and status == SubscriptionStatus.LAPSED
        ]
        ended = [i for i, state in zip(ids, states, strict=True) if state == StoredState.LAPSED]
        if ended:
            with self.engine.begin() as conn:
                repo.record_lapsed(conn, self.config.chain_id, self.contract, ended, self._clock())
        self._release([i for i in ids if i not in lapsable])
        for n, subscription_id in enumerate(lapsable):
            if stop.is_set():
                self._release(lapsable[n:])
                return
            data = MANAGER.calldata("finalizeLapse", subscription_id)
            try:
                gas = self._with_margin(self.chain.estimate_gas(data))
            except RpcError as exc:
                log.warning("finalizeLapse(%d) would revert: %s", subscription_id, exc.message)
                self._release([subscription_id])
                continue
            if self._send_new(KeeperTxKind.FINALIZE_LAPSE, [subscription_id], data, gas, head):
                result.lapse_transactions += 1

    def send_charges(self, head: Head, result: PassResult, stop: threading.Event) -> None:
        capacity = self._capacity()
        if capacity <= 0:
            return
        limit = min(self.config.claim_limit, capacity * self.config.max_batch)
        candidates = self._claim(head, lapses=False, limit=limit)
        if not candidates:
            return
        ids = [c.subscription_id for c in candidates]
        next_at = self.chain.manager_views("nextChargeAt", ids)
        due = [i for i, at in zip(ids, next_at, strict=True) if 0 < at <= head.timestamp]
        later = {i: at for i, at in zip(ids, next_at, strict=True) if at > head.timestamp}
        self._release([i for i in ids if i not in set(due)], later)
        remaining = due
        while remaining and capacity > 0 and not stop.is_set():
            batch, data, gas = self._size_batch(remaining)
            if not batch:  # the first one alone would revert: set it aside for this pass
                self._release(remaining[:1])
                remaining = remaining[1:]
                continue
            if self._send_new(KeeperTxKind.CHARGE_BATCH, batch, data, gas, head):
                result.charge_transactions += 1
                result.charges_sent += batch
            remaining = remaining[len(batch) :]
            capacity -= 1
        self._release(remaining)

    def _size_batch(self, ids: Sequence[int]) -> tuple[list[int], str, int]:
        """The longest prefix of `ids` (up to `max_batch`) whose estimated gas, with the
        margin, fits `max_gas_per_tx`; its calldata and gas limit."""
        n = min(len(ids), self.config.max_batch)
        cap = self.config.max_gas_per_tx
        while n >= 1:
            data = MANAGER.calldata("chargeBatch", list(ids[:n]))
            try:
                estimate = self.chain.estimate_gas(data)
            except RpcError as exc:
                log.warning("chargeBatch of %d would revert (%s)", n, exc.message)
                if n == 1:
                    return [], "", 0
                n //= 2
                continue
            gas = self._with_margin(estimate)
            if gas > cap and n > 1:
                # Gas grows about linearly with the batch: scale to the cap, a little under.
                n = max(1, min(n - 1, n * cap * 95 // (gas * 100)))
                continue
            return list(ids[:n]), data, gas
        return [], "", 0

    def _with_margin(self, estimate: int) -> int:
        return estimate * (100 + self.config.gas_margin_percent) // 100

    def _nonce(self) -> int:
        if self._next_nonce is None:
            with self.engine.connect() as conn:
                recorded = repo.max_nonce(conn, self.config.chain_id, self.chain.sender)
            self._next_nonce = max(
                self.chain.nonce("pending"), -1 if recorded is None else recorded + 1
            )
        return self._next_nonce

    def _send_new(
        self, kind: KeeperTxKind, ids: list[int], data: str, gas: int, head: Head
    ) -> bool:
        """Signs, records (with its subscriptions) and only then broadcasts one transaction.
        False when a claim was lost before it could be recorded: nothing is sent."""
        nonce = self._nonce()
        fees = self.chain.suggested_fees(
            head, self.config.min_priority_fee, self.config.max_fee_per_gas
        )
        signed = self.chain.sign(nonce, data, gas, fees)
        try:
            with self.engine.begin() as conn:
                tx_id = repo.record_transaction(
                    conn,
                    chain_id=self.config.chain_id,
                    contract=self.contract,
                    sender=self.chain.sender,
                    nonce=nonce,
                    kind=kind.value,
                    subscription_ids=ids,
                    gas_limit=gas,
                    attempt=_attempt(signed),
                    keeper_id=self.keeper_id,
                    now=self._clock(),
                )
                if tx_id is None:
                    raise _ClaimLost
        except _ClaimLost:
            log.warning("a claim of this keeper expired before its batch was recorded; skipped")
            self._release(ids)
            return False
        self._next_nonce = nonce + 1
        self._broadcast(tx_id, signed.raw, head)
        return True

    # ---------------------------------------------------------------- at risk

    def _risk_scan_due(self) -> bool:
        now = time.monotonic()
        if (
            self._last_risk_scan is not None
            and now - self._last_risk_scan < self.config.at_risk_interval
        ):
            return False
        self._last_risk_scan = now
        return True

    def check_at_risk(self, head: Head) -> int:
        """Flags the charges of the next `at_risk_days` whose subscriber's allowance or
        balance will not cover them; returns how many are at risk."""
        now = self._clock()
        until = head.timestamp + int(self.config.at_risk_days * DAY)
        with self.engine.begin() as conn:
            repo.ensure_rows(conn, self.config.chain_id, self.contract, until, now)
            rows = repo.upcoming_charges(
                conn, self.config.chain_id, self.contract, head.timestamp, until
            )
        if rows:
            amounts = self.chain.manager_views("amountDue", [r.subscription_id for r in rows])
            wallets = sorted({(r.token, r.subscriber) for r in rows})
            funds = dict(zip(wallets, self.chain.allowances_and_balances(wallets), strict=True))
            risks = assess(
                [
                    Upcoming(r.subscription_id, r.subscriber, r.token, r.due_at, amount)
                    for r, amount in zip(rows, amounts, strict=True)
                    if amount > 0
                ],
                funds,
            )
        else:
            risks = []
        with self.engine.begin() as conn:
            repo.save_risks(
                conn,
                self.config.chain_id,
                self.contract,
                [
                    repo.RiskRow(r.subscription_id, r.due_at, r.amount, r.reason and r.reason.value)
                    for r in risks
                ],
                now,
            )
            repo.clear_stale_risks(conn, self.config.chain_id, self.contract, head.timestamp, now)
        return sum(1 for r in risks if r.reason is not None)


def _calldata(tx: KeeperTransaction) -> str:
    ids = [int(i) for i in tx.subscription_ids.split(",")]
    if tx.kind == KeeperTxKind.FINALIZE_LAPSE:
        return MANAGER.calldata("finalizeLapse", ids[0])
    return MANAGER.calldata("chargeBatch", ids)


def _attempt(signed: Any) -> repo.NewAttempt:
    return repo.NewAttempt(
        signed.tx_hash,
        signed.raw,
        signed.fees.max_fee_per_gas,
        signed.fees.max_priority_fee_per_gas,
    )
