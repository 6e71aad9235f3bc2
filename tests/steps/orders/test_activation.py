"""ProvisioningWork 22: an order whose jobs all succeeded activates its subscriptions once, and
BillingWork's own statement then invoices them on their first bill date exactly once."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from panelflow.services.group_actions import process_group_actions
from panelflow.step import StepReport
from panelflow.steps.billing import invoice_due_subscriptions
from panelflow.steps.orders.activation import work_provision
from panelflow.steps.orders.service_queue import process_service_queue_orders

from .conftest import run_at, utc

T1 = run_at(utc(2026, 12, 7, 10, 0))
T2 = run_at(utc(2026, 12, 7, 10, 10))
SITE = {"backend": "general", "action": "create_site", "payload": {"site_id": 12}}


def provision(world, panel_db, items):
    """Place an order and run it to the end of its jobs (step 1, the backend, step 1 again)."""
    order = world.order(items)
    process_service_queue_orders(panel_db, T1)
    process_group_actions(panel_db, "general", lambda action, payload: {"site": payload["site_id"]}, T1)
    process_service_queue_orders(panel_db, T2)
    return order


def subscription(world, sub):
    return world.sql("SELECT status, started_on, next_bill_date FROM subscriptions WHERE id = %s", (sub,))[0]


def bill(panel_db, first, end):
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        invoice_due_subscriptions(conn, first, end, report)
    return report.counts


def test_activated_once_and_invoiced_on_its_first_bill_date_once(world, panel_db, sql):
    new = world.subscription(price="12.50")
    existing = world.subscription(status="active", started_on=date(2026, 3, 15), next_bill_date=date(2027, 1, 15))
    order = provision(world, panel_db, [{**SITE, "subscription_id": new},
                                        {**SITE, "payload": {"site_id": 13}, "subscription_id": existing}])

    summary = work_provision(panel_db, run_at(utc(2026, 12, 7, 10, 30)))
    assert summary["orders_provisioned"] == 1 and summary["subscriptions_activated"] == 1
    assert summary["subscriptions_already_started"] == 1
    assert subscription(world, new) == ("active", date(2026, 12, 7), date(2026, 12, 7))
    assert subscription(world, existing) == ("active", date(2026, 3, 15), date(2027, 1, 15))   # left alone
    assert world.status(order) == ("provisioned", None)
    assert world.logs(order)[-1][:2] == ("info", "provisioned")
    assert "1 subscription(s) activated, first bill date 2026-12-07; 1 already started" in world.logs(order)[-1][2]

    for interval in (run_at(utc(2026, 12, 7, 10, 40)), run_at(utc(2026, 12, 9, 8, 0))):  # next run, a later day
        assert work_provision(panel_db, interval)["orders_provisioned"] == 0
    assert subscription(world, new) == ("active", date(2026, 12, 7), date(2026, 12, 7))
    assert len(world.logs(order)) == 5

    # BillingWork's run covering 7 December invoices the first month in advance; reruns and a
    # backfill over the days around it add nothing
    assert bill(panel_db, date(2026, 12, 7), date(2026, 12, 8))["invoices"] == 1
    assert bill(panel_db, date(2026, 12, 7), date(2026, 12, 8))["invoices"] == 0
    assert bill(panel_db, date(2026, 12, 6), date(2026, 12, 9))["invoices"] == 0
    lines = sql("SELECT i.billing_date, l.kind, l.subscription_id, l.period_start, l.period_end, l.amount,"
                " l.tax_amount FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id")
    assert lines == [(date(2026, 12, 7), "subscription", new, date(2026, 12, 7), date(2027, 1, 7),
                      Decimal("12.50"), Decimal("2.50"))]
    assert subscription(world, new) == ("active", date(2026, 12, 7), date(2027, 1, 7))


def test_waits_for_every_item_and_counts_the_day_in_the_threads_time_zone(world, panel_db):
    sub = world.subscription(cycle="quarterly")
    order = world.order([{**SITE, "subscription_id": sub},
                         {**SITE, "payload": {"site_id": 13}, "depends_on": [1]}])
    process_service_queue_orders(panel_db, T1)
    process_group_actions(panel_db, "general", lambda action, payload: {}, T1)
    process_service_queue_orders(panel_db, T2)                     # item 2 queued, not done
    assert work_provision(panel_db, run_at(utc(2026, 12, 7, 23, 30), tz="Asia/Tokyo"))["orders_provisioned"] == 0
    assert subscription(world, sub) == ("pending", None, None)

    process_group_actions(panel_db, "general", lambda action, payload: {}, T2)
    process_service_queue_orders(panel_db, run_at(utc(2026, 12, 7, 23, 20), tz="Asia/Tokyo"))
    summary = work_provision(panel_db, run_at(utc(2026, 12, 7, 23, 30), tz="Asia/Tokyo"))
    assert summary["activation_day"] == "2026-12-08"                # 08:30 on 8 December in Tokyo
    assert subscription(world, sub) == ("active", date(2026, 12, 8), date(2026, 12, 8))
    assert world.status(order) == ("provisioned", None)
    bill(panel_db, date(2026, 12, 8), date(2026, 12, 9))
    assert subscription(world, sub)[2] == date(2027, 3, 8)          # the quarter billed in advance


def test_a_failed_order_activates_nothing(world, panel_db):
    from panelflow.services.group_actions import JobRejected

    sub = world.subscription()
    order = world.order([{**SITE, "subscription_id": sub}])
    process_service_queue_orders(panel_db, T1)

    def refuse(action, payload):
        raise JobRejected("site 12 does not exist")

    process_group_actions(panel_db, "general", refuse, T1)
    process_service_queue_orders(panel_db, T2)
    assert work_provision(panel_db, run_at(utc(2026, 12, 7, 10, 30)))["orders_provisioned"] == 0
    assert world.status(order)[0] == "failed" and subscription(world, sub) == ("pending", None, None)
