"""BillingWork's invoice step against a raw INSERT … SELECT, on one database, in one run.

ours:     ``invoice_due_subscriptions`` for one billing day on which every active subscription
          is due: one statement that advances the due subscriptions' next bill dates and writes
          an invoice per customer, a line per subscription, add-on and deferred-billing credit
          (taxed) and the credit notes — with the unique keys that make it exactly-once — then
          the bad-record report.
baseline: one ``INSERT INTO scratch_lines … SELECT`` writing the same number of lines
          (subscriptions, add-ons, credits; price × quantity) from the same tables into a table
          with invoice_lines' shape and keys (``LIKE invoice_lines INCLUDING ALL``) — the least a
          database can do to write that many lines.

Data: ``panelflow.dev.demo``'s billing provider, 1,000,000 subscriptions of 200,000 customers
(BENCH_SMALL=1: 50,000 of 10,000), a real durable PostgreSQL. Ends with
``billing: … ratio=R target=2.0`` (R = ours / baseline time).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="panelflow-bench-"))
SMALL = os.environ.get("BENCH_SMALL") == "1"
CUSTOMERS = 10_000 if SMALL else 200_000
TARGET = 2.0
DAY = date(2026, 12, 1)

BASELINE = """
INSERT INTO scratch_lines (invoice_id, subscription_id, addon_id, kind, description, period_start, period_end,
                           quantity, unit_price, amount)
SELECT s.customer_id, s.id, 0, 'subscription', s.plan, s.next_bill_date, s.next_bill_date + 30, s.quantity, s.price,
       round(s.price * s.quantity, 2)
FROM subscriptions s JOIN customers c ON c.id = s.customer_id
WHERE s.status = 'active' AND s.next_bill_date = %(day)s AND s.price IS NOT NULL AND s.currency = c.currency
UNION ALL
SELECT s.customer_id, s.id, a.id, 'addon', a.name, s.next_bill_date, s.next_bill_date + 30, a.quantity, a.price,
       round(a.price * a.quantity, 2)
FROM subscriptions s JOIN customers c ON c.id = s.customer_id JOIN subscription_addons a ON a.subscription_id = s.id
WHERE s.status = 'active' AND s.next_bill_date = %(day)s AND s.price IS NOT NULL AND s.currency = c.currency
UNION ALL
SELECT s.customer_id, s.id, 0, 'credit', s.plan, s.next_bill_date, s.next_bill_date + 30, 1, 0,
       -round(s.price * s.quantity / 3, 2)
FROM subscriptions s JOIN customers c ON c.id = s.customer_id
WHERE s.status = 'active' AND s.next_bill_date = %(day)s AND s.price IS NOT NULL AND s.currency = c.currency
  AND s.deferred_billing
"""


def main() -> None:
    import psycopg

    from panelflow.step import StepReport
    from panelflow.db import upgrade
    from panelflow.dev.demo import load_billing_demo
    from panelflow.dev.postgres import EmbeddedPostgres
    from panelflow.steps.billing import invoice_due_subscriptions

    tmp = Path(tempfile.mkdtemp(prefix="panelflow-bench-billing-"))
    pg = EmbeddedPostgres(tmp / "pg").start()  # durable (fsync on), as in production
    try:
        pg.create_database("panel")
        url = pg.uri("panel")
        upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            t = time.perf_counter()
            load_billing_demo(conn, CUSTOMERS, DAY + timedelta(days=1), due_day=DAY, usage=False)
            # the lines' own table shape and keys, without the invoices they belong to
            conn.execute("CREATE TABLE scratch_lines (LIKE invoice_lines INCLUDING ALL)")
            conn.execute("VACUUM ANALYZE")
            subs, = conn.execute("SELECT count(*) FROM subscriptions").fetchone()
            print(f"loaded {CUSTOMERS:,} customers, {subs:,} subscriptions in {time.perf_counter() - t:.1f} s")
            conn.execute("SELECT count(*) FROM subscriptions; SELECT count(*) FROM subscription_addons;"
                         " SELECT count(*) FROM customers")  # both runs start from a warm cache

            t = time.perf_counter()
            baseline_lines = conn.execute(BASELINE, {"day": DAY}).rowcount
            baseline = time.perf_counter() - t

            report = StepReport()
            t = time.perf_counter()
            invoice_due_subscriptions(conn, DAY, DAY + timedelta(days=1), report)
            ours = time.perf_counter() - t
            ours_lines, = conn.execute("SELECT count(*) FROM invoice_lines").fetchone()
            invoices = report.counts["invoices"]
            assert ours_lines == baseline_lines, (ours_lines, baseline_lines)
            assert invoices > 0.99 * CUSTOMERS * 0.99, report.as_dict()
    finally:
        pg.stop()

    print(f"skipped as bad records: {dict(report.skipped)}")
    print(f"baseline (INSERT … SELECT of {baseline_lines:,} lines): {baseline:.2f} s  {baseline_lines / baseline:,.0f} lines/s")
    print(f"ours ({invoices:,} invoices, {ours_lines:,} lines, credits, dates advanced): {ours:.2f} s  "
          f"{invoices / ours:,.0f} invoices/s  {ours_lines / ours:,.0f} lines/s")
    print(f"billing: subscriptions={subs} invoices/s={invoices / ours:.0f} lines/s={ours_lines / ours:.0f} "
          f"ratio={ours / baseline:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
