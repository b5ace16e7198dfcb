"""Invoice creation and the JSON / PDF view of one invoice."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status

from api.deps import (
    AnyPrincipal,
    AuthenticatedReader,
    GatewayDep,
    MerchantPrincipal,
    ReadConnection,
    WriteConnection,
)
from api.errors import NotFound
from api.schemas.invoices import CreateInvoiceRequest, CreateInvoiceResponse, InvoiceDetail
from api.services import invoices, pdf
from api.services.i18n import negotiate

router = APIRouter(prefix="/v1/invoices", tags=["invoices"])

InvoiceIdPath = Annotated[
    str,
    Path(
        pattern=r"^0x[0-9a-fA-F]{64}$",
        description="keccak256(abi.encode(merchant, keccak256(reference)))",
    ),
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "example": {"error": {"code": "...", "message": description}},
            }
        },
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreateInvoiceResponse,
    responses={
        401: _error("No or an unknown API key"),
        403: _error("Not a merchant key, or the gateway's operator is not approved"),
        409: _error("The reference was already used by this merchant"),
        422: _error(
            "Malformed input, unknown token, currency not the token's symbol, due date "
            "not in the future, total 0 or above 2**96 - 1"
        ),
        503: _error("The node does not answer"),
    },
)
def create_invoice(
    request: CreateInvoiceRequest,
    gateway: GatewayDep,
    conn: WriteConnection,
    principal: MerchantPrincipal,
) -> CreateInvoiceResponse:
    """Creates an invoice: totals and taxes computed exactly, the content stored and hashed
    canonically, and the `issue` transaction either returned unsigned (for the merchant's
    own key: `transaction`) or sent by the gateway's operator (`transaction_hash`). The
    invoice id is known at once; the invoice is `pending` until the transaction is mined
    and indexed."""
    return invoices.create_invoice(gateway, conn, principal.address, request)


_VIEW_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No credentials, or unknown ones"),
    404: _error("No such invoice, or not one of yours"),
    422: _error("Malformed invoice id"),
}


@router.delete(
    "/{invoice_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        401: _error("No or an unknown API key"),
        403: _error("Not a merchant key"),
        404: _error("No invoice of this merchant with this id"),
        409: _error("The invoice is issued on-chain (void it there instead)"),
        503: _error("The node does not answer"),
    },
)
def withdraw_invoice(
    invoice_id: InvoiceIdPath,
    gateway: GatewayDep,
    conn: WriteConnection,
    principal: MerchantPrincipal,
) -> Response:
    """Withdraws an invoice created here whose issuing transaction was never mined (not
    signed, dropped, or replaced): its stored content is forgotten and its reference can be
    used again. Refused (409) once the invoice is on-chain, indexed or not. A transaction
    still waiting in a mempool would issue it after all, then without content here: send
    the same request to POST /v1/invoices again to store it."""
    invoices.withdraw_pending(gateway, conn, principal, invoice_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{invoice_id}",
    response_model=InvoiceDetail,
    responses=_VIEW_ERRORS,
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def get_invoice(invoice_id: InvoiceIdPath, reader: AuthenticatedReader) -> Response:
    """One invoice: its state in the mirror, payments, settlements and refunds, the stored
    content and whether it matches the on-chain hash. Visible to its merchant and its
    customer (and payers); anyone else gets 404, so ids cannot be probed."""
    # The lookup is the gateway's hottest path: it runs on the event loop (three indexed
    # reads, well under a millisecond, cost less than a thread-pool hop) and serializes
    # its model once, itself, instead of FastAPI validating it again.
    view = invoices.load_view(reader.gateway, reader.conn, invoice_id)
    if view is None or not view.visible_to(reader.principal):
        raise NotFound(f"no invoice {invoice_id.lower()}")
    return Response(
        invoices.detail(reader.gateway, view).model_dump_json(), media_type="application/json"
    )


@router.get(
    "/{invoice_id}/pdf",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}}, "description": "The invoice as PDF"},
        **_VIEW_ERRORS,
    },
)
def get_invoice_pdf(
    invoice_id: InvoiceIdPath,
    gateway: GatewayDep,
    conn: ReadConnection,
    principal: AnyPrincipal,
    lang: Annotated[str | None, Query(max_length=35, description="en, de or fr")] = None,
    accept_language: Annotated[str | None, Header(max_length=500)] = None,
) -> Response:
    """The invoice as PDF, for its merchant and customer, in the language of `lang`, else
    of the Accept-Language header, else English."""
    view = invoices.load_view(gateway, conn, invoice_id)
    if view is None or not view.visible_to(principal):
        raise NotFound(f"no invoice {invoice_id.lower()}")
    locale = negotiate(lang, accept_language)
    body = pdf.render(gateway, view, locale)
    return Response(
        body,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="invoice-{view.invoice_id[:18]}.pdf"'},
    )
