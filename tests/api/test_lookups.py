"""Lookups over the mirror of real contract activity on Anvil: invoices (filters, keyset
pages, who sees what), subscriptions, charges, usage per period and customer statements,
and the clear 4xx every malformed request gets."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eth_utils import keccak
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api.deps import SESSION_PREFIX, session_token_sha256
from api.endpoints.lookups import current_time
from api.repository.lookups import Deployment, InvoiceFilter, invoice_query
from api.services import lookups
from offchain.db import gateway_repository
from tests.api.conftest import bearer
from tests.chain_fixtures import PERIOD, PRICE, UNIT
from tests.contracts.helpers import travel
from tests.offchain.indexer.helpers import Mirror

DAY = 86_400


# ----------------------------------------------------------------------- helpers


def session_for(engine: Engine, address: str, chain_id: int) -> str:
    """A live customer session of `address`, as Sign-In with Ethereum leaves one."""
    token = SESSION_PREFIX + secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        gateway_repository.insert_session(
            conn,
            {
                "token_sha256": session_token_sha256(token),
                "address": address.lower(),
                "chain_id": chain_id,
                "created_at": now,
                "expires_at": now + timedelta(hours=1),
            },
        )
    return token


def ref(number: str) -> bytes:
    return keccak(text=number)


def invoice_id_of(merchant: Any, number: str) -> str:
    from eth_abi import encode

    return "0x" + keccak(encode(["address", "bytes32"], [str(merchant), ref(number)])).hex()


def issue_at(
    invoices: Any,
    merchant: Any,
    customer: Any,
    token: Any,
    number: str,
    due_date: int,
    amount: int = 100 * UNIT,
    allow_partial: bool = False,
) -> str:
    invoices.issue(
        merchant,
        ref(number),
        customer,
        token,
        amount,
        due_date,
        allow_partial,
        b"\x42" * 32,
        sender=merchant,
    )
    return invoice_id_of(merchant.address, number)


def walk(client: TestClient, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page, checking each page's size."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = client.get(path, params=query, headers=bearer(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= int(params.get("limit", 50))
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == int(params.get("limit", 50))
    raise AssertionError("no last page")


def get(client: TestClient, path: str, key: str | None, **params: Any) -> Any:
    return client.get(path, params=params, headers=bearer(key) if key else {})


@pytest.fixture
def customer_key(engine: Engine, customer: Any, mirror: Mirror) -> str:
    return session_for(engine, customer.address, mirror.chain_id)


@pytest.fixture
def stranger_session(engine: Engine, stranger: Any, mirror: Mirror) -> str:
    return session_for(engine, stranger.address, mirror.chain_id)


# ---------------------------------------------------------------------- invoices


@pytest.fixture
def invoice_book(
    chain: Any, invoices: Any, merchant: Any, customer: Any, stranger: Any, payer: Any, token: Any
) -> dict[str, Any]:
    """Seven invoices of `merchant` (three due at the same second), one of `stranger`
    as a merchant; one paid, one partly paid, one void."""
    base = int(chain.pending_timestamp) + 10 * DAY
    due = {
        "A-1": base,
        "A-2": base + DAY,
        "A-3": base + DAY,
        "A-4": base + DAY,
        "A-5": base + 2 * DAY,
        "A-6": base + 3 * DAY,
        "A-7": base + 40 * DAY,
    }
    ids = {}
    for number, due_date in due.items():
        billed = payer if number == "A-6" else customer
        ids[number] = issue_at(
            invoices, merchant, billed, token, number, due_date, allow_partial=number == "A-2"
        )
    ids["B-1"] = issue_at(invoices, stranger, customer, token, "B-1", base)
    token.approve(invoices, 1000 * UNIT, sender=customer)
    invoices.pay(merchant, ref("A-1"), 100 * UNIT, sender=customer)
    invoices.pay(merchant, ref("A-2"), 40 * UNIT, sender=customer)
    invoices.voidInvoice(ids["A-3"], sender=merchant)
    return {"ids": ids, "due": due, "base": base}


def test_merchant_walks_its_invoices_in_due_date_order_without_duplicates(
    client: TestClient, mirror: Mirror, merchant_key: str, invoice_book: dict[str, Any]
) -> None:
    mirror.sync()
    ids = invoice_book["ids"]
    for limit in (1, 2, 3, 50):
        items = walk(client, "/v1/invoices", merchant_key, limit=limit)
        got = [i["invoice_id"] for i in items]
        assert len(got) == len(set(got)) == 7
        assert set(got) == {ids[n] for n in ids if n.startswith("A-")}
        assert [(i["due_date"], i["invoice_id"]) for i in items] == sorted(
            (i["due_date"], i["invoice_id"]) for i in items
        )
    by_id = {i["invoice_id"]: i for i in walk(client, "/v1/invoices", merchant_key)}
    paid, partial, void = by_id[ids["A-1"]], by_id[ids["A-2"]], by_id[ids["A-3"]]
    assert (paid["status"], paid["paid"], paid["balance"]) == ("paid", str(100 * UNIT), "0")
    assert (partial["status"], partial["balance"]) == ("partially_paid", str(60 * UNIT))
    assert (void["status"], void["balance"]) == ("void", "0")
    assert by_id[ids["A-4"]]["amount"] == str(100 * UNIT) and not by_id[ids["A-4"]]["overdue"]


def test_pages_are_stable_when_rows_arrive_between_them(
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    invoice_book: dict[str, Any],
    invoices: Any,
    merchant: Any,
    customer: Any,
    token: Any,
) -> None:
    mirror.sync()
    first = get(client, "/v1/invoices", merchant_key, limit=3).json()
    # An invoice due before the cursor arrives: the next pages neither repeat nor skip.
    issue_at(invoices, merchant, customer, token, "A-0", invoice_book["base"] - DAY)
    mirror.sync()
    rest = walk(client, "/v1/invoices", merchant_key, limit=2, cursor=first["next_cursor"])
    seen = [i["invoice_id"] for i in first["items"] + rest]
    assert len(seen) == len(set(seen)) == 7


def test_invoice_filters(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    invoice_book: dict[str, Any],
    customer: Any,
    payer: Any,
) -> None:
    mirror.sync()
    ids, due, base = invoice_book["ids"], invoice_book["due"], invoice_book["base"]

    def numbers(**params: Any) -> set[str]:
        items = walk(client, "/v1/invoices", merchant_key, **params)
        names = {v: k for k, v in ids.items()}
        return {names[i["invoice_id"]] for i in items}

    assert numbers(status="paid") == {"A-1"}
    assert numbers(status="partially_paid") == {"A-2"}
    assert numbers(status="void") == {"A-3"}
    assert numbers(status="open") == {"A-4", "A-5", "A-6", "A-7"}
    assert numbers(status="overdue") == set()
    assert numbers(customer=str(payer.address)) == {"A-6"}
    assert numbers(customer=str(customer.address).lower(), status="open") == {"A-4", "A-5", "A-7"}
    assert numbers(due_after=base + DAY, due_before=base + 3 * DAY) == {"A-2", "A-3", "A-4", "A-5"}
    assert numbers(due_after=base + 3 * DAY) == {"A-6", "A-7"}
    assert numbers(reference="A-5") == {"A-5"}
    assert numbers(reference="B-1") == set()  # another merchant's number
    assert numbers(reference="nope") == set()
    # Overdue: unpaid (open or partly paid), not void, due before now (the chain's time).
    travel(chain, due["A-5"] + 1)
    assert numbers(status="overdue") == {"A-2", "A-4", "A-5"}
    items = {i["invoice_id"]: i for i in walk(client, "/v1/invoices", merchant_key)}
    assert items[ids["A-4"]]["overdue"] and not items[ids["A-3"]]["overdue"]
    assert not items[ids["A-1"]]["overdue"] and not items[ids["A-6"]]["overdue"]


def test_who_sees_which_invoices(
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    customer_key: str,
    stranger_session: str,
    invoice_book: dict[str, Any],
    merchant: Any,
    stranger: Any,
) -> None:
    mirror.sync()
    ids = invoice_book["ids"]
    own = {i["invoice_id"] for i in walk(client, "/v1/invoices", stranger_key)}
    assert own == {ids["B-1"]}  # merchant B sees its own invoice only
    billed = {i["invoice_id"] for i in walk(client, "/v1/invoices", customer_key)}
    assert billed == {ids[n] for n in ids if n != "A-6"}  # A-6 is billed to the payer
    by_merchant = walk(client, "/v1/invoices", customer_key, merchant=str(stranger.address))
    assert [i["invoice_id"] for i in by_merchant] == [ids["B-1"]]
    assert walk(client, "/v1/invoices", stranger_session) == []
    assert get(client, "/v1/invoices", None).status_code == 401
    assert get(client, "/v1/invoices", "cbk_nope.nope").status_code == 401
    other = get(client, "/v1/invoices", merchant_key, merchant=str(stranger.address))
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    someone = get(client, "/v1/invoices", customer_key, customer=str(merchant.address))
    assert someone.status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"customer": "0x123"}, "customer"),
        ({"merchant": "not-an-address"}, "merchant"),
        ({"customer": "0x" + "g" * 40}, "customer"),
        # A mixed-case address must carry its EIP-55 checksum (one letter's case flipped).
        ({"customer": "0x70997970C51812dc3A010C7d01b50e0d17dc79c8"}, "customer"),
        ({"status": "unpaid"}, "status"),
        ({"due_after": -1}, "due_after"),
        ({"due_before": 2**70}, "due_before"),
        ({"due_after": "soon"}, "due_after"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": -5}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "bm90IGpzb24"}, "cursor"),  # "not json"
        ({"cursor": base64.urlsafe_b64encode(b'["sub",1]').decode().rstrip("=")}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["inv",-1,"0x00"]').decode()}, "cursor"),
        ({"cursor": "A" * 600}, "cursor"),
        ({"reference": ""}, "reference"),
        ({"reference": "x" * 129}, "reference"),
        ({"due_after": 10, "due_before": 5}, "due_after"),
    ],
)
def test_bad_invoice_queries_get_a_clear_422(
    client: TestClient, mirror: Mirror, merchant_key: str, params: dict[str, Any], field: str
) -> None:
    response = get(client, "/v1/invoices", merchant_key, **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert field in error["message"] or error.get("field") == field


def test_injection_attempts_are_plain_values(
    client: TestClient, mirror: Mirror, merchant_key: str, invoice_book: dict[str, Any]
) -> None:
    mirror.sync()
    for attempt in ("' OR 1=1 --", "A-1'; DROP TABLE invoices; --", "\x00", "A-1\u202e"):
        response = get(client, "/v1/invoices", merchant_key, reference=attempt)
        assert response.status_code == 200 and response.json()["items"] == []
    assert len(walk(client, "/v1/invoices", merchant_key)) == 7


def test_invoice_list_is_served_by_an_index_on_both_databases(
    engine: Engine, mirror: Mirror
) -> None:
    """A first page, a later page and a status filter each read one index range in
    (due_date, invoice_id) order: no sort of the merchant's invoices, no full scan."""
    where = Deployment(mirror.chain_id, mirror.manager, mirror.registry)
    merchant = "0x" + "11" * 20
    cases = [
        (InvoiceFilter(merchant=merchant), None, "ix_invoices_merchant_due_id"),
        (InvoiceFilter(merchant=merchant), (5, "0x" + "ab" * 32), "ix_invoices_merchant_due_id"),
        (
            InvoiceFilter(merchant=merchant, statuses=("open",)),
            (5, "0x" + "ab" * 32),
            "ix_invoices_merchant_status_due_id",
        ),
        (InvoiceFilter(customer=merchant), None, "ix_invoices_customer_due_id"),
    ]
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # An empty table is cheapest to scan; make the planner cost it as a big one.
            conn.execute(text("SET enable_seqscan = off"))
            conn.execute(text("SET enable_sort = off"))
        for f, after, index in cases:
            sql = str(
                invoice_query(where, f, after, 51).compile(
                    engine, compile_kwargs={"literal_binds": True}
                )
            )
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            plan = "\n".join(str(row[-1]) for row in conn.execute(text(prefix + sql)))
            assert index in plan, plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan
            assert "SCAN invoices" not in plan and "Seq Scan" not in plan, plan


# ----------------------------------------------------------------- subscriptions


@pytest.fixture
def subscription_book(
    chain: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    subscriptions: Any,
    merchant: Any,
    stranger: Any,
    customer: Any,
    payer: Any,
) -> dict[str, int]:
    monthly = create_plan()
    weekly = create_plan(price=3 * UNIT, period=7 * DAY)
    trial = create_plan(trial=14 * DAY)
    foreign = create_plan(sender=stranger)  # a plan of another merchant
    book = {
        "monthly": monthly,
        "weekly": weekly,
        "trial": trial,
        "foreign": foreign,
        "s_monthly": subscribe(monthly),
        "s_weekly": subscribe(weekly, cap=3 * UNIT),
        "s_trial": subscribe(trial),
        "s_ending": subscribe(monthly),
        "s_payer": subscribe(monthly, subscriber=payer),
        "s_foreign": subscribe(foreign),
    }
    subscriptions.cancel(book["s_ending"], True, sender=customer)
    return book


def test_subscriptions_with_status_next_charge_and_visibility(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    customer_key: str,
    stranger_session: str,
    subscription_book: dict[str, int],
    customer: Any,
    payer: Any,
) -> None:
    mirror.sync()
    b = subscription_book
    items = walk(client, "/v1/subscriptions", merchant_key, limit=2)
    by_id = {i["subscription_id"]: i for i in items}
    assert list(by_id) == sorted(
        [b["s_monthly"], b["s_weekly"], b["s_trial"], b["s_ending"], b["s_payer"]]
    )
    monthly, weekly = by_id[b["s_monthly"]], by_id[b["s_weekly"]]
    assert monthly["status"] == "active" and monthly["state"] == "live"
    assert monthly["next_charge_at"] == monthly["started_at"] + PERIOD == monthly["paid_through"]
    assert monthly["amount_due"] == str(PRICE) and monthly["price"] == str(PRICE)
    assert weekly["next_charge_at"] == weekly["started_at"] + 7 * DAY
    assert weekly["amount_due"] == str(3 * UNIT) and weekly["period"] == 7 * DAY
    trial = by_id[b["s_trial"]]
    assert trial["status"] == "trialing" and trial["in_trial"]
    assert trial["next_charge_at"] == trial["started_at"] + 14 * DAY
    ending = by_id[b["s_ending"]]
    assert ending["status"] == "canceling" and ending["cancel_at_period_end"]
    assert ending["next_charge_at"] is None and ending["amount_due"] == "0"

    def ids(key: str, **params: Any) -> list[int]:
        return [i["subscription_id"] for i in walk(client, "/v1/subscriptions", key, **params)]

    assert ids(merchant_key, plan_id=b["weekly"]) == [b["s_weekly"]]
    assert ids(merchant_key, subscriber=str(payer.address)) == [b["s_payer"]]
    assert ids(merchant_key, status="trialing") == [b["s_trial"]]
    assert ids(merchant_key, status="canceling") == [b["s_ending"]]
    assert ids(merchant_key, state="canceled") == []
    assert ids(merchant_key, past_due=True) == []
    assert ids(stranger_key) == [b["s_foreign"]]
    assert set(ids(customer_key)) == {
        b["s_monthly"],
        b["s_weekly"],
        b["s_trial"],
        b["s_ending"],
        b["s_foreign"],
    }
    assert ids(stranger_session) == []
    assert get(client, "/v1/subscriptions", None).status_code == 401

    # One subscription: its parties see it, everyone else gets 404 (existing or not).
    path = f"/v1/subscriptions/{b['s_payer']}"
    assert get(client, path, merchant_key).json()["subscriber"] == str(payer.address).lower()
    assert get(client, path, stranger_key).status_code == 404
    assert get(client, path, customer_key).status_code == 404
    assert get(client, "/v1/subscriptions/999999", merchant_key).status_code == 404
    assert get(client, "/v1/subscriptions/-1", merchant_key).status_code == 422
    assert get(client, f"/v1/subscriptions/{2**64}", merchant_key).status_code == 422
    assert get(client, "/v1/subscriptions/abc", merchant_key).status_code == 422
    assert get(client, path, None).status_code == 401

    # Time moves on: the weekly one falls due (past due), the ending one ends, the trial too.
    travel(chain, ending["paid_through"] + 1)
    now_status = {
        i["subscription_id"]: i["status"] for i in walk(client, "/v1/subscriptions", merchant_key)
    }
    assert now_status[b["s_ending"]] == "canceled"
    assert now_status[b["s_weekly"]] == "lapsed"  # 30 days: far past its 3-day grace
    assert now_status[b["s_monthly"]] == "past_due"  # due now, within grace
    assert now_status[b["s_trial"]] == "lapsed"
    assert ids(merchant_key, status="past_due") == [b["s_monthly"], b["s_payer"]]
    assert ids(merchant_key, status="canceled") == [b["s_ending"]]
    assert ids(merchant_key, status="lapsed") == [b["s_weekly"], b["s_trial"]]
    assert get(client, "/v1/subscriptions", merchant_key, status="gone").status_code == 422
    assert get(client, "/v1/subscriptions", merchant_key, state="dead").status_code == 422


# ----------------------------------------------------------------------- charges


def test_charges_and_failures_by_subscription_party_and_time(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    customer_key: str,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    subscriptions: Any,
    token: Any,
    customer: Any,
    payer: Any,
    keeper: Any,
) -> None:
    plan = create_plan()
    mine = subscribe(plan)
    theirs = subscribe(plan, subscriber=payer)
    started = int(chain.blocks.head.timestamp)
    travel(chain, started + PERIOD + 10)
    subscriptions.charge(mine, sender=keeper)
    token.approve(subscriptions, 0, sender=payer)
    subscriptions.charge(theirs, sender=keeper)  # fails: no allowance
    mirror.sync()

    charges = walk(client, "/v1/charges", merchant_key)
    assert [(c["kind"], c["subscription_id"]) for c in charges] == [
        ("charge", mine),
        ("charge", theirs),
        ("charge", mine),
    ]
    second = charges[2]
    assert second["amount"] == str(PRICE) and second["fee"] == "0"
    assert second["paid_through"] - second["period_start"] == PERIOD
    with_failures = walk(client, "/v1/charges", merchant_key, include_failures="true", limit=1)
    failure = with_failures[-1]
    assert failure["kind"] == "failure" and failure["subscription_id"] == theirs
    assert failure["reason"] == "insufficient_allowance" and failure["amount"] == str(PRICE)
    assert failure["due_at"] == started + PERIOD  # the period it failed to collect
    assert failure["fee"] is None

    assert [c["subscription_id"] for c in walk(client, "/v1/charges", customer_key)] == [
        mine,
        mine,
    ]
    assert walk(client, "/v1/charges", stranger_key) == []
    later = walk(client, "/v1/charges", merchant_key, **{"from": started + PERIOD})
    assert [c["subscription_id"] for c in later] == [mine]
    early = walk(client, "/v1/charges", merchant_key, to=started + PERIOD)
    assert len(early) == 2
    only = walk(client, "/v1/charges", merchant_key, subscription_id=theirs, include_failures=1)
    assert [c["kind"] for c in only] == ["charge", "failure"]
    assert get(client, "/v1/charges", customer_key, subscription_id=theirs).status_code == 404
    assert get(client, "/v1/charges", merchant_key, **{"from": 5, "to": 5}).status_code == 422
    assert get(client, "/v1/charges", merchant_key, cursor="eyJ4Ijox").status_code == 422
    assert get(client, "/v1/charges", None).status_code == 401


# ------------------------------------------------------------------------- usage


METERED_PRICE = 1 * UNIT
UNIT_PRICE = 10_000  # 0.01 per unit
INCLUDED = 5


def metered_subscription(
    subscriptions: Any, token: Any, merchant: Any, customer: Any, period: int = DAY
) -> int:
    plan = int(
        subscriptions.createMeteredPlan(
            token, METERED_PRICE, period, 0, DAY, UNIT_PRICE, INCLUDED, sender=merchant
        ).return_value
    )
    token.approve(subscriptions, 1_000 * UNIT, sender=customer)
    return int(subscriptions.subscribe(plan, 100 * UNIT, sender=customer).return_value)


def run_periods(
    chain: Any,
    subscriptions: Any,
    sid: int,
    merchant: Any,
    keeper: Any,
    usage: list[list[int]],
    *,
    charge_last: bool = True,
) -> None:
    """Reports `usage[k]` (a list of reports) in period k+1, then charges the period end."""
    for k, reports in enumerate(usage):
        for n, units in enumerate(reports):
            subscriptions.reportUsage(sid, units, keccak(text=f"{sid}-{k}-{n}"), sender=merchant)
        if charge_last or k < len(usage) - 1:
            travel(chain, int(subscriptions.paidThrough(sid)))
            subscriptions.charge(sid, sender=keeper)


def test_usage_per_billing_period(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    customer_key: str,
    stranger_session: str,
    subscriptions: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    keeper: Any,
) -> None:
    sid = metered_subscription(subscriptions, token, merchant, customer)
    started = int(subscriptions.getSubscription(sid).paidThrough) - DAY
    run_periods(
        chain, subscriptions, sid, merchant, keeper, [[3], [], [4, 6], [2]], charge_last=False
    )
    mirror.sync()
    body = get(client, "/v1/usage", merchant_key, subscription_id=sid).json()
    assert body["unit_price"] == str(UNIT_PRICE) and body["period_length"] == DAY
    periods = [
        (p["period"], p["period_start"] - started, p["period_end"] - started, p["units"])
        for p in body["items"]
    ]
    assert periods == [
        (1, 0, DAY, "3"),
        (2, DAY, 2 * DAY, "0"),
        (3, 2 * DAY, 3 * DAY, "10"),
        (4, 3 * DAY, 4 * DAY, "2"),  # the current period, not charged yet
    ]
    third = body["items"][2]
    assert third["included"] == "5" and third["billable_units"] == "5"
    assert third["overage"] == str(5 * UNIT_PRICE) and third["charged"] == str(5 * UNIT_PRICE)
    assert third["reports"] == 2
    # Period 1's charge billed its 3 units, all included: nothing to pay for them.
    assert body["items"][0]["billable_units"] == "0" and body["items"][0]["charged"] == "0"
    assert body["items"][1]["charged"] is None  # no usage, so no usage charge
    assert body["items"][3]["charged"] is None
    # Pages of periods.
    pages = walk(client, "/v1/usage", merchant_key, subscription_id=sid, limit=3)
    assert [p["period"] for p in pages] == [1, 2, 3, 4]
    # Visibility.
    assert get(client, "/v1/usage", customer_key, subscription_id=sid).status_code == 200
    assert get(client, "/v1/usage", stranger_key, subscription_id=sid).status_code == 404
    assert get(client, "/v1/usage", stranger_session, subscription_id=sid).status_code == 404
    assert get(client, "/v1/usage", merchant_key).status_code == 422  # subscription_id needed
    assert get(client, "/v1/usage", None, subscription_id=sid).status_code == 401


# --------------------------------------------------------------------- statement


def test_customer_statement_with_totals_and_opening_figures(
    chain: Any,
    client: TestClient,
    mirror: Mirror,
    merchant_key: str,
    stranger_key: str,
    customer_key: str,
    stranger_session: str,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    invoices: Any,
    token: Any,
    merchant: Any,
    stranger: Any,
    customer: Any,
    payer: Any,
) -> None:
    start = int(chain.pending_timestamp)
    sid = subscribe(create_plan())  # charge of 10.00 to merchant
    first = issue_at(
        invoices, merchant, customer, token, "S-1", start + 90 * DAY, allow_partial=True
    )
    other = issue_at(invoices, stranger, customer, token, "S-2", start + 90 * DAY)
    token.approve(invoices, 1_000 * UNIT, sender=customer)
    invoices.pay(merchant, ref("S-1"), 30 * UNIT, sender=customer)
    travel(chain, start + 10 * DAY)
    cut = start + 10 * DAY
    token.approve(invoices, 1_000 * UNIT, sender=payer)
    invoices.pay(merchant, ref("S-1"), 20 * UNIT, sender=payer)  # on the customer's behalf
    invoices.settleOffchain(first, 25 * UNIT, keccak(text="wire-1"), sender=merchant)
    token.approve(invoices, 1_000 * UNIT, sender=merchant)
    invoices.refund(first, customer, 5 * UNIT, sender=merchant)
    invoices.pay(stranger, ref("S-2"), 100 * UNIT, sender=customer)
    mirror.sync()
    address = str(customer.address)
    path = f"/v1/customers/{address}/statement"

    whole = get(client, path, customer_key).json()
    assert whole["address"] == address.lower() and whole["from"] == 0
    kinds = [(line["kind"], line["amount"]) for line in whole["lines"]]
    assert kinds == [
        ("charge", str(PRICE)),
        ("invoice_payment", str(30 * UNIT)),
        ("invoice_payment", str(20 * UNIT)),
        ("settlement", str(25 * UNIT)),
        ("refund", str(5 * UNIT)),
        ("invoice_payment", str(100 * UNIT)),
    ]
    assert whole["lines"][0]["subscription_id"] == sid
    assert whole["lines"][2]["counterparty"] == str(payer.address).lower()
    (totals,) = whole["totals"]
    assert totals["token"] == str(token.address).lower()
    assert totals["opening_net_paid"] == "0"
    assert totals["charges"] == str(PRICE)
    assert totals["invoice_payments"] == str(150 * UNIT)
    assert totals["settlements"] == str(25 * UNIT) and totals["refunds"] == str(5 * UNIT)
    net = PRICE + 150 * UNIT + 25 * UNIT - 5 * UNIT
    assert totals["net_paid"] == totals["closing_net_paid"] == str(net)

    # From the cut: what came before is the opening figure.
    after = get(client, path, customer_key, **{"from": cut}).json()
    assert [line["kind"] for line in after["lines"]] == [
        "invoice_payment",
        "settlement",
        "refund",
        "invoice_payment",
    ]
    (t,) = after["totals"]
    assert t["opening_net_paid"] == str(PRICE + 30 * UNIT)
    assert t["net_paid"] == str(140 * UNIT) and t["closing_net_paid"] == str(net)
    before = get(client, path, customer_key, to=cut).json()
    assert len(before["lines"]) == 2 and before["totals"][0]["closing_net_paid"] == str(
        PRICE + 30 * UNIT
    )

    # A merchant sees the lines with it as the merchant only.
    mine = get(client, path, merchant_key).json()
    assert len(mine["lines"]) == 5
    assert mine["totals"][0]["invoice_payments"] == str(50 * UNIT)
    theirs = get(client, path, stranger_key).json()
    assert [line["invoice_id"] for line in theirs["lines"]] == [other]
    # A customer sees its own statement only; nobody anonymous.
    assert get(client, path, stranger_session).status_code == 404
    assert get(client, path.replace(address, address.lower()), customer_key).status_code == 200
    assert get(client, path, None).status_code == 401
    assert get(client, "/v1/customers/0x12/statement", merchant_key).status_code == 422
    assert get(client, path, merchant_key, **{"from": 10, "to": 10}).status_code == 422
    assert get(client, path, merchant_key, to=-1).status_code == 422


def test_clock_falls_back_to_the_wall_clock_when_the_node_is_down(
    make_client: Callable[..., TestClient], mirror: Mirror, merchant_key: str
) -> None:
    client = make_client(rpc_url="http://127.0.0.1:9")
    response = get(client, "/v1/invoices", merchant_key, status="overdue")
    assert response.status_code == 200 and response.json() == {"items": [], "next_cursor": None}


def test_now_is_injectable(
    client: TestClient, mirror: Mirror, merchant_key: str, invoice_book: dict[str, Any]
) -> None:
    """'Now' is a dependency: an app can be asked about any instant without moving time."""
    mirror.sync()
    app: Any = client.app
    app.dependency_overrides[current_time] = lambda: invoice_book["due"]["A-7"] + 1
    try:
        overdue = walk(client, "/v1/invoices", merchant_key, status="overdue")
    finally:
        app.dependency_overrides.clear()
    assert {i["invoice_id"] for i in overdue} == {
        invoice_book["ids"][n] for n in ("A-2", "A-4", "A-5", "A-6", "A-7")
    }
    assert walk(client, "/v1/invoices", merchant_key, status="overdue") == []


def test_the_chain_time_is_reused_for_block_time_cache_s(
    make_client: Callable[..., TestClient], chain: Any
) -> None:
    """Lists judge due dates by the node's latest block time, asked at most once per
    `block_time_cache_s` per worker; 0 asks every time."""
    cached = make_client(block_time_cache_s=3600).app.state.gateway  # type: ignore[attr-defined]
    fresh = make_client(block_time_cache_s=0).app.state.gateway  # type: ignore[attr-defined]
    before = lookups.chain_now(cached)
    assert lookups.chain_now(fresh) == before
    travel(chain, before + 10 * DAY)
    assert lookups.chain_now(fresh) >= before + 10 * DAY
    assert lookups.chain_now(cached) == before  # within its window
