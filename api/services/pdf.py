"""The PDF rendition of an invoice (fpdf2): header, parties, line items with taxes,
totals, status and payments, in the reader's language."""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

from api.gateway import Gateway
from api.services import i18n
from api.services.invoices import InvoiceView
from api.services.page import present

# A Unicode font makes any description printable; without one the core Helvetica (Latin-1)
# is used and other characters become "?".
UNICODE_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
)


class _Pdf(FPDF):
    unicode: bool = False

    def text_of(self, value: str) -> str:
        if self.unicode:
            return value
        return value.encode("latin-1", "replace").decode("latin-1")


def _setup_fonts(pdf: _Pdf) -> str:
    regular, bold = UNICODE_FONTS
    if regular.exists() and bold.exists():
        pdf.add_font("Body", "", str(regular))
        pdf.add_font("Body", "B", str(bold))
        pdf.unicode = True
        return "Body"
    return "Helvetica"


def render(gateway: Gateway, view: InvoiceView, locale: str) -> bytes:
    _ = i18n.translator(locale)
    shown = present(gateway, view, locale)
    pdf = _Pdf(format="A4")
    title = _("Invoice")
    pdf.set_title(f"{title} {shown.reference or shown.invoice_id}")
    pdf.set_creator("chainbill")
    pdf.set_auto_page_break(auto=True, margin=15)
    family = _setup_fonts(pdf)
    pdf.add_page()
    t = pdf.text_of
    width = pdf.epw

    pdf.set_font(family, "B", 18)
    pdf.cell(width, 10, t(f"{title} {shown.reference or shown.invoice_id_short}"))
    pdf.ln(11)
    pdf.set_font(family, "B", 11)
    states = [shown.status_label]
    if shown.overdue:
        states.append(_("Overdue"))
    if shown.pending:
        states.append(_("Not yet on-chain"))
    pdf.cell(width, 7, t(_("Status") + ": " + " · ".join(states)))
    pdf.ln(9)

    pdf.set_font(family, "", 9)
    for label, value in (
        (_("From"), shown.merchant),
        (_("Billed to"), shown.customer or _("Anyone with this link")),
        (_("Due date"), shown.due_date),
        (_("Invoice ID"), shown.invoice_id),
        (_("Content hash"), shown.content_hash),
    ):
        pdf.set_font(family, "B", 9)
        pdf.cell(35, 5.5, t(label))
        pdf.set_font(family, "", 9)
        pdf.multi_cell(width - 35, 5.5, t(value))
    pdf.ln(4)

    if shown.lines:
        columns = [
            (_("Description"), 0.34, "L"),
            (_("Quantity"), 0.10, "R"),
            (_("Unit price"), 0.16, "R"),
            (_("Tax rate"), 0.10, "R"),
            (_("Tax"), 0.13, "R"),
            (_("Line total"), 0.17, "R"),
        ]
        pdf.set_font(family, "B", 8.5)
        for title, share, align in columns:
            pdf.cell(width * share, 7, t(title), border="B", align=align)
        pdf.ln()
        pdf.set_font(family, "", 8.5)
        for line in shown.lines:
            cells = [
                line["description"],
                line["quantity"],
                line["unit_price"],
                line["tax_rate"],
                line["tax"],
                line["total"],
            ]
            heights = []
            for (_title, share, _align), text in zip(columns, cells, strict=True):
                lines = pdf.multi_cell(width * share, 5, t(text), dry_run=True, output="LINES")
                heights.append(len(lines) if isinstance(lines, list) else 1)
            row_height = 5 * max(heights)
            if pdf.will_page_break(row_height):
                pdf.add_page()
            top = pdf.get_y()
            left = pdf.l_margin
            for (_title, share, align), text in zip(columns, cells, strict=True):
                pdf.set_xy(left, top)
                pdf.multi_cell(width * share, 5, t(text), align=align)
                left += width * share
            pdf.set_xy(pdf.l_margin, top + row_height)
        pdf.ln(2)
        for label, value in ((_("Subtotal"), shown.subtotal), (_("Tax"), shown.tax)):
            pdf.cell(width * 0.83, 6, t(label), align="R")
            pdf.cell(width * 0.17, 6, t(value), align="R")
            pdf.ln()
    pdf.set_font(family, "B", 10)
    for label, value in (
        (_("Total"), shown.amount),
        (_("Paid"), shown.paid),
        (_("Amount due"), shown.due),
    ):
        pdf.cell(width * 0.70, 7, t(label), align="R")
        pdf.cell(width * 0.30, 7, t(value), align="R")
        pdf.ln()

    if shown.notes:
        pdf.ln(4)
        pdf.set_font(family, "", 9)
        pdf.multi_cell(width, 5, t(shown.notes))

    if shown.payments:
        pdf.ln(4)
        pdf.set_font(family, "B", 11)
        pdf.cell(width, 7, t(_("Payments")))
        pdf.ln(8)
        pdf.set_font(family, "", 8)
        for entry in shown.payments:
            pdf.multi_cell(
                width,
                4.5,
                t(
                    f"{entry['date']} · {entry['kind_label']} · {entry['amount']} · {entry['party']}"
                ),
            )
            pdf.multi_cell(width, 4.5, t(entry["tx_hash"]))
            pdf.ln(1)

    pdf.ln(4)
    pdf.set_font(family, "", 8)
    check = {
        "match": _("The invoice content matches the hash recorded on-chain."),
        "mismatch": _("Warning: the invoice content does NOT match the hash recorded on-chain."),
        "pending": _("The invoice content will be checked against the chain once it is issued."),
        "none": _("No itemized content is stored for this invoice."),
    }[shown.content_state]
    pdf.multi_cell(width, 4.5, t(check))
    return bytes(pdf.output())
