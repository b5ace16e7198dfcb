"""The lookups: who may see what, the filters, and what the mirror's rows mean at a given
time (invoice overdue, subscription status, next charge and its amount, usage periods).

"Now" is the chain's latest block time when the node answers (what the contracts judge
due dates and periods by, including after Anvil's time travel), else the wall clock.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from eth_utils import keccak
from sqlalchemy import Connection

from api.deps import Principal, PrincipalKind
from api.errors import Forbidden, InvalidInput, NotFound
from api.gateway import Gateway
from api.repository import lookups as repo
from api.repository.lookups import Deployment
from api.schemas.lookups import (
    ChargeKind,
    ChargePage,
    ChargeView,
    InvoicePage,
    InvoiceStatusFilter,
    InvoiceSummary,
    Statement,
    StatementLine,
    StatementLineKind,
    StatementTotals,
    SubscriptionPage,
    SubscriptionStateFilter,
    SubscriptionStatus,
    SubscriptionView,
    UsagePage,
    UsagePeriod,
)
from api.services.pagination import decode_cursor, hex32, key_int, page_of
from offchain.db.models import InvoiceStatus, SubscriptionState

# ------------------------------------------------------------------------- clock

_NODE_RETRY_S = 5.0
_CLOCK_TIMEOUT_S = 2.0
_LATEST_BLOCK = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["latest", False]}
).encode()


class ChainClock:
    """The latest block's timestamp, asked for on every call (a lookup must see Anvil's
    time travel at once), over a kept-alive plain HTTP connection per thread: about 0.3 ms
    on loopback where web3.py's stack takes several. While the node does not answer, the
    wall clock stands in and the node is asked again after a few seconds only."""

    def __init__(self, rpc_url: str) -> None:
        parts = urlsplit(rpc_url)
        self._https = parts.scheme == "https"
        self._usable = parts.scheme in ("http", "https") and parts.hostname is not None
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = (
                "Basic " + base64.b64encode(credentials.encode()).decode()
            )
        self._local = threading.local()
        self._down_until = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=_CLOCK_TIMEOUT_S)
            self._local.conn = conn
        return conn

    def _ask(self) -> int:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=_LATEST_BLOCK, headers=self._headers)
            response = conn.getresponse()
            payload = json.loads(response.read())
        except Exception:
            conn.close()
            self._local.conn = None
            raise
        return int(payload["result"]["timestamp"], 16)

    def now(self) -> int:
        if self._usable and time.monotonic() >= self._down_until:
            # Twice: a kept-alive connection the node has closed fails once, harmlessly.
            for _attempt in range(2):
                try:
                    return self._ask()
                except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
                    continue
            self._down_until = time.monotonic() + _NODE_RETRY_S
        return int(time.time())


_clocks: dict[str, ChainClock] = {}
_clocks_lock = threading.Lock()


_chain_times: dict[tuple[int, str], tuple[float, int]] = {}  # (gateway, node) -> (read at, time)


def chain_now(gateway: Gateway) -> int:
    """'Now' for due dates and periods: the chain's latest block time, else the wall clock.
    Asked of the node at most once per `block_time_cache_s` (default 1 s) per worker: a
    list would otherwise pay a round trip to the node for a figure that changes once a
    block (0 asks every time, as the tests' time travel needs)."""
    url = gateway.chain.rpc_url
    key = (id(gateway), url)
    ttl = gateway.settings.block_time_cache_s
    cached = _chain_times.get(key)
    now = time.monotonic()
    if ttl > 0 and cached is not None and now - cached[0] < ttl:
        return cached[1]
    with _clocks_lock:
        clock = _clocks.get(url)
        if clock is None:
            clock = _clocks[url] = ChainClock(url)
    value = clock.now()
    _chain_times[key] = (now, value)
    return value


def deployment(gateway: Gateway) -> Deployment:
    return Deployment(gateway.chain_id, gateway.manager, gateway.registry)


def reference_hash(reference: str) -> str:
    """The on-chain reference of a business invoice number (keccak-256 of its UTF-8)."""
    return "0x" + keccak(text=reference).hex()


def _lower(address: str | None) -> str | None:
    return None if address is None else address.lower()


def _scope(
    principal: Principal, merchant: str | None, customer: str | None
) -> tuple[str | None, str | None]:
    """The (merchant, customer) a principal's list is restricted to: its own side is fixed,
    the other side is a filter it may choose."""
    merchant, customer = _lower(merchant), _lower(customer)
    if principal.kind is PrincipalKind.MERCHANT:
        if merchant is not None and merchant != principal.address:
            raise Forbidden("a merchant key sees its own merchant's data only")
        return principal.address, customer
    if customer is not None and customer != principal.address:
        raise Forbidden("a customer session sees its own address's data only")
    return merchant, principal.address


# ---------------------------------------------------------------------- invoices

INVOICE_CURSOR = "inv"


def invoice_summary(row: dict[str, Any], now: int) -> InvoiceSummary:
    unpaid = row["status"] in (InvoiceStatus.OPEN, InvoiceStatus.PARTIALLY_PAID)
    balance = 0 if row["status"] == InvoiceStatus.VOID else max(row["amount"] - row["paid"], 0)
    return InvoiceSummary(
        invoice_id=row["invoice_id"],
        merchant=row["merchant"],
        customer=row["customer"],
        reference_hash=row["reference_hash"],
        token=row["token"],
        amount=str(row["amount"]),
        paid=str(row["paid"]),
        balance=str(balance),
        due_date=row["due_date"],
        status=row["status"],
        overdue=unpaid and row["due_date"] < now,
        allow_partial=row["allow_partial"],
        content_hash=row["content_hash"],
        issued_at=row["issued_at"],
        issued_block=row["issued_block"],
    )


def list_invoices(
    conn: Connection,
    gateway: Gateway,
    principal: Principal,
    now: int,
    *,
    merchant: str | None,
    customer: str | None,
    status: InvoiceStatusFilter | None,
    due_after: int | None,
    due_before: int | None,
    reference: str | None,
    cursor: str | None,
    limit: int,
) -> InvoicePage:
    merchant, customer = _scope(principal, merchant, customer)
    if due_after is not None and due_before is not None and due_after >= due_before:
        raise InvalidInput("due_after must be before due_before", field="due_after")
    after = decode_cursor(cursor, INVOICE_CURSOR, (key_int, hex32))
    f = repo.InvoiceFilter(
        merchant=merchant,
        customer=customer,
        statuses=() if status in (None, InvoiceStatusFilter.OVERDUE) else (str(status),),
        overdue_at=now if status is InvoiceStatusFilter.OVERDUE else None,
        due_after=due_after,
        due_before=due_before,
        reference_hash=None if reference is None else reference_hash(reference),
    )
    rows = repo.list_invoices(
        conn, deployment(gateway), f, None if after is None else (after[0], after[1]), limit + 1
    )
    page = page_of(rows, limit, INVOICE_CURSOR, lambda r: (r["due_date"], r["invoice_id"]))
    return InvoicePage(
        items=[invoice_summary(r, now) for r in page.items], next_cursor=page.next_cursor
    )


# ----------------------------------------------------------------- subscriptions

SUBSCRIPTION_CURSOR = "sub"


def subscription_status(row: dict[str, Any], now: int) -> SubscriptionStatus:
    """The contract's `statusOf` at `now`, with `canceling` told apart from active."""
    if row["state"] == SubscriptionState.CANCELED:
        return SubscriptionStatus.CANCELED
    if row["state"] == SubscriptionState.LAPSED:
        return SubscriptionStatus.LAPSED
    if now < row["paid_through"]:
        if row["cancel_at_period_end"]:
            return SubscriptionStatus.CANCELING
        return SubscriptionStatus.TRIALING if row["in_trial"] else SubscriptionStatus.ACTIVE
    if row["cancel_at_period_end"]:
        return SubscriptionStatus.CANCELED
    if now >= row["paid_through"] + row["grace_period"]:
        return SubscriptionStatus.LAPSED
    return SubscriptionStatus.PAST_DUE


def next_charge_at(row: dict[str, Any], now: int) -> int | None:
    """The contract's `nextChargeAt`: the due time of the charge still to come, if any."""
    if row["state"] != SubscriptionState.LIVE or now >= row["paid_through"] + row["grace_period"]:
        return None
    if row["cancel_at_period_end"] and row["unbilled_units"] == 0:
        return None
    return int(row["paid_through"])


def overage_of(units: int, row: dict[str, Any]) -> int:
    included = row["included_units"]
    return (units - included) * row["unit_price"] if units > included else 0


def amount_due(row: dict[str, Any], now: int) -> int:
    """The contract's `amountDue`: base price (none when ending) plus the overage of the
    usage reported so far, less credit."""
    if next_charge_at(row, now) is None:
        return 0
    amount = 0 if row["cancel_at_period_end"] else row["price"]
    if row["unit_price"]:
        amount += overage_of(row["unbilled_units"], row)
    return amount - min(row["credit"], amount)


def subscription_view(row: dict[str, Any], now: int) -> SubscriptionView:
    return SubscriptionView(
        subscription_id=row["subscription_id"],
        plan_id=row["plan_id"],
        merchant=row["merchant"],
        subscriber=row["subscriber"],
        token=row["token"],
        price=str(row["price"]),
        period=row["period"],
        unit_price=str(row["unit_price"]),
        included_units=str(row["included_units"]),
        max_amount_per_period=str(row["max_amount_per_period"]),
        started_at=row["started_at"],
        paid_through=row["paid_through"],
        state=SubscriptionStateFilter(row["state"]),
        status=subscription_status(row, now),
        cancel_at_period_end=row["cancel_at_period_end"],
        past_due=row["past_due"],
        in_trial=row["in_trial"],
        credit=str(row["credit"]),
        unbilled_units=str(row["unbilled_units"]),
        next_charge_at=next_charge_at(row, now),
        amount_due=str(amount_due(row, now)),
    )


def list_subscriptions(
    conn: Connection,
    gateway: Gateway,
    principal: Principal,
    now: int,
    *,
    plan_id: int | None,
    subscriber: str | None,
    merchant: str | None,
    state: SubscriptionStateFilter | None,
    status: SubscriptionStatus | None,
    past_due: bool | None,
    cursor: str | None,
    limit: int,
) -> SubscriptionPage:
    merchant, subscriber = _scope(principal, merchant, subscriber)
    after = decode_cursor(cursor, SUBSCRIPTION_CURSOR, (key_int,))
    f = repo.SubscriptionFilter(
        merchant=merchant,
        subscriber=subscriber,
        plan_id=plan_id,
        state=None if state is None else str(state),
        past_due=past_due,
        status=None if status is None else str(status),
    )
    rows = repo.list_subscriptions(
        conn, deployment(gateway), f, now, None if after is None else after[0], limit + 1
    )
    page = page_of(rows, limit, SUBSCRIPTION_CURSOR, lambda r: (r["subscription_id"],))
    return SubscriptionPage(
        items=[subscription_view(r, now) for r in page.items], next_cursor=page.next_cursor
    )


def visible_subscription(
    conn: Connection, gateway: Gateway, principal: Principal, subscription_id: int
) -> dict[str, Any]:
    """A subscription the principal is a party to (its merchant or subscriber); 404 for
    every other, existing or not, so that ids of others' subscriptions reveal nothing."""
    rows = repo.list_subscriptions(
        conn,
        deployment(gateway),
        repo.SubscriptionFilter(subscription_id=subscription_id),
        0,
        None,
        1,
    )
    if not rows or not principal.can_see(
        rows[0]["merchant"] if principal.kind is PrincipalKind.MERCHANT else rows[0]["subscriber"]
    ):
        raise NotFound(f"no subscription {subscription_id}")
    return rows[0]


def get_subscription(
    conn: Connection, gateway: Gateway, principal: Principal, now: int, subscription_id: int
) -> SubscriptionView:
    return subscription_view(visible_subscription(conn, gateway, principal, subscription_id), now)


# ----------------------------------------------------------------------- charges

CHARGE_CURSOR = "chg"


def charge_view(row: dict[str, Any]) -> ChargeView:
    def opt(value: Any) -> str | None:
        return None if value is None else str(value)

    return ChargeView(
        kind=ChargeKind(row["kind"]),
        subscription_id=row["subscription_id"],
        merchant=row["merchant"],
        subscriber=row["subscriber"],
        token=row["token"],
        amount=str(row["amount"]),
        fee=opt(row["fee"]),
        period_start=row["period_start"],
        paid_through=row["paid_through"],
        due_at=row["due_at"],
        reason=row["reason"],
        block_number=row["block_number"],
        log_index=row["log_index"],
        block_time=row["block_time"],
        tx_hash=row["tx_hash"],
    )


def list_charges(
    conn: Connection,
    gateway: Gateway,
    principal: Principal,
    *,
    subscription_id: int | None,
    merchant: str | None,
    customer: str | None,
    time_from: int | None,
    time_to: int | None,
    include_failures: bool,
    cursor: str | None,
    limit: int,
) -> ChargePage:
    merchant, customer = _scope(principal, merchant, customer)
    if time_from is not None and time_to is not None and time_from >= time_to:
        raise InvalidInput("from must be before to", field="from")
    if subscription_id is not None:
        visible_subscription(conn, gateway, principal, subscription_id)
    after = decode_cursor(cursor, CHARGE_CURSOR, (key_int, key_int))
    f = repo.ChargeFilter(
        merchant=merchant,
        subscriber=customer,
        subscription_id=subscription_id,
        time_from=time_from,
        time_to=time_to,
        include_failures=include_failures,
    )
    rows = repo.list_charges(
        conn,
        deployment(gateway),
        f,
        None if after is None else (after[0], after[1]),
        limit + 1,
    )
    page = page_of(rows, limit, CHARGE_CURSOR, lambda r: (r["block_number"], r["log_index"]))
    return ChargePage(items=[charge_view(r) for r in page.items], next_cursor=page.next_cursor)


# ------------------------------------------------------------------------- usage

USAGE_CURSOR = "use"


@dataclass(frozen=True)
class PeriodUsage:
    """Usage of one billing period of a subscription."""

    index: int
    start: int
    end: int
    units: int
    reports: int


def period_index(sub: dict[str, Any], billable_at: int) -> int:
    """The billing period a time is billed at the end of: the first period ending at or
    after it. Periods follow the contract's fixed schedule: the first charge is due at
    `anchor = started_at + trial` (period 0 is the trial, when there is one), then every
    `period` seconds."""
    period = int(sub["period"])
    anchor = int(sub["started_at"]) + int(sub["trial_period"])
    k = -(-(billable_at - anchor) // period)  # ceiling
    return max(k, 0 if sub["trial_period"] else 1)


def billing_periods(
    sub: dict[str, Any], reports: Sequence[dict[str, Any]], until: int
) -> list[PeriodUsage]:
    """The subscription's billing periods, with the units reported for each, from the
    first up to the one billed at or after `until` (or the last that holds a report).

    A usage report belongs to the period it is billed at the end of: the contract stamps it
    with `billableAt` (the paid-through time when it was reported), and the charge due then
    bills it."""
    period = int(sub["period"])
    anchor = int(sub["started_at"]) + int(sub["trial_period"])
    first = 0 if sub["trial_period"] else 1
    units: dict[int, int] = defaultdict(int)
    counts: dict[int, int] = defaultdict(int)
    for report in reports:
        k = period_index(sub, int(report["billable_at"]))
        units[k] += int(report["units"])
        counts[k] += 1
    last = max(period_index(sub, max(until, anchor)), max(units, default=first))
    return [
        PeriodUsage(
            index=k,
            start=int(sub["started_at"]) if k == 0 else anchor + (k - 1) * period,
            end=anchor + k * period,
            units=units[k],
            reports=counts[k],
        )
        for k in range(first, last + 1)
    ]


def usage(
    conn: Connection,
    gateway: Gateway,
    principal: Principal,
    now: int,
    *,
    subscription_id: int,
    cursor: str | None,
    limit: int,
) -> UsagePage:
    sub = visible_subscription(conn, gateway, principal, subscription_id)
    where = deployment(gateway)
    after = decode_cursor(cursor, USAGE_CURSOR, (key_int,))
    reports = repo.usage_reports(conn, where, [subscription_id])
    # A live subscription's current period is the one it is paid through; an ended one's
    # periods stop at its last report.
    until = int(sub["paid_through"]) if sub["state"] == SubscriptionState.LIVE else 0
    periods = billing_periods(sub, reports, until)
    charged: dict[int, int] = defaultdict(int)
    for row in repo.usage_charges(conn, where, [subscription_id]):
        # The charge due at a period's end bills the usage of that period.
        charged[period_index(sub, int(row["period_start"]))] += int(row["overage_amount"])
    if after is not None:
        periods = [p for p in periods if p.index > after[0]]
    page = page_of(periods, limit, USAGE_CURSOR, lambda p: (p.index,))
    included = int(sub["included_units"])
    items = []
    for p in page.items:
        billable = max(p.units - included, 0)
        items.append(
            UsagePeriod(
                period=p.index,
                period_start=p.start,
                period_end=p.end,
                units=str(p.units),
                included=str(included),
                billable_units=str(billable),
                overage=str(billable * int(sub["unit_price"])),
                charged=str(charged[p.index]) if p.index in charged else None,
                reports=p.reports,
            )
        )
    return UsagePage(
        subscription_id=subscription_id,
        token=sub["token"],
        unit_price=str(sub["unit_price"]),
        period_length=int(sub["period"]),
        items=items,
        next_cursor=page.next_cursor,
    )


# --------------------------------------------------------------------- statement

_SIGN = {
    StatementLineKind.CHARGE: 1,
    StatementLineKind.INVOICE_PAYMENT: 1,
    StatementLineKind.SETTLEMENT: 1,
    StatementLineKind.REFUND: -1,
}


def statement(
    conn: Connection,
    gateway: Gateway,
    principal: Principal,
    now: int,
    *,
    address: str,
    time_from: int | None,
    time_to: int | None,
) -> Statement:
    """Every charge, invoice payment, off-chain settlement and refund of a customer in
    [from, to), with per-token totals; the opening figure is the net paid before `from`
    and the closing one that plus the period's net. A merchant sees the lines with it as
    the merchant only; a customer its own statement only."""
    address = address.lower()
    merchant: str | None = None
    if principal.kind is PrincipalKind.MERCHANT:
        merchant = principal.address
    elif principal.address != address:
        raise NotFound(f"no statement of {address} for this session")
    start = 0 if time_from is None else time_from
    end = now + 1 if time_to is None else time_to
    if start >= end:
        raise InvalidInput("from must be before to", field="from")
    where = deployment(gateway)
    raw: list[dict[str, Any]] = []
    for row in repo.statement_charges(conn, where, address, merchant, end):
        raw.append({**row, "kind": "charge", "invoice_id": None, "counterparty": None})
    for row in repo.statement_invoice_lines(conn, where, address, merchant, end):
        raw.append({**row, "subscription_id": None})
    raw.sort(key=lambda r: (r["block_number"], r["log_index"]))
    opening: dict[str, int] = defaultdict(int)
    sums: dict[str, dict[StatementLineKind, int]] = defaultdict(lambda: defaultdict(int))
    lines: list[StatementLine] = []
    for row in raw:
        kind = StatementLineKind(row["kind"])
        token = row["token"]
        if row["block_time"] < start:
            opening[token] += _SIGN[kind] * row["amount"]
            continue
        sums[token][kind] += row["amount"]
        lines.append(
            StatementLine(
                kind=kind,
                time=row["block_time"],
                block_number=row["block_number"],
                log_index=row["log_index"],
                tx_hash=row["tx_hash"],
                merchant=row["merchant"],
                token=token,
                amount=str(row["amount"]),
                subscription_id=row["subscription_id"],
                invoice_id=row["invoice_id"],
                counterparty=row["counterparty"],
            )
        )
    totals = []
    for token in sorted(set(opening) | set(sums)):
        s = sums[token]
        net = sum(_SIGN[kind] * amount for kind, amount in s.items())
        totals.append(
            StatementTotals(
                token=token,
                opening_net_paid=str(opening[token]),
                charges=str(s[StatementLineKind.CHARGE]),
                invoice_payments=str(s[StatementLineKind.INVOICE_PAYMENT]),
                settlements=str(s[StatementLineKind.SETTLEMENT]),
                refunds=str(s[StatementLineKind.REFUND]),
                net_paid=str(net),
                closing_net_paid=str(opening[token] + net),
            )
        )
    return Statement.model_validate(
        {"address": address, "from": start, "to": end, "lines": lines, "totals": totals}
    )
