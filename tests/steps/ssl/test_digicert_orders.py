"""ProvisioningWork step 2 against the CertCentral sandbox (include/sandbox/digicert.py): an order
is polled, its certificate downloaded, verified and stored once, billed once the next day, and its
renewal estimated; a certificate the sandbox issues wrong is refused with the reason recorded."""

from __future__ import annotations

from decimal import Decimal

import pendulum
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from panelflow.step import PartsFailed
from panelflow.steps.ssl.digicert import process_digicert_orders
from sandbox.test_ca import TestCA, csr_for

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
LATER = NOW.add(minutes=10)
NEXT_DAY = pendulum.datetime(2026, 11, 21, 0, 10, tz="UTC")
NAME, SANS = "shop.example.test", ["www.shop.example.test"]


def _public(pem_text: str) -> bytes:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if "PRIVATE KEY" in pem_text:
        return serialization.load_pem_private_key(pem_text.encode(), None).public_key().public_bytes(der, spki)
    return x509.load_pem_x509_certificate(pem_text.encode()).public_key().public_bytes(der, spki)


@pytest.fixture
def ordered(digicert, add_order):
    """A customer's DigiCert order for shop.example.test, placed and in the panel: (its private key, DigiCert's id)."""
    key, csr = csr_for(NAME, SANS)
    dc_order = digicert.add_order(csr, NAME, SANS, price=218.0, currency="USD")
    add_order("digicert", dc_order, csr, NAME, SANS, price="120.00")
    return key, dc_order


def test_an_order_ends_with_a_verified_certificate_an_invoice_and_an_estimate(digicert, ordered, run, sql):
    key, dc_order = ordered
    first = run(process_digicert_orders, NOW)["digicert_orders"]
    assert (first["orders_checked"], first["orders_pending"], first["certificates_stored"]) == (1, 1, 0)
    assert sql("SELECT status, vendor_status, checked_at, cost, cost_currency FROM ssl_orders") == [
        ("pending", "pending", NOW, Decimal("218.00"), "USD")]

    cert_id = digicert.issue(dc_order, at=NOW.add(minutes=5))
    summary = run(process_digicert_orders, LATER)
    assert summary["digicert_orders"]["certificates_stored"] == 1
    assert summary["ssl_invoices"]["ssl_invoices"] == 0          # billed on the day after it was issued
    assert summary["estimated_bills"]["estimates_added"] == 1
    assert sql("SELECT status, issued_at, vendor_certificate_id, last_error FROM ssl_orders") == [
        ("issued", LATER, str(cert_id), None)]
    (serial, not_before, not_after, leaf_pem, chain_pem), = sql(
        "SELECT serial, not_before, not_after, certificate_pem, chain_pem FROM ssl_certificates")
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    assert _public(leaf_pem) == _public(key)                    # the customer's key
    assert serial == format(leaf.serial_number, "X") and not_before < LATER < not_after
    chain = x509.load_pem_x509_certificates(chain_pem.encode())
    assert [c.subject for c in chain] == [digicert.ca.intermediate.subject, digicert.ca.root.subject]
    downloads = [r for r in digicert.requests if "/download/format/pem_all" in r["path"]]
    assert [r["path"] for r in downloads] == [f"/services/v2/certificate/{cert_id}/download/format/pem_all"]
    assert sql("SELECT renewal_date, currency, estimated_charge, cost_currency, estimated_cost FROM"
               " ssl_estimated_bills") == [(not_after.date(), "GBP", Decimal("120.00"), "USD", Decimal("218.00"))]

    billed = run(process_digicert_orders, NEXT_DAY)["ssl_invoices"]
    assert (billed["ssl_invoices"], billed["ssl_orders_billed"]) == (1, 1)
    invoice = sql("SELECT id, invoice_number, kind, billing_date, currency, subtotal, tax, total FROM invoices")
    assert invoice == [(invoice[0][0], "C20261120-1", "ssl", NOW.date(), "GBP", Decimal("120.00"),
                        Decimal("24.00"), Decimal("144.00"))]
    assert sql("SELECT invoice_id, kind, subscription_id, description, period_start, period_end, amount,"
               " tax_amount FROM invoice_lines") == [
        (invoice[0][0], "ssl_certificate", 1, f"ssl_basic certificate for {NAME} (1 year)", not_before.date(),
         not_after.date(), Decimal("120.00"), Decimal("24.00"))]
    assert sql("SELECT invoice_id FROM ssl_orders") == [(invoice[0][0],)]

    # reruns and later runs: nothing more is asked, stored, billed or estimated
    requests = len(digicert.requests)
    for at in (LATER, NEXT_DAY, NEXT_DAY.add(days=1)):
        again = run(process_digicert_orders, at)
        assert again["digicert_orders"]["orders_checked"] == 0
        assert again["ssl_invoices"]["ssl_invoices"] == 0
        assert again["estimated_bills"] == {"estimates_added": 0, "estimates_changed": 0, "estimates_dropped": 0,
                                            "skipped": {}, "skipped_examples": []}
    assert len(digicert.requests) == requests
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 1
    assert sql("SELECT count(*) FROM invoices")[0][0] == sql("SELECT count(*) FROM invoice_lines")[0][0] == 1


def test_a_certificate_for_another_key_is_refused_until_the_vendor_reissues(digicert, ordered, run, sql):
    key, dc_order = ordered
    digicert.issue(dc_order, at=NOW, variant="wrong_key")
    summary = run(process_digicert_orders, NOW)
    orders = summary["digicert_orders"]
    assert (orders["certificates_refused"], orders["certificates_stored"]) == (1, 0)
    assert orders["skipped"] == {"certificate refused": 1}
    assert "public key is not the CSR's" in orders["skipped_examples"][0]
    status, last_error, issued_at = sql("SELECT status, last_error, issued_at FROM ssl_orders")[0]
    assert (status, issued_at) == ("pending", None)
    assert last_error.startswith("certificate refused: the certificate's public key is not the CSR's")
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 0
    assert run(process_digicert_orders, NEXT_DAY)["ssl_invoices"]["ssl_invoices"] == 0  # never billed

    digicert.issue(dc_order, at=NEXT_DAY)   # the vendor reissues for the right key: the next check stores it
    assert run(process_digicert_orders, NEXT_DAY.add(minutes=10))["digicert_orders"]["certificates_stored"] == 1
    assert sql("SELECT status, last_error FROM ssl_orders") == [("issued", None)]
    assert _public(sql("SELECT certificate_pem FROM ssl_certificates")[0][0]) == _public(key)


@pytest.mark.parametrize("variant, reason", [
    ("expired", "certificate refused: expired at 2026-11-20 09:00 UTC"),
    ("not_yet_valid", "certificate refused: not valid yet at 2026-11-20 09:00 UTC"),
    ("wrong_name", "certificate refused: the certificate does not name shop.example.test, www.shop.example.test"),
])
def test_a_certificate_not_valid_at_the_runs_clock_or_for_other_names_is_refused(digicert, ordered, run, sql,
                                                                                 variant, reason):
    _, dc_order = ordered
    digicert.issue(dc_order, at=NOW, variant=variant)
    assert run(process_digicert_orders, NOW)["digicert_orders"]["certificates_refused"] == 1
    status, last_error = sql("SELECT status, last_error FROM ssl_orders")[0]
    assert status == "pending" and last_error.startswith(reason)
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 0


def test_a_chain_to_an_untrusted_root_is_refused(digicert, ordered, run, sql, tmp_path):
    _, dc_order = ordered
    other = tmp_path / "other-roots.pem"
    other.write_text(TestCA().root_pem)
    digicert.connect(ca_bundle=str(other))
    digicert.issue(dc_order, at=NOW)
    assert run(process_digicert_orders, NOW)["digicert_orders"]["certificates_refused"] == 1
    assert sql("SELECT last_error FROM ssl_orders")[0][0].startswith(
        "certificate refused: the chain does not verify to a trusted root")


@pytest.mark.parametrize("vendor_status, status", [("rejected", "rejected"), ("canceled", "cancelled"),
                                                    ("revoked", "revoked"), ("needs_approval", "pending")])
def test_the_vendors_end_of_an_order_is_recorded(digicert, ordered, run, sql, vendor_status, status):
    _, dc_order = ordered
    digicert.set_status(dc_order, vendor_status)
    assert run(process_digicert_orders, NOW)["digicert_orders"][f"orders_{status}"] == 1
    assert sql("SELECT status, vendor_status FROM ssl_orders") == [(status, vendor_status)]


def test_an_order_is_not_asked_again_within_the_poll_interval(digicert, ordered, run):
    digicert.connect(poll_minutes=60)
    run(process_digicert_orders, NOW)
    assert run(process_digicert_orders, NOW.add(minutes=50))["digicert_orders"]["orders_checked"] == 0
    assert run(process_digicert_orders, NOW.add(minutes=60))["digicert_orders"]["orders_checked"] == 1
    assert len([r for r in digicert.requests if "/order/certificate/" in r["path"]]) == 2


def test_one_failing_order_is_recorded_and_the_others_go_on(digicert, ordered, add_order, run, sql):
    _, dc_order = ordered
    _, csr = csr_for("gone.example.test")
    add_order("digicert", 999999, csr, "gone.example.test", subscription=2)   # unknown at DigiCert: 404
    digicert.issue(dc_order, at=NOW)
    orders = run(process_digicert_orders, NOW)["digicert_orders"]
    assert (orders["orders_checked"], orders["orders_checked_failed"], orders["certificates_stored"]) == (2, 1, 1)
    assert "DigiCertNotFound" in sql("SELECT last_error FROM ssl_orders WHERE vendor_order_id = '999999'")[0][0]


def test_a_refused_key_fails_the_part_at_once_and_the_other_parts_still_run(digicert, ordered, run, sql):
    digicert.connect()
    digicert.api_key = "dc_rotated"   # the connection's key is no longer DigiCert's
    with pytest.raises(PartsFailed, match="digicert_orders: DigiCertAuthenticationError"):
        run(process_digicert_orders, NOW)
    assert [r["status"] for r in digicert.requests] == [401]   # one request: not one per order
    assert sql("SELECT checked_at FROM ssl_orders") == [(None,)]


def test_a_rerun_after_the_order_lost_its_mark_stores_the_certificate_once(digicert, ordered, run, sql):
    """The certificate's key (order, serial) holds even if the order were found pending again."""
    _, dc_order = ordered
    digicert.issue(dc_order, at=NOW)
    run(process_digicert_orders, NOW)
    sql("UPDATE ssl_orders SET status = 'pending', issued_at = NULL, checked_at = NULL")
    assert run(process_digicert_orders, NOW)["digicert_orders"]["certificates_stored"] == 0
    assert sql("SELECT count(*) FROM ssl_certificates")[0][0] == 1
    assert sql("SELECT status FROM ssl_orders") == [("issued",)]
