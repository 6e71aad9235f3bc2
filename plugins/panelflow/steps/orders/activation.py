"""ProvisioningWork 22 'Work Provision': an order whose jobs all succeeded activates its subscriptions.

An order in ``provisioning`` whose every item succeeded (ProvisioningWork 1 settles them from the
jobs) becomes ``provisioned``, and each ``pending`` subscription its items provision becomes
``active`` with ``started_on`` and the first ``next_bill_date`` = the activation day — the day
of the run's clock in the thread's time zone. BillingWork bills a period *in advance* from its
bill date, anchored on ``started_on`` (0006), so its run for that day invoices the first period
``[day, day + billing cycle)`` — once, as it invoices everything — and moves the bill date on by
the plan's cycle. A subscription that is already active (or suspended, cancelled: the panel
changed it meanwhile) is left alone; only ``pending`` ones start.

One statement per run: the order's move, the subscriptions and the ``provisioned`` log line
commit together, and the order is claimed by its status (``FOR UPDATE SKIP LOCKED``, then
``provisioning`` → ``provisioned``), so a rerun, a retry after a killed worker or a backfill
finds nothing left to do. Bounded by ``orders_per_run``.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from panelflow.step import StepReport

ORDERS_PER_RUN = 500

WORK_PROVISION = """
WITH ready AS (
    SELECT o.id FROM service_orders o
    WHERE o.status = 'provisioning'
      AND NOT EXISTS (SELECT 1 FROM service_order_items i WHERE i.order_id = o.id AND i.state <> 'succeeded')
    ORDER BY o.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), provisioned AS (
    UPDATE service_orders o SET status = 'provisioned', finished_at = %(at)s
    FROM ready WHERE o.id = ready.id
    RETURNING o.id
), activated AS (
    UPDATE subscriptions s SET status = 'active', started_on = %(day)s, next_bill_date = %(day)s
    WHERE s.status = 'pending' AND s.id IN (
        SELECT i.subscription_id FROM service_order_items i JOIN provisioned p ON p.id = i.order_id)
    RETURNING s.id
), per_order AS (
    SELECT p.id, count(DISTINCT a.id) AS activated, count(DISTINCT i.subscription_id) AS named
    FROM provisioned p
    LEFT JOIN service_order_items i ON i.order_id = p.id
    LEFT JOIN activated a ON a.id = i.subscription_id
    GROUP BY p.id
), logs AS (
    INSERT INTO service_queue_logs (order_id, level, message, logged_at, event)
    SELECT id, 'info', 'provisioned: ' || activated || ' subscription(s) activated, first bill date '
               || to_char(%(day)s::date, 'YYYY-MM-DD')
               || CASE WHEN named > activated THEN '; ' || (named - activated) || ' already started, left alone'
                       ELSE '' END,
           %(at)s, 'provisioned'
    FROM per_order
    ON CONFLICT (order_id, event) WHERE event IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM provisioned), (SELECT count(*) FROM activated),
       (SELECT coalesce(sum(named - activated), 0) FROM per_order), (SELECT count(*) FROM logs)
"""


def work_provision(panel_db, interval, params=None, log=None) -> dict:
    """Work Provision: orders whose jobs all succeeded are provisioned and their subscriptions
    activated, billed from the activation day by BillingWork."""
    params = params or {}
    day = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        orders, activated, left, logged = conn.execute(WORK_PROVISION, {
            "at": interval.end, "day": day, "limit": int(params.get("orders_per_run", ORDERS_PER_RUN))}).fetchone()
    report.add("orders_provisioned", orders)
    report.add("subscriptions_activated", activated)
    report.add("subscriptions_already_started", left)
    report.add("log_lines", logged)
    if log is not None:
        log.info("work provision: %s orders provisioned, %s subscriptions activated from %s", orders, activated, day)
    return {"activation_day": str(day), **report.as_dict()}
