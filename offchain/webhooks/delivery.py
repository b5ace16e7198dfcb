"""Delivery: at least once, signed, retried with exponential backoff, every attempt logged.

A delivery is claimed by pushing its next attempt past a lease (in a short transaction;
on PostgreSQL under SKIP LOCKED, so several workers share the work), sent outside any
transaction, and its outcome recorded in another. A worker that dies in flight leaves the
lease to run out and the delivery is sent again: the receiver may see an event twice
(it dedupes by `Chainbill-Event-Id`), never zero times.

A 2xx answer is success; anything else (another status, a refused connection, a time-out)
is a failed attempt, retried after min(cap, base * 2^(n-1)) seconds with jitter (x0.5 to
x1, so that receivers coming back up are not hit by every retry at once), until
`max_attempts`; then the delivery is `failed` until replayed."""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint, WebhookEvent
from offchain.webhooks.endpoints import private_target, signing_secrets
from offchain.webhooks.producer import produce_all
from offchain.webhooks.reminders import ReminderConfig
from offchain.webhooks.sealing import SealingError
from offchain.webhooks.signing import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from offchain.webhooks.transport import PublicOnlyTransport

log = logging.getLogger(__name__)
USER_AGENT = "chainbill-webhooks/0.1"
DELIVERY_ID_HEADER = "Chainbill-Delivery-Id"
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 10
    base_delay_s: float = 30.0
    max_delay_s: float = 6 * 3600.0
    timeout_s: float = 10.0
    batch_size: int = 50
    concurrency: int = 8  # requests in flight at once
    # How long a disabled endpoint's deliveries wait before they are looked at again.
    disabled_recheck_s: float = 60.0

    @property
    def lease_s(self) -> float:
        """Longer than any request may take: an in-flight delivery is not taken twice."""
        return self.timeout_s * 3 + 5

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return delay * (0.5 + rng.random() / 2)


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Deliverer:
    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy | None = None,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy or DeliveryPolicy()
        self._own_client = client is None
        # Redirects are not followed: the signed request goes where the merchant said.
        self.client = client or httpx.Client(
            transport=PublicOnlyTransport(),
            timeout=self.policy.timeout_s,
            follow_redirects=False,
        )
        self.rng = rng or random.Random()
        self._pool = ThreadPoolExecutor(
            max_workers=self.policy.concurrency, thread_name_prefix="webhook-send"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one round

    def _claim(
        self, now: datetime
    ) -> list[tuple[WebhookDelivery, WebhookEvent, WebhookEndpoint | None]]:
        with self.engine.begin() as conn:
            due = repo.due_deliveries(conn, now, self.policy.batch_size)
            if not due:
                return []
            until = now + timedelta(seconds=self.policy.lease_s)
            due = [d for d in due if repo.lease_delivery(conn, d.id, now, until)]
            events = repo.events_by_ids(conn, [d.event_id for d in due])
            endpoints = repo.endpoints_by_ids(conn, [d.endpoint_id for d in due])
        return [(d, events[d.event_id], endpoints.get(d.endpoint_id)) for d in due]

    def send(
        self, delivery: WebhookDelivery, event: WebhookEvent, endpoint: WebhookEndpoint
    ) -> Outcome:
        body = event.payload.encode()
        now = datetime.now(UTC)
        try:
            secrets = signing_secrets(endpoint, now)
        except SealingError as exc:  # the operator's key is missing or wrong: retried later
            return Outcome(None, str(exc)[:MAX_ERROR_LENGTH], 0)  # not sent
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(secrets, int(now.timestamp()), body),
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: event.type,
            DELIVERY_ID_HEADER: delivery.public_id,
        }
        started = time.perf_counter()
        refused = private_target(endpoint.url)
        if refused is not None:
            return Outcome(None, refused[:MAX_ERROR_LENGTH], 0)  # not sent
        try:
            response = self.client.post(endpoint.url, content=body, headers=headers)
            status: int | None = response.status_code
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        return Outcome(status, error, int((time.perf_counter() - started) * 1000))

    def _record(self, delivery: WebhookDelivery, outcome: Outcome) -> None:
        now = datetime.now(UTC)
        attempts = delivery.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
        }
        if outcome.ok:
            values.update(
                status=WebhookDeliveryStatus.SUCCEEDED, next_attempt_at=None, delivered_at=now
            )
        elif attempts >= self.policy.max_attempts:
            values.update(status=WebhookDeliveryStatus.FAILED, next_attempt_at=None)
        else:
            delay = self.policy.backoff_s(attempts, self.rng)
            values.update(
                status=WebhookDeliveryStatus.PENDING,
                next_attempt_at=now + timedelta(seconds=delay),
            )
        with self.engine.begin() as conn:
            repo.insert_attempt(
                conn,
                {
                    "delivery_id": delivery.id,
                    "number": repo.attempt_count(conn, delivery.id) + 1,
                    "attempted_at": now,
                    "status_code": outcome.status_code,
                    "error": outcome.error,
                    "duration_ms": outcome.duration_ms,
                    "next_attempt_at": values["next_attempt_at"],
                },
            )
            repo.update_delivery(conn, delivery.id, values)

    def deliver_due(self, now: datetime | None = None) -> int:
        """Sends every delivery due now (batch after batch); the number of attempts made."""
        made = 0
        # Fixed for the call: a delivery that fails and falls due again meanwhile (short
        # backoffs) waits for the next call instead of looping here.
        as_of = now or datetime.now(UTC)
        while True:
            claimed = self._claim(as_of)
            if not claimed:
                return made
            sendable: list[tuple[WebhookDelivery, WebhookEvent, WebhookEndpoint]] = []
            for delivery, event, endpoint in claimed:
                if endpoint is None or endpoint.deleted_at is not None:
                    with self.engine.begin() as conn:
                        repo.update_delivery(
                            conn,
                            delivery.id,
                            {
                                "status": WebhookDeliveryStatus.CANCELED,
                                "next_attempt_at": None,
                                "last_error": "the endpoint was deleted",
                            },
                        )
                elif not endpoint.enabled:
                    with self.engine.begin() as conn:
                        repo.update_delivery(
                            conn,
                            delivery.id,
                            {
                                "next_attempt_at": datetime.now(UTC)
                                + timedelta(seconds=self.policy.disabled_recheck_s)
                            },
                        )
                else:
                    sendable.append((delivery, event, endpoint))
            # Requests of a batch in parallel: one slow or dead receiver (up to the
            # time-out) does not hold up every other merchant's events behind it.
            outcomes = list(self._pool.map(lambda job: self.send(*job), sendable))
            for (delivery, _event, endpoint), outcome in zip(sendable, outcomes, strict=True):
                self._record(delivery, outcome)
                made += 1
                if not outcome.ok:
                    log.info(
                        "delivery %s to %s failed: %s",
                        delivery.public_id,
                        endpoint.url,
                        outcome.error,
                    )


class Worker:
    """`chainbill webhooks run`: produce events from the mirror, deliver what is due,
    sleep, again; until `stop` is set (SIGINT/SIGTERM), or after one round (`once`)."""

    def __init__(
        self,
        engine: Engine,
        chain_id: int,
        deliverer: Deliverer,
        *,
        reminder_config: ReminderConfig | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.chain_id = chain_id
        self.deliverer = deliverer
        self.reminder_config = reminder_config
        self.poll_interval_s = poll_interval_s

    def round(self) -> tuple[int, int]:
        """(events produced, attempts made)."""
        produced = produce_all(self.engine, self.chain_id, reminder_config=self.reminder_config)
        attempts = self.deliverer.deliver_due()
        return len(produced.event_ids), attempts

    def run(self, stop: threading.Event, *, once: bool = False) -> None:
        while not stop.is_set():
            try:
                self.round()
            except OperationalError as exc:
                if once:
                    raise
                # The database went away (restart, failover): nothing is lost (the outbox
                # and the leases are in it), so wait and go on rather than die.
                log.warning("webhook round failed, retrying: %s", exc)
            if once:
                return
            stop.wait(self.poll_interval_s)
