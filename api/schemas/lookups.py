"""Responses of the lookups. Amounts are token base units as strings of decimal digits
(uint256 does not fit a JSON number); times are unix seconds; addresses and hashes are
lowercase 0x-hex."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

Amount = str


class InvoiceStatusFilter(StrEnum):
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    VOID = "void"
    OVERDUE = "overdue"


class SubscriptionStatus(StrEnum):
    """Status at the time of the request, as the contract's `statusOf` derives it, plus
    `canceling` (live, set to end when the paid period does)."""

    TRIALING = "trialing"
    ACTIVE = "active"
    CANCELING = "canceling"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    LAPSED = "lapsed"


class SubscriptionStateFilter(StrEnum):
    LIVE = "live"
    CANCELED = "canceled"
    LAPSED = "lapsed"


class InvoiceSummary(BaseModel):
    invoice_id: str
    merchant: str
    customer: str
    reference_hash: str
    token: str
    amount: Amount
    paid: Amount
    balance: Amount = Field(description="amount - paid: what is left to pay (0 when void)")
    due_date: int
    status: str = Field(description="on-chain status: open, partially_paid, paid or void")
    overdue: bool = Field(description="unpaid (open or partially paid) past its due date")
    allow_partial: bool
    content_hash: str
    issued_at: int
    issued_block: int


class InvoicePage(BaseModel):
    items: list[InvoiceSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class SubscriptionView(BaseModel):
    subscription_id: int
    plan_id: int
    merchant: str
    subscriber: str
    token: str
    price: Amount
    period: int
    unit_price: Amount
    included_units: Amount
    max_amount_per_period: Amount
    started_at: int
    paid_through: int
    state: SubscriptionStateFilter = Field(description="stored state: live, canceled, lapsed")
    status: SubscriptionStatus = Field(description="status now")
    cancel_at_period_end: bool
    past_due: bool = Field(description="the last charge attempt failed")
    in_trial: bool
    credit: Amount
    unbilled_units: Amount
    next_charge_at: int | None = Field(description="due time of the next charge; null: none")
    amount_due: Amount = Field(description="what that charge will take (0 when none)")


class SubscriptionPage(BaseModel):
    items: list[SubscriptionView]
    next_cursor: str | None


class ChargeKind(StrEnum):
    CHARGE = "charge"
    FAILURE = "failure"


class ChargeView(BaseModel):
    kind: ChargeKind
    subscription_id: int
    merchant: str
    subscriber: str
    token: str
    amount: Amount
    fee: Amount | None = Field(description="platform fee of a charge (null for a failure)")
    period_start: int | None
    paid_through: int | None
    due_at: int | None = Field(description="due time of the period a failure was for")
    reason: str | None = Field(description="why a charge failed")
    block_number: int
    log_index: int
    block_time: int
    tx_hash: str


class ChargePage(BaseModel):
    items: list[ChargeView]
    next_cursor: str | None


class UsagePeriod(BaseModel):
    period: int = Field(description="billing period number (0: a trial before the first)")
    period_start: int
    period_end: int = Field(description="when the period's usage is billed")
    units: Amount = Field(description="units reported for the period")
    included: Amount
    billable_units: Amount = Field(description="units above the included ones")
    overage: Amount = Field(description="billable_units x unit price")
    charged: Amount | None = Field(
        description="overage billed by the period's charge; null: not charged yet"
    )
    reports: int


class UsagePage(BaseModel):
    subscription_id: int
    token: str
    unit_price: Amount
    period_length: int
    items: list[UsagePeriod]
    next_cursor: str | None


class StatementLineKind(StrEnum):
    CHARGE = "charge"
    INVOICE_PAYMENT = "invoice_payment"
    SETTLEMENT = "settlement"
    REFUND = "refund"


class StatementLine(BaseModel):
    kind: StatementLineKind
    time: int
    block_number: int
    log_index: int
    tx_hash: str
    merchant: str
    token: str
    amount: Amount = Field(description="paid by the customer, or refunded to it (kind refund)")
    subscription_id: int | None
    invoice_id: str | None
    counterparty: str | None = Field(description="payer of a payment, recipient of a refund")


class StatementTotals(BaseModel):
    token: str
    opening_net_paid: Amount = Field(description="net paid before `from`")
    charges: Amount
    invoice_payments: Amount
    settlements: Amount
    refunds: Amount
    net_paid: Amount = Field(description="charges + invoice_payments + settlements - refunds")
    closing_net_paid: Amount = Field(description="opening_net_paid + net_paid (may be signed)")


class Statement(BaseModel):
    address: str
    time_from: int = Field(alias="from")
    time_to: int = Field(alias="to")
    lines: list[StatementLine]
    totals: list[StatementTotals]

    model_config = {"populate_by_name": True}
