"""From decoded logs to rows: the facts each event records and the projections it changes.

The projector is pure Python over plain dicts: the repository loads the projection rows a
batch touches, the projector applies the batch's events in chain order, and the repository
writes facts, projections and undo records back in one transaction. Each handler mirrors
what the contract itself does with its storage for that event, so that a reconcile against
the contract's views finds nothing to report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offchain.db.models import (
    Approval,
    Base,
    Charge,
    ChargeFailure,
    ChargeFailureReason,
    CreditApplication,
    Invoice,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
    InvoiceStatus,
    Plan,
    PlanChange,
    Subscription,
    SubscriptionCancellation,
    SubscriptionLapse,
    SubscriptionState,
    UsageCharge,
    UsageReport,
)
from offchain.indexer.decoder import DecodedLog

ProjectionKey = tuple[Any, ...]
FAILURE_REASONS = list(ChargeFailureReason)


class ProjectionMissing(LookupError):
    """An event refers to an entity the mirror has never seen (a gap in the indexed range)."""


@dataclass
class Batch:
    """Everything one indexed range writes."""

    chain_id: int
    finalized_block: int
    block_times: dict[int, int]
    # table -> key -> row as loaded from the database (None: not there)
    loaded: dict[type[Base], dict[ProjectionKey, dict[str, Any] | None]] = field(
        default_factory=dict
    )
    # table -> key -> row as it stands after the batch
    projections: dict[type[Base], dict[ProjectionKey, dict[str, Any]]] = field(default_factory=dict)
    facts: dict[type[Base], list[dict[str, Any]]] = field(default_factory=dict)
    undo: list[dict[str, Any]] = field(default_factory=list)
    _undo_seen: set[tuple[str, ProjectionKey, int]] = field(default_factory=set)

    def current(self, table: type[Base], key: ProjectionKey) -> dict[str, Any] | None:
        rows = self.projections.get(table)
        if rows is not None:
            row = rows.get(key)
            if row is not None:
                return row
        loaded = self.loaded.get(table)
        row = None if loaded is None else loaded.get(key)
        return None if row is None else dict(row)

    def change(
        self, table: type[Base], key: ProjectionKey, row: dict[str, Any], block: int
    ) -> None:
        """Sets a projection row, saving what it was first if `block` may still be reorged."""
        if block > self.finalized_block:
            marker = (table.__tablename__, key, block)
            if marker not in self._undo_seen:
                self._undo_seen.add(marker)
                self.undo.append(
                    {
                        "table": table,
                        "key": key,
                        "block_number": block,
                        "old_row": self.current(table, key),
                    }
                )
        rows = self.projections.get(table)
        if rows is None:
            rows = self.projections[table] = {}
        rows[key] = row

    def add_fact(self, table: type[Base], log: DecodedLog, **values: Any) -> None:
        self.facts.setdefault(table, []).append(
            {
                "chain_id": self.chain_id,
                "block_hash": log.block_hash,
                "log_index": log.log_index,
                "block_number": log.block_number,
                "block_time": self.block_times[log.block_number],
                "tx_hash": log.tx_hash,
                "contract": log.contract,
                **values,
            }
        )


def projection_keys(chain_id: int, log: DecodedLog) -> list[tuple[type[Base], ProjectionKey]]:
    """The projection rows an event reads or writes (loaded before the batch is applied)."""
    a = log.args
    if "subscriptionId" in a:
        keys: list[tuple[type[Base], ProjectionKey]] = [
            (Subscription, (chain_id, log.contract, a["subscriptionId"]))
        ]
        if log.event == "Subscribed":
            keys.append((Plan, (chain_id, log.contract, a["planId"])))
        return keys
    if "planId" in a:
        return [(Plan, (chain_id, log.contract, a["planId"]))]
    if "invoiceId" in a:
        return [(Invoice, (chain_id, log.contract, a["invoiceId"]))]
    if log.event in ("OperatorSet", "SettlerSet"):
        return [(Approval, _approval_key(chain_id, log))]
    return []


def _approval_key(chain_id: int, log: DecodedLog) -> ProjectionKey:
    role = "operator" if log.event == "OperatorSet" else "settler"
    grantee = log.args["operator"] if role == "operator" else log.args["settler"]
    return (chain_id, log.contract, role, log.args["merchant"], grantee)


def _require(
    batch: Batch, table: type[Base], key: ProjectionKey, log: DecodedLog
) -> dict[str, Any]:
    row = batch.current(table, key)
    if row is None:
        raise ProjectionMissing(
            f"{log.event} at block {log.block_number} refers to {table.__tablename__} {key[2:]} "
            "that the mirror does not hold: was the indexer started after the deployment block?"
        )
    return row


def _invoice_status(amount: int, paid: int, voided: bool) -> str:
    if voided:
        return InvoiceStatus.VOID
    if paid == 0:
        return InvoiceStatus.OPEN
    return InvoiceStatus.PAID if paid >= amount else InvoiceStatus.PARTIALLY_PAID


# --------------------------------------------------------------------- handlers


def _plan_created(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    key = (batch.chain_id, log.contract, a["planId"])
    row = {
        "chain_id": batch.chain_id,
        "contract": log.contract,
        "plan_id": a["planId"],
        "merchant": a["merchant"],
        "token": a["token"],
        "price": a["price"],
        "period": a["period"],
        "trial_period": a["trialPeriod"],
        "grace_period": a["gracePeriod"],
        "unit_price": a["unitPrice"],
        "included_units": a["includedUnits"],
        "active": True,
        "created_block": log.block_number,
    }
    batch.change(Plan, key, row, log.block_number)


def _plan_deactivated(batch: Batch, log: DecodedLog) -> None:
    key = (batch.chain_id, log.contract, log.args["planId"])
    row = _require(batch, Plan, key, log)
    batch.change(Plan, key, {**row, "active": False}, log.block_number)


def _subscribed(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    plan = _require(batch, Plan, (batch.chain_id, log.contract, a["planId"]), log)
    key = (batch.chain_id, log.contract, a["subscriptionId"])
    row = {
        "chain_id": batch.chain_id,
        "contract": log.contract,
        "subscription_id": a["subscriptionId"],
        "plan_id": a["planId"],
        "subscriber": a["subscriber"],
        "max_amount_per_period": a["maxAmountPerPeriod"],
        "started_at": a["startedAt"],
        "paid_through": a["paidThrough"],
        "state": SubscriptionState.LIVE,
        "cancel_at_period_end": False,
        "past_due": False,
        "in_trial": plan["trial_period"] != 0,
        "credit": 0,
        "unbilled_units": 0,
        "created_block": log.block_number,
    }
    batch.change(Subscription, key, row, log.block_number)


def _update_subscription(
    batch: Batch, log: DecodedLog, current: dict[str, Any] | None = None, **changes: Any
) -> dict[str, Any]:
    """Changes the subscription of the log (`current`: its row, when the caller has it)."""
    key = (batch.chain_id, log.contract, log.args["subscriptionId"])
    row = {**(current or _require(batch, Subscription, key, log)), **changes}
    batch.change(Subscription, key, row, log.block_number)
    return row


def _charged(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        Charge,
        log,
        subscription_id=a["subscriptionId"],
        period_start=a["periodStart"],
        paid_through=a["paidThrough"],
        amount=a["amount"],
        fee=a["fee"],
    )
    key = (batch.chain_id, log.contract, a["subscriptionId"])
    row = _require(batch, Subscription, key, log)
    if row["cancel_at_period_end"] and a["periodStart"] == a["paidThrough"]:
        # The final (usage-only) charge.
        row = {**row, **_CHARGED, "state": SubscriptionState.CANCELED}
    else:
        row = {**row, **_CHARGED, "paid_through": a["paidThrough"]}
    batch.change(Subscription, key, row, log.block_number)


_CHARGED = {"past_due": False, "in_trial": False, "unbilled_units": 0}


def _charge_failed(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        ChargeFailure,
        log,
        subscription_id=a["subscriptionId"],
        due_at=a["dueAt"],
        amount=a["amount"],
        reason=FAILURE_REASONS[a["reason"]],
    )
    _update_subscription(batch, log, past_due=True)


def _usage_reported(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        UsageReport,
        log,
        subscription_id=a["subscriptionId"],
        usage_record_id=a["usageRecordId"],
        units=a["units"],
        unbilled_units=a["unbilledUnits"],
        billable_at=a["billableAt"],
    )
    _update_subscription(batch, log, unbilled_units=a["unbilledUnits"])


def _usage_charged(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        UsageCharge,
        log,
        subscription_id=a["subscriptionId"],
        units=a["units"],
        overage_amount=a["overageAmount"],
    )


def _credit_applied(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        CreditApplication,
        log,
        subscription_id=a["subscriptionId"],
        amount=a["amount"],
        remaining_credit=a["remainingCredit"],
    )
    _update_subscription(batch, log, credit=a["remainingCredit"])


def _plan_changed(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        PlanChange,
        log,
        subscription_id=a["subscriptionId"],
        from_plan_id=a["fromPlanId"],
        to_plan_id=a["toPlanId"],
        charged=a["charged"],
        fee=a["fee"],
        credit=a["credit"],
        max_amount_per_period=a["maxAmountPerPeriod"],
    )
    _update_subscription(
        batch,
        log,
        plan_id=a["toPlanId"],
        max_amount_per_period=a["maxAmountPerPeriod"],
        credit=a["credit"],
        unbilled_units=0,
    )


def _subscription_canceled(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        SubscriptionCancellation,
        log,
        subscription_id=a["subscriptionId"],
        canceled_by=a["canceledBy"],
        effective_at=a["effectiveAt"],
        at_period_end=a["atPeriodEnd"],
    )
    row = _require(batch, Subscription, (batch.chain_id, log.contract, a["subscriptionId"]), log)
    if a["atPeriodEnd"]:
        _update_subscription(batch, log, cancel_at_period_end=True)
    elif row["unbilled_units"] != 0:
        # Ends now with one last charge for the unbilled usage, as the contract does.
        _update_subscription(
            batch,
            log,
            cancel_at_period_end=True,
            paid_through=min(row["paid_through"], a["effectiveAt"]),
        )
    else:
        _update_subscription(batch, log, state=SubscriptionState.CANCELED)


def _subscription_lapsed(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        SubscriptionLapse, log, subscription_id=a["subscriptionId"], lapsed_at=a["lapsedAt"]
    )
    _update_subscription(batch, log, state=SubscriptionState.LAPSED)


def _invoice_issued(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    key = (batch.chain_id, log.contract, a["invoiceId"])
    row = {
        "chain_id": batch.chain_id,
        "contract": log.contract,
        "invoice_id": a["invoiceId"],
        "merchant": a["merchant"],
        "customer": a["customer"],
        "reference_hash": a["referenceHash"],
        "token": a["token"],
        "amount": a["amount"],
        "due_date": a["dueDate"],
        "allow_partial": a["allowPartial"],
        "content_hash": a["contentHash"],
        "paid": 0,
        "status": InvoiceStatus.OPEN,
        "issued_block": log.block_number,
        "issued_at": batch.block_times[log.block_number],
    }
    batch.change(Invoice, key, row, log.block_number)


def _invoice_paid_delta(batch: Batch, log: DecodedLog, delta: int, voided: bool = False) -> None:
    key = (batch.chain_id, log.contract, log.args["invoiceId"])
    row = _require(batch, Invoice, key, log)
    paid = row["paid"] + delta
    status = _invoice_status(row["amount"], paid, voided)
    batch.change(Invoice, key, {**row, "paid": paid, "status": status}, log.block_number)


def _invoice_paid(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        InvoicePayment,
        log,
        invoice_id=a["invoiceId"],
        payer=a["payer"],
        amount=a["amount"],
        fee=a["fee"],
    )
    _invoice_paid_delta(batch, log, a["amount"])


def _invoice_settled(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        InvoiceSettlement,
        log,
        invoice_id=a["invoiceId"],
        settler=a["settler"],
        amount=a["amount"],
        fiat_reference=a["fiatReference"],
    )
    _invoice_paid_delta(batch, log, a["amount"])


def _invoice_refunded(batch: Batch, log: DecodedLog) -> None:
    a = log.args
    batch.add_fact(
        InvoiceRefund, log, invoice_id=a["invoiceId"], recipient=a["recipient"], amount=a["amount"]
    )
    _invoice_paid_delta(batch, log, -a["amount"])


def _invoice_voided(batch: Batch, log: DecodedLog) -> None:
    _invoice_paid_delta(batch, log, 0, voided=True)


def _approval_set(batch: Batch, log: DecodedLog) -> None:
    key = _approval_key(batch.chain_id, log)
    row = dict(zip(("chain_id", "contract", "role", "merchant", "grantee"), key, strict=True))
    batch.change(Approval, key, {**row, "approved": log.args["approved"]}, log.block_number)


HANDLERS: dict[str, Callable[[Batch, DecodedLog], None]] = {
    "PlanCreated": _plan_created,
    "PlanDeactivated": _plan_deactivated,
    "Subscribed": _subscribed,
    "Charged": _charged,
    "ChargeFailed": _charge_failed,
    "UsageReported": _usage_reported,
    "UsageCharged": _usage_charged,
    "CreditApplied": _credit_applied,
    "PlanChanged": _plan_changed,
    "SubscriptionCanceled": _subscription_canceled,
    "SubscriptionLapsed": _subscription_lapsed,
    "InvoiceIssued": _invoice_issued,
    "InvoicePaid": _invoice_paid,
    "InvoiceSettledOffchain": _invoice_settled,
    "InvoiceRefunded": _invoice_refunded,
    "InvoiceVoided": _invoice_voided,
    "OperatorSet": _approval_set,
    "SettlerSet": _approval_set,
}
# Recorded in the raw event log only: they change no mirrored state.
RAW_ONLY_EVENTS = frozenset(
    {
        "ChargeSkipped",
        "IntentsRevoked",
        "Paused",
        "Unpaused",
        "OwnershipTransferred",
        "EIP712DomainChanged",
    }
)


def apply(batch: Batch, logs: list[DecodedLog]) -> None:
    """Applies `logs` (in chain order) to the batch."""
    for log in logs:
        handler = HANDLERS.get(log.event)
        if handler is not None:
            handler(batch, log)
