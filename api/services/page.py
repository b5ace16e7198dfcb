"""An invoice presented for people, in one language: the values the hosted page and the
PDF show (amounts and dates formatted by Babel), and the page's HTML (Jinja2, escaped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.gateway import Gateway
from api.services import i18n
from api.services.i18n import N_
from api.services.invoices import InvoiceView, view_token
from offchain.db.models import InvoiceStatus
from offchain.money import format_units

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"], default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

STATUS_LABELS = {
    InvoiceStatus.OPEN: N_("Open"),
    InvoiceStatus.PARTIALLY_PAID: N_("Partially paid"),
    InvoiceStatus.PAID: N_("Paid"),
    InvoiceStatus.VOID: N_("Void"),
}
PAYMENT_KINDS = {
    "payment": N_("Payment"),
    "settlement": N_("Off-chain settlement"),
    "refund": N_("Refund"),
}
PAY_MESSAGES = {
    "no_wallet": N_("No wallet found: install or open an Ethereum wallet in this browser."),
    "connecting": N_("Connecting to your wallet…"),
    "wrong_chain": N_("Your wallet is on another network: switch it to the invoice's network."),
    "invalid_amount": N_("Enter an amount no larger than what is due."),
    "preparing": N_("Preparing the transactions…"),
    "signing": N_("Sign the permit in your wallet…"),
    "sending": N_("Confirm transaction {step} of {count} in your wallet…"),
    "mining": N_("Waiting for transaction {step} of {count} to be mined…"),
    "indexing": N_("Payment confirmed on-chain. Waiting for it to be recorded…"),
    "failed": N_("The payment failed: {reason}"),
    "rejected": N_("The transaction was reverted."),
}


@dataclass
class Presented:
    """Everything shown, as text in one language."""

    invoice_id: str
    invoice_id_short: str
    reference: str | None
    status: str
    status_label: str
    overdue: bool
    pending: bool
    merchant: str
    customer: str | None
    currency: str | None
    decimals: int | None
    amount: str
    paid: str
    due: str
    due_plain: str
    due_units: int
    due_date: str
    allow_partial: bool
    content_hash: str
    content_state: str  # match | mismatch | pending | none
    subtotal: str = ""
    tax: str = ""
    notes: str | None = None
    lines: list[dict[str, str]] = field(default_factory=list)
    payments: list[dict[str, str]] = field(default_factory=list)


def _rate(rate: str, locale: str) -> str:
    return i18n.format_percent(rate, locale)


def present(gateway: Gateway, view: InvoiceView, locale: str) -> Presented:
    _ = i18n.translator(locale)
    currency, decimals = view_token(gateway, view)

    def money(units: int) -> str:
        return i18n.money(units, decimals, currency, locale)

    if view.pending:
        state = "pending"
    elif view.content_matches is None:
        state = "none"
    else:
        state = "match" if view.content_matches else "mismatch"
    shown = Presented(
        invoice_id=view.invoice_id,
        invoice_id_short=view.invoice_id[:10] + "…",
        reference=view.document.reference if view.document is not None else None,
        status=str(view.status),
        status_label=_(STATUS_LABELS[view.status]),
        overdue=view.overdue,
        pending=view.pending,
        merchant=view.merchant,
        customer=view.customer,
        currency=currency,
        decimals=decimals,
        amount=money(view.amount),
        paid=money(view.paid),
        due=money(view.due),
        due_plain=_plain(view.due, decimals),
        due_units=view.due,
        due_date=i18n.date(view.due_date, locale),
        allow_partial=view.allow_partial,
        content_hash=view.content_hash,
        content_state=state,
    )
    content = view.content
    if content is not None and state != "mismatch":
        try:
            shown.subtotal = money(int(content["subtotal"]))
            shown.tax = money(int(content["tax"]))
            shown.notes = content.get("notes")
            shown.lines = [
                {
                    "description": str(line["description"]),
                    "quantity": i18n.amount(int(line["quantity"]), 0, locale),
                    "unit_price": money(int(line["unit_price"])),
                    "tax_rate": _rate(str(line["tax_rate"]), locale),
                    "tax": money(int(line["tax"])),
                    "total": money(int(line["total"])),
                }
                for line in content["line_items"]
            ]
        except (KeyError, TypeError, ValueError):
            shown.lines = []  # content edited out of shape
    events: list[tuple[int, int, dict[str, str]]] = []
    for kind, rows, party in (
        ("payment", view.payments, "payer"),
        ("settlement", view.settlements, "settler"),
        ("refund", view.refunds, "recipient"),
    ):
        for row in rows:
            events.append(
                (
                    int(row["block_number"]),
                    int(row["log_index"]),
                    {
                        "kind": kind,
                        "kind_label": _(PAYMENT_KINDS[kind]),
                        "party": str(row[party]),
                        "amount": ("-" if kind == "refund" else "") + money(int(row["amount"])),
                        "date": i18n.date(int(row["block_time"]), locale),
                        "tx_hash": str(row["tx_hash"]),
                    },
                )
            )
    shown.payments = [entry for _n, _i, entry in sorted(events, key=lambda e: (e[0], e[1]))]
    return shown


def _plain(units: int, decimals: int | None) -> str:
    """A decimal a person can edit in the amount field ("12.5"), not localized: pay.js
    parses it back to base units exactly."""
    if decimals is None:
        return str(units)
    text = format_units(units, decimals)
    return text.rstrip("0").rstrip(".") if "." in text else text


def render_page(gateway: Gateway, view: InvoiceView, locale: str, base_path: str) -> str:
    _ = i18n.translator(locale)
    shown = present(gateway, view, locale)
    payable = not view.pending and view.status in (
        InvoiceStatus.OPEN,
        InvoiceStatus.PARTIALLY_PAID,
    )
    pay_config: dict[str, Any] = {
        "transactions_url": f"{base_path}/transactions",
        "status_url": f"{base_path}/status",
        "chain_id": hex(gateway.chain_id),
        "decimals": shown.decimals,
        # For the Pay button's label as a smaller partial amount is typed (pay.js formats
        # it as i18n.amount does: every significant digit, at least two fraction digits).
        "locale": locale.replace("_", "-"),
        "currency": shown.currency,
        "pay_label": _("Pay"),
        "allow_partial": shown.allow_partial,
        "due": str(shown.due_units),
        "status": shown.status,
        "pending": shown.pending,
        "paid": str(view.paid),
        "messages": {key: _(text) for key, text in PAY_MESSAGES.items()},
    }
    template = _environment.get_template("invoice.html")
    return template.render(
        _=_,
        lang=locale,
        languages=[(code, i18n.LANGUAGE_NAMES[code]) for code in i18n.SUPPORTED],
        inv=shown,
        payable=payable,
        pay_config=pay_config,
        pdf_url=f"{base_path}.pdf?lang={locale}",
    )
