"""Responses of the merchant analytics. Every figure is per token (amounts of different
tokens are never added); amounts are base-unit strings of decimal digits; ratios are
decimal strings and basis points, never floats."""

from __future__ import annotations

from pydantic import BaseModel, Field

Amount = str


class ScheduledRevenue(BaseModel):
    days: int
    subscriptions: Amount = Field(description="subscription charges due by now + days")
    invoices: Amount = Field(description="open invoice balances due from now to now + days")
    total: Amount


class Churn(BaseModel):
    window_days: int
    live_at_start: int = Field(description="subscriptions live at the start of the window")
    canceled: int = Field(description="of those, canceled (effective) within the window")
    lapsed: int = Field(description="of those, lapsed (grace over) within the window")
    churned: int
    rate: str | None = Field(description="churned / live_at_start, 4 decimals, rounded down")
    rate_bps: int | None = Field(description="the same in basis points, rounded down")


class AgingBucket(BaseModel):
    bucket: str = Field(description="days overdue: 1-30, 31-60, 61-90, 90+ (over 90)")
    invoices: int
    balance: Amount


class TokenSummary(BaseModel):
    token: str
    mrr: Amount
    arr: Amount
    paying_subscriptions: int = Field(description="subscriptions counted in the MRR")
    scheduled_revenue: list[ScheduledRevenue]
    churn: Churn
    overdue_aging: list[AgingBucket]


class AnalyticsSummary(BaseModel):
    merchant: str
    as_of: int = Field(description="the time the figures are for (chain time, unix s)")
    tokens: list[TokenSummary]


class AtRiskCharge(BaseModel):
    subscription_id: int
    subscriber: str
    token: str
    next_charge_at: int
    amount_due: Amount
    allowance: Amount = Field(description="the subscriber's allowance to the manager")
    balance: Amount = Field(description="the subscriber's token balance")
    reasons: list[str] = Field(description="insufficient_allowance, insufficient_balance")


class AtRisk(BaseModel):
    as_of: int
    days: int
    block_number: int = Field(description="the block allowances and balances were read at")
    items: list[AtRiskCharge]


class UsageAnomaly(BaseModel):
    subscription_id: int
    subscriber: str
    token: str
    period: int
    period_start: int
    period_end: int
    units: Amount
    prior_periods: int = Field(description="periods the trailing figures are over")
    trailing_mean: str = Field(description="mean units of the prior periods (decimal)")
    trailing_stddev: str = Field(description="their population standard deviation (decimal)")
    threshold: str = Field(description="max(2 x mean, mean + 3 x stddev): units exceeded it")


class UsageAnomalies(BaseModel):
    as_of: int
    rule: str
    items: list[UsageAnomaly]
