"""MailboxMigrationWork: mailbox migration batches followed, and their owners told when one finishes."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from pydantic import Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import Items, Record, Texts, UtcTime, as_json, every_server, utc_text

FAILED_USERS_PER_BATCH = 50
MIGRATION_NOTICE_TEMPLATE = "exchange_migration_batch_finished"
MIGRATION_FINISHED = {"Completed": "completed", "CompletedWithErrors": "completed with errors",
                      "Failed": "failed", "Corrupted": "failed"}
MIGRATION_FIRST_SEEN_WINDOW = timedelta(hours=24)
NOTICE_FAILURES_LISTED = 20


class MigrationUser(Record):
    Identity: str = Field(min_length=1)
    Status: str | None = None
    ErrorSummary: str | None = None
    LastSuccessfulSyncTime: UtcTime = None


class MigrationBatch(Record):
    Identity: str = Field(min_length=1)
    BatchGuid: UUID
    Status: str = Field(min_length=1)
    MigrationType: str | None = None
    TotalCount: int = Field(ge=0)
    SyncedCount: int = Field(default=0, ge=0)
    FinalizedCount: int = Field(default=0, ge=0)
    FailedCount: int = Field(default=0, ge=0)
    NotificationEmails: Texts = []
    CreationDateTime: UtcTime = None
    LastSyncedDateTime: UtcTime = None
    FinalizedDateTime: UtcTime = None
    FailedUsers: Items = []


_BATCHES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        batch_guid uuid, identity text, migration_type text, status text, total_count integer, synced_count integer,
        finalized_count integer, failed_count integer, notification_emails text[], exchange_created_at timestamptz,
        last_synced_at timestamptz, finalized_at timestamptz)
), before AS (
    SELECT b.batch_guid, b.status FROM exchange_migration_batches b JOIN r USING (batch_guid)
), up AS (
    INSERT INTO exchange_migration_batches (batch_guid, identity, exchange_server_id, migration_type, status,
        total_count, synced_count, finalized_count, failed_count, notification_emails, exchange_created_at,
        last_synced_at, finalized_at, first_seen_at, last_seen_at, status_changed_at)
    SELECT batch_guid, identity, %(server)s, migration_type, status, total_count, synced_count, finalized_count,
           failed_count, notification_emails, exchange_created_at, last_synced_at, finalized_at, %(at)s, %(at)s, %(at)s
    FROM r
    ON CONFLICT (batch_guid) DO UPDATE SET
        identity = EXCLUDED.identity, exchange_server_id = EXCLUDED.exchange_server_id,
        migration_type = EXCLUDED.migration_type, status = EXCLUDED.status, total_count = EXCLUDED.total_count,
        synced_count = EXCLUDED.synced_count, finalized_count = EXCLUDED.finalized_count,
        failed_count = EXCLUDED.failed_count, notification_emails = EXCLUDED.notification_emails,
        exchange_created_at = EXCLUDED.exchange_created_at, last_synced_at = EXCLUDED.last_synced_at,
        finalized_at = EXCLUDED.finalized_at, last_seen_at = EXCLUDED.last_seen_at,
        status_changed_at = CASE WHEN exchange_migration_batches.status = EXCLUDED.status
                                 THEN exchange_migration_batches.status_changed_at ELSE EXCLUDED.status_changed_at END
    WHERE exchange_migration_batches.last_seen_at <= EXCLUDED.last_seen_at
    RETURNING id, batch_guid, status, customer_id, status_changed_at
)
SELECT up.id, up.batch_guid, before.status, up.status, c.email, up.status_changed_at
FROM up LEFT JOIN before USING (batch_guid) LEFT JOIN customers c ON c.id = up.customer_id
"""

_FAILURES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
        AS r(batch_id bigint, mailbox text, status text, error_summary text, last_successful_sync_at timestamptz)
), gone AS (
    DELETE FROM exchange_migration_failures f
    WHERE f.batch_id = ANY(%(batches)s::bigint[]) AND f.seen_at <= %(at)s
      AND (f.batch_id, f.mailbox) NOT IN (SELECT batch_id, mailbox FROM r)
)
INSERT INTO exchange_migration_failures (batch_id, mailbox, status, error_summary, last_successful_sync_at, seen_at)
SELECT batch_id, mailbox, status, error_summary, last_successful_sync_at, %(at)s FROM r
ON CONFLICT (batch_id, mailbox) DO UPDATE SET status = EXCLUDED.status, error_summary = EXCLUDED.error_summary,
    last_successful_sync_at = EXCLUDED.last_successful_sync_at, seen_at = EXCLUDED.seen_at
WHERE exchange_migration_failures.seen_at <= EXCLUDED.seen_at
"""


def _finished_just_now(batch: MigrationBatch, before: str | None, at: datetime) -> bool:
    """Whether this run saw the batch finish: it was known unfinished, or is new and finished lately
    (a batch that finished long before the panel first saw it is recorded, not announced)."""
    if batch.Status not in MIGRATION_FINISHED:
        return False
    if before is not None:
        return before not in MIGRATION_FINISHED
    finished = batch.FinalizedDateTime or batch.LastSyncedDateTime or batch.CreationDateTime
    return finished is not None and finished >= at - MIGRATION_FIRST_SEEN_WINDOW


def update_migration_batch_status(panel_db, interval, params, log) -> dict:
    """Update mailbox migration batch status: batches upserted by batch GUID with their counts and
    failed users; a batch this run saw finish (completed, completed with errors, failed) queues one
    notice per recipient — the batch's panel customer, else the batch's notification addresses —
    keyed on the batch, its status and when that status was first seen, in the same transaction as
    the status, so neither a rerun nor a second server of the organisation sends it again."""
    from panelflow.services.outbox import enqueue

    params = params or {}
    at = interval.end
    per_batch = int(params.get("migration_failed_users_per_batch", FAILED_USERS_PER_BATCH))
    report = StepReport().zero("batches", "status_changes", "failed_users", "notices_queued")

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_migration_batches", {"FailedUsersPerBatch": per_batch})
        batches = {b.BatchGuid: b for b in parse_records(MigrationBatch, rows, report, "migration batch")}
        report.add("batches", len(batches))
        if not batches:
            return
        failed = {guid: parse_records(MigrationUser, b.FailedUsers, report, f"migration user of {b.Identity}")
                  for guid, b in batches.items()}
        records = [{"batch_guid": str(b.BatchGuid), "identity": b.Identity, "migration_type": b.MigrationType,
                    "status": b.Status, "total_count": b.TotalCount, "synced_count": b.SyncedCount,
                    "finalized_count": b.FinalizedCount, "failed_count": b.FailedCount,
                    "notification_emails": sorted({e.strip().lower() for e in b.NotificationEmails if e.strip()}),
                    "exchange_created_at": b.CreationDateTime, "last_synced_at": b.LastSyncedDateTime,
                    "finalized_at": b.FinalizedDateTime} for b in batches.values()]
        with conn.transaction():
            written = conn.execute(_BATCHES, {"rows": as_json(records), "server": server.id, "at": at}).fetchall()
            ids = {guid: batch_id for batch_id, guid, *_ in written}
            users = [{"batch_id": ids[guid], "mailbox": u.Identity.lower(), "status": u.Status,
                      "error_summary": u.ErrorSummary, "last_successful_sync_at": u.LastSuccessfulSyncTime}
                     for guid, found in failed.items() if guid in ids for u in found]
            conn.execute(_FAILURES, {"rows": as_json(users), "batches": list(ids.values()), "at": at})
            report.add("failed_users", len(users))
            for batch_id, guid, before, status, customer_email, changed_at in written:
                batch = batches[guid]
                if before is not None and before != status:
                    report.add("status_changes")
                if not _finished_just_now(batch, before, at):
                    continue
                recipients = [customer_email] if customer_email else \
                    sorted({e.strip().lower() for e in batch.NotificationEmails if e.strip()})
                if not recipients:
                    report.skip("finished, but no customer or notification address to tell", f"batch {batch.Identity}")
                    continue
                context = {
                    "batch": batch.Identity, "status": batch.Status, "outcome": MIGRATION_FINISHED[batch.Status],
                    "server": server.name, "total": batch.TotalCount, "synced": batch.SyncedCount,
                    "finalized": batch.FinalizedCount, "failed": batch.FailedCount,
                    "finished_at": utc_text(batch.FinalizedDateTime or batch.LastSyncedDateTime or at),
                    "failures": [{"mailbox": u.Identity, "error": u.ErrorSummary or u.Status or ""}
                                 for u in failed[guid][:NOTICE_FAILURES_LISTED]],
                    "more_failures": max(0, batch.FailedCount - min(len(failed[guid]), NOTICE_FAILURES_LISTED))}
                for address in recipients:
                    key = f"exchange_migration:{guid}:{batch.Status}:{utc_text(changed_at)}:{address.lower()}"
                    if enqueue(conn, dedupe_key=key, to=address, template=MIGRATION_NOTICE_TEMPLATE, context=context,
                               not_before=at):
                        report.add("notices_queued")

    return every_server(panel_db, report, log, work)
