"""ExchangeMailboxMobileDevicesReportWork: the mobile devices of the mailboxes, and a daily report per organisation."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import Field

from panelflow.hooks.powershell import parse_records
from panelflow.step import StepReport

from ._backend import Record, UtcTime, as_json, each_server, exchange_servers, utc_text

MOBILE_ACTIVE_DAYS = 30


class MobileDevice(Record):
    Guid: UUID
    DeviceId: str = Field(min_length=1)
    DeviceType: str | None = None
    DeviceModel: str | None = None
    DeviceOS: str | None = None
    DeviceUserAgent: str | None = None
    FriendlyName: str | None = None
    FirstSyncTime: UtcTime = None
    LastSuccessSync: UtcTime = None
    Status: str | None = None
    DeviceAccessState: str | None = None
    MailboxGuid: UUID
    PrimarySmtpAddress: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    DisplayName: str | None = None
    OrganizationalUnit: str = Field(min_length=1)
    StatisticsError: str | None = None

    @property
    def organization(self) -> str:
        """The mailbox's organisation: the last part of its OU (``corp.example/Hosting/contoso.example``)."""
        return self.OrganizationalUnit.rstrip("/").rsplit("/", 1)[-1]


_DEVICES = """
INSERT INTO exchange_mobile_devices (mailbox_guid, device_id, device_guid, exchange_server_id, mailbox,
    mailbox_display_name, organization, device_type, device_model, device_os, device_user_agent, device_friendly_name,
    first_sync_at, last_success_sync_at, status, access_state, first_seen_at, last_seen_at, removed_at)
SELECT r.mailbox_guid, r.device_id, r.device_guid, %(server)s, r.mailbox, r.mailbox_display_name, r.organization,
       r.device_type, r.device_model, r.device_os, r.device_user_agent, r.device_friendly_name, r.first_sync_at,
       r.last_success_sync_at, r.status, r.access_state, %(at)s, %(at)s, NULL
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    mailbox_guid uuid, device_id text, device_guid uuid, mailbox text, mailbox_display_name text, organization text,
    device_type text, device_model text, device_os text, device_user_agent text, device_friendly_name text,
    first_sync_at timestamptz, last_success_sync_at timestamptz, status text, access_state text)
ON CONFLICT (mailbox_guid, device_id) DO UPDATE SET
    device_guid = EXCLUDED.device_guid, exchange_server_id = EXCLUDED.exchange_server_id, mailbox = EXCLUDED.mailbox,
    mailbox_display_name = EXCLUDED.mailbox_display_name, organization = EXCLUDED.organization,
    device_type = EXCLUDED.device_type, device_model = EXCLUDED.device_model, device_os = EXCLUDED.device_os,
    device_user_agent = EXCLUDED.device_user_agent, device_friendly_name = EXCLUDED.device_friendly_name,
    first_sync_at = EXCLUDED.first_sync_at,
    last_success_sync_at = coalesce(EXCLUDED.last_success_sync_at, exchange_mobile_devices.last_success_sync_at),
    status = coalesce(EXCLUDED.status, exchange_mobile_devices.status), access_state = EXCLUDED.access_state,
    last_seen_at = EXCLUDED.last_seen_at, removed_at = NULL
WHERE exchange_mobile_devices.last_seen_at <= EXCLUDED.last_seen_at
"""

CSV_COLUMNS = ("Organization", "Mailbox", "DisplayName", "DeviceType", "DeviceModel", "DeviceOS", "DeviceUserAgent",
               "DeviceId", "FirstSyncTime", "LastSuccessSync", "Status", "AccessState")


def _write_reports(conn, report_date, at: datetime, active_since: datetime) -> int:
    """One report row per organisation with devices, its CSV from the devices table as it stands."""
    rows = conn.execute(
        "SELECT organization, mailbox, mailbox_display_name, device_type, device_model, device_os, device_user_agent,"
        " device_id, first_sync_at, last_success_sync_at, status, access_state"
        " FROM exchange_mobile_devices WHERE removed_at IS NULL").fetchall()
    by_org: dict[str, list[tuple]] = {}
    for row in sorted(rows, key=lambda r: (r[0], r[1], (r[3] or "").lower(), r[7])):   # not the DB's collation
        by_org.setdefault(row[0], []).append(row)
    reports = []
    for org, devices in by_org.items():
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for d in devices:
            writer.writerow([*d[:8], utc_text(d[8]), utc_text(d[9]), d[10] or "", d[11] or ""])
        types = Counter(d[3] or "unknown" for d in devices)
        reports.append((
            report_date, org, len({d[1] for d in devices}), len(devices),
            sum(1 for d in devices if d[9] is not None and d[9] >= active_since),
            sum(1 for d in devices if (d[11] or "").lower() == "blocked"),
            sum(1 for d in devices if (d[11] or "").lower() == "quarantined"),
            json.dumps(dict(sorted(types.items()))), out.getvalue(), at))
    if reports:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO exchange_mobile_device_reports (report_date, organization, mailboxes, devices,"
                " active_devices, blocked_devices, quarantined_devices, device_types, csv, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
                " ON CONFLICT (report_date, organization) DO UPDATE SET mailboxes = EXCLUDED.mailboxes,"
                " devices = EXCLUDED.devices, active_devices = EXCLUDED.active_devices,"
                " blocked_devices = EXCLUDED.blocked_devices, quarantined_devices = EXCLUDED.quarantined_devices,"
                " device_types = EXCLUDED.device_types, csv = EXCLUDED.csv, created_at = EXCLUDED.created_at"
                " WHERE exchange_mobile_device_reports.created_at <= EXCLUDED.created_at", reports)
    return len(reports)


def fetch_mobile_devices_report(panel_db, interval, params, log) -> dict:
    """Create and fetch exchange mailbox devices report.

    Each server reports the devices of the mailboxes on the databases it hosts; devices are
    upserted per mailbox (ExchangeGuid) and DeviceId. A device no longer reported is marked
    ``removed_at`` — only in a run where every server answered, since a silent server's devices
    are unknown, not gone. Then one report per organisation for the clock's day
    (``interval.end`` in the catalog's time zone): counts and the device list as CSV, rebuilt from
    the table, so a rerun the same day replaces it.
    """
    from zoneinfo import ZoneInfo

    params = params or {}
    at = interval.end
    active_since = at - timedelta(days=int(params.get("mobile_device_active_days", MOBILE_ACTIVE_DAYS)))
    report = StepReport().zero("devices", "devices_written", "devices_removed", "reports")

    def work(conn, hook, server):
        rows = hook.run_script("exchange/get_mobile_device_statistics", {"Server": server.name})
        devices = {(d.MailboxGuid, d.DeviceId.lower()): d
                   for d in parse_records(MobileDevice, rows, report, "mobile device")}
        report.add("devices", len(devices))
        for d in devices.values():
            if d.StatisticsError:
                report.add("devices_without_statistics")
        if not devices:
            return
        records = [{"mailbox_guid": str(d.MailboxGuid), "device_id": d.DeviceId, "device_guid": str(d.Guid),
                    "mailbox": d.PrimarySmtpAddress.lower(), "mailbox_display_name": d.DisplayName,
                    "organization": d.organization, "device_type": d.DeviceType, "device_model": d.DeviceModel,
                    "device_os": d.DeviceOS, "device_user_agent": d.DeviceUserAgent,
                    "device_friendly_name": d.FriendlyName, "first_sync_at": d.FirstSyncTime,
                    "last_success_sync_at": d.LastSuccessSync, "status": d.Status,
                    "access_state": d.DeviceAccessState} for d in devices.values()]
        with conn.transaction():
            report.add("devices_written", conn.execute(_DEVICES, {"rows": as_json(records), "server": server.id,
                                                                 "at": at}).rowcount)

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        servers = exchange_servers(conn)
        answered = each_server(servers, report, log, lambda server, hook: work(conn, hook, server))
        with conn.transaction():
            if answered and len(answered) == len(servers):
                report.add("devices_removed", conn.execute(
                    "UPDATE exchange_mobile_devices SET removed_at = %s WHERE removed_at IS NULL AND last_seen_at < %s",
                    (at, at)).rowcount)
            report.add("reports", _write_reports(conn, at.astimezone(ZoneInfo(interval.tz)).date(), at,
                                                 active_since))
    return report.as_dict()


