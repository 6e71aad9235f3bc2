"""The SharePoint backend: who the farms and Online tenants are, what their answers look like, the
loops over them, and how a listing of site collections lands in the panel.

On-premises farms (``sharepoint_farms``, written by the panel) are reached over PowerShell remoting
on the ``psrp`` connection of one farm server, the scripts of ``include/powershell/sharepoint``
loading the SharePoint snap-in themselves. SharePoint Online is read through Microsoft Graph on the
tenant's ``m365_tenants`` connection, for the tenants the panel opted in
(``sharepoint_online_tenants``). Both loops follow :func:`panelflow.step.for_each`'s rule: a farm or
tenant that cannot be reached, refuses the credentials or answers malformed fails alone — named in
the summary and recorded on its row (``last_error``) — and the step fails only when every one tried
failed. A malformed record (a site without a URL …) is reported and skipped; the rest is written.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from panelflow.step import EndpointsFailed, StepReport, for_each

MIB = 1024 * 1024
URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[^\s\x00-\x1f]*)?$")
LOCK_STATES = ("Unlock", "NoAdditions", "ReadOnly", "NoAccess")


class SharePointFarmsFailed(EndpointsFailed):
    """Every SharePoint farm the step tried failed: the run fails, so Airflow retries it and alerts."""


class SharePointTenantsFailed(EndpointsFailed):
    """Every SharePoint Online tenant the step tried failed."""


def site_url(url: str) -> str:
    """A site collection's key: SharePoint compares URLs without case and without a trailing slash."""
    return url.strip().rstrip("/").lower()


def mb(size_bytes: int | None) -> float | None:
    return None if size_bytes is None else round(size_bytes / MIB, 3)


# -- records: what the farm scripts print ------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FarmSite(_Record):
    """A site collection as ``get_site_collections`` / ``create_site`` / ``set_site`` print it."""

    Url: str = Field(min_length=1, max_length=2000)
    Id: str | None = None
    Title: str | None = None
    Owner: str | None = None
    SecondaryOwner: str | None = None
    Template: str | None = None
    QuotaBytes: int | None = Field(default=None, ge=0)
    StorageUsedBytes: int | None = Field(default=None, ge=0)
    Hits: int | None = Field(default=None, ge=0)
    Visits: int | None = Field(default=None, ge=0)
    LastContentModified: datetime | None = None
    LockState: str | None = None
    Created: bool | None = None

    @field_validator("Url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not URL.match(value):
            raise ValueError("not an absolute http(s) URL")
        return value

    def owners(self) -> list[str]:
        return [o for o in (self.Owner, self.SecondaryOwner) if o]

    def quota_mb(self) -> float | None:
        return mb(self.QuotaBytes) if self.QuotaBytes else None   # 0: no quota


class FarmRecord(_Record):
    Name: str | None = None
    BuildVersion: str = Field(pattern=r"^\d+\.\d+\.\d+\.\d+$")
    Products: list[str] = []


# -- farms ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Farm:
    id: int
    name: str
    conn_id: str


def farms(conn) -> list[Farm]:
    return [Farm(*r) for r in conn.execute("SELECT id, name, conn_id FROM sharepoint_farms WHERE enabled ORDER BY id")]


def farm_named(conn, name: str) -> tuple[Farm, bool] | None:
    row = conn.execute("SELECT id, name, conn_id, enabled FROM sharepoint_farms WHERE lower(name) = lower(%s)",
                       (name,)).fetchone()
    return None if row is None else (Farm(*row[:3]), row[3])


_FARM_ERROR = "UPDATE sharepoint_farms SET last_error = %s, last_error_at = %s WHERE id = %s"
_FARM_OK = "UPDATE sharepoint_farms SET last_error = NULL, synced_at = coalesce(%s, synced_at) WHERE id = %s"


def for_each_farm(conn, at: datetime, report: StepReport, log, work: Callable[[Any, Farm], None],
                  *, listed: bool = False, targets: list[Farm] | None = None) -> list[str]:
    """``work(hook, farm)`` per enabled farm (or per farm of ``targets``) in its own PowerShell session
    → the farms that failed. ``listed``: the work listed every site collection, so the farm's
    ``synced_at`` moves to ``at``."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.powershell import PowerShellError, powershell_session

    def attempt(farm: Farm) -> None:
        with powershell_session(farm.conn_id, log) as hook:
            work(hook, farm)
        conn.execute(_FARM_OK, (at if listed else None, farm.id))
        report.add("farms_synced")

    report.zero("farms_synced")
    outcome = for_each(farms(conn) if targets is None else targets, attempt, report=report, kind="farm",
                       expected=(PowerShellError, AirflowException),
                       log=log, everything_failed=SharePointFarmsFailed, what="SharePoint farm",
                       on_failure=lambda farm, _exc, why: conn.execute(_FARM_ERROR, (why[:2000], at, farm.id)))
    return outcome.failed


# -- SharePoint Online tenants --------------------------------------------------------------------

@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    conn_id: str
    customer_id: int | None

    @property
    def name(self) -> str:
        return self.tenant_id


_TENANTS = """
SELECT t.tenant_id::text, t.conn_id, t.customer_id FROM sharepoint_online_tenants o
JOIN m365_tenants t USING (tenant_id) WHERE o.enabled AND t.enabled ORDER BY t.tenant_id
"""
_TENANT_ERROR = "UPDATE sharepoint_online_tenants SET last_error = %s, last_error_at = %s WHERE tenant_id = %s"
_TENANT_OK = ("UPDATE sharepoint_online_tenants SET last_error = NULL, synced_at = coalesce(%s, synced_at)"
              " WHERE tenant_id = %s")


def tenants(conn) -> list[Tenant]:
    return [Tenant(*r) for r in conn.execute(_TENANTS)]


def for_each_tenant(conn, at: datetime, report: StepReport, log, work, *, listed: bool = False,
                    targets: list[Tenant] | None = None) -> list[str]:
    """``await work(hook, tenant)`` per opted-in tenant (or per tenant of ``targets``), each on its own
    event loop with its own Graph hook (closed in that loop) → the tenants that failed."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.microsoft_graph import GraphError, MicrosoftGraphHook

    def attempt(tenant: Tenant) -> None:
        async def go():
            async with MicrosoftGraphHook(tenant.conn_id) as hook:
                await work(hook, tenant)

        asyncio.run(go())
        conn.execute(_TENANT_OK, (at if listed else None, tenant.tenant_id))
        report.add("tenants_synced")

    report.zero("tenants_synced")
    outcome = for_each(tenants(conn) if targets is None else targets, attempt, report=report, kind="tenant",
                       expected=(GraphError, AirflowException),
                       log=log, everything_failed=SharePointTenantsFailed, what="SharePoint Online tenant",
                       on_failure=lambda t, _exc, why: conn.execute(_TENANT_ERROR, (why[:2000], at, t.tenant_id)))
    return outcome.failed


# -- site collections into the panel ----------------------------------------------------------------

SITE_COLUMNS = ("url", "site_id", "title", "owners", "template", "quota_mb", "storage_used_mb", "lock_state")

# One source's complete listing (a farm's or a tenant's): new sites added, changed ones updated
# (``changed_at`` only when something differs), sites of the source not listed any more marked gone.
# ``listed`` holds every URL the source listed, also those whose record was skipped, so a bad record
# never makes its site look deleted. A URL that belongs to another source is left alone and reported.
_MERGE = f"""
WITH incoming AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(url text, site_id text, title text, owners text[],
        template text, quota_mb numeric, storage_used_mb numeric, lock_state text)
), diff AS (
    SELECT i.*, s.id AS existing,
           s.id IS NOT NULL AND (s.farm_id, s.tenant_id) IS DISTINCT FROM (%(farm)s::bigint, %(tenant)s::uuid)
               AS foreign_url,
           s.id IS NOT NULL AND (s.deleted_at IS NOT NULL OR ({", ".join(f"s.{c}" for c in SITE_COLUMNS[1:])})
               IS DISTINCT FROM ({", ".join(f"i.{c}" for c in SITE_COLUMNS[1:])})) AS changed
    FROM incoming i LEFT JOIN sharepoint_site_collections s ON s.url = i.url
), written AS (
    INSERT INTO sharepoint_site_collections AS s (farm_id, tenant_id, customer_id, {", ".join(SITE_COLUMNS)},
                                                  first_seen_at, synced_at, changed_at)
    SELECT %(farm)s, %(tenant)s, %(customer)s, {", ".join(SITE_COLUMNS)}, %(at)s, %(at)s, %(at)s
    FROM diff WHERE NOT foreign_url
    ON CONFLICT (url) DO UPDATE
    SET {", ".join(f"{c} = EXCLUDED.{c}" for c in SITE_COLUMNS[1:])}, synced_at = EXCLUDED.synced_at,
        customer_id = coalesce(s.customer_id, EXCLUDED.customer_id), deleted_at = NULL,
        changed_at = CASE WHEN s.deleted_at IS NOT NULL OR ({", ".join(f"s.{c}" for c in SITE_COLUMNS[1:])})
                          IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in SITE_COLUMNS[1:])})
                     THEN EXCLUDED.changed_at ELSE s.changed_at END
    RETURNING 1
), gone AS (
    UPDATE sharepoint_site_collections s SET deleted_at = %(at)s, changed_at = %(at)s
    WHERE s.farm_id IS NOT DISTINCT FROM %(farm)s::bigint AND s.tenant_id IS NOT DISTINCT FROM %(tenant)s::uuid
      AND s.deleted_at IS NULL AND %(complete)s AND s.url <> ALL(%(listed)s::text[])
    RETURNING 1
)
SELECT (SELECT count(*) FROM diff WHERE existing IS NULL),
       (SELECT count(*) FROM diff WHERE changed AND NOT foreign_url),
       (SELECT count(*) FROM gone),
       (SELECT count(*) FROM written),
       (SELECT (array_agg(url ORDER BY url))[1:%(keep)s] FROM diff WHERE foreign_url),
       (SELECT count(*) FROM diff WHERE foreign_url)
"""


def merge_sites(conn, report: StepReport, at: datetime, rows: list[dict], listed: list[str], *,
                farm: int | None = None, tenant: str | None = None, customer: int | None = None,
                complete: bool = True) -> None:
    """Write one source's listing (``rows`` of :data:`SITE_COLUMNS`) set-based; counts added, changed, gone.
    ``complete=False`` (the listing was cut short): nothing is marked gone."""
    added, changed, gone, written, foreign, n_foreign = conn.execute(_MERGE, {
        "rows": json.dumps(rows), "listed": listed, "farm": farm, "tenant": tenant, "customer": customer, "at": at,
        "complete": complete, "keep": report.keep}).fetchone()
    report.add("sites_added", added)
    report.add("sites_changed", changed)
    report.add("sites_gone", gone)
    report.add("sites_seen", written)
    report.skip_grouped([("the URL belongs to another farm or tenant in the panel", n_foreign, foreign)]
                        if n_foreign else [])


def farm_site_row(site: FarmSite) -> dict:
    return {"url": site_url(site.Url), "site_id": site.Id, "title": site.Title, "owners": site.owners(),
            "template": site.Template, "quota_mb": site.quota_mb(), "storage_used_mb": mb(site.StorageUsedBytes),
            "lock_state": site.LockState}


def summary(report: StepReport, log, what: str) -> dict:
    """The report as the task's summary; what was skipped is logged as a warning too."""
    out = report.as_dict()
    if log is not None and out["skipped"]:
        log.warning("%s: %s", what, out["skipped"])
    return out
