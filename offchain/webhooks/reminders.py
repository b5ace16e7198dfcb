"""Reminders, delivered as webhook events: invoices and subscriptions coming due and
overdue, on configurable days.

- `invoice.due_soon`: an unpaid invoice (open or partially paid) due within N days;
- `invoice.overdue`: an unpaid invoice N days past its due date;
- `subscription.renewal_upcoming`: a live subscription (not ending at period end) whose
  next charge is within N days;
- `subscription.overdue`: a live subscription N days past the end of its paid period
  (the charge has not gone through: `past_due` says whether one failed);
- `subscription.payment_at_risk`: the keeper found that the subscriber's allowance or
  balance will not cover the coming charge (`chainbill keeper`, `--at-risk-days`); once per
  subscription, due date and reason, so that the merchant can ask the customer to top up
  before the charge fails.

With several days configured (say 7, 3 and 1 before), an object gets the reminder of the
nearest day that has come, once: one first seen two days before its due date gets the
"1 day" reminder when that day comes and the "3 days" one now, never the "7 days" one late.
"Now" is the chain's time as the mirror knows it (the newest block time), so reminders
follow the chain's clock. Only objects created in a final block get reminders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookEndpoint
from offchain.webhooks.endpoints import EventType
from offchain.webhooks.outbox import ProduceResult, add_event, exact

DAY = 24 * 3600


@dataclass(frozen=True)
class ReminderConfig:
    days_before: tuple[int, ...] = (3,)
    days_after: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        for day in (*self.days_before, *self.days_after):
            if not 0 <= day <= 365:
                raise ValueError(f"reminder days are 0 to 365, got {day}")


def parse_days(text: str) -> tuple[int, ...]:
    """'7,3,1' -> (1, 3, 7); '' -> () (no reminders of that kind)."""
    try:
        days = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of days") from None
    ReminderConfig(days, ())
    return days


def _before_day(due: int, now: int, days: Sequence[int]) -> int | None:
    """The nearest configured day before `due` that has come (smallest d: due - now <= d)."""
    if due < now:
        return None
    reached = [d for d in days if due - now <= d * DAY]
    return min(reached) if reached else None


def _after_day(due: int, now: int, days: Sequence[int]) -> int | None:
    reached = [d for d in days if now - due >= d * DAY and now > due]
    return max(reached) if reached else None


def produce_reminders(
    conn: Connection,
    chain_id: int,
    endpoints: Sequence[WebhookEndpoint],
    final_block: int,
    config: ReminderConfig,
    now: datetime,
    result: ProduceResult,
) -> int:
    merchants = sorted({e.merchant for e in endpoints})
    chain_now = repo.latest_block_time(conn, chain_id)
    if not merchants or chain_now is None:
        return 0
    made = 0
    before = max(config.days_before, default=None)
    after_low = max(config.days_after, default=None)
    after_high = min(config.days_after, default=None)

    def windows() -> list[tuple[int, int]]:
        spans = []
        if before is not None:
            spans.append((chain_now, chain_now + before * DAY))
        if after_low is not None and after_high is not None:
            # Past the largest day an object has had every reminder: bounded work per pass.
            spans.append((chain_now - (after_low + 1) * DAY, chain_now - after_high * DAY))
        return spans

    def remind(
        event_type: EventType, key: str, due: int, day: int, merchant: str, data: dict[str, Any]
    ) -> int:
        dedupe_key = f"reminder:{event_type}:{chain_id}:{key}:{due}:{day}"
        return _notify(conn, endpoints, dedupe_key, merchant, event_type, data, now, result)

    def days_of(due: int, ahead: EventType, late: EventType) -> list[tuple[EventType, int]]:
        """The reminders of a due date that have come: (type, days before or after)."""
        found = (
            (ahead, _before_day(due, chain_now, config.days_before)),
            (late, _after_day(due, chain_now, config.days_after)),
        )
        return [(event_type, day) for event_type, day in found if day is not None]

    for low, high in windows():
        for invoice in repo.open_invoices_due_between(
            conn, chain_id, low, high, merchants, final_block
        ):
            due = int(invoice["due_date"])
            for event_type, day in days_of(
                due, EventType.INVOICE_DUE_SOON, EventType.INVOICE_OVERDUE
            ):
                data = {
                    "invoice_id": invoice["invoice_id"],
                    "merchant": invoice["merchant"],
                    "customer": invoice["customer"],
                    "token": invoice["token"],
                    "reference_hash": invoice["reference_hash"],
                    "due_date": due,
                    "days": day,
                    "amount": exact("amount", invoice["amount"]),
                    "paid": exact("paid", invoice["paid"]),
                    "balance": exact("balance", invoice["amount"] - invoice["paid"]),
                    "status": invoice["status"],
                }
                key = f"{invoice['contract']}:{invoice['invoice_id']}"
                made += remind(event_type, key, due, day, invoice["merchant"], data)
        for sub in repo.live_subscriptions_due_between(
            conn, chain_id, low, high, merchants, final_block
        ):
            due = int(sub["paid_through"])
            for event_type, day in days_of(
                due, EventType.SUBSCRIPTION_RENEWAL_UPCOMING, EventType.SUBSCRIPTION_OVERDUE
            ):
                data = {
                    "subscription_id": sub["subscription_id"],
                    "plan_id": sub["plan_id"],
                    "merchant": sub["merchant"],
                    "subscriber": sub["subscriber"],
                    "token": sub["token"],
                    "price": exact("price", sub["price"]),
                    "due_at": due,
                    "days": day,
                    "past_due": bool(sub["past_due"]),
                    "in_trial": bool(sub["in_trial"]),
                }
                key = f"{sub['contract']}:{sub['subscription_id']}"
                made += remind(event_type, key, due, day, sub["merchant"], data)
    return made


def produce_risk_warnings(
    conn: Connection,
    chain_id: int,
    endpoints: Sequence[WebhookEndpoint],
    now: datetime,
    result: ProduceResult,
) -> int:
    """`subscription.payment_at_risk` for each subscription the keeper flagged: one per due
    date and reason (a flag cleared and raised again for the same charge and reason is
    not news; a different reason, or the next period's charge, is)."""
    merchants = sorted({e.merchant for e in endpoints})
    if not merchants:
        return 0
    made = 0
    for row in repo.subscriptions_at_risk(conn, chain_id, merchants):
        due, reason = int(row["at_risk_due_at"]), str(row["at_risk_reason"])
        data = {
            "subscription_id": row["subscription_id"],
            "plan_id": row["plan_id"],
            "merchant": row["merchant"],
            "subscriber": row["subscriber"],
            "token": row["token"],
            "due_at": due,
            "amount": exact("amount", row["at_risk_amount"]),
            "reason": reason,
        }
        dedupe_key = f"at_risk:{chain_id}:{row['contract']}:{row['subscription_id']}:{due}:{reason}"
        event_type = EventType.SUBSCRIPTION_PAYMENT_AT_RISK
        made += _notify(conn, endpoints, dedupe_key, row["merchant"], event_type, data, now, result)
    return made


def _notify(
    conn: Connection,
    endpoints: Sequence[WebhookEndpoint],
    dedupe_key: str,
    merchant: str,
    event_type: EventType,
    data: dict[str, Any],
    now: datetime,
    result: ProduceResult,
) -> int:
    """Adds a reminder or warning: final (it follows from final data or the keeper's own
    reading of the chain) and without a source log."""
    return add_event(
        conn,
        endpoints,
        dedupe_key=dedupe_key,
        merchant=merchant,
        event_type=event_type,
        final=True,
        data=data,
        source=None,
        now=now,
        result=result,
    )
