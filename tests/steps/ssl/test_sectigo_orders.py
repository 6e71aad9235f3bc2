"""ProvisioningWork step 4 against the Sectigo reseller sandbox (include/sandbox/sectigo.py):
CollectSSL's status, the certificate collected, verified and stored once, and billed by step 2;
a certificate for another key is refused; Sectigo's rejected/revoked answers end the order."""

from __future__ import annotations

from decimal import Decimal

import pendulum
import pytest

from panelflow.step import EndpointsFailed
from panelflow.steps.ssl.digicert import process_digicert_orders
from panelflow.steps.ssl.sectigo import update_sectigo_order_status
from sandbox.test_ca import csr_for

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
NAME = "*.acme.example.test"


@pytest.fixture
def ordered(sectigo, add_order):
    """A wildcard order of the US customer, placed at Sectigo and in the panel: Sectigo's order number."""
    _, csr = csr_for(NAME, ["acme.example.test"])
    number = sectigo.add_order(csr, NAME, ["acme.example.test"], days=365)
    add_order("sectigo", number, csr, NAME, ["acme.example.test"], customer=2, price="80.00", currency="USD",
              cost="45.00", cost_currency="USD")
    return number


def test_a_sectigo_order_ends_with_a_verified_certificate_and_an_invoice(sectigo, ordered, run, sql):
    number = ordered
    first = run(update_sectigo_order_status, NOW)
    assert (first["orders_checked"], first["orders_pending"]) == (1, 1)
    assert sql("SELECT status, vendor_status FROM ssl_orders") == [("pending", "Awaiting Validation")]
    sent = sectigo.requests[-1]
    assert (sent["method"], sent["path"], sent["orderNumber"], sent["queryType"], sent["errorCode"]) == (
        "POST", "/products/download/CollectSSL", number, "1", 0)

    sectigo.issue(number, at=NOW.add(hours=1))
    assert run(update_sectigo_order_status, NOW.add(hours=2))["orders_checked"] == 0   # Sectigo: every 3 h at most
    stored = run(update_sectigo_order_status, NOW.add(hours=3))
    assert (stored["orders_checked"], stored["certificates_stored"]) == (1, 1)
    assert sql("SELECT status, vendor_status, issued_at FROM ssl_orders") == [("issued", "Issued", NOW.add(hours=3))]
    chain = sql("SELECT chain_pem FROM ssl_certificates")[0][0]
    assert chain.count("BEGIN CERTIFICATE") == 2

    step_2 = run(process_digicert_orders, pendulum.datetime(2026, 11, 21, 0, 10, tz="UTC"))
    assert step_2["digicert_orders"]["orders_checked"] == 0   # no DigiCert orders: no DigiCert connection needed
    assert step_2["ssl_invoices"]["ssl_invoices"] == 1
    assert sql("SELECT invoice_number, kind, currency, subtotal, tax, total FROM invoices") == [
        ("C20261120-2", "ssl", "USD", Decimal("80.00"), Decimal("0.00"), Decimal("80.00"))]
    assert sql("SELECT description FROM invoice_lines") == [(f"287 certificate for {NAME} (1 year)",)]
    assert sql("SELECT estimated_charge, estimated_cost FROM ssl_estimated_bills") == [
        (Decimal("80.00"), Decimal("45.00"))]

    assert run(update_sectigo_order_status, NOW.add(days=2))["orders_checked"] == 0
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 1


def test_a_collected_certificate_for_another_key_is_refused(sectigo, ordered, run, sql):
    number = ordered
    sectigo.issue(number, at=NOW, variant="wrong_key")
    summary = run(update_sectigo_order_status, NOW)
    assert (summary["certificates_refused"], summary["certificates_stored"]) == (1, 0)
    assert sql("SELECT status, last_error FROM ssl_orders") == [
        ("pending", "certificate refused: the certificate's public key is not the CSR's (issued for another key)")]
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 0


@pytest.mark.parametrize("state", ["rejected", "revoked"])
def test_sectigos_rejected_and_revoked_answers_end_the_order(sectigo, ordered, run, sql, state):
    number = ordered
    sectigo.set_state(number, state)
    assert run(update_sectigo_order_status, NOW)[f"orders_{state}"] == 1
    assert sql("SELECT status FROM ssl_orders") == [(state,)]


def test_refused_credentials_fail_the_step_at_once(sectigo, ordered, add_order, run, sql):
    _, csr = csr_for("second.example.test")
    add_order("sectigo", sectigo.add_order(csr, "second.example.test"), csr, "second.example.test", subscription=2)
    sectigo.password = "changed-at-sectigo"
    with pytest.raises(Exception, match="errorCode -16: Permission denied!") as raised:
        run(update_sectigo_order_status, NOW)
    assert type(raised.value).__name__ == "SectigoAuthenticationError"
    assert len(sectigo.requests) == 1


def test_an_outage_is_retried_then_counts_against_the_order(sectigo, ordered, run, sql):
    sectigo.fail(1)
    assert run(update_sectigo_order_status, NOW)["orders_pending"] == 1   # the second attempt answered
    sectigo.fail(10)
    with pytest.raises(EndpointsFailed, match="every sectigo order failed"):
        run(update_sectigo_order_status, NOW.add(hours=3))
    assert "SectigoUnavailable" in sql("SELECT last_error FROM ssl_orders")[0][0]
    assert sql("SELECT checked_at FROM ssl_orders") == [(NOW.add(hours=3),)]
