"""Merchant analytics over the mirror (and, for payments at risk, the chain).

Definitions (all per token; amounts are never added across tokens):

- **MRR**: every subscription whose status now is `active` or `past_due` (live, not set to
  end, past any trial: trials pay nothing yet and enter the MRR at their first charge)
  counts its plan's base price normalized to a 30-day month: price x 2,592,000 / period.
  The fractions are summed exactly (as rationals) and the total is rounded down once, so
  that many small plans do not each lose a fraction. Metered overage is not recurring and
  is left out. **ARR** = 12 x MRR.
- **Scheduled revenue** for the next N days: every charge a live subscription will fall
  due for by now + N days on its fixed schedule (a past-due charge still within its grace
  period counts: it is collectable now): the next one at its `amountDue` (price + usage
  reported so far - credit), the later ones at the price (less any credit left); plus the
  balances of open and partially paid invoices due from now to now + N days.
- **Churn** over the last 30 days: of the subscriptions live at the window's start (started,
  not yet ended), those that ended within it, canceled (at the cancellation's effective
  time) or lapsed (at the end of the grace period, finalized on-chain or not), divided by
  the former; rounded down to 4 decimals and to basis points.
- **Overdue aging**: balances of open and partially paid invoices past their due date, by
  days overdue counted in started days (one second late is day 1): 1-30, 31-60, 61-90, 90+.
- **At risk**: subscriptions whose next charge falls due within N days and whose subscriber's
  allowance to the SubscriptionManager, or balance, is below the amount due.
- **Usage anomalies**: see `ANOMALY_RULE`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import ROUND_DOWN, Decimal, localcontext
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection
from web3 import Web3
from web3.exceptions import Web3Exception

from api.errors import ChainUnavailable
from api.gateway import Gateway
from api.repository import analytics as repo
from api.repository.lookups import Deployment
from api.schemas.analytics import (
    AgingBucket,
    AnalyticsSummary,
    AtRisk,
    AtRiskCharge,
    Churn,
    ScheduledRevenue,
    TokenSummary,
    UsageAnomalies,
    UsageAnomaly,
)
from api.schemas.lookups import SubscriptionStatus
from api.services.lookups import (
    amount_due,
    billing_periods,
    deployment,
    next_charge_at,
    overage_of,
    subscription_status,
)
from offchain.db.models import SubscriptionState

DAY = 86_400
MONTH = 30 * DAY  # 2,592,000 s: the month MRR is normalized to
SCHEDULE_WINDOWS = (30, 60, 90)
CHURN_WINDOW_DAYS = 30
AGING_BUCKETS = (("1-30", 1, 30), ("31-60", 31, 60), ("61-90", 61, 90), ("90+", 91, None))
MRR_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
ANOMALY_HISTORY = 12
ANOMALY_MIN_HISTORY = 3
ANOMALY_RULE = (
    "a billing period's units are flagged when they exceed both twice the mean and the mean "
    f"plus three population standard deviations of the up to {ANOMALY_HISTORY} periods "
    f"before it, given at least {ANOMALY_MIN_HISTORY} such periods; a subscription's history "
    "starts at its first period with usage (periods without reports count as 0 after that); "
    "the comparison is exact in integers"
)


# -------------------------------------------------------------------------- MRR


def monthly(price: int, period: int) -> Fraction:
    """A plan's price per 30-day month, exactly."""
    return Fraction(price * MONTH, period)


def mrr_of(subscriptions: Sequence[dict[str, Any]], now: int) -> tuple[int, int]:
    """(MRR rounded down, number of subscriptions counted)."""
    total = Fraction(0)
    counted = 0
    for sub in subscriptions:
        if subscription_status(sub, now) in MRR_STATUSES:
            total += monthly(int(sub["price"]), int(sub["period"]))
            counted += 1
    return int(total), counted  # int() of a non-negative Fraction rounds down


# -------------------------------------------------------------- scheduled revenue


def scheduled_charges(sub: dict[str, Any], now: int, until: int) -> int:
    """What a subscription's charges due by `until` will take, on its fixed schedule."""
    due_at = next_charge_at(sub, now)
    if due_at is None or due_at > until:
        return 0
    first = amount_due(sub, now)
    if sub["cancel_at_period_end"]:
        return first  # the last charge: usage only
    price = int(sub["price"])
    overage = overage_of(int(sub["unbilled_units"]), sub) if sub["unit_price"] else 0
    # Credit the next charge leaves goes to the ones after it, until it runs out.
    credit_left = int(sub["credit"]) - min(int(sub["credit"]), price + overage)
    later = (until - due_at) // int(sub["period"])
    return first + later * price - min(credit_left, later * price)


def _scheduled(
    subs: Sequence[dict[str, Any]], invoices: Sequence[dict[str, Any]], now: int, days: int
) -> ScheduledRevenue:
    until = now + days * DAY
    from_subs = sum(scheduled_charges(s, now, until) for s in subs)
    from_invoices = sum(
        int(i["amount"]) - int(i["paid"]) for i in invoices if now <= int(i["due_date"]) <= until
    )
    return ScheduledRevenue(
        days=days,
        subscriptions=str(from_subs),
        invoices=str(from_invoices),
        total=str(from_subs + from_invoices),
    )


# ------------------------------------------------------------------------ churn


def end_of(
    sub: dict[str, Any],
    cancellation: dict[str, Any] | None,
    lapse: dict[str, Any] | None,
    now: int,
) -> tuple[int, str] | None:
    """When and how a subscription ended (or ends, for a cancellation set for later);
    None while it runs."""
    if cancellation is not None:
        return int(cancellation["effective_at"]), "canceled"
    if sub["state"] == SubscriptionState.LAPSED and lapse is not None:
        return int(lapse["lapsed_at"]), "lapsed"
    grace_end = int(sub["paid_through"]) + int(sub["grace_period"])
    if sub["state"] == SubscriptionState.LIVE and now >= grace_end:
        return grace_end, "lapsed"
    return None


def _ratio(numerator: int, denominator: int) -> tuple[str | None, int | None]:
    if denominator == 0:
        return None, None
    with localcontext() as context:
        context.prec = 50
        rate = (Decimal(numerator) / Decimal(denominator)).quantize(
            Decimal("0.0001"), rounding=ROUND_DOWN
        )
    return str(rate), numerator * 10_000 // denominator


def _churn(
    subs: Sequence[dict[str, Any]],
    cancellations: dict[int, dict[str, Any]],
    lapses: dict[int, dict[str, Any]],
    now: int,
) -> Churn:
    start = now - CHURN_WINDOW_DAYS * DAY
    live = canceled = lapsed = 0
    for sub in subs:
        sid = int(sub["subscription_id"])
        if int(sub["started_at"]) > start:
            continue
        ended = end_of(sub, cancellations.get(sid), lapses.get(sid), now)
        if ended is not None and ended[0] <= start:
            continue
        live += 1
        if ended is not None and ended[0] <= now:
            if ended[1] == "canceled":
                canceled += 1
            else:
                lapsed += 1
    rate, bps = _ratio(canceled + lapsed, live)
    return Churn(
        window_days=CHURN_WINDOW_DAYS,
        live_at_start=live,
        canceled=canceled,
        lapsed=lapsed,
        churned=canceled + lapsed,
        rate=rate,
        rate_bps=bps,
    )


# ------------------------------------------------------------------------ aging


def days_overdue(due_date: int, now: int) -> int:
    """Started days past the due date (0 when not overdue)."""
    late = now - due_date
    return 0 if late <= 0 else -(-late // DAY)


def _aging(invoices: Sequence[dict[str, Any]], now: int) -> list[AgingBucket]:
    counts = [0] * len(AGING_BUCKETS)
    sums = [0] * len(AGING_BUCKETS)
    for invoice in invoices:
        days = days_overdue(int(invoice["due_date"]), now)
        if days == 0:
            continue
        for i, (_name, low, high) in enumerate(AGING_BUCKETS):
            if days >= low and (high is None or days <= high):
                counts[i] += 1
                sums[i] += int(invoice["amount"]) - int(invoice["paid"])
                break
    return [
        AgingBucket(bucket=name, invoices=counts[i], balance=str(sums[i]))
        for i, (name, _low, _high) in enumerate(AGING_BUCKETS)
    ]


# ---------------------------------------------------------------------- summary


def summary(conn: Connection, gateway: Gateway, merchant: str, now: int) -> AnalyticsSummary:
    where = deployment(gateway)
    subs = repo.merchant_subscriptions(conn, where, merchant)
    # The last cancellation of a subscription is the one that counts (there is one at most,
    # but a cancel-now with usage after a scheduled cancel would be a second).
    cancellations = {
        int(c["subscription_id"]): c for c in repo.cancellations(conn, where, merchant)
    }
    lapses = {int(lapse["subscription_id"]): lapse for lapse in repo.lapses(conn, where, merchant)}
    invoices = repo.unpaid_invoices(conn, where, merchant)
    subs_by_token: dict[str, list[dict[str, Any]]] = defaultdict(list)
    invoices_by_token: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sub in subs:
        subs_by_token[sub["token"]].append(sub)
    for invoice in invoices:
        invoices_by_token[invoice["token"]].append(invoice)
    tokens = []
    for token in sorted(set(subs_by_token) | set(invoices_by_token)):
        token_subs, token_invoices = subs_by_token[token], invoices_by_token[token]
        mrr, counted = mrr_of(token_subs, now)
        tokens.append(
            TokenSummary(
                token=token,
                mrr=str(mrr),
                arr=str(12 * mrr),
                paying_subscriptions=counted,
                scheduled_revenue=[
                    _scheduled(token_subs, token_invoices, now, days) for days in SCHEDULE_WINDOWS
                ],
                churn=_churn(token_subs, cancellations, lapses, now),
                overdue_aging=_aging(token_invoices, now),
            )
        )
    return AnalyticsSummary(merchant=merchant, as_of=now, tokens=tokens)


# ---------------------------------------------------------------------- at risk


def _read_funds(
    gateway: Gateway, pairs: Sequence[tuple[str, str]]
) -> tuple[int, dict[tuple[str, str], tuple[int, int]]]:
    """(block, {(token, owner): (allowance to the manager, balance)}), read at one block in
    one JSON-RPC batch."""
    chain = gateway.chain
    manager = Web3.to_checksum_address(gateway.manager)
    try:
        block = int(chain.web3.eth.block_number)
        if not pairs:
            return block, {}
        with chain.web3.batch_requests() as batch:
            for token, owner in pairs:
                contract = chain.erc20(token)
                holder = Web3.to_checksum_address(owner)
                batch.add(
                    contract.functions.allowance(holder, manager).call(block_identifier=block)
                )
                batch.add(contract.functions.balanceOf(holder).call(block_identifier=block))
            results = batch.execute()
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(f"the node at {chain.rpc_url} does not answer: {exc}") from exc
    funds = {}
    for i, pair in enumerate(pairs):
        funds[pair] = (int(results[2 * i]), int(results[2 * i + 1]))  # type: ignore[call-overload]
    return block, funds


def at_risk(conn: Connection, gateway: Gateway, merchant: str, now: int, days: int) -> AtRisk:
    until = now + days * DAY
    due = []
    for sub in repo.merchant_subscriptions(conn, deployment(gateway), merchant):
        when = next_charge_at(sub, now)
        amount = amount_due(sub, now)
        if when is not None and when <= until and amount > 0:
            due.append((sub, when, amount))
    pairs = sorted({(sub["token"], sub["subscriber"]) for sub, _when, _amount in due})
    block, funds = _read_funds(gateway, pairs)
    items = []
    for sub, when, amount in due:
        allowance, balance = funds[(sub["token"], sub["subscriber"])]
        reasons = []
        if allowance < amount:
            reasons.append("insufficient_allowance")
        if balance < amount:
            reasons.append("insufficient_balance")
        if reasons:
            items.append(
                AtRiskCharge(
                    subscription_id=sub["subscription_id"],
                    subscriber=sub["subscriber"],
                    token=sub["token"],
                    next_charge_at=when,
                    amount_due=str(amount),
                    allowance=str(allowance),
                    balance=str(balance),
                    reasons=reasons,
                )
            )
    items.sort(key=lambda item: (item.next_charge_at, item.subscription_id))
    return AtRisk(as_of=now, days=days, block_number=block, items=items)


# -------------------------------------------------------------------- anomalies


def _decimal(value: Fraction, places: int = 6) -> Decimal:
    with localcontext() as context:
        context.prec = 100
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
            Decimal(1).scaleb(-places), rounding=ROUND_DOWN
        )


def _sqrt(value: Fraction, places: int = 6) -> Decimal:
    with localcontext() as context:
        context.prec = 100
        root = (Decimal(value.numerator) / Decimal(value.denominator)).sqrt()
        return root.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)


def spike(units: int, history: Sequence[int]) -> bool:
    """The anomaly rule, exact: u > 2*mean and u > mean + 3*sd, with mean = S/n and
    var = Q/n - mean², multiplied through by n (and squared: both sides are >= 0 there)."""
    n = len(history)
    if n < ANOMALY_MIN_HISTORY:
        return False
    s = sum(history)
    q = sum(h * h for h in history)
    excess = n * units - s  # n * (u - mean)
    return n * units > 2 * s and excess > 0 and excess * excess > 9 * (n * q - s * s)


def anomalies(
    conn: Connection, gateway: Gateway, merchant: str, now: int, subscription_id: int | None
) -> UsageAnomalies:
    where: Deployment = deployment(gateway)
    reports_by_sub: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for report in repo.usage_reports(conn, where, merchant):
        reports_by_sub[int(report["subscription_id"])].append(report)
    items = []
    for sub in repo.merchant_subscriptions(conn, where, merchant):
        sid = int(sub["subscription_id"])
        if sid not in reports_by_sub or (subscription_id is not None and sid != subscription_id):
            continue
        until = int(sub["paid_through"]) if sub["state"] == SubscriptionState.LIVE else 0
        periods = billing_periods(sub, reports_by_sub[sid], until)
        first_used = next(i for i, p in enumerate(periods) if p.units > 0)
        for i in range(first_used, len(periods)):
            history = [p.units for p in periods[max(first_used, i - ANOMALY_HISTORY) : i]]
            period = periods[i]
            if not spike(period.units, history):
                continue
            n = len(history)
            mean = Fraction(sum(history), n)
            variance = Fraction(sum(h * h for h in history), n) - mean * mean
            stddev = _sqrt(variance)
            threshold = max(_decimal(2 * mean), _decimal(mean) + 3 * stddev)
            items.append(
                UsageAnomaly(
                    subscription_id=sid,
                    subscriber=sub["subscriber"],
                    token=sub["token"],
                    period=period.index,
                    period_start=period.start,
                    period_end=period.end,
                    units=str(period.units),
                    prior_periods=n,
                    trailing_mean=str(_decimal(mean)),
                    trailing_stddev=str(stddev),
                    threshold=str(threshold),
                )
            )
    return UsageAnomalies(as_of=now, rule=ANOMALY_RULE, items=items)
