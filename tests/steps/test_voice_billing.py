"""BillingWork's voice steps (OCS call-record bills, SIP billing and export tasks) on the real panel DB.

Every amount below is worked out by hand from the rule in ``panelflow.steps.voice_billing``:
longest prefix, per started minute, charge = connection fee + per minute × minutes, lines
rounded to 2 places, tax per line.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps.voice_billing import ocs_call_record_bills, sip_billing_and_exports

TZ = "Europe/London"
# BillingWork's 01:30 run on 21 November 2026 covers 20 November.
NOV20 = Interval(pendulum.datetime(2026, 11, 20, 1, 30, tz=TZ), pendulum.datetime(2026, 11, 21, 1, 30, tz=TZ), TZ)
D = Decimal


def one(sql, query, params=None):
    return sql(query, params)[0][0]


def at(day: str, hh_mm: str = "12:00") -> pendulum.DateTime:
    return pendulum.parse(f"{day}T{hh_mm}:00", tz=TZ)


@pytest.fixture
def world(panel_db, sql):
    """A provider taxing GB at 20 %, a reseller taxing its GB customers at 15 %, and customers:

    direct (GB, provider tax), resold (GB, reseller tax), untaxed (DE: no rate → 0),
    suspended, and one whose subscriptions' currencies are wrong.
    """
    sql("INSERT INTO currencies (code, name) VALUES ('GBP', 'Pound sterling'), ('EUR', 'Euro')")
    provider = one(sql, "INSERT INTO providers (name, billing_email, currency)"
                        " VALUES ('Host Ltd', 'billing@host.example', 'GBP') RETURNING id")
    reseller = one(sql, "INSERT INTO resellers (provider_id, name, email) VALUES (%s, 'Resell', 'r@resell.example')"
                        " RETURNING id", (provider,))
    sql("INSERT INTO tax_rates (provider_id, country, name, rate) VALUES (%s, 'GB', 'VAT', 0.20)", (provider,))
    sql("INSERT INTO tax_rates (reseller_id, country, name, rate) VALUES (%s, 'GB', 'Reseller VAT', 0.15)",
        (reseller,))

    def customer(name, reseller_id=None, country="GB", currency="GBP", status="active"):
        return one(sql, "INSERT INTO customers (provider_id, reseller_id, name, email, country, currency, status)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                   (provider, reseller_id, name, f"{name}@example.com", country, currency, status))

    def subscription(customer_id, currency="GBP", plan="voice"):
        return one(sql, "INSERT INTO subscriptions (customer_id, plan, price, currency, billing_cycle, next_bill_date,"
                        " started_on) VALUES (%s, %s, 10, %s, 'monthly', '2026-12-01', '2026-01-01') RETURNING id",
                   (customer_id, plan, currency))

    c = {"direct": customer("direct"), "resold": customer("resold", reseller),
         "untaxed": customer("untaxed", country="DE"),
         "suspended": customer("suspended", status="suspended"), "odd": customer("odd")}
    s = {"direct1": subscription(c["direct"]), "direct2": subscription(c["direct"]),
         "resold": subscription(c["resold"]), "untaxed": subscription(c["untaxed"]),
         "suspended": subscription(c["suspended"]), "unknown_cur": subscription(c["odd"], "XYZ"),
         "eur": subscription(c["odd"], "EUR")}
    for table in ("ocs", "sip"):
        sql("INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute, connection_fee) VALUES"
            " (%(t)s, '44', 'UK', 'GBP', 0.02, 0), (%(t)s, '447', 'UK mobile', 'GBP', 0.10, 0.05),"
            " (%(t)s, '4420', 'London', 'GBP', 0.01, 0), (%(t)s, '1', 'US', 'GBP', 0.01234, 0.0005),"
            " (%(t)s, '44', 'UK', 'EUR', 0.02, 0)", {"t": table})
    return {"customer": c, "sub": s}


def call(sql, subscription_id, who, destination, started_at, seconds, table="ocs_call_records", column="caller"):
    sql(f"INSERT INTO {table} (subscription_id, {column}, destination, started_at, duration_seconds)"
        " VALUES (%s, %s, %s, %s, %s)", (subscription_id, who, destination, started_at, seconds))


def invoices(sql, kind):
    return {r[0]: r[1:] for r in sql(
        "SELECT customer_id, invoice_number, billing_date, due_date, reseller_id, currency, subtotal, tax, total"
        " FROM invoices WHERE kind = %s ORDER BY customer_id, billing_date", (kind,))}


def assert_invoices_add_up(sql):
    """Every invoice has lines, and subtotal / tax / total are exactly what its lines add up to."""
    assert sql("SELECT i.id FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id GROUP BY i.id"
               " HAVING count(l.invoice_id) = 0 OR i.subtotal <> sum(l.amount) OR i.tax <> sum(l.tax_amount)"
               " OR i.total <> i.subtotal + i.tax") == []


def snapshot(sql):
    return (sql("SELECT * FROM invoices ORDER BY id"),
            sql("SELECT * FROM invoice_lines ORDER BY subscription_id, kind, period_start"),
            sql("SELECT * FROM voice_bill_records ORDER BY id"), sql("SELECT * FROM sip_export_tasks ORDER BY id"))


def seed_nov20_calls(sql, s):
    day = "2026-11-20"
    # direct1: alice 61 s to a UK mobile → '447' beats '44': 2 min × 0.10 + 0.05 = 0.25
    call(sql, s["direct1"], "sip:alice@direct.example", "447700900123", at(day, "09:00"), 61)
    # alice 30 s to London → '4420': 1 min × 0.01 = 0.01 (first second of the day: included)
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at(day, "00:00"), 30)
    # bob 125 s to Leeds → '44': 3 min × 0.02 = 0.06
    call(sql, s["direct1"], "sip:bob@direct.example", "441134960000", at(day, "23:59"), 125)
    # bob: never answered (0 s) → no charge, not a bad record
    call(sql, s["direct1"], "sip:bob@direct.example", "447700900999", at(day, "10:00"), 0)
    # bob to France: no rate → reported and skipped
    call(sql, s["direct1"], "sip:bob@direct.example", "33123456789", at(day, "11:00"), 60)
    # direct2: carol 600 s to the US: 10 min × 0.01234 + 0.0005 = 0.1239 → line 0.12
    call(sql, s["direct2"], "sip:carol@direct.example", "12125550100", at(day, "13:00"), 600)
    # resold: dave 120 s to a mobile: 2 × 0.10 + 0.05 = 0.25, taxed by the reseller's 15 %
    call(sql, s["resold"], "sip:dave@resold.example", "447700900555", at(day, "14:00"), 120)
    # untaxed (DE customer, no tax rate for DE): 60 s to London = 0.01, tax 0
    call(sql, s["untaxed"], "sip:erin@untaxed.example", "442071234000", at(day, "15:00"), 60)
    # bad records
    call(sql, s["suspended"], "sip:sam@suspended.example", "442071234000", at(day, "16:00"), 60)
    call(sql, s["unknown_cur"], "sip:oddy@odd.example", "442071234000", at(day, "16:00"), 60)
    call(sql, s["eur"], "sip:oddy@odd.example", "442071234000", at(day, "16:00"), 60)
    # outside the day: the evening before, and the first second of the next day
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at("2026-11-19", "23:59"), 60)
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at("2026-11-21", "00:00"), 60)


SKIPPED = {"no matching rate": 1, "customer not active": 1, "unknown currency": 1,
           "subscription currency differs from the customer's": 1}


def test_ocs_bills_hand_checked(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    seed_nov20_calls(sql, s)

    summary = ocs_call_record_bills(panel_db=panel_db, interval=NOV20)

    assert summary["skipped"] == SKIPPED
    assert len(summary["skipped_examples"]) == 4
    assert any("33123456789" in e and "no matching rate" in e for e in summary["skipped_examples"])
    assert {k: summary[k] for k in ("days", "calls_billed", "calls_unanswered", "invoices", "invoice_lines",
                                    "voice_bills")} == {
        "days": 1, "calls_billed": 6, "calls_unanswered": 1, "invoices": 3, "invoice_lines": 4, "voice_bills": 5}

    got = invoices(sql, "ocs")
    nov20 = date(2026, 11, 20)
    # direct: lines 0.32 (tax 0.064 → 0.06) and 0.12 (tax 0.024 → 0.02): tax rounded per line, 0.08 not 0.09
    assert got[c["direct"]] == (f"O20261120-{c['direct']}", nov20, nov20, None, "GBP", D("0.44"), D("0.08"), D("0.52"))
    resold = sql("SELECT reseller_id FROM customers WHERE id = %s", (c["resold"],))[0][0]
    # resold: 0.25 at the reseller's 15 % (not the provider's 20 %): 0.0375 → 0.04
    assert got[c["resold"]] == (f"O20261120-{c['resold']}", nov20, nov20, resold, "GBP", D("0.25"), D("0.04"),
                                D("0.29"))
    assert got[c["untaxed"]][5:] == (D("0.01"), D("0.00"), D("0.01"))
    assert set(got) == {c["direct"], c["resold"], c["untaxed"]}  # no invoice for the bad records' customers

    lines = {r[0]: r[1:] for r in sql(
        "SELECT l.subscription_id, l.kind, l.addon_id, l.period_start, l.period_end, l.quantity, l.unit_price,"
        " l.amount, l.tax_rate, l.tax_amount FROM invoice_lines l ORDER BY 1")}
    nov21 = date(2026, 11, 21)
    assert lines[s["direct1"]] == ("ocs_calls", 0, nov20, nov21, D("6"), D("0.0533"), D("0.32"), D("0.2"), D("0.06"))
    assert lines[s["direct2"]] == ("ocs_calls", 0, nov20, nov21, D("10"), D("0.012"), D("0.12"), D("0.2"), D("0.02"))
    assert lines[s["resold"]] == ("ocs_calls", 0, nov20, nov21, D("2"), D("0.125"), D("0.25"), D("0.15"), D("0.04"))
    assert_invoices_add_up(sql)

    bills = {(r[0], r[1]): r[2:] for r in sql(
        "SELECT subscription_id, subscriber, company_id, calls, minutes, amount, currency, bill_date, billed_at,"
        " invoice_id IS NOT NULL FROM voice_bill_records")}
    day_end = pendulum.datetime(2026, 11, 21, tz=TZ)
    assert bills[(s["direct1"], "sip:alice@direct.example")] == (c["direct"], 2, D("3"), D("0.26"), "GBP", nov20,
                                                                 day_end, True)
    assert bills[(s["direct1"], "sip:bob@direct.example")][:4] == (c["direct"], 1, D("3"), D("0.06"))
    assert bills[(s["direct2"], "sip:carol@direct.example")][3] == D("0.1239")  # 4 places kept on the voice bill
    assert len(bills) == 5
    # the voice bills point at their customer's invoice
    assert one(sql, "SELECT count(*) FROM voice_bill_records b JOIN invoices i ON i.id = b.invoice_id"
                    " AND i.customer_id = b.company_id AND i.kind = 'ocs'") == 5


def test_rerun_and_retry_add_nothing(world, panel_db, sql):
    seed_nov20_calls(sql, world["sub"])
    first = ocs_call_record_bills(panel_db=panel_db, interval=NOV20)
    before = snapshot(sql)

    again = ocs_call_record_bills(panel_db=panel_db, interval=NOV20)

    assert snapshot(sql) == before
    assert again["invoices"] == again["invoice_lines"] == again["voice_bills"] == again["calls_billed"] == 0
    assert again["calls_already_billed"] == first["calls_billed"]
    assert again["skipped"] == SKIPPED  # bad records are reported on every run of their day


def test_record_arriving_after_the_invoice_is_reported_not_added(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at("2026-11-20"), 60)
    ocs_call_record_bills(panel_db=panel_db, interval=NOV20)
    total = invoices(sql, "ocs")[c["direct"]][-1]
    # a call of a subscription not yet on the customer's invoice for that day
    call(sql, s["direct2"], "sip:carol@direct.example", "442071234567", at("2026-11-20"), 60)

    again = ocs_call_record_bills(panel_db=panel_db, interval=NOV20)

    assert again["skipped"] == {"arrived after the customer's invoice for the day was written": 1}
    assert invoices(sql, "ocs")[c["direct"]][-1] == total
    assert one(sql, "SELECT count(*) FROM invoice_lines") == 1
    assert_invoices_add_up(sql)


def test_backfill_bills_only_its_own_day_in_its_own_time_zone(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    seed_nov20_calls(sql, s)
    # 1 July is summer time: 30 June 23:30 UTC is 00:30 on 1 July in London; 23:30 UTC on 1 July is the 2nd
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", pendulum.datetime(2026, 6, 30, 23, 30), 60)
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", pendulum.datetime(2026, 7, 1, 23, 30), 60)
    jul1 = Interval(pendulum.datetime(2026, 7, 1, 1, 30, tz=TZ), pendulum.datetime(2026, 7, 2, 1, 30, tz=TZ), TZ)

    summary = ocs_call_record_bills(panel_db=panel_db, interval=jul1)

    assert summary["calls_billed"] == 1 and summary["invoices"] == 1 and summary["skipped"] == {}
    assert sql("SELECT customer_id, billing_date, total FROM invoices") == [(c["direct"], date(2026, 7, 1), D("0.01"))]
    assert one(sql, "SELECT billed_at FROM voice_bill_records") == pendulum.datetime(2026, 7, 2, tz=TZ)
    # the November run later still bills November, and only November
    assert ocs_call_record_bills(panel_db=panel_db, interval=NOV20)["calls_billed"] == 6
    assert sql("SELECT billing_date, count(*) FROM invoices GROUP BY 1 ORDER BY 1") == [
        (date(2026, 7, 1), 1), (date(2026, 11, 20), 3)]


def test_long_interval_gives_one_invoice_per_customer_and_day(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    for day in ("2026-11-18", "2026-11-19", "2026-11-20"):
        call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at(day), 60)
        call(sql, s["direct2"], "sip:carol@direct.example", "441134960000", at(day), 60)
    three_days = Interval(pendulum.datetime(2026, 11, 18, 1, 30, tz=TZ), NOV20.end, TZ)

    summary = ocs_call_record_bills(panel_db=panel_db, interval=three_days)

    assert summary["days"] == 3 and summary["invoices"] == 3 and summary["invoice_lines"] == 6
    assert sql("SELECT billing_date, invoice_number, subtotal FROM invoices ORDER BY 1") == [
        (date(2026, 11, d), f"O202611{d}-{c['direct']}", D("0.03")) for d in (18, 19, 20)]
    assert_invoices_add_up(sql)
    # a daily run over one of those days afterwards: nothing new
    assert ocs_call_record_bills(panel_db=panel_db, interval=NOV20)["invoices"] == 0
    assert one(sql, "SELECT count(*) FROM invoices") == 3


def test_many_bad_records_are_counted_but_only_a_few_named(world, panel_db, sql):
    s = world["sub"]
    sql("INSERT INTO ocs_call_records (subscription_id, caller, destination, started_at, duration_seconds)"
        " SELECT %s, 'sip:bob@direct.example', '33' || g, %s, 60 FROM generate_series(1, 120) g",
        (s["direct1"], at("2026-11-20")))
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at("2026-11-20"), 60)

    summary = ocs_call_record_bills(panel_db=panel_db, interval=NOV20)

    assert summary["skipped"] == {"no matching rate": 120}
    assert len(summary["skipped_examples"]) == 50
    assert summary["calls_billed"] == 1 and summary["invoices"] == 1


def sip(sql, subscription_id, account, destination, started_at, seconds):
    call(sql, subscription_id, account, destination, started_at, seconds, table="sip_usage", column="sip_account")


def test_sip_billing_and_one_export_task_per_subscription_and_day(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    day = "2026-11-20"
    sip(sql, s["direct1"], "100@sip.direct.example", "447700900123", at(day, "09:00"), 61)  # 0.25
    sip(sql, s["direct1"], "100@sip.direct.example", "442071234567", at(day, "10:00"), 90)  # 2 × 0.01 = 0.02
    sip(sql, s["direct1"], "101@sip.direct.example", "441134960000", at(day, "11:00"), 60)  # 0.02
    sip(sql, s["resold"], "200@sip.resold.example", "12125550100", at(day, "12:00"), 60)  # 0.01234 + 0.0005
    sip(sql, s["resold"], "200@sip.resold.example", "33123456789", at(day, "12:00"), 60)  # no rate
    sip(sql, s["unknown_cur"], "300@sip.odd.example", "442071234567", at(day, "12:00"), 60)
    sip(sql, s["direct1"], "100@sip.direct.example", "442071234567", at("2026-11-21", "08:00"), 60)  # next day

    summary = sip_billing_and_exports(panel_db=panel_db, interval=NOV20)

    assert summary["skipped"] == {"no matching rate": 1, "unknown currency": 1}
    assert {k: summary[k] for k in ("calls_billed", "invoices", "invoice_lines", "export_tasks")} == {
        "calls_billed": 4, "invoices": 2, "invoice_lines": 2, "export_tasks": 2}
    got = invoices(sql, "sip")
    assert got[c["direct"]][0] == f"S20261120-{c['direct']}"
    assert got[c["direct"]][5:] == (D("0.29"), D("0.06"), D("0.35"))  # 0.29 × 20 % = 0.058 → 0.06
    assert got[c["resold"]][5:] == (D("0.01"), D("0.00"), D("0.01"))  # 0.01284 → 0.01; 0.0015 → 0.00
    assert one(sql, "SELECT count(*) FROM invoice_lines WHERE kind = 'sip_usage'") == 2
    assert one(sql, "SELECT count(*) FROM voice_bill_records") == 0  # voice bills are OCS's
    assert_invoices_add_up(sql)

    tasks = {r[0]: r[1:] for r in sql(
        "SELECT t.subscription_id, t.period_date, t.status, t.payload, i.invoice_number FROM sip_export_tasks t"
        " JOIN invoices i ON i.id = t.invoice_id")}
    assert set(tasks) == {s["direct1"], s["resold"]}
    period, status, payload, number = tasks[s["direct1"]]
    assert (period, status, number) == (date(2026, 11, 20), "pending", f"S20261120-{c['direct']}")
    assert payload == {
        "subscription_id": s["direct1"], "customer_id": c["direct"], "period_date": "2026-11-20",
        "invoice_number": number, "currency": "GBP", "calls": 3, "minutes": 5, "amount": 0.29,
        "accounts": [{"sip_account": "100@sip.direct.example", "calls": 2, "minutes": 4, "amount": 0.27},
                     {"sip_account": "101@sip.direct.example", "calls": 1, "minutes": 1, "amount": 0.02}]}

    before = snapshot(sql)
    again = sip_billing_and_exports(panel_db=panel_db, interval=NOV20)
    assert again["invoices"] == again["export_tasks"] == again["calls_billed"] == 0
    assert snapshot(sql) == before


def test_ocs_and_sip_invoices_for_the_same_customer_and_day_are_separate(world, panel_db, sql):
    c, s = world["customer"], world["sub"]
    call(sql, s["direct1"], "sip:alice@direct.example", "442071234567", at("2026-11-20"), 60)
    sip(sql, s["direct2"], "100@sip.direct.example", "442071234567", at("2026-11-20"), 60)
    # an OCS-only destination in the SIP rate table's view: the tables are separate
    sql("INSERT INTO voice_rates (rate_table, prefix, description, currency, per_minute) VALUES"
        " ('ocs', '99', 'OCS only', 'GBP', 1)")
    sip(sql, s["direct2"], "100@sip.direct.example", "99123", at("2026-11-20"), 60)

    ocs_call_record_bills(panel_db=panel_db, interval=NOV20)
    summary = sip_billing_and_exports(panel_db=panel_db, interval=NOV20)

    assert summary["skipped"] == {"no matching rate": 1}
    assert sql("SELECT kind, invoice_number FROM invoices ORDER BY kind") == [
        ("ocs", f"O20261120-{c['direct']}"), ("sip", f"S20261120-{c['direct']}")]
    assert_invoices_add_up(sql)
