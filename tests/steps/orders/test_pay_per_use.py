"""ProvisioningWork 21: pay-per-use rated once per usage record, invoiced on the next billing day.

Amounts worked by hand from the rule in ``panelflow.steps.orders.pay_per_use``: units =
ceil((peak − included) / per_units), charge = units × price, a line per subscription rounded to 2
places, tax per line (20 %), invoice totals the sums of its lines.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from panelflow.step import Interval
from panelflow.steps.orders.pay_per_use import work_ppu

from .conftest import TZ, run_at, utc

D = Decimal


def sample(world, sub, resource, when, used):
    world.sql("INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used) VALUES (%s, %s, %s, %s)",
              (sub, resource, when, used))


def rate(world, plan, resource, price, per_units=1, valid_from=date(2026, 1, 1), currency="GBP"):
    world.sql("INSERT INTO ppu_rates (plan, resource, currency, unit_price, per_units, valid_from)"
              " VALUES (%s, %s, %s, %s, %s, %s)", (plan, resource, currency, price, per_units, valid_from))


def invoices(world):
    return world.sql("SELECT invoice_number, billing_date, subtotal, tax, total FROM invoices WHERE kind = 'ppu'"
                     " ORDER BY billing_date, customer_id")


def lines(world):
    return world.sql("SELECT i.billing_date, l.subscription_id, l.period_start, l.period_end, l.amount, l.tax_amount,"
                     " l.description FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
                     " WHERE l.kind = 'ppu' ORDER BY i.billing_date, l.subscription_id")


def active(world, plan="hosting-pro", customer=None):
    return world.subscription(plan=plan, status="active", started_on=date(2026, 1, 1),
                              next_bill_date=date(2027, 1, 1), customer=customer)


def test_samples_over_quota_rated_once_and_invoiced_next_day_across_reruns_and_a_backfill(world, panel_db, sql):
    rate(world, "hosting-pro", "disk_space", "0.50", per_units=1024)
    rate(world, "hosting-pro", "disk_space", "0.60", per_units=1024, valid_from=date(2026, 12, 6))
    a, unlimited, no_quota = active(world), active(world), active(world)
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES"
        " (%s, 'disk_space', 1000), (%s, 'disk_space', NULL), (%s, 'mailbox_storage', 10)", (a, unlimited, a))
    for when, used in ((utc(2026, 12, 5, 0, 0), 900), (utc(2026, 12, 5, 13, 0), 2500), (utc(2026, 12, 5, 23, 59), 1200),
                       (utc(2026, 12, 6, 9, 0), 3100), (utc(2026, 12, 7, 0, 0), 99999)):
        sample(world, a, "disk_space", when, used)
    sample(world, a, "mailbox_storage", utc(2026, 12, 5, 9, 0), 5000)        # no price: not pay-per-use
    sample(world, unlimited, "disk_space", utc(2026, 12, 5, 9, 0), 50000)    # unlimited: nothing over
    sample(world, no_quota, "disk_space", utc(2026, 12, 5, 9, 0), 500)       # no quota: all of it

    early = work_ppu(panel_db, run_at(utc(2026, 12, 6, 0, 30)))              # 5 Dec not complete + 1 h yet
    assert early["days_not_complete_yet"] == 1 and early["usage_records_rated"] == 0

    first = work_ppu(panel_db, run_at(utc(2026, 12, 6, 1, 10)))
    assert (first["usage_records_rated"], first["invoices"], first["invoice_lines"]) == (2, 1, 2)
    number = f"P20261206-{world.customer}"
    assert invoices(world) == [(number, date(2026, 12, 6), D("1.50"), D("0.30"), D("1.80"))]
    assert lines(world) == [
        (date(2026, 12, 6), a, date(2026, 12, 5), date(2026, 12, 6), D("1.00"), D("0.20"),
         "Pay-per-use to 2026-12-05: disk_space 2 × 0.5"),
        (date(2026, 12, 6), no_quota, date(2026, 12, 5), date(2026, 12, 6), D("0.50"), D("0.10"),
         "Pay-per-use to 2026-12-05: disk_space 1 × 0.5")]

    for interval in (run_at(utc(2026, 12, 6, 1, 10)), run_at(utc(2026, 12, 6, 1, 20))):   # retry, next run
        again = work_ppu(panel_db, interval)
        assert (again["usage_records_rated"], again["invoices"], again["days_already_rated"]) == (0, 0, 1)

    # a sample for 5 December delivered after the grace: rated by a rerate run (a backfill after a
    # collector outage) — only it, the rest of the day is rated already — and, the customer's
    # invoice of 6 December being written, invoiced on the next day's
    late = active(world)
    sql("INSERT INTO subscription_quotas (subscription_id, resource, quota_limit) VALUES (%s, 'disk_space', 0)", (late,))
    sample(world, late, "disk_space", utc(2026, 12, 5, 20, 0), 2048)
    assert work_ppu(panel_db, run_at(utc(2026, 12, 6, 3, 0)))["usage_records_rated"] == 0
    rerate = work_ppu(panel_db, run_at(utc(2026, 12, 6, 3, 0)), {"ppu_rerate": True})
    assert (rerate["usage_records_rated"], rerate["invoices"]) == (1, 0)
    assert len(invoices(world)) == 1

    second = work_ppu(panel_db, run_at(utc(2026, 12, 7, 2, 0)))              # 6 December, at the new price
    assert (second["usage_records_rated"], second["invoices"], second["charges_invoiced"]) == (1, 1, 2)
    assert lines(world)[2:] == [
        (date(2026, 12, 7), a, date(2026, 12, 6), date(2026, 12, 7), D("1.80"), D("0.36"),
         "Pay-per-use to 2026-12-06: disk_space 3 × 0.6"),
        (date(2026, 12, 7), late, date(2026, 12, 6), date(2026, 12, 7), D("1.00"), D("0.20"),
         "Pay-per-use to 2026-12-06: disk_space 2 × 0.5")]

    week = Interval(utc(2026, 12, 1, 0, 0), utc(2026, 12, 8, 0, 0), TZ)
    backfill = work_ppu(panel_db, week)
    assert backfill["days"] == "2026-12-01..2026-12-08" and backfill["days_not_complete_yet"] == 1
    assert (backfill["days_rated"], backfill["days_already_rated"]) == (4, 2)            # 1-4 Dec: no usage
    assert (backfill["usage_records_rated"], backfill["invoices"]) == (0, 0)
    rerate = work_ppu(panel_db, week, {"ppu_rerate": True})
    assert (rerate["days_rated"], rerate["usage_records_rated"], rerate["invoices"]) == (6, 0, 0)
    assert sql("SELECT count(*), count(DISTINCT (subscription_id, resource, period_start)), count(invoice_id)"
               " FROM ppu_charges") == [(4, 4, 4)]
    assert sql("SELECT sum(subtotal) FROM invoices WHERE kind = 'ppu'")[0][0] == D("4.30")
    assert sql("SELECT bool_and(i.subtotal = (SELECT sum(amount) FROM invoice_lines l WHERE l.invoice_id = i.id))"
               " FROM invoices i")[0][0]


def test_call_minutes_over_a_bundle_rated_once_its_month_is_finally_counted(world, panel_db, sql):
    rate(world, "voice-1000", "voice_minutes", "0.02")
    sub = active(world, plan="voice-1000")
    bundle = world.one("INSERT INTO voice_bundles (subscription_id, name, minutes_per_month) VALUES (%s, 'UK 1000', 1000)"
                       " RETURNING id", (sub,))
    sql("INSERT INTO voice_bundle_usage (bundle_id, period_start, period_end, minutes_included, minutes_used, calls,"
        " over_limit, over_since, counted_at) VALUES (%s, '2026-11-01', '2026-12-01', 1000, 1250, 400, true, %s, %s)",
        (bundle, utc(2026, 11, 28, 10, 0), utc(2026, 12, 1, 12, 0)))

    waiting = work_ppu(panel_db, run_at(utc(2026, 12, 2, 1, 10)))         # rates 1 December: count not final
    assert waiting["usage_records_rated"] == 0
    assert waiting["skipped"] == {"voice bundle month not finally counted yet": 1}

    sql("UPDATE voice_bundle_usage SET minutes_used = 1260, counted_at = %s", (utc(2026, 12, 2, 0, 30),))
    done = work_ppu(panel_db, run_at(utc(2026, 12, 3, 1, 10)))            # 2 December: final count
    assert (done["usage_records_rated"], done["invoices"]) == (1, 1)
    assert sql("SELECT source, period_start, period_end, used, included, quantity, amount FROM ppu_charges") == [
        ("voice_bundle", date(2026, 11, 1), date(2026, 12, 1), D(1260), D(1000), D(260), D("5.2000"))]
    assert invoices(world) == [(f"P20261203-{world.customer}", date(2026, 12, 3), D("5.20"), D("1.04"), D("6.24"))]
    for when in (utc(2026, 12, 4, 1, 10), utc(2026, 12, 20, 1, 10)):      # later days still see the month: once
        assert work_ppu(panel_db, run_at(when))["usage_records_rated"] == 0
    assert len(invoices(world)) == 1


def test_records_that_cannot_be_billed_are_counted_and_named(world, panel_db, sql):
    rate(world, "hosting-pro", "disk_space", "1")
    suspended = world.new_customer("late-payer", status="suspended")
    pending = world.subscription(plan="hosting-pro")
    other = active(world, customer=suspended)
    for sub in (pending, other):
        sample(world, sub, "disk_space", utc(2026, 12, 5, 9, 0), 10)
    summary = work_ppu(panel_db, run_at(utc(2026, 12, 6, 2, 0)))
    assert summary["usage_records_rated"] == 0 and invoices(world) == []
    assert summary["skipped"] == {"customer not active": 1, "subscription is pending": 1}
    assert sorted(summary["skipped_examples"]) == sorted([
        f"usage_sample disk_space of subscription {pending} from 2026-12-05: subscription is pending",
        f"usage_sample disk_space of subscription {other} from 2026-12-05: customer not active"])
