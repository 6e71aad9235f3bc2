"""ProvisioningWork's retention steps: old logs and records removed in bounded batches.

Each keeps the seed's age and bound ("Delete top 100 Azure rates older than 2 years"); ages are
measured back from the run's data interval, never from the wall clock, so a backfilled run
removes what was old on its own date.
"""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from psycopg import sql

from panelflow.services.retention import delete_older_than

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


# Run counts (``step_run_counts``, the Threads Manager's history) and step failures
# (``step_failures``) are kept 400 days, so a year of daily totals, and the same day last year,
# are always there.
RUN_COUNTS_DAYS = 400


def delete_old_service_queue_logs(panel_db, interval) -> dict:
    """Delete 90 days old service queue logs; and run counts and step failures older than RUN_COUNTS_DAYS.

    The run counts ride along with this step (ProvisioningWork's first log clean-up, every 10
    minutes) rather than a step of their own, so the DAG keeps the seed's steps; each table has
    its own bounded budget per run.
    """
    summary = _purge(panel_db, interval, task="delete_old_service_queue_logs", table="service_queue_logs",
                     column="logged_at", age=relativedelta(days=90))
    return {**summary, **prune_run_counts(panel_db, interval)}


def prune_run_counts(panel_db, interval) -> dict:
    """Run counts and step failures (``step_failures``, the daily digest's) whose run day is more
    than RUN_COUNTS_DAYS before the run's day (thread's zone): the two are one history, kept
    alike. Each table has its own bounded budget per run."""
    day = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    cutoff = day - timedelta(days=RUN_COUNTS_DAYS)
    with panel_db.get_conn() as conn:
        pruned = delete_older_than(
            conn, task="prune_step_run_counts", table="step_run_counts", column="run_day",
            cutoff=cutoff, interval_end=interval.end,
            max_rows=DEFAULT_MAX_ROWS, batch_size=BATCH, key=("dag_id", "run_id", "task_id", "map_index"),
        )
        failures = delete_older_than(
            conn, task="prune_step_failures", table="step_failures", column="run_day",
            cutoff=cutoff, interval_end=interval.end, max_rows=DEFAULT_MAX_ROWS, batch_size=BATCH,
            key=("dag_id", "run_id", "task_id", "map_index", "try_number"),
        )
    return {"run_counts_deleted": pruned["deleted"], "run_counts_cutoff": pruned["cutoff"],
            "step_failures_deleted": failures["deleted"]}


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


# Audit logs: recent entries stay where the panel's audit screens read them; older ones move to
# an archive table of the same shape (removed from the live table and archived in one statement,
# so an entry is in exactly one of the two), and archived entries go after ARCHIVE_KEEP.
AUDIT_LIVE_DAYS = 180
ARCHIVE_KEEP = relativedelta(years=7)
_AUDIT_COLUMNS = ("id", "occurred_at", "actor", "action", "target", "details")


def _archive(conn, *, live: str, archive: str, columns: tuple[str, ...], cutoff, archived_at,
             max_rows: int = DEFAULT_MAX_ROWS) -> dict:
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    move = sql.SQL(
        "WITH moved AS (DELETE FROM {live} WHERE id IN ("
        " SELECT id FROM {live} WHERE occurred_at < %s ORDER BY occurred_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING {cols})"
        " INSERT INTO {archive} ({cols}, archived_at) SELECT {cols}, %s FROM moved ON CONFLICT (id) DO NOTHING"
    ).format(live=sql.Identifier(live), archive=sql.Identifier(archive), cols=cols)
    moved = batches = 0
    while moved < max_rows:
        want = min(BATCH, max_rows - moved)
        with conn.transaction():
            n = conn.execute(move, (cutoff, want, archived_at)).rowcount
        moved += n
        batches += 1
        if n < want:
            break
    return {"archived": moved, "archive_batches": batches, "cutoff": cutoff.isoformat()}


def _archive_and_prune(panel_db, interval, *, live: str, archive: str, columns: tuple[str, ...]) -> dict:
    with panel_db.get_conn() as conn:
        summary = _archive(conn, live=live, archive=archive, columns=columns,
                           cutoff=interval.end - relativedelta(days=AUDIT_LIVE_DAYS), archived_at=interval.end)
        pruned = delete_older_than(conn, task=f"prune_{archive}", table=archive, column="occurred_at",
                                   cutoff=interval.end - ARCHIVE_KEEP, interval_end=interval.end,
                                   max_rows=DEFAULT_MAX_ROWS, batch_size=BATCH)
    return {**summary, "archive_pruned": pruned["deleted"]}


def archive_audit_logs(panel_db, interval) -> dict:
    """Remove and archive audit logs: entries older than AUDIT_LIVE_DAYS move to the archive."""
    return _archive_and_prune(panel_db, interval, live="audit_logs", archive="audit_logs_archive",
                              columns=_AUDIT_COLUMNS)


def archive_o365_audit_logs(panel_db, interval) -> dict:
    """Remove and archive O365 audit logs: the same for Microsoft 365 admin audit entries."""
    return _archive_and_prune(panel_db, interval, live="o365_admin_audit_logs",
                              archive="o365_admin_audit_logs_archive", columns=(*_AUDIT_COLUMNS, "tenant_id", "graph_id"))
