"""ProvisioningWork's retention steps: old logs and records removed in bounded batches.

Each keeps the seed's age and bound ("Delete top 100 Azure rates older than 2 years"); ages are
measured back from the run's data interval, never from the wall clock, so a backfilled run
removes what was old on its own date.
"""

from __future__ import annotations

from dateutil.relativedelta import relativedelta

from panelflow.steps._bounded import delete_older_than

BATCH = 5000
# Seed steps without a "top N" still get a per-run bound, so one run never holds locks for long.
DEFAULT_MAX_ROWS = 100_000


def _purge(panel_db, interval, *, task: str, table: str, column: str, age: relativedelta,
           max_rows: int = DEFAULT_MAX_ROWS) -> dict:
    with panel_db.get_conn() as conn:
        return delete_older_than(
            conn, task=task, table=table, column=column, cutoff=interval.end - age,
            interval_end=interval.end, max_rows=max_rows, batch_size=min(BATCH, max_rows),
        )


def delete_old_service_queue_logs(panel_db, interval) -> dict:
    """Delete 90 days old service queue logs."""
    return _purge(panel_db, interval, task="delete_old_service_queue_logs", table="service_queue_logs",
                  column="logged_at", age=relativedelta(days=90))


def delete_old_voice_bill_records(panel_db, interval) -> dict:
    """Delete 100 days old voice bill records."""
    return _purge(panel_db, interval, task="delete_old_voice_bill_records", table="voice_bill_records",
                  column="billed_at", age=relativedelta(days=100))


def delete_old_temp_data(panel_db, interval) -> dict:
    """Delete top 10000 old temp data records older than 120 days."""
    return _purge(panel_db, interval, task="delete_old_temp_data", table="temp_data",
                  column="created_at", age=relativedelta(days=120), max_rows=10_000)


def delete_old_azure_rates(panel_db, interval) -> dict:
    """Delete top 100 Azure rates older than 2 years (by when they were fetched)."""
    return _purge(panel_db, interval, task="delete_old_azure_rates", table="azure_rates",
                  column="fetched_at", age=relativedelta(years=2), max_rows=100)


def delete_old_o365_reconciliation_records(panel_db, interval) -> dict:
    """Delete top 1000 O365 subscription reconciliation records older than 1 year."""
    return _purge(panel_db, interval, task="delete_old_o365_reconciliation_records",
                  table="o365_subscription_reconciliations", column="reconciled_at",
                  age=relativedelta(years=1), max_rows=1000)


def delete_old_email_logs(panel_db, interval) -> dict:
    """Remove 2 months older email logs."""
    return _purge(panel_db, interval, task="delete_old_email_logs", table="email_logs",
                  column="sent_at", age=relativedelta(months=2))
