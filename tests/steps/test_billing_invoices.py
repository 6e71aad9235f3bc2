"""BillingWork's recurring invoices on the real panel DB: hand-checked amounts, taxes from the
reseller's or the provider's rates, the deferred-billing credit, anchor days, bad records
reported and skipped, and exactly one invoice per customer and day whatever reruns."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from panelflow.step import StepReport
from panelflow.step import Interval
from panelflow.steps.billing import add_missing_reseller_tax_rates, invoice_due_subscriptions

LONDON = ZoneInfo("Europe/London")
DAY = date(2026, 11, 21)


def billing_run(day: date) -> Interval:
    """The interval of BillingWork's 01:30 run the morning after ``day``."""
    start = datetime(day.year, day.month, day.day, 1, 30, tzinfo=LONDON)
    end = datetime.fromordinal(day.toordinal() + 1).replace(hour=1, minute=30, tzinfo=LONDON)
    return Interval(start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC")), "Europe/London")


@pytest.fixture
def provider(panel_db, sql):
    sql("INSERT INTO currencies VALUES ('GBP', 'Pound sterling', 2), ('EUR', 'Euro', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Test Hosting', 'billing@test.example', 'GBP')")
    sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (1, 'GB', 'VAT', 0.20), (1, 'DE', 'MwSt', 0.19)")
    sql("""INSERT INTO resellers (provider_id, name, email, commission_based, commission_rate)
           VALUES (1, 'Own-rate reseller', 'r1@test.example', true, 0.10), (1, 'Plain reseller', 'r2@test.example', false, 0)""")
    sql("INSERT INTO tax_rates (reseller_id, country, name, rate) VALUES (1, 'GB', 'VAT (reseller)', 0.175)")
    return panel_db


def customer(sql, name, country="GB", currency="GBP", reseller=None, email="x@test.example") -> int:
    return sql("INSERT INTO customers (provider_id, reseller_id, name, email, country, currency)"
               " VALUES (1, %s, %s, %s, %s, %s) RETURNING id", (reseller, name, email, country, currency))[0][0]


def subscription(sql, cust, price, *, cycle="monthly", qty=1, due=DAY, started=None, deferred=False,
                 currency="GBP", plan="Web Hosting") -> int:
    return sql("INSERT INTO subscriptions (customer_id, plan, price, currency, quantity, billing_cycle, next_bill_date,"
               " deferred_billing, started_on) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
               (cust, plan, price, currency, qty, cycle, due, deferred, started or due))[0][0]


def run(panel_db, day=DAY, *, copy_rates=True) -> StepReport:
    report = StepReport()
    first, end = billing_run(day).days()
    assert (first, end) == (day, date.fromordinal(day.toordinal() + 1))
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        if copy_rates:
            report.add("rates", add_missing_reseller_tax_rates(conn))
        invoice_due_subscriptions(conn, first, end, report)
    return report


def invoice(sql, cust):
    rows = sql("SELECT subtotal, credit, tax, total, billing_date, invoice_number, status FROM invoices"
               " WHERE customer_id = %s AND kind = 'recurring'", (cust,))
    assert len(rows) == 1
    return rows[0]


def test_hand_checked_invoices_taxes_and_next_bill_dates(provider, sql):
    direct = customer(sql, "Direct GB")
    s1 = subscription(sql, direct, "10.00", qty=2, started=date(2026, 10, 21))
    sql("INSERT INTO subscription_addons (subscription_id, name, price, quantity) VALUES (%s, 'Archiving', 1.50, 3)", (s1,))
    sql("INSERT INTO subscription_addons (subscription_id, name, price, quantity, status)"
        " VALUES (%s, 'Old add-on', 9.00, 1, 'cancelled')", (s1,))
    s2 = subscription(sql, direct, "120.00", cycle="yearly", started=date(2025, 11, 21))
    own_rate = customer(sql, "Reseller 1's", reseller=1)
    s3 = subscription(sql, own_rate, "9.99")
    copied = customer(sql, "Reseller 2's, DE", country="DE", currency="EUR", reseller=2)
    s4 = subscription(sql, copied, "30.00", cycle="quarterly", currency="EUR")
    later = customer(sql, "Not due")
    subscription(sql, later, "5.00", due=date(2026, 11, 22))

    report = run(provider)

    assert report.counts["rates"] == 3  # reseller 2 gets GB and DE; reseller 1 only lacked DE
    # 2 x 10.00 + 3 x 1.50 add-on at 20 %, and 120.00 yearly: 144.50 + 28.90 tax
    assert invoice(sql, direct)[:4] == (D("144.50"), D("0.00"), D("28.90"), D("173.40"))
    assert invoice(sql, direct)[5] == f"R20261121-{direct}"
    lines = sql("SELECT kind, addon_id > 0, amount, tax_rate, tax_amount, period_start, period_end FROM invoice_lines"
                " WHERE subscription_id = %s ORDER BY kind DESC", (s1,))
    assert lines == [("subscription", False, D("20.00"), D("0.2000"), D("4.00"), DAY, date(2026, 12, 21)),
                     ("addon", True, D("4.50"), D("0.2000"), D("0.90"), DAY, date(2026, 12, 21))]
    # reseller 1's own 17.5 %: 9.99 x 0.175 = 1.74825 → 1.75
    assert invoice(sql, own_rate)[:4] == (D("9.99"), D("0.00"), D("1.75"), D("11.74"))
    # reseller 2 had no DE rate: the provider's 19 % was copied to it first
    assert invoice(sql, copied)[:4] == (D("30.00"), D("0.00"), D("5.70"), D("35.70"))
    assert sql("SELECT rate, copied_from IS NOT NULL FROM tax_rates WHERE reseller_id = 2 AND country = 'DE'") == \
        [(D("0.1900"), True)]
    assert dict(sql("SELECT id, next_bill_date FROM subscriptions WHERE id = ANY(%s)", ([s1, s2, s3, s4],))) == {
        s1: date(2026, 12, 21), s2: date(2027, 11, 21), s3: date(2026, 12, 21), s4: date(2027, 2, 21)}
    assert sql("SELECT count(*) FROM invoices WHERE customer_id = %s", (later,)) == [(0,)]
    assert report.counts["invoices"] == 3
    assert report.counts["invoice_lines"] == 5
    # every invoice's total is the sum of its lines
    assert sql("""SELECT count(*) FROM invoices i WHERE total <> (SELECT sum(amount + tax_amount) FROM invoice_lines l
                  WHERE l.invoice_id = i.id)""") == [(0,)]


def test_deferred_billing_gets_thirty_days_credit_once(provider, sql):
    monthly = customer(sql, "Deferred monthly")
    s1 = subscription(sql, monthly, "31.00", deferred=True)  # 21 Nov → 21 Dec: 30 days, all credited
    quarterly = customer(sql, "Deferred quarterly")
    s2 = subscription(sql, quarterly, "90.00", cycle="quarterly", deferred=True)  # 92 days

    run(provider)

    assert invoice(sql, monthly)[:4] == (D("31.00"), D("31.00"), D("0.00"), D("0.00"))
    # 90.00 x 30 / 92 = 29.3478 → 29.35 credit; tax 20 % of (90.00 − 29.35)
    assert invoice(sql, quarterly)[:4] == (D("90.00"), D("29.35"), D("12.13"), D("72.78"))
    assert sql("SELECT subscription_id, days, amount FROM credit_notes ORDER BY subscription_id") == [
        (s1, 30, D("31.00")), (s2, 30, D("29.35"))]

    # the next month's invoice has no credit: issued once per subscription
    run(provider, date(2026, 12, 21))
    assert sql("SELECT total FROM invoices WHERE customer_id = %s AND billing_date = '2026-12-21'", (monthly,)) == \
        [(D("37.20"),)]
    assert sql("SELECT count(*) FROM credit_notes") == [(2,)]


def test_period_keeps_the_anchor_day(provider, sql):
    cust = customer(sql, "Month end")
    sub = subscription(sql, cust, "10.00", due=date(2026, 2, 28), started=date(2026, 1, 31))
    run(provider, date(2026, 2, 28))
    assert sql("SELECT period_end FROM invoice_lines WHERE subscription_id = %s", (sub,)) == [(date(2026, 3, 31),)]
    assert sql("SELECT next_bill_date FROM subscriptions WHERE id = %s", (sub,)) == [(date(2026, 3, 31),)]


def test_bad_records_are_reported_and_skipped(provider, sql):
    good = customer(sql, "Good")
    ok = subscription(sql, good, "10.00")
    no_price = subscription(sql, good, None)
    unknown = customer(sql, "Unknown currency", currency="XYZ")
    bad_currency = subscription(sql, unknown, "10.00", currency="XYZ")
    mismatch = subscription(sql, good, "10.00", currency="EUR")

    report = run(provider)

    assert invoice(sql, good)[:4] == (D("10.00"), D("0.00"), D("2.00"), D("12.00"))
    assert sql("SELECT subscription_id FROM invoice_lines") == [(ok,)]
    assert report.skipped == {"subscription has no price": 1, "unknown currency XYZ": 1,
                              "currency EUR differs from the customer's GBP": 1}
    text = "\n".join(report.as_dict()["skipped_examples"])
    for sub in (no_price, bad_currency, mismatch):
        assert f"subscription {sub} " in text
    # skipped ones keep their date: fixed and rerun, they are billed on that day
    sql("UPDATE subscriptions SET price = 7.00 WHERE id = %s", (no_price,))
    report = run(provider)
    assert report.skipped.get("subscription has no price") is None
    assert sql("SELECT subscription_id FROM invoice_lines ORDER BY 1") == [(ok,)]
    assert report.skipped["the customer's invoice for that day was already issued"] == 1


def test_reruns_and_overlapping_runs_write_nothing_twice(provider, sql):
    custs = [customer(sql, f"C{i}") for i in range(20)]
    for i, c in enumerate(custs):
        subscription(sql, c, f"{i + 1}.00")
        subscription(sql, c, "2.50", cycle="quarterly", deferred=i % 2 == 0)
    first = run(provider)
    before = sql("SELECT id, invoice_number, total FROM invoices ORDER BY id")
    lines = sql("SELECT count(*), sum(amount) FROM invoice_lines")
    again = run(provider)
    assert again.counts["invoices"] == 0 and again.counts["invoice_lines"] == 0
    assert sql("SELECT id, invoice_number, total FROM invoices ORDER BY id") == before
    assert sql("SELECT count(*), sum(amount) FROM invoice_lines") == lines
    assert first.counts["invoices"] == 20 and first.counts["subscriptions_advanced"] == 40
    # a backfill-style run of the previous day: nothing was due then
    assert run(provider, date(2026, 11, 20)).counts["invoices"] == 0
    assert sql("SELECT count(*) FROM invoices") == [(20,)]


def test_commission_on_paid_invoices_hand_checked(provider, sql):
    from panelflow.steps.billing import reseller_commissions

    paid = customer(sql, "Pays", reseller=1)  # reseller 1: commission-based, 10 %
    subscription(sql, paid, "100.00", cycle="quarterly", deferred=True)  # 92-day quarter: 32.61 credit
    unpaid = customer(sql, "Does not pay", reseller=1)
    subscription(sql, unpaid, "50.00")
    plain = customer(sql, "Plain reseller's", reseller=2)  # reseller 2: no commission
    subscription(sql, plain, "80.00")
    run(provider)
    sql("UPDATE invoices SET status = 'paid' WHERE customer_id IN (%s, %s)", (paid, plain))

    summary = reseller_commissions(panel_db=provider, interval=billing_run(DAY))

    # net of the credit, before tax: (100.00 − 32.61) × 10 % = 6.739 → 6.74
    assert sql("SELECT reseller_id, base_amount, rate, amount, period_date FROM reseller_commissions") == [
        (1, D("67.39"), D("0.1000"), D("6.74"), DAY)]
    assert summary["commissions_added"] == 1 and summary["commission_for_day"] == "6.74"
    # paid later: earns its commission in the run that sees it paid, once
    sql("UPDATE invoices SET status = 'paid' WHERE customer_id = %s", (unpaid,))
    assert reseller_commissions(panel_db=provider, interval=billing_run(DAY))["commissions_added"] == 1
    assert reseller_commissions(panel_db=provider, interval=billing_run(date(2026, 11, 25)))["commissions_added"] == 0
    assert sql("SELECT count(*), sum(amount) FROM reseller_commissions") == [(2, D("11.74"))]
