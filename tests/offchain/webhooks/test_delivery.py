"""Delivery end to end, on SQLite and PostgreSQL: chain activity on Anvil, indexed by the
real indexer, produced into the outbox, delivered by the worker to a real HTTP receiver on
loopback that is down and then up. Every event arrives once it is up, each signature
verifies, each event id is processed once by the receiver, none is lost.

No timing is asserted: the tests poll for states with a generous deadline."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, select

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookAttempt, WebhookDelivery, WebhookDeliveryStatus
from offchain.webhooks import endpoints
from offchain.webhooks.delivery import Deliverer, DeliveryPolicy, Worker
from offchain.webhooks.producer import produce_all
from tests.chain_fixtures import UNIT
from tests.offchain.indexer.helpers import Mirror, wait_until
from tests.offchain.webhooks.receiver import Mode, Receiver

FAST = DeliveryPolicy(
    max_attempts=10_000, base_delay_s=0.02, max_delay_s=0.2, timeout_s=5, batch_size=10
)
DEADLINE_S = 120


def make_activity(
    chain: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
) -> Counter[str]:
    """A subscription charged, three invoices issued, one paid, one voided; the blocks
    then buried under the confirmation depth. The event types it must produce."""
    subscribe(create_plan())
    refs = [issue(amount=(n + 1) * UNIT) for n in range(3)]
    token.approve(invoices, UNIT, sender=customer)
    invoices.pay(merchant, refs[0], UNIT, sender=customer)
    invoices.voidInvoice(invoices.invoiceIdOf(merchant, refs[2]), sender=merchant)
    chain.mine(3)
    return Counter(
        {"charge.succeeded": 1, "invoice.issued": 3, "invoice.paid": 1, "invoice.voided": 1}
    )


def deliveries(engine: Engine) -> list[WebhookDelivery]:
    with engine.connect() as conn:
        return repo.list_deliveries(conn, None, limit=1000)


@contextmanager
def worker_thread(engine: Engine, chain_id: int) -> Iterator[Worker]:
    stop = threading.Event()
    with Deliverer(engine, FAST, rng=random.Random(7)) as deliverer:
        worker = Worker(engine, chain_id, deliverer, poll_interval_s=0.02)
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            yield worker
        finally:
            stop.set()
            thread.join(timeout=60)
            assert not thread.is_alive(), "the worker stops when told to"


@pytest.mark.parametrize("mode", [Mode.REFUSE, Mode.ERROR])
def test_a_receiver_down_then_up_gets_every_event_once_signed(
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
    receiver: Receiver,
    mode: Mode,
) -> None:
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = [created.secret]
    receiver.down(mode)

    expected = make_activity(
        chain, invoices, token, merchant, customer, issue, create_plan, subscribe
    )
    mirror.sync()
    with worker_thread(engine, mirror.chain_id):
        # Down: every delivery fails, and is retried (at least twice) while it stays down.
        wait_until(
            lambda: (
                sum(expected.values()) == len(rows := deliveries(engine))
                and all(d.attempts >= 2 for d in rows)
            ),
            DEADLINE_S,
            "every delivery to fail twice while the receiver is down",
        )
        assert receiver.processed_ids() == set()
        assert all(d.status == WebhookDeliveryStatus.PENDING for d in deliveries(engine))
        receiver.up()
        wait_until(
            lambda: all(d.status == WebhookDeliveryStatus.SUCCEEDED for d in deliveries(engine)),
            DEADLINE_S,
            "every delivery to succeed once the receiver is up",
        )

    with engine.connect() as conn:
        events = repo.list_events(conn)
    got = receiver.received
    assert got.bad_signatures == 0 and got.header_mismatches == 0
    assert set(got.processed) == {e.event_id for e in events}, "none lost, none invented"
    assert len(events) == sum(expected.values()) == len(got.processed)
    assert Counter(e["type"] for e in got.processed.values()) == expected
    for event in got.processed.values():
        assert event["final"] is True and event["merchant"] == merchant.address.lower()
        # Amounts are exact integers as decimal strings.
        for name in ("amount", "fee", "invoice_amount"):
            if name in event["data"]:
                assert isinstance(event["data"][name], str) and event["data"][name].isdigit()
    paid = next(e for e in got.processed.values() if e["type"] == "invoice.paid")
    assert paid["data"]["amount"] == str(UNIT) and paid["data"]["payer"] == customer.address.lower()
    if mode is Mode.ERROR:
        assert got.refused_while_down >= 2 * len(events)

    # The delivery log holds every attempt: the failed ones, then one success each.
    with engine.connect() as conn:
        attempts = conn.execute(select(WebhookAttempt.__table__)).all()
    by_delivery: dict[int, list[Any]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
    assert len(by_delivery) == len(events)
    for rows in by_delivery.values():
        rows.sort(key=lambda a: a.number)
        assert [a.number for a in rows] == list(range(1, len(rows) + 1))
        assert rows[-1].status_code == 200 and rows[-1].next_attempt_at is None
        assert all(a.status_code != 200 for a in rows[:-1]) and len(rows) >= 3
        for failed in rows[:-1]:
            if mode is Mode.REFUSE:
                assert failed.status_code is None and "Connect" in failed.error
            else:
                assert failed.status_code == 500 and failed.error == "HTTP 500"


def test_producing_again_changes_nothing(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    invoices: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    stranger: Any,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    receiver: Receiver,
) -> None:
    with engine.begin() as conn:
        endpoints.create_endpoint(conn, merchant.address, receiver.url)
        # Another merchant's endpoint gets none of this merchant's events.
        endpoints.create_endpoint(conn, stranger.address, receiver.url)
    expected = make_activity(
        chain, invoices, token, merchant, customer, issue, create_plan, subscribe
    )
    mirror.sync()
    first = produce_all(engine, mirror.chain_id)
    assert len(first.event_ids) == sum(expected.values()) == first.deliveries
    again = produce_all(engine, mirror.chain_id)
    assert again.event_ids == [] and again.deliveries == 0
    with engine.connect() as conn:
        rows = repo.list_deliveries(conn, stranger.address.lower())
    assert rows == []


def test_failed_after_max_attempts_then_replayed(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
) -> None:
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = [created.secret]
    receiver.down(Mode.ERROR)
    issue()
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)
    policy = DeliveryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0, timeout_s=5)
    with Deliverer(engine, policy) as deliverer:
        for _ in range(3):
            deliverer.deliver_due()
        [delivery] = deliveries(engine)
        assert delivery.status == WebhookDeliveryStatus.FAILED and delivery.attempts == 3
        assert delivery.next_attempt_at is None and delivery.last_status_code == 500
        assert deliverer.deliver_due() == 0, "a failed delivery is not retried by itself"

        receiver.up()
        with engine.begin() as conn:
            replayed = endpoints.replay(conn, delivery.public_id, merchant.address.lower())
        assert replayed.status == WebhookDeliveryStatus.PENDING
        assert deliverer.deliver_due() == 1
    [delivery] = deliveries(engine)
    assert delivery.status == WebhookDeliveryStatus.SUCCEEDED
    with engine.connect() as conn:
        log = repo.attempts_of(conn, [delivery.id])[delivery.id]
    assert [a.number for a in log] == [1, 2, 3, 4]
    assert [a.status_code for a in log] == [500, 500, 500, 200]
    assert len(receiver.processed_ids()) == 1

    with engine.begin() as conn, pytest.raises(endpoints.StateError, match="only a failed"):
        endpoints.replay(conn, delivery.public_id, merchant.address.lower())
    with engine.begin() as conn, pytest.raises(endpoints.NotFoundError):
        endpoints.replay(conn, delivery.public_id, "0x" + "12" * 20)  # not this merchant's
    with engine.begin() as conn, pytest.raises(endpoints.NotFoundError):
        endpoints.replay(conn, "whd_nope", None)


def test_a_lost_answer_is_delivered_again_and_deduplicated_by_the_receiver(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
) -> None:
    """The receiver processed the event but its answer never arrived (the worker died in
    flight: the lease ran out): the event comes again, with the same id."""
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = [created.secret]
    issue()
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)
    with Deliverer(engine, FAST) as deliverer:
        [delivery] = deliveries(engine)
        with engine.connect() as conn:
            event = repo.events_by_ids(conn, [delivery.event_id])[delivery.event_id]
            endpoint = repo.endpoint_by_public_id(conn, created.endpoint.public_id)
        assert endpoint is not None
        assert deliverer.send(delivery, event, endpoint).ok  # ... and the worker dies here
        assert deliverer.deliver_due() == 1  # the delivery was still due: sent again
    assert receiver.received.duplicates == [event.event_id]
    assert receiver.processed_ids() == {event.event_id}


def test_two_workers_share_the_work_without_sending_anything_twice(
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
    receiver: Receiver,
) -> None:
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = [created.secret]
    expected = make_activity(
        chain, invoices, token, merchant, customer, issue, create_plan, subscribe
    )
    mirror.sync()
    with worker_thread(engine, mirror.chain_id), worker_thread(engine, mirror.chain_id):
        wait_until(
            lambda: (
                len(rows := deliveries(engine)) == sum(expected.values())
                and all(d.status == WebhookDeliveryStatus.SUCCEEDED for d in rows)
            ),
            DEADLINE_S,
            "both workers to deliver everything",
        )
    assert receiver.received.duplicates == []
    assert len(receiver.processed_ids()) == sum(expected.values())
    assert all(d.attempts == 1 for d in deliveries(engine))


def test_a_receiver_with_the_wrong_secret_refuses_and_rotation_keeps_it_verifying(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
) -> None:
    """A receiver that refuses a bad signature (400) makes the delivery fail and retry; a
    rotation with a grace period keeps the old secret verifying; without one, a receiver
    still on the old secret refuses until it is given the new one."""
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = ["whsec_not_the_one"]
    issue()
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)
    with Deliverer(engine, DeliveryPolicy(base_delay_s=0, max_delay_s=0)) as deliverer:
        assert deliverer.deliver_due() == 1
        [delivery] = deliveries(engine)
        assert delivery.status == WebhookDeliveryStatus.PENDING
        assert delivery.last_status_code == 400 and receiver.received.bad_signatures == 1

        receiver.secrets = [created.secret]
        with engine.begin() as conn:
            endpoints.rotate_secret(conn, created.endpoint.public_id, None, grace_s=3600)
        assert deliverer.deliver_due() == 1  # signed with both: the old one still verifies
        assert deliveries(engine)[0].status == WebhookDeliveryStatus.SUCCEEDED

        issue()
        chain.mine(3)
        mirror.sync()
        with engine.begin() as conn:
            rotated = endpoints.rotate_secret(conn, created.endpoint.public_id, None, grace_s=0)
        produce_all(engine, mirror.chain_id)
        assert deliverer.deliver_due() == 1
        assert receiver.received.bad_signatures == 2  # the old secret no longer signs
        receiver.secrets = [rotated.secret]
        assert deliverer.deliver_due() == 1
    assert all(d.status == WebhookDeliveryStatus.SUCCEEDED for d in deliveries(engine))
    assert len(receiver.processed_ids()) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_endpoints_on_private_addresses_are_refused(
    engine: Engine, merchant: Any, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.delenv(endpoints.ALLOW_PRIVATE_ENV)
    with engine.begin() as conn, pytest.raises(endpoints.WebhookError) as refused:
        endpoints.create_endpoint(conn, merchant.address, url)
    assert endpoints.ALLOW_PRIVATE_ENV in str(refused.value)
    with engine.begin() as conn:  # a public one is fine
        endpoints.create_endpoint(conn, merchant.address, "https://93.184.215.14/hook")


def an_event_for(
    url: str,
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
) -> None:
    """An endpoint of the merchant at `url` (the receiver behind it) with one final event
    produced for it, its delivery due."""
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, url)
    receiver.secrets = [created.secret]
    issue()
    chain.mine(3)
    mirror.sync()
    produce_all(engine, mirror.chain_id)


def test_a_name_resolving_to_a_private_address_is_not_called(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host name passes registration (DNS may change), but every delivery resolves it
    first: one that points inside is not called, and the attempt log says why."""
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    an_event_for(by_name, engine, mirror, issue, chain, merchant, receiver)
    monkeypatch.delenv(endpoints.ALLOW_PRIVATE_ENV)
    policy = DeliveryPolicy(max_attempts=2, base_delay_s=0, max_delay_s=0, timeout_s=5)
    with Deliverer(engine, policy) as deliverer:
        deliverer.deliver_due()
        deliverer.deliver_due()
    [delivery] = deliveries(engine)
    assert delivery.status == WebhookDeliveryStatus.FAILED and delivery.attempts == 2
    with engine.connect() as conn:
        log = repo.attempts_of(conn, [delivery.id])[delivery.id]
    assert all(a.status_code is None and "private" in (a.error or "") for a in log)
    assert receiver.processed_ids() == set(), "the receiver was never called"


def test_a_name_rebound_to_a_private_address_after_the_check_is_not_called(
    engine: Engine,
    mirror: Mirror,
    issue: Callable[..., bytes],
    chain: Any,
    merchant: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name answers a public address to the check before the request
    and the receiver's loopback address to the connection. The connection checks what it
    connects to, so the receiver is never called."""
    port = int(receiver.url.split(":")[2].split("/")[0])
    rebinding = receiver.url.replace("127.0.0.1", "rebind.example")
    an_event_for(rebinding, engine, mirror, issue, chain, merchant, receiver)

    real_getaddrinfo = socket.getaddrinfo
    answers: list[str] = []

    def rebind(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.example":
            return real_getaddrinfo(host, *args, **kwargs)
        answers.append("93.184.215.14" if not answers else "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebind)
    monkeypatch.delenv(endpoints.ALLOW_PRIVATE_ENV)
    policy = DeliveryPolicy(max_attempts=1, base_delay_s=0, max_delay_s=0, timeout_s=5)
    with Deliverer(engine, policy) as deliverer:
        deliverer.deliver_due()
    assert answers == ["93.184.215.14", "127.0.0.1"], "checked once, then resolved to connect"
    [delivery] = deliveries(engine)
    assert delivery.status == WebhookDeliveryStatus.FAILED
    with engine.connect() as conn:
        [attempt] = repo.attempts_of(conn, [delivery.id])[delivery.id]
    assert attempt.status_code is None
    assert "127.0.0.1" in (attempt.error or "") and "private" in (attempt.error or "")
    assert receiver.processed_ids() == set(), "the receiver was never called"
