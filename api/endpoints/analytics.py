"""Merchant analytics (API key only): revenue, churn, aging, payments at risk, anomalies.
How each figure is computed is documented in `api.services.analytics`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import GatewayDep, MerchantPrincipal, ReadConnection
from api.endpoints.lookups import Now
from api.schemas.analytics import AnalyticsSummary, AtRisk, UsageAnomalies
from api.services import analytics
from api.services.pagination import MAX_KEY_INT

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


@router.get("/summary", response_model=AnalyticsSummary)
def summary(
    conn: ReadConnection, gateway: GatewayDep, principal: MerchantPrincipal, now: Now
) -> AnalyticsSummary:
    """Per token: MRR (base prices of active and past-due subscriptions per 30-day month,
    summed exactly, rounded down once) and ARR = 12 x MRR; revenue scheduled for the next
    30/60/90 days (subscription charges + open invoice balances due); churn over the last
    30 days; overdue invoice balances aged in buckets of 1-30, 31-60, 61-90 and 90+ days."""
    return analytics.summary(conn, gateway, principal.address, now)


@router.get(
    "/at-risk",
    response_model=AtRisk,
    responses={503: {"description": "The node does not answer"}},
)
def at_risk(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: MerchantPrincipal,
    now: Now,
    days: Annotated[int, Query(ge=0, le=366, description="horizon, in days")] = 7,
) -> AtRisk:
    """Subscriptions whose next charge falls due within `days` and whose subscriber's
    allowance to the SubscriptionManager or token balance (read on-chain now) is below the
    amount due."""
    return analytics.at_risk(conn, gateway, principal.address, now, days)


@router.get("/usage-anomalies", response_model=UsageAnomalies)
def usage_anomalies(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: MerchantPrincipal,
    now: Now,
    subscription_id: Annotated[int | None, Query(ge=0, le=MAX_KEY_INT)] = None,
) -> UsageAnomalies:
    """Billing periods whose metered usage spiked: above both twice the trailing mean and
    the mean plus three standard deviations of the up to 12 periods before (at least 3)."""
    return analytics.anomalies(conn, gateway, principal.address, now, subscription_id)
