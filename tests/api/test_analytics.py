"""Merchant analytics over real contract activity on Anvil (time moved with Anvil's clock),
each figure checked against a value computed by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.services.analytics import _aging, days_overdue, mrr_of, spike
from tests.api.conftest import bearer
from tests.api.test_lookups import (
    DAY,
    get,
    issue_at,
    metered_subscription,
    ref,
    run_periods,
    session_for,
)
from tests.chain_fixtures import PERIOD, PRICE, UNIT
from tests.contracts.helpers import travel
from tests.offchain.indexer.helpers import Mirror


def figures(client: TestClient, key: str, token: Any) -> dict[str, Any]:
    body = get(client, "/v1/analytics/summary", key).json()
    return {t["token"]: t for t in body["tokens"]}[str(token.address).lower()]


def windows(summary: dict[str, Any]) -> dict[int, tuple[int, int, int]]:
    return {
        w["days"]: (int(w["subscriptions"]), int(w["invoices"]), int(w["total"]))
        for w in summary["scheduled_revenue"]
    }


def test_mrr_arr_and_scheduled_revenue_per_token(
    chain: Any,
    project: Any,
    owner: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    stranger: Any,
) -> None:
    monthly = create_plan()  # 10.00 / 30 days
    weekly = create_plan(price=3 * UNIT, period=7 * DAY)
    hourly = create_plan(price=1001, period=3600, grace=3600)
    long = create_plan(price=7 * UNIT, period=45 * DAY)
    trial = create_plan(trial=14 * DAY)
    euro = owner.deploy(project.MockStablecoin, "Test EUR", "TEUR")
    euro.mint(customer, 1_000 * UNIT, sender=owner)
    euro_plan = create_plan(price=5 * UNIT, plan_token=euro)
    subscribe(monthly)
    subscribe(monthly, subscriber=payer)
    subscribe(weekly, cap=3 * UNIT)
    subscribe(hourly, cap=1001)
    subscribe(long, cap=7 * UNIT)
    subscribe(trial)
    ending = subscribe(monthly, subscriber=stranger)
    subscriptions.cancel(ending, True, sender=stranger)
    subscribe(euro_plan, cap=5 * UNIT, plan_token=euro)
    subscribe(create_plan(sender=stranger))  # another merchant's plan
    now = int(chain.pending_timestamp)
    token.approve(invoices, 1_000 * UNIT, sender=customer)
    issue_at(invoices, merchant, customer, token, "R-1", now + 20 * DAY, 50 * UNIT, True)
    invoices.pay(merchant, ref("R-1"), 20 * UNIT, sender=customer)
    issue_at(invoices, merchant, customer, token, "R-2", now + 45 * DAY)
    issue_at(invoices, merchant, customer, token, "R-3", now + 100 * DAY)
    issue_at(invoices, merchant, customer, token, "R-4", now + 10 * DAY, 9 * UNIT)
    invoices.pay(merchant, ref("R-4"), 9 * UNIT, sender=customer)
    void = issue_at(invoices, merchant, customer, token, "R-5", now + 10 * DAY)
    invoices.voidInvoice(void, sender=merchant)
    mirror.sync()

    body = get(client, "/v1/analytics/summary", merchant_key).json()
    assert body["as_of"] == int(chain.blocks.head.timestamp)
    assert body["merchant"] == str(merchant.address).lower()
    assert [t["token"] for t in body["tokens"]] == sorted(
        [str(token.address).lower(), str(euro.address).lower()]
    )
    usd = figures(client, merchant_key, token)
    # Exactly: 2 x 10.00 + 3.00 x 30/7 + 0.001001 x 720 + 7.00 x 30/45, rounded down once:
    # 20_000_000 + 12_857_142.857... + 720_720 + 4_666_666.666... = 38_244_529.52...
    # (Rounding each plan first would lose a unit: 38_244_528.) Trials and subscriptions
    # set to end do not count.
    assert usd["mrr"] == "38244529" and usd["arr"] == str(12 * 38_244_529)
    assert usd["paying_subscriptions"] == 5
    eur = figures(client, merchant_key, euro)
    assert (eur["mrr"], eur["arr"], eur["paying_subscriptions"]) == ("5000000", "60000000", 1)

    # Charges falling due by now + N days (two monthly, weekly, hourly, 45-day, trial):
    hourly_units = {30: 720, 60: 1440, 90: 2160}
    charges = {
        30: 2 * 10 * UNIT + 4 * 3 * UNIT + 0 * 7 * UNIT + 1 * 10 * UNIT,
        60: 4 * 10 * UNIT + 8 * 3 * UNIT + 1 * 7 * UNIT + 2 * 10 * UNIT,
        90: 6 * 10 * UNIT + 12 * 3 * UNIT + 2 * 7 * UNIT + 3 * 10 * UNIT,
    }
    # Open balances due in the window: R-1 (30.00 left) by day 20, R-2 (100.00) by day 45.
    balances = {30: 30 * UNIT, 60: 130 * UNIT, 90: 130 * UNIT}
    expected = {
        days: (
            charges[days] + hourly_units[days] * 1001,
            balances[days],
            charges[days] + hourly_units[days] * 1001 + balances[days],
        )
        for days in (30, 60, 90)
    }
    assert windows(usd) == expected
    assert windows(eur) == {
        30: (5 * UNIT, 0, 5 * UNIT),
        60: (10 * UNIT, 0, 10 * UNIT),
        90: (15 * UNIT, 0, 15 * UNIT),
    }
    assert [b["balance"] for b in usd["overdue_aging"]] == ["0", "0", "0", "0"]


def test_churn_over_the_last_30_days(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    subscriptions: Any,
    token: Any,
    customer: Any,
    payer: Any,
    stranger: Any,
    merchant: Any,
    keeper: Any,
) -> None:
    plan = create_plan()  # 30 days, 3 days of grace
    t0 = int(chain.pending_timestamp)
    canceled = subscribe(plan)
    lapsing = subscribe(plan, subscriber=payer)
    staying = subscribe(plan, subscriber=stranger)
    early = subscribe(plan, subscriber=merchant)
    travel(chain, t0 + 20 * DAY)
    subscriptions.cancel(early, False, sender=merchant)  # ends before the window
    travel(chain, t0 + PERIOD + 3600)
    subscriptions.chargeBatch([canceled, lapsing, staying], sender=keeper)
    travel(chain, t0 + 40 * DAY)
    subscriptions.cancel(canceled, False, sender=customer)
    token.approve(subscriptions, 0, sender=payer)
    travel(chain, t0 + 50 * DAY)
    newcomer = subscribe(plan)  # starts inside the window: not in the base
    travel(chain, t0 + 2 * PERIOD + 3600)
    subscriptions.chargeBatch([lapsing, staying], sender=keeper)  # lapsing's charge fails
    travel(chain, t0 + 65 * DAY)  # lapsing's grace ended at about t0 + 63 days
    mirror.sync()

    usd = figures(client, merchant_key, token)
    churn = usd["churn"]
    # Live at t0 + 35 days: canceled, lapsing, staying; of those, one canceled (day 40)
    # and one lapsed (day 63) by day 65.
    assert churn == {
        "window_days": 30,
        "live_at_start": 3,
        "canceled": 1,
        "lapsed": 1,
        "churned": 2,
        "rate": "0.6666",
        "rate_bps": 6666,
    }
    assert usd["mrr"] == str(2 * PRICE) and usd["paying_subscriptions"] == 2  # staying, newcomer
    statuses = {
        s["subscription_id"]: s["status"]
        for s in get(client, "/v1/subscriptions", merchant_key).json()["items"]
    }
    assert statuses == {
        canceled: "canceled",
        lapsing: "lapsed",
        staying: "active",
        early: "canceled",
        newcomer: "active",
    }
    # Once the lapse is final on-chain, the figures stay the same.
    subscriptions.finalizeLapse(lapsing, sender=keeper)
    mirror.sync()
    assert figures(client, merchant_key, token)["churn"] == churn


def test_overdue_aging_buckets(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
) -> None:
    t0 = int(chain.pending_timestamp)
    for number, due_in in (("G-1", 10), ("G-2", 40), ("G-3", 70), ("G-4", 100), ("G-7", 200)):
        issue_at(invoices, merchant, customer, token, number, t0 + due_in * DAY, 100 * UNIT, True)
    token.approve(invoices, 1_000 * UNIT, sender=customer)
    invoices.pay(merchant, ref("G-3"), 40 * UNIT, sender=customer)
    paid = issue_at(invoices, merchant, customer, token, "G-5", t0 + 10 * DAY)
    invoices.pay(merchant, ref("G-5"), 100 * UNIT, sender=customer)
    void = issue_at(invoices, merchant, customer, token, "G-6", t0 + 10 * DAY)
    invoices.voidInvoice(void, sender=merchant)
    mirror.sync()
    assert paid
    fresh = figures(client, merchant_key, token)["overdue_aging"]
    assert all(b["invoices"] == 0 for b in fresh)

    travel(chain, t0 + 101 * DAY + 3600)
    aging = figures(client, merchant_key, token)["overdue_aging"]
    # 91 days and an hour late is day 92 (90+); 61 d 1 h: 62; 31 d 1 h: 32; 1 d 1 h: 2.
    assert aging == [
        {"bucket": "1-30", "invoices": 1, "balance": str(100 * UNIT)},
        {"bucket": "31-60", "invoices": 1, "balance": str(60 * UNIT)},
        {"bucket": "61-90", "invoices": 1, "balance": str(100 * UNIT)},
        {"bucket": "90+", "invoices": 1, "balance": str(100 * UNIT)},
    ]


def test_aging_counts_started_days() -> None:
    due = 1_000_000
    assert [days_overdue(due, due + late) for late in (-5, 0, 1, DAY, DAY + 1)] == [
        0,
        0,
        0 + 1,
        1,
        2,
    ]
    rows = [
        {"due_date": due - 30 * DAY, "amount": 7, "paid": 0},  # 30 days: 1-30
        {"due_date": due - 30 * DAY - 1, "amount": 5, "paid": 1},  # day 31
        {"due_date": due - 90 * DAY, "amount": 3, "paid": 0},  # day 90
        {"due_date": due - 90 * DAY - 1, "amount": 2, "paid": 0},  # day 91: 90+
        {"due_date": due, "amount": 100, "paid": 0},  # due now: not overdue
    ]
    assert [(b.invoices, b.balance) for b in _aging(rows, due)] == [
        (1, "7"),
        (1, "4"),
        (1, "3"),
        (1, "2"),
    ]


def test_mrr_sums_exactly_and_rounds_once() -> None:
    row = {
        "state": "live",
        "paid_through": 10**9,
        "cancel_at_period_end": False,
        "in_trial": False,
        "grace_period": 3600,
    }
    subs = [{**row, "price": 1, "period": 7 * DAY}] * 7  # 7 x 30/7 = 30 exactly
    assert mrr_of(subs, 0) == (30, 7)
    assert mrr_of([{**row, "price": 1, "period": 7 * DAY}], 0) == (4, 1)  # 4.28 rounds down


def test_payments_at_risk_read_allowance_and_balance_on_chain(
    chain: Any,
    client: TestClient,
    make_client: Callable[..., TestClient],
    engine: Engine,
    mirror: Mirror,
    merchant_key: str,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    subscriptions: Any,
    token: Any,
    customer: Any,
    payer: Any,
    stranger: Any,
) -> None:
    plan = create_plan()
    low_allowance = subscribe(plan)
    low_balance = subscribe(plan, subscriber=payer)
    fine = subscribe(plan, subscriber=stranger)
    mirror.sync()

    def at_risk(days: int) -> list[dict[str, Any]]:
        response = get(client, "/v1/analytics/at-risk", merchant_key, days=days)
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    assert at_risk(31) == []
    token.approve(subscriptions, 5 * UNIT, sender=customer)  # lowered below the price
    keep = UNIT
    token.transfer(stranger, int(token.balanceOf(payer)) - keep, sender=payer)
    assert at_risk(7) == []  # the charges are 30 days away
    items = at_risk(31)
    assert [i["subscription_id"] for i in items] == [low_allowance, low_balance]
    first, second = items
    assert first["reasons"] == ["insufficient_allowance"] and first["allowance"] == str(5 * UNIT)
    assert first["amount_due"] == str(PRICE)
    assert second["reasons"] == ["insufficient_balance"] and second["balance"] == str(keep)
    assert second["allowance"] == str(12 * PRICE - PRICE)
    due = first["next_charge_at"]
    travel(chain, due - 6 * DAY)
    assert [i["subscription_id"] for i in at_risk(7)] == [low_allowance, low_balance]
    assert fine not in [i["subscription_id"] for i in at_risk(366)]

    session = session_for(engine, str(customer.address), mirror.chain_id)
    assert get(client, "/v1/analytics/at-risk", session).status_code == 403
    assert get(client, "/v1/analytics/at-risk", None).status_code == 401
    for days in (-1, 367, "week"):
        assert get(client, "/v1/analytics/at-risk", merchant_key, days=days).status_code == 422
    down = make_client(rpc_url="http://127.0.0.1:9")
    response = down.get("/v1/analytics/at-risk", headers=bearer(merchant_key))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "chain_unavailable"


def test_usage_spike_is_flagged_with_its_figures(
    chain: Any,
    client: TestClient,
    engine: Engine,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    subscriptions: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    payer: Any,
    keeper: Any,
) -> None:
    steady = metered_subscription(subscriptions, token, merchant, customer)
    run_periods(chain, subscriptions, steady, merchant, keeper, [[10], [12], [11], [60, 40], [20]])
    young = metered_subscription(subscriptions, token, merchant, payer)
    run_periods(chain, subscriptions, young, merchant, keeper, [[5], [500]], charge_last=False)
    mirror.sync()
    body = get(client, "/v1/analytics/usage-anomalies", merchant_key).json()
    assert "mean plus three population standard deviations" in body["rule"]
    # Period 4 of `steady`: 100 units after 10, 12, 11 (mean 11, sd 0.816...): above both
    # 22 and 13.45. Period 5 (20) is not; `young` has one prior period only.
    assert body["items"] == [
        {
            "subscription_id": steady,
            "subscriber": str(customer.address).lower(),
            "token": str(token.address).lower(),
            "period": 4,
            "period_start": body["items"][0]["period_end"] - DAY,
            "period_end": body["items"][0]["period_end"],
            "units": "100",
            "prior_periods": 3,
            "trailing_mean": "11.000000",
            "trailing_stddev": "0.816496",
            "threshold": "22.000000",
        }
    ]
    usage = get(client, "/v1/usage", merchant_key, subscription_id=steady).json()["items"]
    assert usage[3]["period_end"] == body["items"][0]["period_end"] and usage[3]["units"] == "100"
    one = get(client, "/v1/analytics/usage-anomalies", merchant_key, subscription_id=young)
    assert one.json()["items"] == []
    assert get(client, "/v1/analytics/usage-anomalies", stranger_key).json()["items"] == []
    session = session_for(engine, str(customer.address), mirror.chain_id)
    assert get(client, "/v1/analytics/usage-anomalies", session).status_code == 403
    assert get(client, "/v1/analytics/summary", session).status_code == 403
    assert get(client, "/v1/analytics/summary", None).status_code == 401


@pytest.mark.parametrize(
    ("units", "history", "flagged"),
    [
        (100, [10, 12, 11], True),
        (22, [11, 11, 11], False),  # exactly twice the mean is not above it
        (23, [11, 11, 11], True),
        (30, [10, 20, 30], False),  # within 3 sd
        (100, [10, 12], False),  # too little history
        (1, [0, 0, 0], True),
        (0, [0, 0, 0], False),
    ],
)
def test_spike_rule(units: int, history: list[int], flagged: bool) -> None:
    assert spike(units, history) is flagged
