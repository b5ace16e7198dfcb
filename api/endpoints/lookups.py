"""Lookups: invoices, subscriptions, charges, usage per period, customer statements."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from api.deps import AnyPrincipal, GatewayDep, ReadConnection
from api.schemas.common import AddressStr
from api.schemas.lookups import (
    ChargePage,
    InvoicePage,
    InvoiceStatusFilter,
    Statement,
    SubscriptionPage,
    SubscriptionStateFilter,
    SubscriptionStatus,
    SubscriptionView,
    UsagePage,
)
from api.services import lookups
from api.services.pagination import DEFAULT_LIMIT, MAX_KEY_INT, MAX_LIMIT

router = APIRouter(prefix="/v1", tags=["lookups"])

# Unix seconds and ids are BIGINT columns: larger values are refused here, not by the database.
MAX_TIME = 2**40 - 1


def current_time(gateway: GatewayDep) -> int:
    """'Now' for due dates and periods: the chain's latest block time (the wall clock while
    the node is away). Tests may override this dependency."""
    return lookups.chain_now(gateway)


Now = Annotated[int, Depends(current_time)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Cursor = Annotated[
    str | None,
    Query(max_length=512, description="next_cursor of the previous page (opaque)"),
]
AddressQuery = Annotated[AddressStr | None, Query()]
Time = Annotated[int | None, Query(ge=0, le=MAX_TIME, description="unix seconds")]
Id = Annotated[int | None, Query(ge=0, le=MAX_KEY_INT)]


@router.get("/invoices", response_model=InvoicePage)
def list_invoices(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    now: Now,
    merchant: AddressQuery = None,
    customer: AddressQuery = None,
    status: Annotated[
        InvoiceStatusFilter | None,
        Query(description="on-chain status, or overdue (unpaid past its due date)"),
    ] = None,
    due_after: Annotated[Time, Query(description="due at or after (unix s)")] = None,
    due_before: Annotated[Time, Query(description="due before (unix s)")] = None,
    reference: Annotated[
        str | None,
        Query(min_length=1, max_length=128, description="the business invoice number"),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> InvoicePage:
    """Invoices of the merchant (API key) or billed to the customer (session), by due date
    then id. A merchant may filter by customer, a customer by merchant."""
    return lookups.list_invoices(
        conn,
        gateway,
        principal,
        now,
        merchant=merchant,
        customer=customer,
        status=status,
        due_after=due_after,
        due_before=due_before,
        reference=reference,
        cursor=cursor,
        limit=limit,
    )


@router.get("/subscriptions", response_model=SubscriptionPage)
def list_subscriptions(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    now: Now,
    plan_id: Id = None,
    subscriber: AddressQuery = None,
    merchant: AddressQuery = None,
    state: Annotated[SubscriptionStateFilter | None, Query(description="stored state")] = None,
    status: Annotated[SubscriptionStatus | None, Query(description="status now")] = None,
    past_due: Annotated[bool | None, Query(description="the last charge failed")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> SubscriptionPage:
    """Subscriptions to the merchant's plans (API key) or the customer's own (session), by
    id, with their status now, next charge time and amount."""
    return lookups.list_subscriptions(
        conn,
        gateway,
        principal,
        now,
        plan_id=plan_id,
        subscriber=subscriber,
        merchant=merchant,
        state=state,
        status=status,
        past_due=past_due,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionView,
    responses={404: {"description": "No such subscription, or not yours"}},
)
def get_subscription(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    now: Now,
    subscription_id: Annotated[int, Path(ge=0, le=MAX_KEY_INT)],
) -> SubscriptionView:
    return lookups.get_subscription(conn, gateway, principal, now, subscription_id)


@router.get("/charges", response_model=ChargePage)
def list_charges(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    subscription_id: Id = None,
    merchant: AddressQuery = None,
    customer: AddressQuery = None,
    time_from: Annotated[Time, Query(alias="from", description="at or after (unix s)")] = None,
    time_to: Annotated[Time, Query(alias="to", description="before (unix s)")] = None,
    include_failures: bool = False,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> ChargePage:
    """Charges of subscriptions (and failed charges with include_failures) in chain order:
    a merchant's (API key) or a customer's (session), of one subscription, or by time."""
    return lookups.list_charges(
        conn,
        gateway,
        principal,
        subscription_id=subscription_id,
        merchant=merchant,
        customer=customer,
        time_from=time_from,
        time_to=time_to,
        include_failures=include_failures,
        cursor=cursor,
        limit=limit,
    )


@router.get(
    "/usage",
    response_model=UsagePage,
    responses={404: {"description": "No such subscription, or not yours"}},
)
def usage(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    now: Now,
    subscription_id: Annotated[int, Query(ge=0, le=MAX_KEY_INT)],
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> UsagePage:
    """Usage of a metered subscription per billing period: units reported, included,
    billable overage, and what the period's charge billed."""
    return lookups.usage(
        conn, gateway, principal, now, subscription_id=subscription_id, cursor=cursor, limit=limit
    )


@router.get(
    "/customers/{address}/statement",
    response_model=Statement,
    responses={404: {"description": "Another customer's statement"}},
)
def statement(
    conn: ReadConnection,
    gateway: GatewayDep,
    principal: AnyPrincipal,
    now: Now,
    address: Annotated[AddressStr, Path()],
    time_from: Annotated[Time, Query(alias="from", description="at or after (unix s)")] = None,
    time_to: Annotated[Time, Query(alias="to", description="before (unix s); default now")] = None,
) -> Statement:
    """A customer's charges, invoice payments, off-chain settlements and refunds in
    [from, to), with per-token totals and opening/closing net paid. A merchant sees only
    the lines with it as the merchant."""
    return lookups.statement(
        conn, gateway, principal, now, address=address, time_from=time_from, time_to=time_to
    )
