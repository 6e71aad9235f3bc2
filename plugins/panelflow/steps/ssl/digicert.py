"""ProvisioningWork step 2: process DigiCert orders, create SSL order invoices, calculate estimated bills.

Three parts, each run whatever another does (``panelflow.step.run_parts``: a CertCentral outage
must not hold back the invoices of orders already issued, nor the estimates):

1. **DigiCert orders** — each pending DigiCert order due a check (``poll_minutes`` of the
   ``digicert`` connection since it was last asked) is read with CertCentral's Order info. Issued:
   the certificate is downloaded (``pem_all``), verified and stored (``._backend``); rejected,
   canceled or revoked: the order ends so; anything else: still pending. The order's price at
   DigiCert becomes its ``cost`` (the basis of the estimated bills).
2. **SSL order invoices** — every vendor's verified orders, billed once (``.billing``).
3. **Estimated bills** — the renewal charges of the active certificates (``.billing``).
"""

from __future__ import annotations

from panelflow.step import run_parts
from panelflow.steps.ssl._backend import PendingOrder, VendorAnswer, check_pending_orders, utc
from panelflow.steps.ssl.billing import estimate_renewals, invoice_issued_orders

# DigiCert's order statuses that end an order, in the panel's words; any other is still pending
# (needs_approval, pending, reissue_pending, waiting_pickup …).
ENDED = {"rejected": "rejected", "canceled": "cancelled", "revoked": "revoked"}


def _ask(hook, order: PendingOrder) -> VendorAnswer:
    from panelflow.hooks.digicert import DigiCertResponseError

    info = hook.get_order(order.vendor_order_id)
    cost = {"cost": info.price, "cost_currency": info.currency} if info.price is not None and info.currency else {}
    if info.status != "issued":
        return VendorAnswer(state=ENDED.get(info.status, "pending"), vendor_status=info.status, **cost)
    if info.certificate_id is None:
        raise DigiCertResponseError(f"order {order.vendor_order_id} is issued but names no certificate id")
    certificates = hook.download(info.certificate_id)
    return VendorAnswer(state="issued", vendor_status=info.status, leaf_pem=certificates.leaf_pem,
                        chain_pems=certificates.chain_pems, certificate_id=info.certificate_id, **cost)


def _digicert_orders(conn, clock, log) -> dict:
    from panelflow.hooks.digicert import DigiCertAuthenticationError, DigiCertError, DigiCertHook

    with DigiCertHook() as hook:
        return check_pending_orders(conn, vendor="digicert", hook=hook, ask=lambda order: _ask(hook, order),
                                    vendor_error=DigiCertError, fatal=DigiCertAuthenticationError, clock=clock,
                                    log=log)


def process_digicert_orders(panel_db, interval, log) -> dict:
    """Process DigiCert orders, create SSL order invoices, calculate estimated bills."""
    clock = utc(interval.end)
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each order, each batch of invoices commits on its own
        return run_parts([("digicert_orders", lambda: _digicert_orders(conn, clock, log)),
                          ("ssl_invoices", lambda: invoice_issued_orders(conn, interval)),
                          ("estimated_bills", lambda: estimate_renewals(conn, clock))],
                         what="part of the SSL step", log=log)
