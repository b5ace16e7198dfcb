"""The producer: final events only up to the finalized block; unconfirmed ones only to the
endpoints that opt in, marked so, and canceled (never followed by a final one) when a
reorg orphans their block; reminders once per object, kind and day, on the chain's clock;
the keeper's at-risk flags as warnings, once per charge and reason.
On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from offchain.db import keeper_repository as keeper_repo
from offchain.db import webhook_repository as repo
from offchain.db.models import Invoice, Plan, Subscription, WebhookDeliveryStatus
from offchain.webhooks import endpoints, producer
from offchain.webhooks.delivery import Deliverer
from offchain.webhooks.producer import produce_all
from offchain.webhooks.reminders import ReminderConfig, parse_days
from tests.chain_fixtures import UNIT
from tests.offchain.indexer.helpers import Mirror
from tests.offchain.webhooks.receiver import Receiver
from tests.offchain.webhooks.test_delivery import FAST

DAY = 24 * 3600


def _types(engine: Engine, **where: Any) -> list[tuple[str, bool]]:
    with engine.connect() as conn:
        events = repo.list_events(conn)
    return [(e.type, e.final) for e in events if all(getattr(e, k) == v for k, v in where.items())]


def test_a_backfill_in_several_passes_reports_what_all_of_them_made(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    merchant: Any,
    issue: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One call covers the finalized blocks in passes of `MAX_BLOCKS_PER_PASS`; its result
    adds up every pass (counts and event ids) and ends at the last pass's block."""
    with engine.begin() as conn:
        endpoints.create_endpoint(conn, merchant.address, "https://crm.example.com/hooks")
    for number in ("A", "B", "C"):
        issue(number=number)  # a block each
    chain.mine(3)
    mirror.sync()
    monkeypatch.setattr(producer, "MAX_BLOCKS_PER_PASS", 1)
    made = produce_all(engine, mirror.chain_id)
    with engine.connect() as conn:
        stored = repo.list_events(conn)
        _last, finalized = repo.indexer_position(conn, mirror.chain_id) or (0, -1)
        delivery_count = len(repo.list_deliveries(conn, None))
    assert [e.type for e in stored] == ["invoice.issued"] * 3
    assert sorted(made.event_ids) == sorted(e.event_id for e in stored)
    assert (made.final_events, made.deliveries) == (3, delivery_count) == (3, 3)
    assert made.final_block == finalized


def test_unconfirmed_events_go_to_opted_in_endpoints_and_never_claim_finality(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    merchant: Any,
    issue: Callable[..., bytes],
) -> None:
    with Receiver() as final_only, Receiver() as eager:
        with engine.begin() as conn:
            a = endpoints.create_endpoint(conn, merchant.address, final_only.url)
            b = endpoints.create_endpoint(
                conn, merchant.address, eager.url, include_unconfirmed=True
            )
        final_only.secrets, eager.secrets = [a.secret], [b.secret]

        issue(number="KEPT")
        mirror.sync()  # the block is above the finalized one
        produce_all(engine, mirror.chain_id)
        assert _types(engine) == [("invoice.issued", False)]
        with Deliverer(engine, FAST) as deliverer:
            deliverer.deliver_due()
        [unconfirmed] = eager.received.processed.values()
        assert unconfirmed["final"] is False and final_only.received.processed == {}

        # An invoice in a block that a reorg then replaces: its unconfirmed event is
        # produced, its delivery canceled before it is made, and no final event follows.
        issue(number="DOOMED")
        mirror.sync()
        produce_all(engine, mirror.chain_id)
        assert len(_types(engine, final=False)) == 2
        chain.provider.make_request("anvil_reorg", [1, []])
        mirror.sync()
        produce_all(engine, mirror.chain_id)
        with engine.connect() as conn:
            doomed = [
                d
                for d in repo.list_deliveries(conn, None)
                if d.status == WebhookDeliveryStatus.CANCELED
            ]
        assert len(doomed) == 1 and "reorg" in (doomed[0].last_error or "")

        chain.mine(3)
        mirror.sync()
        produce_all(engine, mirror.chain_id)
        with Deliverer(engine, FAST) as deliverer:
            deliverer.deliver_due()
        # KEPT: unconfirmed then final (to B), final (to A); DOOMED: nothing final, ever.
        assert sorted(_types(engine)) == [
            ("invoice.issued", False),
            ("invoice.issued", False),
            ("invoice.issued", True),
        ]
        [final_event] = final_only.received.processed.values()
        assert final_event["final"] is True
        assert final_event["source"]["block_hash"] == unconfirmed["source"]["block_hash"]
        assert final_event["id"] != unconfirmed["id"]
        assert {e["final"] for e in eager.received.processed.values()} == {False, True}
        assert len(eager.received.processed) == 2
        with engine.connect() as conn:
            invoice_ids = {
                json.loads(e.payload)["data"]["invoice_id"] for e in repo.list_events(conn)
            }
        assert len(mirror.rows(Invoice)) == 1
        assert invoice_ids >= {mirror.rows(Invoice)[0]["invoice_id"]}


def test_reminders_come_once_per_day_configured_on_the_chains_clock(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
) -> None:
    with engine.begin() as conn:
        endpoints.create_endpoint(conn, merchant.address, "https://crm.example.com/hooks")
    ref = issue(amount=7 * UNIT)
    subscribe(create_plan())
    chain.mine(3)
    mirror.sync()
    due = mirror.rows(Invoice)[0]["due_date"]
    renews = mirror.rows(Subscription)[0]["paid_through"]
    config = ReminderConfig(parse_days("3,1"), parse_days("1,7"))

    def at(when: int) -> list[tuple[str, int]]:
        """Moves the chain to `when`, indexes, produces; the reminders made (type, day)."""
        chain.pending_timestamp = when
        chain.mine(3)
        mirror.sync()
        made = produce_all(engine, mirror.chain_id, reminder_config=config)
        with engine.connect() as conn:
            events = {e.event_id: e for e in repo.list_events(conn)}
        return sorted(
            (events[i].type, json.loads(events[i].payload)["data"]["days"])
            for i in made.event_ids
            if events[i].type.endswith(("due_soon", "overdue", "upcoming"))
        )

    assert at(min(due, renews) - 10 * DAY) == []
    assert at(max(due, renews) - 2 * DAY) == [
        ("invoice.due_soon", 3),
        ("subscription.renewal_upcoming", 3),
    ]
    assert at(max(due, renews) - 2 * DAY + 60) == [], "once per day configured"
    assert at(max(due, renews) - DAY // 2) == [
        ("invoice.due_soon", 1),
        ("subscription.renewal_upcoming", 1),
    ]
    assert at(max(due, renews) + DAY + DAY // 2) == [
        ("invoice.overdue", 1),
        ("subscription.overdue", 1),
    ]
    # Paid: no more invoice reminders.
    token.approve(invoices, 7 * UNIT, sender=customer)
    invoices.pay(merchant, ref, 7 * UNIT, sender=customer)
    assert at(max(due, renews) + 7 * DAY + DAY // 2) == [("subscription.overdue", 7)]
    with engine.connect() as conn:
        reminder = next(
            json.loads(e.payload) for e in repo.list_events(conn) if e.type == "invoice.overdue"
        )
    assert reminder["final"] is True and reminder["source"] is None
    assert reminder["data"]["balance"] == str(7 * UNIT) and reminder["data"]["due_date"] == due


def test_parse_days_refuses_nonsense() -> None:
    assert parse_days("7, 3,1") == (1, 3, 7) and parse_days("") == ()
    for bad in ("x", "1;2", "-1", "400"):
        try:
            parse_days(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_every_kind_of_chain_event_with_exact_payloads(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    subscriptions: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    keeper: Any,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
) -> None:
    from collections import Counter

    from tests.chain_fixtures import GRACE, PERIOD, PRICE

    with engine.begin() as conn:
        endpoints.create_endpoint(conn, merchant.address, "https://crm.example.com/hooks")
        dunning = endpoints.create_endpoint(
            conn,
            merchant.address,
            "https://dunning.example.com/hooks",
            event_types=["charge.failed", "subscription.lapsed"],
        ).endpoint
    plan = create_plan()
    kept = subscribe(plan)  # charged at once
    starved = subscribe(plan, subscriber=stranger, allowance=PRICE)  # the next charge fails
    subscriptions.cancel(kept, False, sender=customer)
    chain.pending_timestamp += PERIOD + 60
    subscriptions.charge(starved, sender=keeper)
    chain.pending_timestamp += GRACE + 60
    subscriptions.finalizeLapse(starved, sender=keeper)
    paid_ref, settled_ref = issue(amount=40 * UNIT), issue(amount=25 * UNIT)
    paid_id = invoices.invoiceIdOf(merchant, paid_ref)
    token.approve(invoices, 40 * UNIT, sender=customer)
    invoices.pay(merchant, paid_ref, 40 * UNIT, sender=customer)
    token.approve(invoices, 15 * UNIT, sender=merchant)
    invoices.refund(paid_id, customer, 15 * UNIT, sender=merchant)
    invoices.settleOffchain(
        invoices.invoiceIdOf(merchant, settled_ref), 25 * UNIT, b"\x07" * 32, sender=merchant
    )
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)
    with engine.connect() as conn:
        events = [json.loads(e.payload) for e in repo.list_events(conn)]
    assert Counter(e["type"] for e in events) == {
        "charge.succeeded": 2,
        "charge.failed": 1,
        "subscription.lapsed": 1,
        "subscription.canceled": 1,
        "invoice.issued": 2,
        "invoice.paid": 1,
        "invoice.refunded": 1,
        "invoice.settled": 1,
    }
    blocks = [(e["source"]["block_number"], e["source"]["log_index"]) for e in events]
    assert blocks == sorted(blocks), "in chain order"
    by_type = {e["type"]: e["data"] for e in events}
    failed = by_type["charge.failed"]
    assert failed["subscription_id"] == starved and failed["subscriber"] == stranger.address.lower()
    assert failed["amount"] == str(PRICE) and failed["reason"] == "insufficient_allowance"
    assert by_type["subscription.lapsed"]["subscription_id"] == starved
    canceled = by_type["subscription.canceled"]
    assert canceled["canceled_by"] == customer.address.lower()
    assert canceled["at_period_end"] is False
    refunded = by_type["invoice.refunded"]
    assert refunded["amount"] == str(15 * UNIT) and refunded["invoice_amount"] == str(40 * UNIT)
    assert refunded["recipient"] == customer.address.lower()
    settled = by_type["invoice.settled"]
    assert settled["amount"] == str(25 * UNIT) and settled["fiat_reference"] == "0x" + "07" * 32
    assert all(e["merchant"] == merchant.address.lower() and e["final"] for e in events)
    # The filtered endpoint gets only the types it asked for.
    with engine.connect() as conn:
        filtered = repo.list_deliveries(conn, None, endpoint_id=dunning.id)
        types = repo.events_by_ids(conn, [d.event_id for d in filtered])
    assert sorted(e.type for e in types.values()) == ["charge.failed", "subscription.lapsed"]


def test_the_keepers_at_risk_flags_become_warnings_once_per_charge_and_reason(
    engine: Engine,
    mirror: Mirror,
    merchant: Any,
    stranger: Any,
    customer: Any,
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
) -> None:
    from tests.chain_fixtures import PRICE

    with engine.begin() as conn:
        endpoints.create_endpoint(conn, merchant.address, "https://crm.example.com/hooks")
    ours = subscribe(create_plan())
    theirs = subscribe(create_plan(sender=stranger))  # a merchant without an endpoint
    mirror.sync()
    # Each subscription's own due date: a second can pass between the two blocks.
    due_of = {r["subscription_id"]: r["paid_through"] for r in mirror.rows(Subscription)}
    due = due_of[ours]
    config = ReminderConfig((), ())  # no reminders: only the warnings

    def flag(subscription_id: int, reason: str | None, due_at: int | None = None) -> list[Any]:
        """Sets the keeper's flag as its scan does, produces; the warnings made."""
        due_at = due_of[subscription_id] if due_at is None else due_at
        with engine.begin() as conn:
            now = datetime.now(UTC)
            keeper_repo.ensure_rows(conn, mirror.chain_id, mirror.manager, due_at, now)
            risk = keeper_repo.RiskRow(subscription_id, due_at, PRICE, reason)
            keeper_repo.save_risks(conn, mirror.chain_id, mirror.manager, [risk], now)
        made = produce_all(engine, mirror.chain_id, reminder_config=config)
        with engine.connect() as conn:
            events = {e.event_id: json.loads(e.payload) for e in repo.list_events(conn)}
        warnings = [
            events[i] for i in made.event_ids if events[i]["type"] == "subscription.payment_at_risk"
        ]
        assert made.risk_warnings == len(warnings)
        return warnings

    assert flag(ours, None) == [] and flag(theirs, "insufficient_allowance") == []
    [warning] = flag(ours, "insufficient_allowance")
    assert warning["type"] == "subscription.payment_at_risk" and warning["source"] is None
    assert warning["data"] == {
        "subscription_id": ours,
        "plan_id": next(
            r["plan_id"] for r in mirror.rows(Subscription) if r["subscription_id"] == ours
        ),
        "merchant": merchant.address.lower(),  # as the mirror and every event have them
        "subscriber": customer.address.lower(),
        "token": mirror.rows(Plan)[0]["token"],
        "due_at": due,
        "amount": str(PRICE),  # exact: a decimal string
        "reason": "insufficient_allowance",
    }
    assert flag(ours, "insufficient_allowance") == [], "the same charge and reason: once"
    assert flag(ours, None) == [] and flag(ours, "insufficient_allowance") == []
    [balance] = flag(ours, "insufficient_balance")
    assert balance["data"]["reason"] == "insufficient_balance"
    [next_period] = flag(ours, "insufficient_balance", due_at=due + 30 * DAY)
    assert next_period["data"]["due_at"] == due + 30 * DAY
    # Without a reminder configuration (a producer pass that makes no reminders), none.
    with engine.begin() as conn:
        keeper_repo.save_risks(
            conn,
            mirror.chain_id,
            mirror.manager,
            [keeper_repo.RiskRow(ours, due + 60 * DAY, PRICE, "insufficient_balance")],
            datetime.now(UTC),
        )
    assert produce_all(engine, mirror.chain_id).risk_warnings == 0
