"""Step 2's SSL invoices and estimated bills on the real panel DB: one invoice per customer and
day, a line per order, each order billed once; an order issued after its customer's invoice of
the day waits for the next; what cannot be billed is reported; estimates follow the active
certificates."""

from __future__ import annotations

from decimal import Decimal

import pendulum
import pytest

from panelflow.steps.ssl.digicert import process_digicert_orders
from sandbox.test_ca import csr_for

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
NEXT_DAY = pendulum.datetime(2026, 11, 21, 0, 10, tz="UTC")


@pytest.fixture
def issue(digicert, add_order, run):
    """``issue(name, subscription, at, **order)``: a DigiCert order the sandbox issues at ``at`` and
    step 2 stores at ``at``; the panel order's id."""

    def issued(name, subscription, at=NOW, **order):
        _, csr = csr_for(name)
        dc_order = digicert.add_order(csr, name)
        order_id = add_order("digicert", dc_order, csr, name, subscription=subscription, **order)
        digicert.issue(dc_order, at=at.subtract(minutes=1))
        assert run(process_digicert_orders, at)["digicert_orders"]["certificates_stored"] == 1
        return order_id

    return issued


def test_orders_of_a_day_are_billed_on_one_invoice_per_customer(issue, run, sql):
    a = issue("a.example.test", 1, price="100.00")
    b = issue("b.example.test", 2, price="50.00")
    c = issue("c.example.test", 4, customer=2, price="70.00", currency="USD")
    summary = run(process_digicert_orders, NEXT_DAY)["ssl_invoices"]
    assert (summary["ssl_invoices"], summary["ssl_orders_billed"]) == (2, 3)
    invoices = sql("SELECT id, invoice_number, subtotal, tax, total FROM invoices ORDER BY customer_id")
    assert [i[1:] for i in invoices] == [("C20261120-1", Decimal("150.00"), Decimal("30.00"), Decimal("180.00")),
                                         ("C20261120-2", Decimal("70.00"), Decimal("0.00"), Decimal("70.00"))]
    assert sql("SELECT id, invoice_id FROM ssl_orders ORDER BY id") == [
        (a, invoices[0][0]), (b, invoices[0][0]), (c, invoices[1][0])]
    assert sql("SELECT invoice_id, subscription_id, amount FROM invoice_lines ORDER BY subscription_id") == [
        (invoices[0][0], 1, Decimal("100.00")), (invoices[0][0], 2, Decimal("50.00")),
        (invoices[1][0], 4, Decimal("70.00"))]


def test_an_order_issued_after_the_days_invoice_waits_for_the_next_day(issue, run, sql):
    issue("a.example.test", 1)
    assert run(process_digicert_orders, NEXT_DAY)["ssl_invoices"]["ssl_invoices"] == 1
    straggler = issue("late.example.test", 2, at=pendulum.datetime(2026, 11, 20, 23, 55, tz="UTC"))
    later = run(process_digicert_orders, NEXT_DAY.add(minutes=10))["ssl_invoices"]
    assert later["ssl_invoices"] == 0
    assert later["skipped"] == {"the customer's SSL invoice of the day was written; billed next day": 1}
    assert run(process_digicert_orders, NEXT_DAY.add(days=1))["ssl_invoices"]["ssl_invoices"] == 1
    assert sql("SELECT o.id, i.invoice_number FROM ssl_orders o JOIN invoices i ON i.id = o.invoice_id"
               " ORDER BY o.id") == [(1, "C20261120-1"), (straggler, "C20261121-1")]


def test_an_order_in_another_currency_than_its_customer_is_reported_not_billed(issue, run, sql):
    issue("eur.example.test", 1, currency="EUR")
    summary = run(process_digicert_orders, NEXT_DAY)["ssl_invoices"]
    assert summary["ssl_invoices"] == 0
    assert summary["skipped"] == {"order currency EUR differs from the customer's": 1}
    assert sql("SELECT count(*) FROM invoices")[0][0] == 0


def test_estimates_follow_the_active_certificates(issue, run, sql, digicert):
    first = issue("a.example.test", 1, price="100.00", cost="60.00", cost_currency="USD")
    issue("b.example.test", 2, price="50.00")
    assert sql("SELECT ssl_order_id, estimated_charge FROM ssl_estimated_bills ORDER BY 1") == [
        (first, Decimal("100.00")), (first + 1, Decimal("50.00"))]
    # DigiCert's price (the sandbox says 218 USD) replaced the quoted cost once the order was read
    assert sql("SELECT estimated_cost, cost_currency FROM ssl_estimated_bills WHERE ssl_order_id = %s", (first,)) == [
        (Decimal("218.00"), "USD")]
    sql("UPDATE ssl_orders SET price = 110 WHERE id = %s", (first,))
    sql("UPDATE ssl_orders SET auto_renew = false WHERE id = %s", (first + 1,))
    summary = run(process_digicert_orders, NOW.add(minutes=10))["estimated_bills"]
    assert (summary["estimates_added"], summary["estimates_changed"], summary["estimates_dropped"]) == (0, 1, 1)
    assert sql("SELECT ssl_order_id, estimated_charge FROM ssl_estimated_bills") == [(first, Decimal("110.00"))]
    # a year later the certificate has expired: no renewal is estimated any more
    assert run(process_digicert_orders, NOW.add(years=1, days=1))["estimated_bills"]["estimates_dropped"] == 1
    assert sql("SELECT count(*) FROM ssl_estimated_bills")[0][0] == 0
