"""The hosted invoice page (public, by unguessable link): HTML in the customer's language,
its PDF, its status for the page's polling, and the payment transactions its wallet sends."""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import Connection

from api.deps import GatewayDep, ReadConnection
from api.errors import NotFound
from api.gateway import Gateway
from api.schemas.invoices import PageStatus, PayRequest, PayTransactions
from api.services import invoices, pay, pdf
from api.services.i18n import negotiate
from api.services.invoices import InvoiceView
from api.services.page import render_page

router = APIRouter(tags=["invoice page"])

STATIC_DIR = FilePath(__file__).resolve().parent.parent / "static"
_TOKEN = re.compile(r"^[0-9a-fA-F]{32}$")
PAGE_HEADERS = {
    # The link's token is in the URL: never hand it to another site, and keep the page out
    # of shared caches.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

InvoiceIdPath = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$")]
TokenPath = Annotated[
    str, Path(max_length=64, description="The link's token (from the invoice's public_url)")
]
LangQuery = Annotated[
    str | None, Query(max_length=35, description="en, de or fr (else Accept-Language)")
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such invoice, or the link's token is wrong"},
    422: {"description": "Malformed invoice id"},
}


def _public_view(gateway: Gateway, conn: Connection, invoice_id: str, token: str) -> InvoiceView:
    # A wrong token and an unknown invoice look the same, so links cannot be probed.
    if not _TOKEN.match(token) or not gateway.check_public_token(invoice_id, token):
        raise NotFound("no such invoice page")
    view = invoices.load_view(gateway, conn, invoice_id)
    if view is None:
        raise NotFound("no such invoice page")
    return view


@router.get("/static/pay.js", include_in_schema=False)
def pay_script() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "pay.js",
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=300"},
    )


@router.get("/static/pay.css", include_in_schema=False)
def pay_style() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "pay.css",
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=300"},
    )


# Registered before the page itself, whose `{token}` would otherwise swallow "….pdf".
@router.get(
    "/pay/{invoice_id}/{token}.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "PDF"}, **_NOT_FOUND},
)
def invoice_page_pdf(
    invoice_id: InvoiceIdPath,
    token: TokenPath,
    gateway: GatewayDep,
    conn: ReadConnection,
    lang: LangQuery = None,
    accept_language: Annotated[str | None, Header(max_length=500)] = None,
) -> Response:
    """The invoice as PDF, by its public link."""
    view = _public_view(gateway, conn, invoice_id, token)
    body = pdf.render(gateway, view, negotiate(lang, accept_language))
    return Response(
        body,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="invoice-{view.invoice_id[:18]}.pdf"',
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


@router.get(
    "/pay/{invoice_id}/{token}/status",
    response_model=PageStatus,
    responses=_NOT_FOUND,
)
def invoice_page_status(
    invoice_id: InvoiceIdPath, token: TokenPath, gateway: GatewayDep, conn: ReadConnection
) -> PageStatus:
    """What the page polls while a payment is being indexed."""
    view = _public_view(gateway, conn, invoice_id, token)
    return PageStatus(
        invoice_id=view.invoice_id,
        status=view.status,
        pending=view.pending,
        paid=str(view.paid),
        due=str(view.due),
        overdue=view.overdue,
    )


@router.post(
    "/pay/{invoice_id}/{token}/transactions",
    response_model=PayTransactions,
    responses={
        **_NOT_FOUND,
        409: {"description": "The invoice is void, paid, or not on-chain yet"},
        422: {
            "description": "Malformed payer, amount above what is due, a partial amount "
            "where none is allowed, a balance too low, or a bad permit signature"
        },
        503: {"description": "The node does not answer"},
    },
)
def invoice_page_transactions(
    invoice_id: InvoiceIdPath,
    token: TokenPath,
    request: PayRequest,
    gateway: GatewayDep,
    conn: ReadConnection,
) -> PayTransactions:
    """The transactions for the payer's wallet to send, in order (EIP-1193
    `eth_sendTransaction` parameters): approve + pay when the allowance is short, pay alone
    when it suffices, payEth for ETH invoices. For EIP-2612 tokens the answer also offers a
    permit to sign; asking again with its signature gives a single payWithPermit."""
    view = _public_view(gateway, conn, invoice_id, token)
    return pay.prepare(gateway, view, request)


@router.get(
    "/pay/{invoice_id}/{token}",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}, **_NOT_FOUND},
)
def invoice_page(
    invoice_id: InvoiceIdPath,
    token: TokenPath,
    gateway: GatewayDep,
    conn: ReadConnection,
    lang: LangQuery = None,
    accept_language: Annotated[str | None, Header(max_length=500)] = None,
) -> HTMLResponse:
    """The hosted invoice page: status, amounts, due date, overdue state, line items,
    payments and whether the stored content matches the on-chain hash, with a button that
    pays from the browser's wallet (EIP-1193)."""
    view = _public_view(gateway, conn, invoice_id, token)
    locale = negotiate(lang, accept_language)
    base = f"/pay/{view.invoice_id}/{token.lower()}"
    html = render_page(gateway, view, locale, base)
    headers = {**PAGE_HEADERS, "Content-Language": locale, "Vary": "Accept-Language"}
    return HTMLResponse(html, headers=headers)
