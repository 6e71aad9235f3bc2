"""An invoice as a one-page PDF (fpdf2), attached to the invoice e-mail.

Uses the PDF core font, so text outside Latin-1 is transliterated to '?': the HTML and text
parts of the e-mail carry the exact wording. A PDF larger than ``MAX_PDF_BYTES`` (an invoice of
thousands of lines) is not attached rather than pushing the message past relays' size limits.
"""

from __future__ import annotations

MAX_PDF_BYTES = 2 * 1024 * 1024


def _latin1(text) -> str:
    return str(text).encode("latin-1", "replace").decode("latin-1")


def invoice_pdf(invoice: dict, provider: dict) -> bytes:
    from datetime import datetime, time, timezone

    from fpdf import FPDF

    pdf = FPDF(format="A4")
    # dated by the invoice, not the clock: the same invoice renders the same bytes
    pdf.set_creation_date(datetime.combine(invoice["billing_date"], time(), tzinfo=timezone.utc))
    pdf.set_title(f"Invoice {invoice['number']}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(provider["name"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    for label, value in (("Invoice", invoice["number"]), ("Date", invoice["billing_date"]),
                         ("Customer", f"{invoice['customer_name']} (#{invoice['customer_id']})"),
                         ("Due", invoice["due_date"]), ("Status", str(invoice["status"]).replace("_", " "))):
        pdf.cell(30, 6, label)
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    currency = invoice["currency"]
    with pdf.table(col_widths=(90, 50, 25, 25), text_align=("LEFT", "LEFT", "RIGHT", "RIGHT")) as table:
        table.row(["Item", "Period", f"Amount ({currency})", "Tax"])
        for line in invoice["lines"] or ():
            table.row([_latin1(line["description"]), f"{line['period_start']} - {line['period_end']}",
                       f"{line['amount']:.2f}", f"{line['tax_amount']:.2f}"])
    pdf.ln(4)
    totals = [("Subtotal", invoice["subtotal"])]
    if invoice["credit"]:
        totals.append(("Credit", -invoice["credit"]))
    totals += [("Tax", invoice["tax"]), (f"Total {currency}", invoice["total"])]
    for label, amount in totals:
        pdf.set_font("Helvetica", "B" if label.startswith("Total") else "", 10)
        pdf.cell(165, 6, label, align="R")
        pdf.cell(25, 6, f"{amount:.2f}", align="R", new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def invoice_attachments(invoice: dict, provider: dict) -> list[tuple[str, str, bytes]]:
    """The PDF as an outbox attachment, or none when it would be too big to send."""
    content = invoice_pdf(invoice, provider)
    if len(content) > MAX_PDF_BYTES:
        return []
    return [(f"invoice-{invoice['number']}.pdf", "application/pdf", content)]
