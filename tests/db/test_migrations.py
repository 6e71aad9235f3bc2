"""Panel DB migrations apply, roll back and re-apply on a real PostgreSQL."""

from pathlib import Path

import psycopg

import panelflow.db

from panelflow.db import downgrade, upgrade


def test_upgrade_downgrade_upgrade(postgres):
    postgres.create_database("panel_migrations")
    url = postgres.uri("panel_migrations")
    upgrade(url)
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"sessions", "session_history", "service_queue_logs", "group_action_jobs", "retention_runs",
            "email_outbox", "email_campaigns", "email_campaign_recipients", "email_unsubscribes", "domains", "audit_logs", "audit_logs_archive",
            "o365_admin_audit_logs", "o365_admin_audit_logs_archive",
            "invoices", "invoice_lines", "subscriptions", "payment_attempts", "reseller_commissions", "sip_export_tasks",
            "o365_price_notifications"} <= tables
    downgrade(url, "base")
    with psycopg.connect(url) as conn:
        left = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert left == {"alembic_version"}
    upgrade(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (_newest_revision(),)


def _newest_revision() -> str:
    versions = Path(panelflow.db.__file__).parent / "migrations" / "versions"
    return max(p.name.split("_", 1)[0] for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))
