"""UsageReportWork 1 and 4: what each hosted organisation uses, and the average mailbox per database.

1. :func:`exchange_usage_report` — per organisation (``exchange_organizations``), on the server its
   cmdlets run on, every mailbox of its OU with Get-MailboxStatistics. Exchange's answer is the
   report, not the panel's list: a mailbox made outside the panel is used, so it is counted (SPLA
   counts what exists). Written, in one transaction per organisation:

   - ``exchange_usage_reports``: one row per organisation and day (the run's day in the thread's
     time zone) — mailboxes by kind, their size and items. The thread runs twice a day; the later
     run's answer replaces the earlier one's, and a rerun of an older run never overwrites a newer;
   - each panel mailbox's ``size_bytes`` / ``item_count`` (matched by ExchangeGuid);
   - usage samples (``resource_usage_samples``) ``mailboxes`` and ``mailbox_storage`` (MB) for the
     organisation's subscription, keyed by the run's clock: QuotaOverUsedWork, pay-per-use and the
     ``resource_usage`` reports UsageReportScheduleWork e-mails read them. An organisation without
     a subscription gets its report, no samples (named in the summary).

4. :func:`sync_average_mailbox_sizes` — per server, each database whose active copy it hosts: its
   connected mailboxes and their average TotalItemSize, one ``exchange_database_mailbox_sizes`` row
   per database (by GUID, as databases move between servers) and day.

An organisation Exchange refuses (its OU gone …) is counted ``failed`` and named; the others are
reported. Servers fail under :func:`._backend.each_server`'s rule.
"""

from __future__ import annotations

from uuid import UUID
from zoneinfo import ZoneInfo

from pydantic import Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import (ByteCount, MailboxHome, Organization, Record, as_json, each_organization, every_server,
                       refused, run_item)

MIB = 1024 * 1024
USER_KINDS = ("UserMailbox", "LinkedMailbox")
RESOURCE_KINDS = ("RoomMailbox", "EquipmentMailbox")


def report_date(interval):
    """The report's period: the run's calendar day in the thread's time zone."""
    return interval.end.astimezone(ZoneInfo(interval.tz)).date()


class MailboxUsage(MailboxHome):
    RecipientTypeDetails: str = Field(min_length=1)
    TotalItemSize: ByteCount = None
    TotalDeletedItemSize: ByteCount = None
    ItemCount: int | None = Field(default=None, ge=0)


_ORGANIZATIONS = """
SELECT o.exchange_server_id, o.id, o.name, o.organizational_unit, o.subscription_id
FROM exchange_organizations o ORDER BY o.exchange_server_id, o.id
"""

# One organisation's answer: the panel's mailboxes, the day's report, the subscription's samples.
_USAGE = f"""
WITH x AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(guid uuid, kind text, size_bytes bigint,
                                                          deleted_bytes bigint, items bigint)
), mailboxes AS (
    UPDATE exchange_mailboxes m SET size_bytes = x.size_bytes, item_count = x.items, size_read_at = %(at)s
    FROM x
    WHERE m.exchange_guid = x.guid AND m.organization_id = %(org)s
      AND (m.size_read_at IS NULL OR m.size_read_at <= %(at)s)
    RETURNING 1
), total AS (
    SELECT count(*) AS mailboxes,
           count(*) FILTER (WHERE kind IN {USER_KINDS}) AS users,
           count(*) FILTER (WHERE kind = 'SharedMailbox') AS shared,
           count(*) FILTER (WHERE kind IN {RESOURCE_KINDS}) AS resources,
           coalesce(sum(size_bytes), 0) AS size_bytes, coalesce(sum(deleted_bytes), 0) AS deleted_bytes,
           coalesce(sum(items), 0) AS items
    FROM x
), report AS (
    INSERT INTO exchange_usage_reports AS r (organization_id, report_date, subscription_id, mailboxes, user_mailboxes,
        shared_mailboxes, resource_mailboxes, total_item_size_bytes, total_deleted_item_size_bytes, item_count, read_at)
    SELECT %(org)s, %(day)s, %(subscription)s, mailboxes, users, shared, resources, size_bytes, deleted_bytes, items,
           %(at)s
    FROM total
    ON CONFLICT (organization_id, report_date) DO UPDATE SET
        subscription_id = EXCLUDED.subscription_id, mailboxes = EXCLUDED.mailboxes,
        user_mailboxes = EXCLUDED.user_mailboxes, shared_mailboxes = EXCLUDED.shared_mailboxes,
        resource_mailboxes = EXCLUDED.resource_mailboxes, total_item_size_bytes = EXCLUDED.total_item_size_bytes,
        total_deleted_item_size_bytes = EXCLUDED.total_deleted_item_size_bytes, item_count = EXCLUDED.item_count,
        read_at = EXCLUDED.read_at
    WHERE r.read_at <= EXCLUDED.read_at
    RETURNING 1
), samples AS (
    INSERT INTO resource_usage_samples (subscription_id, resource, sampled_at, used)
    SELECT %(subscription)s::bigint, s.resource, %(at)s, s.used
    FROM total CROSS JOIN LATERAL (VALUES ('mailboxes', total.mailboxes::numeric),
                                          ('mailbox_storage', round(total.size_bytes / {MIB}.0, 2)))
        AS s(resource, used)
    WHERE %(subscription)s::bigint IS NOT NULL
    ON CONFLICT (subscription_id, resource, sampled_at) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM mailboxes), (SELECT count(*) FROM report), (SELECT count(*) FROM samples)
"""


def exchange_usage_report(panel_db, interval, log) -> dict:
    """Read and create Exchange usage report from backend: per organisation and day, its mailboxes,
    their size and items; the panel mailboxes' sizes; the subscription's usage samples."""
    at, day = interval.end, report_date(interval)
    report = StepReport().zero("reports_written", "mailboxes_read", "panel_mailboxes_updated", "samples_written",
                               "organizations_without_subscription", "failed")
    script = "exchange/get_organization_mailbox_usage"

    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def work(hook, org: Organization) -> None:
            rows, error = run_item(hook, script, {"OrganizationalUnit": org.organizational_unit})
            if error is not None:
                refused(report, error, f"organization {org.name}")
                return
            usage = {m.ExchangeGuid: m for m in parse_records(MailboxUsage, rows, report,
                                                              f"organization {org.name} mailbox")}
            report.add("mailboxes_read", len(usage))
            records = [{"guid": str(m.ExchangeGuid), "kind": m.RecipientTypeDetails, "size_bytes": m.TotalItemSize,
                        "deleted_bytes": m.TotalDeletedItemSize, "items": m.ItemCount} for m in usage.values()]
            with conn.transaction():
                updated, written, samples = conn.execute(_USAGE, {
                    "rows": as_json(records), "org": org.id, "day": day, "at": at,
                    "subscription": org.subscription_id}).fetchone()
            report.add("panel_mailboxes_updated", updated)
            report.add("reports_written", written)
            report.add("samples_written", samples)
            if org.subscription_id is None:
                report.add("organizations_without_subscription")
                report.skip("no subscription: usage not sampled", f"organization {org.name}")

        each_organization(conn, _ORGANIZATIONS, (), report, log, work)
    return {"report_date": day.isoformat(), **report.as_dict()}


# -- 4. average mailbox size per database -----------------------------------------------------------

class DatabaseMailboxSize(Record):
    Name: str = Field(min_length=1)
    Guid: UUID
    MailboxCount: int = Field(ge=0)
    TotalItemSizeBytes: int = Field(ge=0)


_SIZES = """
INSERT INTO exchange_database_mailbox_sizes AS s (database_guid, report_date, database_name, exchange_server_id,
    mailboxes, total_item_size_bytes, average_mailbox_size_bytes, read_at)
SELECT x.guid, %(day)s, x.name, %(server)s, x.mailboxes, x.total, x.total / nullif(x.mailboxes, 0), %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(guid uuid, name text, mailboxes integer, total bigint)
ON CONFLICT (database_guid, report_date) DO UPDATE SET
    database_name = EXCLUDED.database_name, exchange_server_id = EXCLUDED.exchange_server_id,
    mailboxes = EXCLUDED.mailboxes, total_item_size_bytes = EXCLUDED.total_item_size_bytes,
    average_mailbox_size_bytes = EXCLUDED.average_mailbox_size_bytes, read_at = EXCLUDED.read_at
WHERE s.read_at <= EXCLUDED.read_at
"""


def sync_average_mailbox_sizes(panel_db, interval, log) -> dict:
    """Sync average Mailbox size of all Exchange databases: one row per database and day."""
    at, day = interval.end, report_date(interval)
    report = StepReport().zero("databases", "databases_written")

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_database_mailbox_sizes", {"Server": server.name})
        databases = {d.Guid: d for d in parse_records(DatabaseMailboxSize, rows, report,
                                                      f"server {server.name} database")}
        report.add("databases", len(databases))
        records = [{"guid": str(d.Guid), "name": d.Name, "mailboxes": d.MailboxCount, "total": d.TotalItemSizeBytes}
                   for d in databases.values()]
        with conn.transaction():
            report.add("databases_written", conn.execute(_SIZES, {"rows": as_json(records), "day": day, "at": at,
                                                                  "server": server.id}).rowcount)

    return {"report_date": day.isoformat(), **every_server(panel_db, report, log, work)}
