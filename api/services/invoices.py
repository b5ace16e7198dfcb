"""Invoices through the gateway: creation (content stored off-chain, hashed, the `issue`
transaction returned unsigned or sent by the operator) and the view of one invoice that the
JSON endpoint, the hosted page and the PDF share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception

from api.deps import Principal, PrincipalKind
from api.errors import (
    ChainUnavailable,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
)
from api.gateway import Gateway
from api.repository import invoices_view
from api.schemas.invoices import (
    CreateInvoiceRequest,
    CreateInvoiceResponse,
    InvoiceDetail,
    InvoiceDocumentOut,
    LineItem,
    Payment,
    Refund,
    Settlement,
    UnsignedTransaction,
)
from api.services import content as contents
from api.services.chain import NATIVE_TOKEN, TokenInfo
from offchain.db import gateway_repository
from offchain.db.models import Invoice, InvoiceDocument, InvoiceStatus


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------- tokens and time


def token_metadata(gateway: Gateway, token: str) -> TokenInfo:
    """Symbol and decimals of an invoice token; 422 when the address is not an ERC-20."""
    token = token.lower()
    if token == NATIVE_TOKEN:
        return gateway.chain.token_info(token)
    if int(token, 16) == 0:
        raise InvalidInput("token must not be the zero address (use 0xEeee...EEeE for ETH)")
    try:
        code = gateway.chain.web3.eth.get_code(Web3.to_checksum_address(token))
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(f"the node at {gateway.chain.rpc_url} does not answer") from exc
    if not code:
        raise InvalidInput(f"unknown token: no contract at {token}")
    try:
        return gateway.chain.token_info(token)
    except ChainUnavailable:
        # A contract answering symbol()/decimals() with garbage looks like a node error to
        # web3; if the node answers otherwise, it is the token that is wrong.
        gateway.chain.block_number()
        raise InvalidInput(f"{token} is not an ERC-20 token with symbol and decimals") from None


def chain_time(gateway: Gateway) -> int:
    """When the next block will be mined, about: the head's time, or the wall clock when
    the chain has been idle (a node's clock may run ahead of the wall clock, as in tests)."""
    try:
        head = int(gateway.chain.web3.eth.get_block("latest")["timestamp"])
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(f"the node at {gateway.chain.rpc_url} does not answer") from exc
    return max(head, int(time.time()))


_mirror_times: dict[tuple[int, int], tuple[float, int]] = {}  # (gateway, chain) -> (read at, time)


def mirror_time(gateway: Gateway, conn: Connection) -> int:
    """The time overdue is judged by, without asking the node: the newest indexed block's
    time or the wall clock, whichever is later. The block time is read at most once per
    `block_time_cache_s` (default 1 s) per worker: every view would otherwise pay a query
    for a figure that changes once a block."""
    key = (id(gateway), gateway.chain_id)
    now = time.monotonic()
    cached = _mirror_times.get(key)
    if cached is not None and now - cached[0] < gateway.settings.block_time_cache_s:
        indexed: int | None = cached[1]
    else:
        indexed = invoices_view.latest_block_time(conn, gateway.chain_id)
        _mirror_times[key] = (now, indexed or 0)
    return max(indexed or 0, int(time.time()))


# ------------------------------------------------------------------------- creation


def create_invoice(
    gateway: Gateway, conn: Connection, merchant: str, request: CreateInvoiceRequest
) -> CreateInvoiceResponse:
    merchant = merchant.lower()
    token = request.token.lower()
    customer = request.customer.lower() if request.customer else None
    if customer is not None and int(customer, 16) == 0:
        customer = None  # the zero address is how the contract spells "anyone"
    reference = request.reference
    if reference != reference.strip() or not reference.isprintable():
        raise InvalidInput(
            "reference must not start or end with spaces or contain control characters"
        )
    info = token_metadata(gateway, token)
    if request.currency is not None and request.currency != info.symbol:
        raise InvalidInput(
            f"currency {request.currency!r} is not the token's symbol {info.symbol!r}",
            token_symbol=info.symbol,
        )
    totals = contents.compute_totals(
        [
            contents.LineItemInput(
                description=item.description,
                quantity=item.quantity,
                unit_price=int(item.unit_price),
                tax_rate=item.tax_rate,
            )
            for item in request.line_items
        ]
    )
    if totals.amount == 0:
        raise InvalidInput("the invoice total is 0: an invoice must ask for something")
    if totals.amount > contents.MAX_AMOUNT:
        raise InvalidInput(
            f"the invoice total {totals.amount} exceeds the registry's limit "
            f"MAX_AMOUNT = 2**96 - 1 = {contents.MAX_AMOUNT} base units",
            max_amount=str(contents.MAX_AMOUNT),
        )
    now = chain_time(gateway)
    if request.due_date <= now:
        raise InvalidInput(
            f"due_date {request.due_date} is not in the future (chain time is {now})",
            chain_time=now,
        )

    ref_hash = contents.reference_hash(reference)
    invoice_id = contents.invoice_id_of(merchant, ref_hash)
    registry = gateway.registry
    if invoices_view.invoice(conn, gateway.chain_id, registry, invoice_id) is not None:
        raise Conflict(f"reference {reference!r} was already used by this merchant")
    content = contents.build_content(
        chain_id=gateway.chain_id,
        registry=registry,
        merchant=merchant,
        customer=customer,
        reference=reference,
        token=token,
        currency=info.symbol,
        decimals=info.decimals,
        due_date=request.due_date,
        allow_partial=request.allow_partial,
        totals=totals,
        notes=request.notes,
    )
    inserted = gateway_repository.insert_invoice_document(
        conn,
        {
            "chain_id": gateway.chain_id,
            "contract": registry,
            "invoice_id": invoice_id,
            "merchant": merchant,
            "reference": reference,
            "reference_hash": ref_hash,
            "customer": customer or contents.ZERO_ADDRESS,
            "token": token,
            "amount": totals.amount,
            "due_date": request.due_date,
            "allow_partial": request.allow_partial,
            "content": content.canonical,
            "content_hash": content.hash,
            "transaction_hash": None,
            "created_at": datetime.now(UTC),
        },
    )
    if not inserted:
        raise Conflict(f"reference {reference!r} was already used by this merchant")

    data = gateway.chain.registry.encode_abi(
        "issue",
        args=[
            Web3.to_checksum_address(merchant),
            bytes.fromhex(ref_hash[2:]),
            Web3.to_checksum_address(customer or contents.ZERO_ADDRESS),
            Web3.to_checksum_address(token),
            totals.amount,
            request.due_date,
            request.allow_partial,
            bytes.fromhex(content.hash[2:]),
        ],
    )
    transaction: UnsignedTransaction | None = None
    transaction_hash: str | None = None
    operator = gateway.chain.operator
    if operator is None:
        transaction = UnsignedTransaction.model_validate(
            gateway.chain.unsigned(registry, data, merchant)
        )
    else:
        approved = gateway.chain.call(
            gateway.chain.registry.functions.isOperator(
                Web3.to_checksum_address(merchant), operator.address
            )
        )
        if not approved:
            raise Forbidden(
                f"the gateway's operator {operator.address} is not approved by merchant "
                f"{merchant}: call setOperator({operator.address}, true) on the registry first",
                operator=operator.address,
            )
        # Inside the request's transaction: if the node refuses, the document is not kept.
        transaction_hash = gateway.chain.send_as_operator(registry, data)
        gateway_repository.set_invoice_transaction(
            conn, gateway.chain_id, registry, invoice_id, transaction_hash
        )
    return CreateInvoiceResponse(
        invoice_id=invoice_id,
        reference=reference,
        reference_hash=ref_hash,
        content_hash=content.hash,
        amount=str(totals.amount),
        subtotal=str(totals.subtotal),
        tax=str(totals.tax),
        currency=info.symbol,
        decimals=info.decimals,
        public_url=gateway.public_link(invoice_id),
        transaction=transaction,
        transaction_hash=transaction_hash,
    )


# ---------------------------------------------------------------------------- views


@dataclass
class InvoiceView:
    """One invoice as the mirror and the stored document know it."""

    invoice_id: str
    row: Invoice | None
    document: InvoiceDocument | None
    now: int
    payments: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    content: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self.row is None

    @property
    def merchant(self) -> str:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return source.merchant.lower()

    @property
    def customer(self) -> str | None:
        source = self.row if self.row is not None else self.document
        assert source is not None
        address = source.customer.lower()
        return None if int(address, 16) == 0 else address

    @property
    def token(self) -> str:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return source.token.lower()

    @property
    def amount(self) -> int:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return int(source.amount)

    @property
    def paid(self) -> int:
        return 0 if self.row is None else int(self.row.paid)

    @property
    def status(self) -> InvoiceStatus:
        return InvoiceStatus.OPEN if self.row is None else InvoiceStatus(self.row.status)

    @property
    def due(self) -> int:
        if self.status in (InvoiceStatus.VOID, InvoiceStatus.PAID):
            return 0
        return max(self.amount - self.paid, 0)

    @property
    def due_date(self) -> int:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return int(source.due_date)

    @property
    def allow_partial(self) -> bool:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return bool(source.allow_partial)

    @property
    def overdue(self) -> bool:
        # As InvoiceRegistry.isOverdue: something left to pay after the due date.
        return self.due > 0 and self.now > self.due_date

    @property
    def reference_hash(self) -> str:
        source = self.row if self.row is not None else self.document
        assert source is not None
        return source.reference_hash.lower()

    @property
    def content_hash(self) -> str:
        if self.row is not None:
            return self.row.content_hash.lower()
        assert self.document is not None
        return self.document.content_hash.lower()

    @property
    def content_matches(self) -> bool | None:
        if self.document is None or self.row is None:
            return None
        return contents.content_hash(self.document.content) == self.row.content_hash.lower()

    def visible_to(self, principal: Principal) -> bool:
        """Its merchant, its customer, and whoever paid it."""
        if principal.kind is PrincipalKind.MERCHANT:
            return principal.address == self.merchant
        return principal.address == self.customer or any(
            principal.address == str(p["payer"]).lower() for p in self.payments
        )


def withdraw_pending(
    gateway: Gateway, conn: Connection, principal: Principal, invoice_id: str
) -> None:
    """Forgets the document of an invoice the merchant created here but never issued
    on-chain (its transaction was never signed, or never mined), so that its reference
    can be used again. An invoice that is on-chain stays: it is voided on-chain instead."""
    invoice_id = invoice_id.lower()
    chain_id, registry = gateway.chain_id, gateway.registry
    mirrored = invoices_view.invoice(conn, chain_id, registry, invoice_id)
    document = gateway_repository.invoice_document(conn, chain_id, registry, invoice_id)
    owner = mirrored or document
    if owner is None or owner.merchant.lower() != principal.address:
        raise NotFound(f"no invoice {invoice_id} of this merchant")
    on_chain = mirrored is not None or gateway.chain.call(
        gateway.chain.registry.functions.statusOf(bytes.fromhex(invoice_id[2:]))
    )
    if on_chain:
        raise Conflict(
            f"invoice {invoice_id} is issued on-chain: its content stays; void it with the "
            "registry's void(invoiceId) while it is unpaid"
        )
    if document is None or not gateway_repository.delete_invoice_document(
        conn, chain_id, registry, invoice_id
    ):
        raise NotFound(f"no invoice {invoice_id} of this merchant")


def load_view(gateway: Gateway, conn: Connection, invoice_id: str) -> InvoiceView | None:
    """The invoice, or None when neither the mirror nor the documents know it."""
    invoice_id = invoice_id.lower()
    chain_id, registry = gateway.chain_id, gateway.registry
    row, document, movements = invoices_view.invoice_view(conn, chain_id, registry, invoice_id)
    if row is None and document is None:
        return None
    view = InvoiceView(
        invoice_id=invoice_id, row=row, document=document, now=mirror_time(gateway, conn)
    )
    if document is not None:
        try:
            view.content = contents.parse_content(document.content)
        except ValueError:
            view.content = None  # tampered beyond JSON: content_matches says so
    if row is not None:
        view.payments = movements["payment"]
        view.settlements = movements["settlement"]
        view.refunds = movements["refund"]
    return view


TOKEN_RETRY_S = 30.0
_token_failures: dict[tuple[str, str], float] = {}  # (node, token) -> when it failed


def view_token(gateway: Gateway, view: InvoiceView) -> tuple[str | None, int | None]:
    """Currency symbol and decimals: from the document, else from the token (None, None
    when the node cannot tell)."""
    if view.content is not None:
        currency, decimals = view.content.get("currency"), view.content.get("decimals")
        if isinstance(currency, str) and isinstance(decimals, int):
            return currency, decimals
    key = (gateway.chain.rpc_url, view.token)
    failed_at = _token_failures.get(key)
    if failed_at is not None and time.monotonic() - failed_at < TOKEN_RETRY_S:
        return None, None  # the node could not tell a moment ago: do not wait on it per view
    try:
        info = gateway.chain.token_info(view.token)
    except (GatewayError, ContractLogicError, Web3Exception, OSError):
        _token_failures[key] = time.monotonic()
        return None, None
    _token_failures.pop(key, None)
    return info.symbol, info.decimals


def _document_out(view: InvoiceView) -> InvoiceDocumentOut | None:
    document, content = view.document, view.content
    if document is None:
        return None
    try:
        items = [LineItem.model_validate(item) for item in (content or {}).get("line_items", [])]
    except (ValidationError, TypeError):
        items = []  # content edited out of shape: content_matches shows it is not the original
    return InvoiceDocumentOut(
        reference=document.reference,
        line_items=items,
        subtotal=str(content.get("subtotal", "0")) if content else "0",
        tax=str(content.get("tax", "0")) if content else "0",
        amount=str(document.amount),
        notes=content.get("notes") if content else None,
        content=document.content,
        content_hash=document.content_hash,
        transaction_hash=document.transaction_hash,
        created_at=int(_aware(document.created_at).timestamp()),
    )


def detail(gateway: Gateway, view: InvoiceView) -> InvoiceDetail:
    currency, decimals = view_token(gateway, view)
    row = view.row
    return InvoiceDetail(
        invoice_id=view.invoice_id,
        merchant=view.merchant,
        customer=view.customer,
        reference=view.document.reference if view.document is not None else None,
        reference_hash=view.reference_hash,
        token=view.token,
        currency=currency,
        decimals=decimals,
        amount=str(view.amount),
        paid=str(view.paid),
        due=str(view.due),
        status=view.status,
        overdue=view.overdue,
        due_date=view.due_date,
        allow_partial=view.allow_partial,
        content_hash=view.content_hash,
        content_matches=view.content_matches,
        pending=view.pending,
        issued_at=row.issued_at if row is not None else None,
        issued_block=row.issued_block if row is not None else None,
        document=_document_out(view),
        payments=[
            Payment(
                payer=p["payer"],
                amount=str(p["amount"]),
                fee=str(p["fee"]),
                tx_hash=p["tx_hash"],
                block_number=p["block_number"],
                block_time=p["block_time"],
                log_index=p["log_index"],
            )
            for p in view.payments
        ],
        settlements=[
            Settlement(
                settler=s["settler"],
                amount=str(s["amount"]),
                fiat_reference=s["fiat_reference"],
                tx_hash=s["tx_hash"],
                block_number=s["block_number"],
                block_time=s["block_time"],
                log_index=s["log_index"],
            )
            for s in view.settlements
        ],
        refunds=[
            Refund(
                recipient=r["recipient"],
                amount=str(r["amount"]),
                tx_hash=r["tx_hash"],
                block_number=r["block_number"],
                block_time=r["block_time"],
                log_index=r["log_index"],
            )
            for r in view.refunds
        ],
        public_url=gateway.public_link(view.invoice_id),
    )
