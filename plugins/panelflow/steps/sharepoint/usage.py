"""UsageReportWork 5, "Generate SharePoint portal usage report": per farm and opted-in Online tenant, the
usage of each site collection for a calendar month, stored once (``sharepoint_usage_reports``).

The month is the last complete one before the run's day (in the thread's time zone): the first
run of April stores March, later April runs find March stored and ask no backend. A source
(farm or tenant) is asked only while it has no row for the month, and its rows are written in one
transaction, so a source is never half stored; UNIQUE (farm/tenant, month, site) backs that up, and
a rerun adds nothing.

- **Online**: Graph's ``reports/getSharePointSiteUsageDetail(period='D30')`` — 302 to a
  pre-authenticated download, a CSV (:meth:`MicrosoftGraphHook.report_csv`): the 30 days to the
  report's refresh date, which Microsoft publishes about two days late. A tenant with
  Microsoft's default privacy setting conceals site URLs and owners: a concealed row is matched to
  the panel's site by its Site Id (the site collection id in Graph's site id) and stored without an
  owner; a concealed site the panel does not know is reported and skipped. A report without the
  documented columns fails the tenant (nothing of it stored).
- **Farms**: ``sharepoint/get_site_collections`` — storage used, quota, ``Usage.Hits`` /
  ``Usage.Visits`` (SharePoint's own counters, where the farm's usage processing keeps them) and
  the last content change, at the run.

A source with no sites stores nothing and is asked again by the next run.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

from panelflow.step import StepReport, run_parts
from panelflow.steps.sharepoint._backend import (FarmSite, farms, for_each_farm, for_each_tenant, mb, site_url, summary,
                                                 tenants)

REPORT = "reports/getSharePointSiteUsageDetail(period='D30')"
REQUIRED = ("Site Id", "Site URL", "Is Deleted", "Storage Used (Byte)", "Storage Allocated (Byte)")
MAX_ROWS = 200_000          # a report longer than this is refused rather than read without bound
BATCH = 1000
COLUMNS = {"site_url": "text", "site_id": "text", "owner": "text", "template": "text", "storage_used_mb": "numeric",
           "storage_allocated_mb": "numeric", "file_count": "bigint", "active_file_count": "bigint",
           "page_view_count": "bigint", "visited_page_count": "bigint", "last_activity_on": "date",
           "report_refresh_on": "date"}

_STORE = f"""
INSERT INTO sharepoint_usage_reports (farm_id, tenant_id, month, {", ".join(COLUMNS)}, recorded_at)
SELECT %(farm)s, %(tenant)s, %(month)s, {", ".join(f"x.{c}" for c in COLUMNS)}, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in COLUMNS.items())})
ON CONFLICT (farm_id, tenant_id, month, site_url) DO NOTHING
RETURNING 1
"""

_STORED = """
SELECT farm_id, tenant_id::text FROM sharepoint_usage_reports WHERE month = %s GROUP BY farm_id, tenant_id
"""

_KNOWN_ONLINE = """
SELECT lower(split_part(site_id, ',', 2)), url FROM sharepoint_site_collections
WHERE tenant_id = %s AND site_id IS NOT NULL
"""


def report_month(interval) -> date:
    """The last calendar month complete before the run's day."""
    first = interval.days()[1].replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


def _store(conn, report: StepReport, at, month: date, rows: list[dict], *, farm=None, tenant=None) -> None:
    with conn.transaction():
        for start in range(0, len(rows), BATCH):
            written = conn.execute(_STORE, {"farm": farm, "tenant": tenant, "month": month, "at": at,
                                            "rows": json.dumps(rows[start:start + BATCH], default=str)}).fetchall()
            report.add("rows_stored", len(written))
    report.add("reports_stored", int(bool(rows)))


def _count(value: str, column: str) -> int | None:
    if value in (None, ""):
        return None
    number = int(value)
    if number < 0:
        raise ValueError(f"{column} is negative")
    return number


def _day(value: str) -> date | None:
    return date.fromisoformat(value) if value else None


def online_rows(text: str, known: dict[str, str], report: StepReport, tenant: str) -> list[dict]:
    """The report's CSV → rows; a concealed row is matched by Site Id, a bad row reported and skipped."""
    from panelflow.hooks.microsoft_graph import GraphMalformedResponse

    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise GraphMalformedResponse(f"tenant {tenant}: the SharePoint site usage report has no column "
                                     f"{', '.join(repr(c) for c in missing)}")
    rows = []
    for n, row in enumerate(reader, start=1):
        if n > MAX_ROWS:
            raise GraphMalformedResponse(f"tenant {tenant}: the SharePoint site usage report has more than "
                                         f"{MAX_ROWS} rows")
        site_id = (row.get("Site Id") or "").strip().lower()
        url = (row.get("Site URL") or "").strip()
        concealed = not url
        if concealed:
            url = known.get(site_id, "")
            if not url:
                report.skip("site URL concealed in the report and the site is unknown to the panel",
                            f"tenant {tenant} site {site_id or '#' + str(n)}")
                continue
        try:
            rows.append({
                "site_url": site_url(url), "site_id": site_id or None,
                "owner": None if concealed else (row.get("Owner Principal Name") or row.get("Owner Display Name")
                                                 or None),
                "template": row.get("Root Web Template") or None,
                "storage_used_mb": mb(_count(row["Storage Used (Byte)"], "Storage Used")),
                "storage_allocated_mb": mb(_count(row["Storage Allocated (Byte)"], "Storage Allocated")),
                "file_count": _count(row.get("File Count"), "File Count"),
                "active_file_count": _count(row.get("Active File Count"), "Active File Count"),
                "page_view_count": _count(row.get("Page View Count"), "Page View Count"),
                "visited_page_count": _count(row.get("Visited Page Count"), "Visited Page Count"),
                "last_activity_on": _day(row.get("Last Activity Date")),
                "report_refresh_on": _day(row.get("Report Refresh Date"))})
        except ValueError as exc:
            report.skip(f"a malformed report row ({exc})", f"tenant {tenant} site {url}")
    return rows


def farm_rows(sites: list[FarmSite]) -> list[dict]:
    return [{"site_url": site_url(s.Url), "site_id": s.Id, "owner": s.Owner, "template": s.Template,
             "storage_used_mb": mb(s.StorageUsedBytes), "storage_allocated_mb": s.quota_mb(), "file_count": None,
             "active_file_count": None, "page_view_count": s.Hits, "visited_page_count": s.Visits,
             "last_activity_on": s.LastContentModified.date() if s.LastContentModified else None,
             "report_refresh_on": None} for s in sites]


def sharepoint_usage_report(panel_db, interval, params=None, log=None) -> dict:
    """Generate SharePoint portal usage report.

    Farms and Online tenants are independent parts (:func:`panelflow.step.run_parts`): every farm
    failing does not keep the tenants' reports from being stored, and the task still fails after.
    """
    from panelflow.hooks.powershell import parse_records

    at, month = interval.end, report_month(interval)
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        stored = set(conn.execute(_STORED, (month,)).fetchall())

        def farms_part() -> dict:
            report = _report()
            due = [f for f in farms(conn) if (f.id, None) not in stored]
            report.add("sources_already_stored", sum(1 for f, _t in stored if f is not None))

            def work(hook, farm) -> None:
                sites = parse_records(FarmSite, hook.run_script("sharepoint/get_site_collections"), report,
                                      f"farm {farm.name} site collection")
                _store(conn, report, at, month, farm_rows(sites), farm=farm.id)

            for_each_farm(conn, at, report, log, work, targets=due)
            return summary(report, log, "SharePoint farm usage report")

        def online_part() -> dict:
            report = _report()
            due = [t for t in tenants(conn) if (None, t.tenant_id) not in stored]
            report.add("sources_already_stored", sum(1 for _f, t in stored if t is not None))

            async def work(hook, tenant) -> None:
                text = await hook.report_csv(REPORT)
                known = dict(conn.execute(_KNOWN_ONLINE, (tenant.tenant_id,)).fetchall())
                _store(conn, report, at, month, online_rows(text, known, report, tenant.tenant_id),
                       tenant=tenant.tenant_id)

            for_each_tenant(conn, at, report, log, work, targets=due)
            return summary(report, log, "SharePoint Online usage report")

        out = run_parts([("farms", farms_part), ("online", online_part)], what="SharePoint usage report", log=log)
    out["month"] = month.isoformat()
    return out


def _report() -> StepReport:
    return StepReport().zero("reports_stored", "rows_stored", "sources_already_stored")
