"""ProvisioningWork step 4: update Sectigo SSL order status.

Each pending Sectigo order due a check (``poll_minutes`` of the ``sectigo`` connection since it
was last asked; Sectigo asks for no more than one poll per order every three hours) is asked with
``CollectSSL``: issued orders come with their certificate and chain, which are verified and stored
as DigiCert's are (``._backend``); rejected or revoked orders end so; the rest stay pending. The
invoice of an issued Sectigo order is written by step 2 with every other SSL invoice.
"""

from __future__ import annotations

from panelflow.steps.ssl._backend import PendingOrder, VendorAnswer, check_pending_orders, utc


def _ask(hook, order: PendingOrder) -> VendorAnswer:
    status = hook.order_status(order.vendor_order_id)
    return VendorAnswer(state=status.state, vendor_status=status.vendor_status, leaf_pem=status.leaf_pem,
                        chain_pems=status.chain_pems)


def update_sectigo_order_status(panel_db, interval, log) -> dict:
    """Update Sectigo SSL order status."""
    from panelflow.hooks.sectigo import SectigoAuthenticationError, SectigoError, SectigoHook

    clock = utc(interval.end)
    with panel_db.get_conn() as conn, SectigoHook() as hook:
        conn.autocommit = True  # each order commits on its own
        return check_pending_orders(conn, vendor="sectigo", hook=hook, ask=lambda order: _ask(hook, order),
                                    vendor_error=SectigoError, fatal=SectigoAuthenticationError, clock=clock,
                                    log=log)
