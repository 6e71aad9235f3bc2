"""UsageReportWork 2: the add-on usage report, one per calendar month, from the panel database.

What it is: per customer (with its reseller), add-on, currency and unit price — the active add-ons
of the customer's subscriptions that are not cancelled: how many subscriptions carry it, the
summed quantity and the month's amount (price × quantity). It is what SPLA-style licence reporting
and resellers' usage statements are made from, and what UsageReportScheduleWork can e-mail.

Which month, and when. The report is of the calendar month before the run's day (the clock,
``interval.end``, in the thread's time zone), taken by the first run of the new month: the panel
keeps no history of add-ons (``subscription_addons`` holds their current state), so the month's
usage is the add-ons as they stand when it has just ended. Merged add-ons (cancelled, carried by
another, see ProvisioningWork 28) count once, on the add-on carrying them; closed customers are
left out. Names are compared trimmed, so "Backup " and "Backup" are one line.

Exactly once: the period's ``addon_usage_reports`` row and its lines are written in one
transaction, the row first (``ON CONFLICT DO NOTHING``): a later run of the month, a retry or a
backfill finds it and writes nothing, so a report never changes once taken.
"""

from __future__ import annotations

from datetime import date

from panelflow.step import StepReport
from panelflow.steps.provisioning import local_date

_TAKE = """
INSERT INTO addon_usage_reports (period_start, period_end, taken_at, line_count)
VALUES (%(start)s, %(end)s, %(at)s, 0)
ON CONFLICT (period_start) DO NOTHING
RETURNING period_start
"""

_LINES = """
WITH lines AS (
    INSERT INTO addon_usage_report_lines (period_start, customer_id, reseller_id, addon_name, currency, unit_price,
                                          subscriptions, quantity, amount)
    SELECT %(start)s, c.id, c.reseller_id, btrim(a.name), s.currency, a.price, count(DISTINCT s.id),
           sum(a.quantity), sum(a.price * a.quantity)
    FROM subscription_addons a
    JOIN subscriptions s ON s.id = a.subscription_id
    JOIN customers c ON c.id = s.customer_id
    WHERE a.status = 'active' AND s.status <> 'cancelled' AND c.status <> 'closed' AND s.started_on < %(end)s
    GROUP BY c.id, c.reseller_id, btrim(a.name), s.currency, a.price
    RETURNING customer_id
)
SELECT count(*), count(DISTINCT customer_id) FROM lines
"""


def _report_month(interval) -> tuple[date, date]:
    """The calendar month before the run's day: ``[its first day, the first day of the run's month)``."""
    today = local_date(interval.end, interval.tz)
    end = today.replace(day=1)
    start = (end.replace(year=end.year - 1, month=12) if end.month == 1 else end.replace(month=end.month - 1))
    return start, end


def addon_usage_report(panel_db, interval) -> dict:
    """Generate Add-On usage report."""
    report = StepReport().zero("reports_taken", "lines", "customers", "already_taken")
    start, end = _report_month(interval)
    args = {"start": start, "end": end, "at": interval.end}
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the report and its lines together, or neither
            if conn.execute(_TAKE, args).fetchone() is None:
                report.add("already_taken")
            else:
                lines, customers = conn.execute(_LINES, args).fetchone()
                conn.execute("UPDATE addon_usage_reports SET line_count = %s WHERE period_start = %s", (lines, start))
                report.add("reports_taken")
                report.add("lines", lines)
                report.add("customers", customers)
    summary = report.as_dict()
    summary["period"] = start.isoformat()
    return summary
