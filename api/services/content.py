"""An invoice's off-chain content: totals computed exactly, the canonical JSON the contract
commits to (`contentHash`), and the ids derived the way the contract derives them.

Canonical JSON: keys sorted, no whitespace, UTF-8 (no `\\u` escapes for non-ASCII), every
amount a string of decimal digits. Anyone holding the content can recompute
`keccak256(content)` and compare it with the invoice's `contentHash` on-chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

CONTENT_VERSION = 1
MAX_AMOUNT = 2**96 - 1  # InvoiceRegistry.MAX_AMOUNT (type(uint96).max)
ZERO_ADDRESS = "0x" + "00" * 20


def reference_hash(reference: str) -> str:
    """`referenceHash` of a business invoice number: keccak-256 of its UTF-8 bytes."""
    return "0x" + keccak(text=reference).hex()


def invoice_id_of(merchant: str, ref_hash: str) -> str:
    """InvoiceRegistry.invoiceIdOf: `keccak256(abi.encode(merchant, referenceHash))`."""
    encoded = encode(
        ["address", "bytes32"], [to_checksum_address(merchant), bytes.fromhex(ref_hash[2:])]
    )
    return "0x" + keccak(encoded).hex()


def content_hash(canonical: str) -> str:
    return "0x" + keccak(canonical.encode("utf-8")).hex()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tax_of(subtotal: int, rate_percent: str) -> int:
    """`subtotal * rate / 100` rounded half up to a whole base unit, exactly: the rate is
    turned into a fraction of integers, so no digit of a uint256 subtotal is lost."""
    numerator, denominator = Decimal(rate_percent).as_integer_ratio()
    if numerator < 0 or subtotal < 0:
        raise ValueError("tax rates and subtotals are not negative")
    # floor(x + 1/2) with x = subtotal * numerator / (100 * denominator)
    return (2 * subtotal * numerator + 100 * denominator) // (200 * denominator)


def normalize_rate(rate_percent: str) -> str:
    """One spelling per rate ("7.250" and "7.25" hash the same)."""
    value = Decimal(rate_percent).normalize()
    text = format(value, "f")
    return text


@dataclass(frozen=True)
class LineItemInput:
    description: str
    quantity: int
    unit_price: int
    tax_rate: str


@dataclass(frozen=True)
class ComputedLine:
    description: str
    quantity: int
    unit_price: int
    tax_rate: str
    subtotal: int
    tax: int

    @property
    def total(self) -> int:
        return self.subtotal + self.tax

    def as_content(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "quantity": str(self.quantity),
            "unit_price": str(self.unit_price),
            "tax_rate": self.tax_rate,
            "subtotal": str(self.subtotal),
            "tax": str(self.tax),
            "total": str(self.total),
        }


@dataclass(frozen=True)
class Totals:
    lines: list[ComputedLine]
    subtotal: int
    tax: int

    @property
    def amount(self) -> int:
        return self.subtotal + self.tax


def compute_totals(items: list[LineItemInput]) -> Totals:
    lines = []
    for item in items:
        subtotal = item.quantity * item.unit_price
        rate = normalize_rate(item.tax_rate)
        lines.append(
            ComputedLine(
                description=item.description,
                quantity=item.quantity,
                unit_price=item.unit_price,
                tax_rate=rate,
                subtotal=subtotal,
                tax=tax_of(subtotal, rate),
            )
        )
    return Totals(
        lines=lines,
        subtotal=sum(line.subtotal for line in lines),
        tax=sum(line.tax for line in lines),
    )


@dataclass(frozen=True)
class InvoiceContent:
    canonical: str
    hash: str


def build_content(
    *,
    chain_id: int,
    registry: str,
    merchant: str,
    customer: str | None,
    reference: str,
    token: str,
    currency: str,
    decimals: int,
    due_date: int,
    allow_partial: bool,
    totals: Totals,
    notes: str | None,
) -> InvoiceContent:
    document = {
        "version": CONTENT_VERSION,
        "chain_id": chain_id,
        "registry": registry.lower(),
        "merchant": merchant.lower(),
        "customer": customer.lower() if customer else None,
        "reference": reference,
        "token": token.lower(),
        "currency": currency,
        "decimals": decimals,
        "due_date": due_date,
        "allow_partial": allow_partial,
        "line_items": [line.as_content() for line in totals.lines],
        "subtotal": str(totals.subtotal),
        "tax": str(totals.tax),
        "amount": str(totals.amount),
        "notes": notes,
    }
    canonical = canonical_json(document)
    return InvoiceContent(canonical=canonical, hash=content_hash(canonical))


def parse_content(canonical: str) -> dict[str, Any]:
    """The stored document back as a dict (amounts stay strings)."""
    value = json.loads(canonical)
    if not isinstance(value, dict):
        raise ValueError("invoice content is not a JSON object")
    return value
