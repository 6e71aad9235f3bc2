"""Demo data for the panel DB: ``python -m panelflow.demo [URL] [--customers N]``.

A provider's worth of rows for the tables the built threads work on — panel sessions (some
expired, some logged out), session history, due notifications in the outbox, and logs and
records of every age the retention steps look at — so a fresh ``make run`` has something for SessionsMgtWork and ProvisioningWork
to do. Deterministic (seeded) and set-based: N customers load in one statement per table.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import psycopg

from panelflow.db import sqlalchemy_url

DEMO = [
    # sessions: ~1 per customer; a fifth already past expiry, a tenth logged out
    """INSERT INTO sessions (session_key, user_kind, user_id, started_at, last_seen_at, expires_at, ended_at, status)
       SELECT 'demo-' || g, (ARRAY['customer', 'customer', 'customer', 'reseller', 'employee'])[1 + g %% 5], g,
              %(now)s - make_interval(mins => 30 + g %% 240), %(now)s - make_interval(mins => g %% 30),
              %(now)s + make_interval(mins => (g %% 5) * 30 - 35),
              CASE WHEN g %% 10 = 3 THEN %(now)s - make_interval(mins => g %% 20) END,
              CASE WHEN g %% 10 = 3 THEN 'logged_out' ELSE 'active' END
       FROM generate_series(1, %(n)s) g
       ON CONFLICT (session_key) DO NOTHING""",
    """INSERT INTO session_history (session_key, user_kind, user_id, started_at, ended_at, end_reason)
       SELECT 'demo-old-' || g, 'customer', g, %(now)s - make_interval(days => g %% 200, hours => 2),
              %(now)s - make_interval(days => g %% 200), 'expired'
       FROM generate_series(1, %(n)s * 3) g
       ON CONFLICT (session_key) DO NOTHING""",
    """INSERT INTO service_queue_logs (order_id, level, message, logged_at)
       SELECT g / 4, (ARRAY['info', 'info', 'warning', 'error'])[1 + g %% 4], 'order step ' || g %% 4 || ' done',
              %(now)s - make_interval(days => g %% 150, mins => g %% 1440)
       FROM generate_series(1, %(n)s * 8) g""",
    """INSERT INTO voice_bill_records (company_id, subscriber, minutes, amount, currency, billed_at)
       SELECT 1 + g %% 17, '+4420' || lpad((g %% 10000)::text, 6, '0'), (g %% 300) / 10.0, (g %% 300) * 0.012, 'GBP',
              %(now)s - make_interval(days => g %% 160)
       FROM generate_series(1, %(n)s * 4) g""",
    """INSERT INTO temp_data (kind, payload, created_at)
       SELECT (ARRAY['cart', 'import', 'wizard'])[1 + g %% 3], jsonb_build_object('step', g %% 7),
              %(now)s - make_interval(days => g %% 240)
       FROM generate_series(1, %(n)s * 4) g""",
    """INSERT INTO azure_rates (meter_id, region, unit_price, currency, effective_date, fetched_at)
       SELECT 'meter-' || g, (ARRAY['uksouth', 'ukwest', 'westeurope'])[1 + g %% 3], (g %% 1000) / 997.0, 'USD',
              (%(now)s - make_interval(days => g %% 1000))::date, %(now)s - make_interval(days => g %% 1000)
       FROM generate_series(1, %(n)s) g""",
    """INSERT INTO o365_subscription_reconciliations (tenant_id, subscription_id, difference, reconciled_at)
       SELECT 'tenant-' || g %% 50, 'sub-' || g, jsonb_build_object('quantity', g %% 3 - 1),
              %(now)s - make_interval(days => g %% 540)
       FROM generate_series(1, %(n)s) g""",
    # a few due notifications for SendEmailNotificationsWork (they land in make run's SMTP sink)
    """INSERT INTO email_outbox (dedupe_key, template, to_address, subject, body_text, body_html, not_before, message_id)
       SELECT 'demo-notice-' || g, 'notification', 'customer' || g || '@demo.example',
              'Your service is ready (#' || g || ')', 'Hello,' || chr(10) || chr(10) || 'Your service #' || g || ' is ready.',
              NULL, %(now)s - make_interval(mins => g %% 30), '<demo-notice-' || g || '@panelflow>'
       FROM generate_series(1, 20) g
       ON CONFLICT (dedupe_key) DO NOTHING""",
    """INSERT INTO email_logs (recipient, subject, status, sent_at)
       SELECT 'customer' || g %% 1000 || '@demo.example', 'Your invoice #' || g, 'sent',
              %(now)s - make_interval(days => g %% 120)
       FROM generate_series(1, %(n)s * 4) g""",
]


def load_demo(url: str, customers: int = 200, now: datetime | None = None) -> dict[str, int]:
    """Load the demo rows; returns rows per table. ``now`` anchors the ages (default: load time)."""
    now = now or datetime.now(timezone.utc)
    conninfo = sqlalchemy_url(url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        for statement in DEMO:
            conn.execute(statement, {"now": now, "n": customers})
        tables = ("sessions", "session_history", "service_queue_logs", "voice_bill_records", "temp_data",
                  "azure_rates", "o365_subscription_reconciliations", "email_logs", "email_outbox")
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m panelflow.demo", description="Load demo data into the panel DB.")
    p.add_argument("url", nargs="?", help="panel DB URL (default: the Airflow connection panel_db)")
    p.add_argument("--customers", type=int, default=200)
    a = p.parse_args()
    if a.url is None:
        from panelflow.db import url_from_connection

        a.url = url_from_connection()
    counts = load_demo(a.url, a.customers)
    print("demo data: " + ", ".join(f"{t} {n}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
