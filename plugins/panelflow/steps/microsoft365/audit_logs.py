"""O365SyncAdminLogsWork: every tenant's directory audits of the run's data interval, through the
tenants' loop of :mod:`._backend` (a tenant that fails is recorded and named; the others go on).

A page is written all or nothing (``ON CONFLICT (tenant_id, graph_id) DO NOTHING``, so a rerun of
the same interval writes nothing twice); the tenant's watermark is kept in ``m365_sync_state``.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from panelflow.steps.microsoft365._backend import RawJson, page_rejected, pipelined, prepare_connection, run_tenants

_AUDITS = """
INSERT INTO o365_admin_audit_logs (occurred_at, actor, action, target, details, tenant_id, graph_id)
SELECT (x ->> 'activityDateTime')::timestamptz,
       coalesce(x #>> '{initiatedBy,user,userPrincipalName}', x #>> '{initiatedBy,app,displayName}',
                x #>> '{initiatedBy,app,servicePrincipalName}', x #>> '{initiatedBy,user,id}', 'unknown'),
       coalesce(x ->> 'activityDisplayName', x ->> 'operationType', 'unknown'),
       coalesce(x #>> '{targetResources,0,userPrincipalName}', x #>> '{targetResources,0,displayName}',
                x #>> '{targetResources,0,id}'),
       x, %(t)s, x ->> 'id'
FROM jsonb_array_elements(%(page)s -> 'value') x
ON CONFLICT (tenant_id, graph_id) DO NOTHING
"""


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _audit_window(interval) -> tuple[datetime, datetime]:
    start, end = interval.start, interval.end
    if start >= end:  # a run without a data interval covers the hour before its clock
        start = end - timedelta(hours=1)
    return start, end


async def _sync_audits(conn, tenant_id: str, conn_id: str, at: datetime, counts, *, window) -> bool:
    import psycopg

    from panelflow.hooks.microsoft_graph import MicrosoftGraphHook

    start, end = window
    prepare_connection(conn)
    flt = f"activityDateTime ge {_iso(start)} and activityDateTime lt {_iso(end)}"
    url = f"auditLogs/directoryAudits?$filter={quote(flt)}&$top=999"

    def write(page):
        try:
            with conn.transaction():
                n = conn.execute(_AUDITS, {"t": tenant_id, "page": RawJson(page.raw)}).rowcount
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise page_rejected("directoryAudits", page, exc) from exc
        counts["audit_entries_read"] += len(page.value)
        counts["audit_entries_written"] += n
        counts["audit_pages"] += 1

    async with MicrosoftGraphHook(conn_id) as hook:
        try:
            await pipelined(hook.pages(url), write)
        finally:
            for key in ("requests", "throttled", "token_refreshes"):
                counts[f"graph_{key}"] += getattr(hook.stats, key)
    conn.execute(
        "INSERT INTO m365_sync_state AS s (tenant_id, entity, watermark, synced_at) VALUES (%s, 'directoryAudits', %s, %s)"
        " ON CONFLICT (tenant_id, entity) DO UPDATE SET watermark = greatest(s.watermark, EXCLUDED.watermark),"
        " synced_at = EXCLUDED.synced_at", (tenant_id, end, at))
    return False


def sync_o365_admin_audit_logs(panel_db, interval, params, log) -> dict:
    """Sync O365 admin audit logs: every tenant's directory audits of the run's data interval."""
    window = _audit_window(interval)
    summary = run_tenants(panel_db, interval, params, log, functools.partial(_sync_audits, window=window), "audit")
    summary.pop("first_syncs", None)
    summary["window"] = [window[0].isoformat(), window[1].isoformat()]
    summary.setdefault("audit_entries_written", 0)
    return summary

