"""Requests and responses of invoice creation, invoice views and the hosted page."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from offchain.db.models import InvoiceStatus

AddressStr = Annotated[
    str,
    Field(
        pattern=r"^0x[0-9a-fA-F]{40}$",
        examples=["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"],
        description="A 0x-prefixed 20-byte address",
    ),
]
HashStr = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$", description="0x-hex, 32 bytes")]
# uint256 in token base units, as a string of decimal digits (a JSON number would lose digits).
Uint256Str = Annotated[
    str, Field(pattern=r"^[0-9]{1,78}$", examples=["100000000"], description="Base units")
]
TaxRateStr = Annotated[
    str,
    Field(
        pattern=r"^(100(\.0{1,6})?|[0-9]{1,2}(\.[0-9]{1,6})?)$",
        examples=["7.25"],
        description="Tax rate in percent, 0 to 100, at most 6 decimal places",
    ),
]
MAX_DUE_DATE = 2**40 - 1  # the contract keeps due dates in a uint40


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LineItemRequest(_Strict):
    description: str = Field(min_length=1, max_length=500)
    quantity: int = Field(strict=True, ge=1, le=10**18, description="A positive whole number")
    unit_price: Uint256Str
    tax_rate: TaxRateStr = "0"


class CreateInvoiceRequest(_Strict):
    reference: str = Field(
        min_length=1,
        max_length=128,
        description="The business invoice number, unique per merchant",
        examples=["INV-2026-0042"],
    )
    customer: AddressStr | None = Field(
        default=None, description="The customer billed; null for a payment link anyone may pay"
    )
    token: AddressStr = Field(
        description="ERC-20 token, or 0xEeeeeEeeeEeEeeEeEeEeeEEEeeeeEeeeeeeeEEeE for ETH"
    )
    due_date: int = Field(strict=True, ge=0, le=MAX_DUE_DATE, description="Unix seconds, future")
    allow_partial: bool = False
    currency: str | None = Field(
        default=None,
        max_length=32,
        description="When given, must be the token's symbol (a guard against a wrong token)",
    )
    line_items: list[LineItemRequest] = Field(min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=4000)


class UnsignedTransaction(BaseModel):
    """EIP-1193 `eth_sendTransaction` parameters (hex quantities)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(default=None, alias="from")
    to: str
    data: str
    value: str
    chainId: str


class CreateInvoiceResponse(BaseModel):
    invoice_id: HashStr
    reference: str
    reference_hash: HashStr
    content_hash: HashStr
    amount: Uint256Str
    subtotal: Uint256Str
    tax: Uint256Str
    currency: str
    decimals: int
    public_url: str
    transaction: UnsignedTransaction | None = Field(
        default=None, description="For the merchant to sign and send (no operator key)"
    )
    transaction_hash: HashStr | None = Field(
        default=None, description="Sent by the gateway's operator (an operator key is set)"
    )


class LineItem(BaseModel):
    description: str
    quantity: str
    unit_price: Uint256Str
    tax_rate: str
    subtotal: Uint256Str
    tax: Uint256Str
    total: Uint256Str


class InvoiceDocumentOut(BaseModel):
    reference: str
    line_items: list[LineItem]
    subtotal: Uint256Str
    tax: Uint256Str
    amount: Uint256Str
    notes: str | None
    content: str = Field(description="The canonical JSON whose keccak-256 is the content hash")
    content_hash: HashStr
    transaction_hash: str | None
    created_at: int


class Payment(BaseModel):
    payer: str
    amount: Uint256Str
    fee: Uint256Str
    tx_hash: str
    block_number: int
    block_time: int
    log_index: int


class Settlement(BaseModel):
    settler: str
    amount: Uint256Str
    fiat_reference: str
    tx_hash: str
    block_number: int
    block_time: int
    log_index: int


class Refund(BaseModel):
    recipient: str
    amount: Uint256Str
    tx_hash: str
    block_number: int
    block_time: int
    log_index: int


class InvoiceDetail(BaseModel):
    invoice_id: HashStr
    merchant: str
    customer: str | None = Field(description="null: a payment link anyone may pay")
    reference: str | None = Field(description="Known when the invoice was created here")
    reference_hash: HashStr
    token: str
    currency: str | None
    decimals: int | None
    amount: Uint256Str
    paid: Uint256Str = Field(description="Paid and settled, net of refunds")
    due: Uint256Str = Field(description="Left to pay (0 when paid or void)")
    status: InvoiceStatus
    overdue: bool
    due_date: int
    allow_partial: bool
    content_hash: HashStr
    content_matches: bool | None = Field(
        description="keccak-256 of the stored content equals the on-chain content hash; "
        "null when there is no stored content or the invoice is not indexed yet"
    )
    pending: bool = Field(description="Created here, not on-chain (or not indexed) yet")
    issued_at: int | None
    issued_block: int | None
    document: InvoiceDocumentOut | None
    payments: list[Payment]
    settlements: list[Settlement]
    refunds: list[Refund]
    public_url: str


class PermitSignature(_Strict):
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65-byte signature")
    deadline: int = Field(strict=True, ge=0, le=2**64 - 1)


class PayRequest(_Strict):
    payer: AddressStr
    amount: Uint256Str | None = Field(
        default=None, description="Base units; default: everything that is due"
    )
    permit: PermitSignature | None = Field(
        default=None,
        description="An EIP-2612 permit signed over the `permit.typed_data` of an earlier "
        "answer: the answer is then a single payWithPermit transaction",
    )


class PermitOffer(BaseModel):
    typed_data: dict[str, Any] = Field(description="For eth_signTypedData_v4")
    deadline: int


class PayTransactions(BaseModel):
    invoice_id: HashStr
    payer: str
    amount: Uint256Str
    chain_id: str
    transactions: list[UnsignedTransaction] = Field(
        description="To send in order with eth_sendTransaction"
    )
    permit: PermitOffer | None = Field(
        default=None,
        description="When the token supports EIP-2612 and the allowance is short: sign this "
        "and ask again with `permit` to pay in one transaction instead of approve + pay",
    )


class PageStatus(BaseModel):
    invoice_id: HashStr
    status: InvoiceStatus
    pending: bool
    paid: Uint256Str
    due: Uint256Str
    overdue: bool
